"""A server restart is survived, and a stage's final state matches its units.

Units in flight when a real `prefect server start` process is killed and started again (same
port, same PREFECT_HOME: its database survives, its in-memory leases do not) carry on: the
orchestrator's next lease renewal gets 410 Gone, takes the slot again, and the run ends
Completed with no slot left taken.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.client.schemas.objects import StateType

from flotilla.results import RunSummary
from tasks.store import ArtifactStore, RunStore
from tests.e2e.durability_helpers import (
    REPO_ROOT,
    cli,
    durable_request,
    invocations,
    kill_leftovers,
    marker_pid,
    run_args,
    wait_for,
)
from tests.e2e.helpers import make_target
from tests.e2e.servers import PrefectServer


@pytest.mark.slow
def test_units_in_flight_carry_on_through_a_server_restart(tmp_path):
    server = PrefectServer(tmp_path).start()
    markers, store, key = tmp_path / "markers", str(tmp_path / "store"), "restart"
    release = tmp_path / "released"
    hold = {"HOLD_FILE": str(release)}
    units = [
        {"id": "a", "env": hold, "resources": "solo"},
        {"id": "b", "env": hold, "resources": "solo"},
        {"id": "c", "env": {}, "resources": "solo", "depends_on": ["a"]},
    ]
    request = durable_request(tmp_path, units, markers, extra={"resources": {"solo": 2}})
    target = make_target(tmp_path / "target")
    log = tmp_path / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flotilla.cli",
                *run_args(request, target, store, tmp_path / "w", key),
            ],
            cwd=REPO_ROOT,
            env=server.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    agents: list[int] = []
    try:
        wait_for(
            "both solo units running",
            lambda: all((markers / f"{u}.1").exists() for u in ("a", "b")),
            proc=proc,
            log=log,
        )
        agents = [marker_pid(markers, u) for u in ("a", "b")]
        assert server.active_slots("solo") == 2

        server.kill()
        server.start()
        wait_for(
            "a lease renewal to find its lease gone",
            lambda: "410 Gone" in log.read_text(),
            proc=proc,
            log=log,
        )
        release.touch()

        assert proc.wait(timeout=300) == 0, log.read_text()
        assert invocations(markers) == {"a": 1, "b": 1, "c": 1}  # carried on, not redone
        assert server.active_slots("solo") == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_leftovers(agents)
        server.stop()


def test_the_implement_stage_ends_failed_when_a_unit_failed(tmp_path):
    markers, store = tmp_path / "markers", str(tmp_path / "store")
    units = [
        {"id": "good", "env": {}},
        {"id": "bad", "env": {"FAIL_UNLESS": str(tmp_path / "never")}},
    ]
    request = durable_request(tmp_path, units, markers)
    target = make_target(tmp_path / "target")

    assert cli(*run_args(request, target, store, tmp_path / "work", "stage-state")) == 1

    runs = RunStore(ArtifactStore(store), "stage-state")
    summary = runs.store.read_model(runs.state_key, RunSummary)
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[summary.flow_run_id])
            )
        )
        stages = {client.read_flow(run.flow_id).name: run.state for run in children}
    assert stages["implement"].type == StateType.FAILED
    assert stages["implement"].message == "1 unit(s) failed: bad"
