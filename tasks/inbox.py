"""The nightly inbox: feature requests queued under the store's `inbox/` prefix.

A request is either one YAML file, `inbox/<name>.yaml`, or a folder, `inbox/<name>/request.yaml`
with the files it refers to through `{request_dir}` (agent scripts, prompts) beside it. It moves
`inbox/` -> `running/` -> `done/` or `failed/`, and gets a `<stem>.result.json` next to it that
says which run it became and where its report is. Before anything else a runner claims it with
`running/<name>.claim.json`, written only if no claim exists (an exclusive create), so two
nightly runs never start the same request.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, Field

from flotilla.results import utcnow
from tasks.store import ArtifactStore

INBOX, RUNNING, DONE, FAILED = "inbox", "running", "done", "failed"
REQUEST_SUFFIXES = (".yaml", ".yml")
FOLDER_REQUEST = "request.yaml"


class Claim(BaseModel):
    """Who is running a request; stored at `running/<name>.claim.json` while it runs."""

    name: str
    flow_run_id: str = ""
    host: str = Field(default_factory=socket.gethostname)
    pid: int = Field(default_factory=os.getpid)
    claimed_at: datetime = Field(default_factory=utcnow)


class InboxResult(BaseModel):
    """`<done|failed>/<stem>.result.json`: what became of one queued request."""

    request: str = Field(description="The request's file name in the inbox.")
    state: Literal["succeeded", "failed", "invalid"]
    request_key: str = Field(description="Where the request file is now (done/ or failed/).")
    run_key: str = ""
    feature_id: str = ""
    pr_path: str = ""
    pr_url: str = ""
    report: str = Field("", description="The run's report in the store (report.md or PR.md).")
    run: str = Field("", description="The run's folder in the store.")
    flow_run_id: str = ""
    error: str = ""
    claimed_at: datetime | None = None
    finished_at: datetime = Field(default_factory=utcnow)


class Inbox:
    """The inbox/, running/, done/ and failed/ prefixes of one store."""

    def __init__(self, store: ArtifactStore):
        self.store = store

    def waiting(self) -> list[str]:
        """The requests under `inbox/`: file names (`a.yaml`) and folder names (`b`), sorted."""
        names = []
        for key in self.store.list(INBOX):
            parts = key[len(INBOX) + 1 :].split("/")
            single = len(parts) == 1 and parts[0].endswith(REQUEST_SUFFIXES)
            if single or parts[1:] == [FOLDER_REQUEST]:
                names.append(parts[0])
        return sorted(names)

    def claim_key(self, name: str) -> str:
        return f"{RUNNING}/{name}.claim.json"

    def holder(self, name: str) -> Claim | None:
        """The claim on `name`, if a run holds it."""
        try:
            return self.store.read_model(self.claim_key(name), Claim)
        except KeyError:
            return None

    def claim(self, name: str, flow_run_id: str = "") -> Claim | None:
        """Take `name` out of the inbox for this run; None if another run holds or took it."""
        claim = Claim(name=name, flow_run_id=flow_run_id)
        data = claim.model_dump_json(indent=2).encode() + b"\n"
        if not self.store.create(self.claim_key(name), data):
            return None
        try:
            self.store.move(f"{INBOX}/{name}", f"{RUNNING}/{name}")
        except KeyError:  # another run took and finished it since we listed the inbox
            self.store.delete(self.claim_key(name))
            return None
        return claim

    def download(self, name: str, directory: Path) -> Path:
        """The claimed request as a local file (with its folder's files), for the feature flow."""
        local = Path(directory) / name
        if is_folder(name):
            self.store.download_dir(f"{RUNNING}/{name}", local)
            return local / FOLDER_REQUEST
        self.store.download_file(f"{RUNNING}/{name}", local)
        return local

    def finish(self, name: str, result: InboxResult) -> InboxResult:
        """File the request under done/ or failed/ with its result, then drop the claim."""
        folder = DONE if result.state == "succeeded" else FAILED
        target = self._free_name(folder, name)
        self.store.move(f"{RUNNING}/{name}", f"{folder}/{target}")
        filed = {"request_key": self.store.uri(f"{folder}/{target}"), "finished_at": utcnow()}
        result = result.model_copy(update=filed)
        self.store.write_json(f"{folder}/{result_name(target)}", result)
        self.store.delete(self.claim_key(name))
        return result

    def _free_name(self, folder: str, name: str) -> str:
        """`name`, or `<stem>-<n><suffix>` when an earlier request of that name was filed."""
        path = PurePosixPath(name)
        stem, suffix = (name, "") if is_folder(name) else (path.stem, path.suffix)
        candidate, n = name, 2
        while self._taken(folder, candidate):
            candidate, n = f"{stem}-{n}{suffix}", n + 1
        return candidate

    def _taken(self, folder: str, name: str) -> bool:
        keys = (f"{folder}/{name}", f"{folder}/{result_name(name)}")
        return any(self.store.exists(k) or self.store.list(k) for k in keys)


def is_folder(name: str) -> bool:
    """Whether an inbox entry is a folder (`<name>/request.yaml`) rather than one file."""
    return not name.endswith(REQUEST_SUFFIXES)


def result_name(name: str) -> str:
    """`<stem>.result.json` for a request file `<stem>.yaml` or a request folder `<stem>`."""
    return f"{name if is_folder(name) else PurePosixPath(name).stem}.result.json"
