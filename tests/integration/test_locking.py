"""The run lock: one writer per run key, on a local store, memory:// and moto S3."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from flotilla.errors import RunLocked
from flotilla.results import utcnow
from tasks.locking import LockInfo, RunLock, hold_run_lock
from tasks.store import ArtifactStore, RunStore
from tests.integration.test_store import make_url


@pytest.fixture(params=["local", "memory", "s3"])
def runs(request: pytest.FixtureRequest, tmp_path: Path) -> RunStore:
    moto = request.getfixturevalue("moto_s3") if request.param == "s3" else None
    store = ArtifactStore(
        make_url(request.param, tmp_path, moto), endpoint_url=moto and moto.endpoint_url
    )
    return RunStore(store, "key")


def test_a_second_writer_is_refused_naming_the_holder(runs: RunStore) -> None:
    with RunLock(runs, "flotilla run", ttl_s=30), pytest.raises(RunLocked) as refused:
        RunLock(runs, "flotilla resume", ttl_s=30).acquire()
    message = str(refused.value)
    assert "Run key is already running" in message
    assert f"pid {os.getpid()}" in message and "flotilla pause key" in message
    assert "\n" not in message and refused.value.exit_code == 6
    # released: the next writer gets it, as the next generation
    with RunLock(runs, "flotilla resume", ttl_s=30) as again:
        assert again.info is not None and again.info.generation == 2
    assert runs.store.list(f"{runs.prefix}/lock") == [f"{runs.prefix}/lock/2.json"]


def test_of_many_writers_at_once_exactly_one_wins(runs: RunStore) -> None:
    won, refused = [], []
    start = threading.Barrier(6)

    def contend() -> None:
        lock = RunLock(runs, "flotilla run", ttl_s=30)
        start.wait()
        try:
            lock.acquire()
            won.append(lock)
        except RunLocked:
            refused.append(lock)

    threads = [threading.Thread(target=contend) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and len(refused) == 5
    won[0].release()


def test_the_heartbeat_keeps_a_live_lock_from_expiring(runs: RunStore) -> None:
    with RunLock(runs, "flotilla run", ttl_s=0.4) as lock:
        first = lock.info.heartbeat_at
        time.sleep(1.0)  # more than twice the ttl: only the heartbeat keeps it alive
        with pytest.raises(RunLocked):
            RunLock(runs, "flotilla run", ttl_s=0.4).acquire()
        stored = runs.store.read_model(lock.key(lock.info.generation), LockInfo)
        assert stored.heartbeat_at > first


def test_a_stale_lock_of_a_machine_gone_silent_expires(runs: RunStore) -> None:
    old = utcnow() - timedelta(seconds=120)
    stale = LockInfo(
        run_key="key",
        generation=7,
        token="t",
        command="flotilla run",
        host="another-machine",
        pid=4242,
        started_at=old,
        heartbeat_at=old,
        ttl_s=60,
    )
    runs.store.write_json(f"{runs.prefix}/lock/7.json", stale)
    with RunLock(runs, "flotilla resume", ttl_s=60) as lock:
        assert lock.info.generation == 8
    # but the same lock with a fresh heartbeat is honoured, though its host is unknown here
    runs.store.delete(f"{runs.prefix}/lock")
    runs.store.write_json(
        f"{runs.prefix}/lock/1.json", stale.model_copy(update={"heartbeat_at": utcnow()})
    )
    with pytest.raises(RunLocked, match="pid 4242 on another-machine"):
        RunLock(runs, "flotilla resume", ttl_s=60).acquire()


def test_a_dead_holder_on_this_machine_frees_the_lock_at_once(tmp_path: Path) -> None:
    runs = RunStore(ArtifactStore(str(tmp_path / "store")), "key")
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys; from tasks.store import *; from tasks.locking import RunLock; "
            f"RunLock(RunStore(ArtifactStore({str(tmp_path / 'store')!r}), 'key'), 'x', "
            "ttl_s=3600).acquire(); os._exit(9)",  # killed: no release
        ],
        cwd=Path(__file__).parents[2],
        check=False,
    )
    assert child.returncode == 9
    with RunLock(runs, "flotilla resume", ttl_s=3600) as lock:
        assert lock.info.generation == 2


def test_holding_is_reentrant_within_one_process(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    with hold_run_lock(url, "key", "flotilla run") as outer:
        with hold_run_lock(url, "key", "the feature flow") as inner:
            assert inner is outer
        assert outer.info is not None  # the inner exit did not release it
    runs = RunStore(ArtifactStore(url), "key")
    assert runs.store.read_model(f"{runs.prefix}/lock/1.json", LockInfo).released
