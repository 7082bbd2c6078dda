"""ArtifactStore and RunStore against a local directory, fsspec memory:// and moto S3."""

from __future__ import annotations

import json
import pickle
import threading
import uuid
from pathlib import Path

import pytest
from pydantic import BaseModel

from flotilla.errors import RunError
from flotilla.results import TestReport, UnitRecord, UnitStatus
from tasks.store import ArtifactStore, RunStore, StoreKeyError, list_runs
from tests.integration.s3 import MotoS3

BACKENDS = ["local", "memory", "s3"]


class Note(BaseModel):
    title: str
    tags: list[str] = []


def make_url(kind: str, tmp_path: Path, moto_s3: MotoS3 | None) -> str:
    if kind == "local":
        return str(tmp_path / "store")
    if kind == "memory":
        return f"memory://test-{uuid.uuid4().hex[:12]}"
    assert moto_s3 is not None
    return moto_s3.url(f"test-{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    moto = request.getfixturevalue("moto_s3") if request.param == "s3" else None
    return make_url(request.param, tmp_path, moto)


@pytest.fixture
def store(store_url: str, request: pytest.FixtureRequest) -> ArtifactStore:
    endpoint = request.getfixturevalue("moto_s3").endpoint_url if "s3://" in store_url else None
    return ArtifactStore(store_url, endpoint_url=endpoint)


def test_text_json_and_model_round_trip(store: ArtifactStore) -> None:
    store.write_text("a/hello.txt", "héllo\n")
    store.write_json("a/data.json", {"n": 1, "items": [1, 2]})
    store.write_json("a/list.json", [1, "two"])
    store.write_json("a/note.json", Note(title="t", tags=["x"]))
    store.write_bytes("a/raw.bin", b"\x00\xff")

    assert store.read_text("a/hello.txt") == "héllo\n"
    assert store.read_json("a/data.json") == {"n": 1, "items": [1, 2]}
    assert store.read_json("a/list.json") == [1, "two"]
    assert store.read_model("a/note.json", Note) == Note(title="t", tags=["x"])
    assert store.read_bytes("a/raw.bin") == b"\x00\xff"

    store.write_text("a/hello.txt", "replaced")
    assert store.read_text("a/hello.txt") == "replaced"


def test_list_and_exists(store: ArtifactStore) -> None:
    for key in ["runs/r1/plan.json", "runs/r1/ledger/u1.json", "runs/r10/plan.json", "top.txt"]:
        store.write_text(key, key)

    assert store.list("runs/r1") == ["runs/r1/ledger/u1.json", "runs/r1/plan.json"]
    assert store.list("runs/r1/") == store.list("runs/r1")
    assert store.list("runs") == [
        "runs/r1/ledger/u1.json",
        "runs/r1/plan.json",
        "runs/r10/plan.json",
    ]
    assert store.list("") == [*store.list("runs"), "top.txt"]
    assert store.list("nothing/here") == []
    assert store.list("top.txt") == []  # an object is not a prefix

    assert store.exists("runs/r1/plan.json")
    assert not store.exists("runs/r1")  # a prefix is not an object
    assert not store.exists("runs/r1/missing.json")


def test_missing_key_raises_key_error(store: ArtifactStore, tmp_path: Path) -> None:
    store.write_text("dir/present.txt", "x")
    for read in (store.read_bytes, store.read_text, store.read_json):
        with pytest.raises(KeyError) as info:
            read("dir/absent.json")
        assert info.value.args == ("dir/absent.json",)
    with pytest.raises(KeyError):
        store.read_model("dir", Note)  # a prefix, not an object
    with pytest.raises(KeyError):
        store.download_file("dir/absent.json", tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


def test_invalid_stored_content_raises_run_error(store: ArtifactStore) -> None:
    store.write_text("bad.json", '{"title": ')
    with pytest.raises(RunError, match="not valid JSON"):
        store.read_json("bad.json")
    store.write_json("wrong.json", {"tags": "not a list"})
    with pytest.raises(RunError, match="not a valid Note"):
        store.read_model("wrong.json", Note)


def test_upload_and_download_files_and_dirs(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "nested" / "deeper").mkdir(parents=True)
    (src / "a.txt").write_text("A")
    (src / "nested" / "b.json").write_text('{"b": 2}')
    (src / "nested" / "deeper" / "c.bin").write_bytes(b"\x01" * 1000)

    keys = store.upload_dir("units/u1/outputs", src)
    assert keys == [
        "units/u1/outputs/a.txt",
        "units/u1/outputs/nested/b.json",
        "units/u1/outputs/nested/deeper/c.bin",
    ]
    assert store.read_json("units/u1/outputs/nested/b.json") == {"b": 2}

    dst = tmp_path / "dst"
    assert store.download_dir("units/u1/outputs", dst) == keys
    for file in src.rglob("*"):
        if file.is_file():
            assert (dst / file.relative_to(src)).read_bytes() == file.read_bytes()

    store.upload_file("logs/attempt-1.log", src / "a.txt")
    store.download_file("logs/attempt-1.log", tmp_path / "fetched" / "log.txt")
    assert (tmp_path / "fetched" / "log.txt").read_text() == "A"
    assert store.download_dir("no/such/prefix", tmp_path / "empty") == []
    with pytest.raises(RunError, match="not a file"):
        store.upload_file("x", tmp_path / "missing.txt")


def test_move_object_and_prefix(store: ArtifactStore) -> None:
    store.write_text("inbox/req.yaml", "title: x")
    store.move("inbox/req.yaml", "done/req.yaml")
    assert not store.exists("inbox/req.yaml")
    assert store.read_text("done/req.yaml") == "title: x"

    store.write_text("tmp/run/a.txt", "a")
    store.write_text("tmp/run/sub/b.txt", "b")
    store.move("tmp/run", "kept/run")
    assert store.list("tmp") == []
    assert store.list("kept") == ["kept/run/a.txt", "kept/run/sub/b.txt"]

    with pytest.raises(KeyError):
        store.move("inbox/req.yaml", "failed/req.yaml")


def test_delete_object_and_prefix(store: ArtifactStore) -> None:
    for key in ["d/one.txt", "d/sub/two.txt", "d10/keep.txt"]:
        store.write_text(key, "x")
    store.delete("d/one.txt")
    assert not store.exists("d/one.txt")
    assert store.exists("d/sub/two.txt")

    store.delete("d")
    assert store.list("d") == []
    assert store.list("d10") == ["d10/keep.txt"]  # a sibling sharing the name's start survives
    store.delete("d")  # deleting what is gone is fine
    store.delete("never/was")


@pytest.mark.parametrize(
    "bad",
    ["", "/abs", "a//b", "a/../b", "..", "./a", "a/.", "a\\b", "s3://x/y", "a/.flotilla-tmp-1"],
)
def test_bad_keys_are_rejected(store: ArtifactStore, bad: str) -> None:
    with pytest.raises(StoreKeyError, match="Store key"):
        store.write_text(bad, "x")
    with pytest.raises(ValueError):  # StoreKeyError is a ValueError and a RunError
        store.read_text(bad)
    if bad:  # '' is the whole store for list()
        with pytest.raises(StoreKeyError):
            store.list(bad)


def test_run_store_layout_and_ledger(store: ArtifactStore) -> None:
    run = RunStore(store, "feat-1")
    assert run.prefix == "runs/feat-1"
    assert run.ledger_key("u1") == "runs/feat-1/ledger/u1.json"
    assert run.checkpoint_key(3) == "runs/feat-1/checkpoints/3.json"
    assert run.output_key("u1", "api.md") == "runs/feat-1/units/u1/outputs/api.md"
    assert run.log_key("u1", 2) == "runs/feat-1/units/u1/logs/attempt-2.log"
    assert run.summary_key("u1") == "runs/feat-1/units/u1/summary.md"
    assert run.unit_tests_key("u1") == "runs/feat-1/units/u1/tests.json"
    assert run.feature_report_key == "runs/feat-1/feature/report.md"
    assert run.pr_key == "runs/feat-1/feature/pr.md"
    assert run.feature_tests_key == "runs/feat-1/feature/tests.json"
    with pytest.raises(StoreKeyError):
        run.ledger_key("a/b")
    with pytest.raises(StoreKeyError):
        RunStore(store, "../escape")

    assert run.read_record("u1") is None
    assert run.read_ledger() == {}
    done = UnitRecord(
        unit_id="u1",
        status=UnitStatus.SUCCEEDED,
        attempts=2,
        files_changed=["a.py"],
        tests=TestReport(command="pytest", exit_code=0, passed=3),
    )
    run.write_record(done)
    run.write_record(UnitRecord(unit_id="u2", status=UnitStatus.RUNNING))
    store.write_text(run.log_key("u1", 1), "log")  # not part of the ledger

    assert run.read_record("u1") == done
    assert list(run.read_ledger()) == ["u1", "u2"]
    assert run.read_ledger()["u2"].status is UnitStatus.RUNNING

    RunStore(store, "feat-0").write_record(UnitRecord(unit_id="x"))
    assert list_runs(store) == ["feat-0", "feat-1"]
    assert RunStore.list_runs(store) == ["feat-0", "feat-1"]


def test_two_stores_see_each_others_writes_at_once(store: ArtifactStore, store_url: str) -> None:
    """Two instances stand for two processes: no listing cache may hide the other's writes."""
    other = ArtifactStore(store_url, endpoint_url=store.endpoint_url)
    assert other.list("runs") == [] and not other.exists("runs/r/ledger/u.json")

    store.write_json("runs/r/ledger/u.json", {"v": 1})
    assert other.exists("runs/r/ledger/u.json")
    assert other.list("runs") == ["runs/r/ledger/u.json"]  # listings a cache would keep
    assert store.list("runs") == ["runs/r/ledger/u.json"]
    assert other.read_json("runs/r/ledger/u.json") == {"v": 1}

    store.write_json("runs/r/ledger/u.json", {"v": 2})
    store.write_json("runs/r/ledger/w.json", {"v": 1})
    assert other.exists("runs/r/ledger/w.json")
    assert other.read_json("runs/r/ledger/u.json") == {"v": 2}
    assert other.list("runs/r") == ["runs/r/ledger/u.json", "runs/r/ledger/w.json"]

    other.delete("runs/r/ledger/u.json")
    assert not store.exists("runs/r/ledger/u.json")
    assert store.list("runs") == ["runs/r/ledger/w.json"]


@pytest.mark.parametrize("kind", BACKENDS)
def test_readers_never_see_a_half_written_ledger(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    moto = request.getfixturevalue("moto_s3") if kind == "s3" else None
    url = make_url(kind, tmp_path, moto)
    writer = ArtifactStore(url, endpoint_url=moto.endpoint_url if moto else None)
    reader = ArtifactStore(url, endpoint_url=moto.endpoint_url if moto else None)
    key = "runs/r/ledger/u.json"

    def payload(n: int) -> dict:
        return {"n": n, "blob": [f"{n}-{i}" * 8 for i in range(20_000)]}  # about 1.5 MB

    writer.write_json(key, payload(0))
    done = threading.Event()
    seen: list[int] = []
    problems: list[str] = []

    def read_loop() -> None:
        while not (done.is_set() and (seen or problems)):
            try:
                obj = json.loads(reader.read_bytes(key))
            except Exception as exc:  # noqa: BLE001 - every failure is a finding here
                problems.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                continue
            if obj != payload(obj["n"]):
                problems.append(f"record {obj['n']} is mixed with another write")
            seen.append(obj["n"])

    thread = threading.Thread(target=read_loop)
    thread.start()
    try:
        for n in range(1, 16):
            writer.write_json(key, payload(n))
    finally:
        done.set()
        thread.join()

    assert problems == []
    assert seen == sorted(seen)  # never goes back to an older version
    assert reader.read_json(key)["n"] == 15
    if kind == "local":
        leftovers = [p.name for p in (tmp_path / "store").rglob("*") if p.is_file()]
        assert leftovers == ["u.json"]  # no temp files left behind


def test_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = ArtifactStore("rel/store")
    assert relative.url == str(tmp_path / "rel" / "store")
    relative.write_text("k.txt", "v")
    assert (tmp_path / "rel" / "store" / "k.txt").read_text() == "v"
    assert relative.uri("a/b.md") == f"{tmp_path}/rel/store/a/b.md"

    as_file_url = ArtifactStore(f"file://{tmp_path}/rel/store/")
    assert as_file_url.url == f"file://{tmp_path}/rel/store"
    assert as_file_url.read_text("k.txt") == "v"
    assert as_file_url.uri("k.txt") == f"file://{tmp_path}/rel/store/k.txt"

    assert ArtifactStore("memory://m/x/").uri("k") == "memory://m/x/k"
    assert ArtifactStore("s3://bucket/p/", endpoint_url="http://127.0.0.1:1").url == "s3://bucket/p"
    with pytest.raises(RunError, match="not absolute"):
        ArtifactStore("file://relative/path")
    with pytest.raises(RunError, match="names no bucket"):
        ArtifactStore("s3://")
    with pytest.raises(RunError, match="unsupported protocol .nosuchproto."):
        ArtifactStore("nosuchproto://x")


def test_s3_endpoint_from_environment_and_pickling(
    moto_s3: MotoS3, s3_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOTILLA_S3_ENDPOINT_URL", moto_s3.endpoint_url)
    store = ArtifactStore(s3_store_url)
    assert store.endpoint_url == moto_s3.endpoint_url
    store.write_text("a.txt", "through the env endpoint")

    monkeypatch.delenv("FLOTILLA_S3_ENDPOINT_URL")
    clone = pickle.loads(pickle.dumps(store))  # what a Prefect task parameter goes through
    assert clone.url == store.url and clone.endpoint_url == moto_s3.endpoint_url
    assert clone.read_text("a.txt") == "through the env endpoint"


def test_s3_missing_bucket_is_a_clear_error(moto_s3: MotoS3) -> None:
    store = ArtifactStore("s3://no-such-bucket/p", endpoint_url=moto_s3.endpoint_url)
    with pytest.raises(RunError, match="s3://no-such-bucket/p/k.txt.*bucket exists"):
        store.write_text("k.txt", "x")
