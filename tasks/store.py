"""The artifact store: run ledgers, plans, logs and unit outputs under one fsspec URL.

Every process of a run (the feature flow, unit flow runs on other machines, the CLI) reads and
writes the same store, so writes are atomic (readers never see half a file) and nothing is served
from a listing cache: what another process wrote is visible at once.

Backends: `s3://bucket/prefix` (s3fs; `FLOTILLA_S3_ENDPOINT_URL` for MinIO or moto), a local
directory (a plain path or `file:///abs/path`), and `memory://name` for fast tests.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, ValidationError
from pydantic_core import to_json

from flotilla.errors import RunError, StoreUnavailable
from flotilla.redaction import redact_bytes
from flotilla.results import UnitRecord
from flotilla.settings import get_settings
from tasks.store_faults import with_retries

M = TypeVar("M", bound=BaseModel)

DEFAULT_STORE = "./.flotilla/store"
_TMP_MARK = ".flotilla-tmp-"  # temp files of in-flight local writes; never listed
_S3_SINGLE_PUT_LIMIT = 5 * 2**30  # pipe_file uses one PUT below twice its chunk size
_REDACT_UPLOADS_UP_TO = 64 * 2**20  # files up to this size are redacted on upload


class StoreKeyError(RunError, ValueError):
    """A store key is malformed (empty, absolute, or with `..` or empty segments)."""


def default_endpoint_url() -> str | None:
    """The S3 endpoint for a non-AWS service (MinIO, moto), from `FLOTILLA_S3_ENDPOINT_URL`."""
    return get_settings().s3_endpoint_url or None


def check_key(key: str) -> str:
    """Return `key` if it is a safe relative store key, else raise StoreKeyError saying why."""
    if not isinstance(key, str) or not key:
        raise StoreKeyError(f"Store key {key!r} is empty. Use a '/'-separated relative path.")
    if key.startswith("/") or "\\" in key or "://" in key:
        raise StoreKeyError(
            f"Store key {key!r} is absolute or not '/'-separated. Keys are relative paths "
            "inside the store, such as 'runs/<run-key>/plan.json'."
        )
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise StoreKeyError(
                f"Store key {key!r} has an empty, '.' or '..' segment. Remove it; keys may "
                "not leave the store or name a directory twice."
            )
        if segment.startswith(_TMP_MARK):
            raise StoreKeyError(f"Store key {key!r} uses the reserved prefix {_TMP_MARK!r}.")
    return key


def _check_prefix(prefix: str) -> str:
    """Like check_key, but '' (the whole store) and a trailing '/' are allowed."""
    prefix = prefix.rstrip("/")
    return check_key(prefix) if prefix else ""


def check_segment(value: str, what: str) -> str:
    """A single path segment such as a run key or unit id (no '/')."""
    if "/" in value:
        raise StoreKeyError(f"The {what} {value!r} contains '/'. Use a single name.")
    return check_key(value)


class ArtifactStore:
    """Bytes, text, JSON and pydantic models under relative keys of one fsspec URL."""

    def __init__(self, url: str, *, endpoint_url: str | None = None):
        self.endpoint_url = endpoint_url if endpoint_url is not None else default_endpoint_url()
        self.protocol, self.url, self._root, self._fs = self._open(url or DEFAULT_STORE)
        self._local = self.protocol == "file"

    def _open(self, url: str) -> tuple[str, str, str, fsspec.AbstractFileSystem]:
        if "://" not in url:
            root = Path(url).expanduser().resolve()
            return "file", str(root), root.as_posix(), LocalFileSystem()
        protocol, rest = url.split("://", 1)
        if protocol == "file":
            if not rest.startswith("/"):
                raise RunError(
                    f"Store URL {url!r} is not absolute. Write file:///abs/path, or give a plain "
                    "(possibly relative) directory path instead."
                )
            root = Path(rest).resolve()
            return "file", f"file://{root.as_posix()}", root.as_posix(), LocalFileSystem()
        name = rest.strip("/")
        if not name:
            raise RunError(
                f"Store URL {url!r} names no bucket or location, e.g. s3://bucket/prefix."
            )
        if protocol == "s3":
            fs = fsspec.filesystem(
                "s3",
                endpoint_url=self.endpoint_url,
                skip_instance_cache=True,
                use_listings_cache=False,
                # fail fast into Flotilla's own retries (tasks.store_faults), which are bounded
                config_kwargs={"connect_timeout": 10, "retries": {"max_attempts": 2}},
            )
            return "s3", f"s3://{name}", name, fs
        if protocol == "memory":
            return "memory", f"memory://{name}", f"/{name}", fsspec.filesystem("memory")
        raise RunError(
            f"Store URL {url!r} uses the unsupported protocol {protocol!r}. Use "
            "s3://bucket/prefix, file:///abs/path, memory://name or a local directory."
        )

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    def __getstate__(self) -> dict[str, Any]:
        # Rebuild the filesystem in the receiving process instead of pickling live clients.
        return {"url": self.url, "endpoint_url": self.endpoint_url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], endpoint_url=state["endpoint_url"])  # type: ignore[misc]

    # -- paths ------------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        return f"{self._root}/{key}" if key else self._root

    def _key_of(self, path: str) -> str | None:
        path = self._fs._strip_protocol(path)
        head = f"{self._root}/"
        return path[len(head) :] if path.startswith(head) else None

    def uri(self, key: str) -> str:
        """The full URL (or local path) of `key`, for links in reports."""
        key = _check_prefix(key)
        return f"{self.url}/{key}" if key else self.url

    def _fresh(self) -> None:
        # Listings are uncached, but drop anything an fsspec call may have remembered anyway.
        if not self._local:
            self._fs.invalidate_cache()

    # -- writing ----------------------------------------------------------------------------

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write atomically: a temp file and os.replace locally, a single PUT on S3.

        Known secrets in `data` are written as `***` (flotilla.redaction).
        """
        path = self._path(check_key(key))
        data = redact_bytes(data)
        self._call("write", key, lambda: self._put(path, data))

    def _put(self, path: str, data: bytes) -> None:
        """The one place bytes are written (a hook for whatever must see them first)."""
        if self._local:
            _replace_with(Path(path), lambda tmp: tmp.write_bytes(data))
        elif self.protocol == "s3":
            self._fs.pipe_file(path, data, chunksize=_S3_SINGLE_PUT_LIMIT)
        else:
            self._fs.pipe_file(path, data)

    def _call(self, action: str, key: str, call: Any) -> Any:
        """`call()` with transient faults retried (bounded); other OSErrors said plainly."""
        try:
            return with_retries(call, self.url)
        except (FileExistsError, StoreUnavailable):
            raise
        except OSError as exc:
            raise self._unreachable(action, key, exc) from exc

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode("utf-8"))

    def write_json(self, key: str, obj: BaseModel | dict | list) -> None:
        if isinstance(obj, BaseModel):
            data = obj.model_dump_json(indent=2).encode("utf-8")
        else:
            data = to_json(obj, indent=2)
        self.write_bytes(key, data + b"\n")

    def create(self, key: str, data: bytes) -> bool:
        """Write `key` only if no object has it; True if this call created it (a claim).

        Exclusive locally (a hard link fails on an existing name) and on S3 (a conditional
        PUT with If-None-Match, which AWS, MinIO and moto honour). memory:// checks first.
        """
        path = self._path(check_key(key))

        def claim() -> None:
            if self._local:
                target = Path(path)
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f"{_TMP_MARK}{uuid.uuid4().hex}-{target.name}")
                try:
                    tmp.write_bytes(data)
                    os.link(tmp, target)
                finally:
                    tmp.unlink(missing_ok=True)
            elif self.protocol == "s3":
                self._fs.pipe_file(path, data, mode="create")
            elif self._fs.isfile(path):
                raise FileExistsError(path)
            else:
                self._fs.pipe_file(path, data)

        try:
            self._call("create", key, claim)
        except FileExistsError:
            return False  # after a lost answer, possibly our own earlier attempt: callers check
        return True

    def upload_file(self, key: str, local: Path) -> None:
        """Copy a local file into the store, atomically like write_bytes."""
        local = Path(local)
        if not local.is_file():
            raise RunError(f"Cannot upload {local} to {self.uri(key)}: it is not a file.")
        if local.stat().st_size <= _REDACT_UPLOADS_UP_TO:  # secrets are hidden here too
            data = local.read_bytes()
            if redact_bytes(data) != data:
                return self.write_bytes(key, data)
        path = self._path(check_key(key))

        def put() -> None:
            if self._local:
                _replace_with(Path(path), lambda tmp: shutil.copyfile(local, tmp))
            else:
                self._fs.put_file(str(local), path)

        self._call("upload", key, put)

    def upload_dir(self, prefix: str, local_dir: Path) -> list[str]:
        """Upload every file under `local_dir` to `prefix/<relative path>`; return the keys."""
        prefix = check_key(prefix.rstrip("/"))
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise RunError(f"Cannot upload {local_dir} to {self.uri(prefix)}: not a directory.")
        keys = []
        for file in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            key = check_key(f"{prefix}/{file.relative_to(local_dir).as_posix()}")
            self.upload_file(key, file)
            keys.append(key)
        return keys

    def _unreachable(self, action: str, key: str, exc: OSError) -> RunError:
        hint = (
            " Check that the bucket exists and the credentials allow it; for MinIO or moto set "
            "FLOTILLA_S3_ENDPOINT_URL."
            if self.protocol == "s3"
            else " Check that the store location exists and is writable."
        )
        return RunError(f"Could not {action} {self.uri(key)}: {exc}.{hint}")

    # -- reading ----------------------------------------------------------------------------

    def read_bytes(self, key: str) -> bytes:
        """The object's bytes; KeyError(key) when it does not exist."""
        path = self._path(check_key(key))
        self._fresh()

        def get() -> bytes:
            try:
                if self._local:
                    return Path(path).read_bytes()
                return self._fs.cat_file(path)
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                raise KeyError(key) from None

        return self._call("read", key, get)

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def read_json(self, key: str) -> Any:
        try:
            return json.loads(self.read_bytes(key))
        except ValueError as exc:
            raise RunError(
                f"{self.uri(key)} is not valid JSON ({exc}). Rewrite or delete it."
            ) from exc

    def read_model(self, key: str, model: type[M]) -> M:
        try:
            return model.model_validate_json(self.read_bytes(key))
        except ValidationError as exc:
            raise RunError(
                f"{self.uri(key)} is not a valid {model.__name__}: {exc}. It may come from an "
                "incompatible Flotilla version; rewrite or delete it."
            ) from exc

    def download_file(self, key: str, local: Path) -> None:
        """Copy an object to a local file (replaced atomically); KeyError(key) when missing."""
        path = self._path(check_key(key))
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        self._fresh()

        def get() -> None:
            try:
                _replace_with(local, lambda tmp: self._fs.get_file(path, str(tmp)))
            except (FileNotFoundError, IsADirectoryError):
                raise KeyError(key) from None

        self._call("download", key, get)

    def download_dir(self, prefix: str, local_dir: Path) -> list[str]:
        """Download every key under `prefix` to `local_dir/<relative path>`; return the keys."""
        prefix = check_key(prefix.rstrip("/"))
        keys = self.list(prefix)
        for key in keys:
            self.download_file(key, Path(local_dir) / key[len(prefix) + 1 :])
        return keys

    def exists(self, key: str) -> bool:
        """Whether an object is stored under exactly this key (prefixes do not count)."""
        path = self._path(check_key(key))
        if self._local:
            return os.path.isfile(path)
        self._fresh()

        def look() -> bool:
            try:  # not fs.isfile, which answers False when the store cannot be reached
                return self._fs.info(path).get("type") == "file"
            except FileNotFoundError:
                return False

        return self._call("check", key, look)

    def list(self, prefix: str = "") -> list[str]:
        """Keys under `prefix` (recursive, relative to the store root, sorted); [] if none."""
        prefix = _check_prefix(prefix)
        self._fresh()

        def find() -> list[str]:
            try:
                return self._fs.find(self._path(prefix), withdirs=False)
            except FileNotFoundError:
                return []

        found = self._call("list", prefix or ".", find)
        head = f"{prefix}/" if prefix else ""
        keys = []
        for path in found:
            key = self._key_of(path)
            name = (key or "/").rsplit("/", 1)[-1]
            if key and key.startswith(head) and name and not name.startswith(_TMP_MARK):
                keys.append(key)
        return sorted(keys)

    # -- moving and deleting ----------------------------------------------------------------

    def move(self, src_key: str, dst_key: str) -> None:
        """Move one object, or every object under a prefix; KeyError(src_key) if none."""
        check_key(src_key)
        check_key(dst_key)
        if self.exists(src_key):
            pairs = [(src_key, dst_key)]
        else:
            pairs = [(k, dst_key + k[len(src_key) :]) for k in self.list(src_key)]
            if not pairs:
                raise KeyError(src_key)
        for src, dst in pairs:
            src_path, dst_path = self._path(src), self._path(dst)
            if self._local:
                Path(dst_path).parent.mkdir(parents=True, exist_ok=True)
                os.replace(src_path, dst_path)
                self._prune(Path(src_path).parent)
            else:
                self._call("copy", src, lambda s=src_path, d=dst_path: self._fs.cp_file(s, d))
                self._call("remove", src, lambda s=src_path: self._fs.rm_file(s))

    def delete(self, key_or_prefix: str) -> None:
        """Delete an object and everything under it as a prefix; missing keys are fine."""
        key = check_key(key_or_prefix.rstrip("/"))
        path = self._path(key)
        if self._local:
            target = Path(path)
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            self._prune(target.parent)
            return
        paths = [self._path(k) for k in self.list(key)]
        if self.exists(key):
            paths.append(path)
        if paths:
            self._call("delete", key, lambda: self._fs.rm(paths))

    def _prune(self, directory: Path) -> None:
        """Remove empty local directories left behind, up to (not including) the root."""
        root = Path(self._root)
        while directory != root and root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent


