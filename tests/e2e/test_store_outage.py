"""A run whose S3 store goes away: a 5 s outage costs nothing; an outage for good ends the run
in one line, and `flotilla resume` carries it on once the store is back.

The store is moto's S3 server behind a TCP proxy on 127.0.0.1 (cut and restored by the test);
the orchestrator is a real subprocess, so its whole output can be read.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flotilla.results import UnitStatus
from tasks.store import ArtifactStore, RunStore
from tests.e2e.durability_helpers import (
    cli,
    durable_request,
    invocations,
    run_args,
    start_orchestrator,
    wait_for,
)
from tests.e2e.helpers import git, make_target
from tests.integration.s3 import MotoS3
from tests.integration.tcp_proxy import TcpProxy


@pytest.fixture
def proxy(moto_s3: MotoS3) -> Iterator[TcpProxy]:
    host, port = moto_s3.endpoint_url.removeprefix("http://").rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    yield proxy
    proxy.close()


def units(hold: Path) -> list[dict]:
    return [
        {"id": "quick", "env": {}},
        {"id": "held", "env": {"HOLD_FILE": str(hold)}},
        {"id": "after", "depends_on": ["held"]},
    ]


def start(tmp_path: Path, store: str, env: dict[str, str], key: str):
    target = make_target(tmp_path / "target")
    markers = tmp_path / "markers"
    request = durable_request(tmp_path, units(tmp_path / "release"), markers)
    log = tmp_path / "run.log"
    proc = start_orchestrator(run_args(request, target, store, tmp_path / "work", key), env, log)
    wait_for("the held agent to start", lambda: (markers / "held.1").exists(), proc=proc, log=log)
    return proc, target, markers, log


def test_a_five_second_store_outage_costs_nothing(tmp_path, moto_s3, s3_store_url, proxy):
    env = {**moto_s3.env, "FLOTILLA_S3_ENDPOINT_URL": proxy.url}
    proc, target, markers, log = start(tmp_path, s3_store_url, env, "blip")
    try:
        proxy.cut()
        (tmp_path / "release").touch()  # the unit ends, and writes its result, while cut
        time.sleep(5.0)
        proxy.restore()
        assert proc.wait(timeout=300) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert invocations(markers) == {"quick": 1, "held": 1, "after": 1}
    assert "Traceback" not in log.read_text()
    assert git(target, "rev-parse", "--verify", "flotilla/durable") != ""


def test_a_store_gone_for_good_is_one_line_and_resume_carries_on(
    tmp_path, moto_s3, s3_store_url, proxy, monkeypatch
):
    env = {**moto_s3.env, "FLOTILLA_S3_ENDPOINT_URL": proxy.url, "FLOTILLA_STORE_RETRY_S": "3"}
    proc, target, markers, log = start(tmp_path, s3_store_url, env, "gone")
    runs = RunStore(ArtifactStore(s3_store_url, endpoint_url=moto_s3.endpoint_url), "gone")

    def quick_done() -> bool:
        record = runs.read_record("quick")
        return record is not None and record.status == UnitStatus.SUCCEEDED

    try:
        wait_for("unit quick to succeed", quick_done, proc=proc, log=log)
        proxy.cut()
        (tmp_path / "release").touch()
        assert proc.wait(timeout=300) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "Traceback" not in text
    said = [line for line in text.splitlines() if "nothing was lost" in line]
    assert said == [
        next(line for line in said if line.startswith(f"store {s3_store_url} unreachable for "))
    ]
    assert said[0].endswith("; nothing was lost: `flotilla resume gone` once it is back")

    proxy.restore()
    monkeypatch.setenv("FLOTILLA_S3_ENDPOINT_URL", proxy.url)
    for name, value in moto_s3.env.items():
        monkeypatch.setenv(name, value)
    assert cli("resume", "gone", "--store", s3_store_url) == 0
    assert invocations(markers)["quick"] == 1  # finished work survived the outage
    assert set(invocations(markers)) == {"quick", "held", "after"}
    assert {r.status for r in runs.read_ledger().values()} == {UnitStatus.SUCCEEDED}
    assert git(target, "rev-parse", "--verify", "flotilla/durable") != ""
