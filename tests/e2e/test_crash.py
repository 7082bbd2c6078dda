"""`kill -9` of the orchestrator mid-run, then `flotilla resume`: nothing finished is redone,
units in flight start again from a clean worktree, and the feature tree is what an
uninterrupted run makes. With the store on a local directory and on S3 (moto).

The orchestrator runs as a real subprocess talking to the session's Prefect API, so the flow
run it leaves RUNNING can be checked, and seen marked Crashed, through that API.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from prefect import get_client
from prefect.client.schemas.objects import StateType

from flotilla.results import RunState, RunSummary, UnitStatus
from tasks.liveness import process_alive
from tasks.store import ArtifactStore, RunStore
from tests.e2e.durability_helpers import (
    cli,
    durable_request,
    invocations,
    kill_leftovers,
    ledger_of,
    marker_pid,
    run_args,
    start_orchestrator,
    wait_for,
)
from tests.e2e.helpers import git, make_target

FAST, SLOW = ("fast-a", "fast-b"), ("slow-c", "slow-d")


def units(hold: Path) -> list[dict]:
    """Two quick roots, two roots that hold on their first run, one unit after both kinds."""
    held = {"HOLD_FILE": str(hold)}
    return [
        {"id": "fast-a", "env": {}},
        {"id": "fast-b", "env": {}},
        {"id": "slow-c", "env": held},
        {"id": "slow-d", "env": held},
        {"id": "join", "depends_on": ["fast-a", "slow-c"]},
    ]


@pytest.fixture(scope="module")
def reference_tree(tmp_path_factory) -> str:
    """The feature tree of the same request, run without interruption."""
    base = tmp_path_factory.mktemp("reference")
    hold = base / "released"
    hold.touch()  # nobody holds
    request = durable_request(base, units(hold), base / "markers")
    target = make_target(base / "target")
    assert cli(*run_args(request, target, str(base / "store"), base / "work", "ref")) == 0
    return git(target, "rev-parse", "flotilla/durable^{tree}")


def crash_and_resume(tmp_path: Path, store: str, env: dict[str, str], reference: str) -> None:
    target = make_target(tmp_path / "target")
    markers = tmp_path / "markers"
    request = durable_request(tmp_path, units(tmp_path / "never-released"), markers)
    log = tmp_path / "orchestrator.log"
    proc = start_orchestrator(
        run_args(request, target, store, tmp_path / "work", "crash"), env, log
    )
    orphans: list[int] = []
    try:

        def some_done_some_running() -> bool:
            ledger = ledger_of(store, "crash")
            done = all(u in ledger and ledger[u].status == UnitStatus.SUCCEEDED for u in FAST)
            held = all((markers / f"{u}.1").exists() for u in SLOW)
            return done and held

        wait_for(
            "two units done and two agents running", some_done_some_running, proc=proc, log=log
        )
        orphans = [marker_pid(markers, u) for u in SLOW]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

        runs = RunStore(ArtifactStore(store), "crash")
        summary = runs.store.read_model(runs.state_key, RunSummary)
        assert summary.state == RunState.RUNNING and summary.pid == proc.pid
        with get_client(sync_client=True) as client:
            assert client.read_flow_run(summary.flow_run_id).state.type == StateType.RUNNING
        ledger = runs.read_ledger()
        assert {ledger[u].status for u in SLOW} == {UnitStatus.RUNNING}
        assert all(process_alive(pid) for pid in orphans)  # the agents outlived their parent

        assert cli("resume", "crash", "--store", store) == 0

        # succeeded units ran once over both runs; the two in flight ran again; join once
        assert invocations(markers) == {
            "fast-a": 1,
            "fast-b": 1,
            "slow-c": 2,
            "slow-d": 2,
            "join": 1,
        }
        wait_for("the orphaned agents to die", lambda: not any(map(process_alive, orphans)))
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(summary.flow_run_id).state
        assert state.type == StateType.CRASHED
        assert git(target, "rev-parse", "flotilla/durable^{tree}") == reference
        after = runs.store.read_model(runs.state_key, RunSummary)
        assert after.state == RunState.SUCCEEDED and after.resumes == 1
        assert after.base_commit == summary.base_commit
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_leftovers(orphans)


def test_kill_9_then_resume_redoes_only_the_units_in_flight(tmp_path, reference_tree):
    crash_and_resume(tmp_path, str(tmp_path / "store"), {}, reference_tree)


def test_kill_9_then_resume_with_the_store_on_s3(
    tmp_path, monkeypatch, moto_s3, s3_store_url, reference_tree
):
    monkeypatch.setenv("FLOTILLA_S3_ENDPOINT_URL", moto_s3.endpoint_url)
    crash_and_resume(tmp_path, s3_store_url, moto_s3.env, reference_tree)