def _replace_with(target: Path, write: Any) -> None:
    """Have `write(tmp)` fill a temp file next to `target`, then os.replace it into place."""
    tmp = target.with_name(f"{_TMP_MARK}{uuid.uuid4().hex}-{target.name}")
    try:
        try:
            write(tmp)
        except FileNotFoundError:  # the first write into this directory
            target.parent.mkdir(parents=True, exist_ok=True)
            write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


class RunStore:
    """The layout of one run inside the store (DESIGN.md, "Artifact store layout")."""

    def __init__(self, store: ArtifactStore, run_key: str):
        self.store = store
        self.run_key = check_segment(run_key, "run key")
        self.prefix = f"runs/{run_key}"
        self.request_key = f"{self.prefix}/request.json"
        self.plan_key = f"{self.prefix}/plan.json"
        self.feature_report_key = f"{self.prefix}/feature/report.md"
        self.pr_key = f"{self.prefix}/feature/pr.md"
        self.feature_tests_key = f"{self.prefix}/feature/tests.json"
        self.context_key = f"{self.prefix}/run.json"
        self.state_key = f"{self.prefix}/state.json"
        self.result_key = f"{self.prefix}/feature/result.json"

    def __repr__(self) -> str:
        return f"RunStore({self.store.uri(self.prefix)!r})"

    def ledger_key(self, unit: str) -> str:
        return f"{self.prefix}/ledger/{check_segment(unit, 'unit id')}.json"

    def checkpoint_key(self, n: int) -> str:
        return f"{self.prefix}/checkpoints/{int(n)}.json"

    def unit_prefix(self, unit: str) -> str:
        return f"{self.prefix}/units/{check_segment(unit, 'unit id')}"

    def outputs_prefix(self, unit: str) -> str:
        return f"{self.unit_prefix(unit)}/outputs"

    def output_key(self, unit: str, name: str) -> str:
        return check_key(f"{self.outputs_prefix(unit)}/{name}")

    def summary_key(self, unit: str) -> str:
        return f"{self.unit_prefix(unit)}/summary.md"

    def log_key(self, unit: str, attempt: int) -> str:
        return f"{self.unit_prefix(unit)}/logs/attempt-{int(attempt)}.log"

    def unit_tests_key(self, unit: str) -> str:
        return f"{self.unit_prefix(unit)}/tests.json"

    def write_record(self, rec: UnitRecord) -> None:
        self.store.write_json(self.ledger_key(rec.unit_id), rec)

    def read_record(self, unit: str) -> UnitRecord | None:
        try:
            return self.store.read_model(self.ledger_key(unit), UnitRecord)
        except KeyError:
            return None

    def read_ledger(self) -> dict[str, UnitRecord]:
        """Every unit's record in this run, by unit id (sorted)."""
        ledger = {}
        for key in self.store.list(f"{self.prefix}/ledger"):
            if not key.endswith(".json") or key.count("/") != 3:
                continue
            try:
                rec = self.store.read_model(key, UnitRecord)
            except KeyError:  # deleted between listing and reading
                continue
            ledger[rec.unit_id] = rec
        return ledger

    @staticmethod
    def list_runs(store: ArtifactStore) -> list[str]:
        return list_runs(store)


def list_runs(store: ArtifactStore) -> list[str]:
    """Run keys with anything stored under `runs/`, sorted."""
    return sorted({key.split("/")[1] for key in store.list("runs") if key.count("/") >= 2})
