"""A run never hangs: SIGTERM and SIGINT stop it within 10 s with its agents killed, and a Prefect
API that goes away stops it after FLOTILLA_API_WAIT_S with one line and exit 4; `flotilla resume`
finishes it once the server is back.

The orchestrator is a real `flotilla run` process; the outage test kills a real `prefect server
start` process mid-run and starts it again on the same port and PREFECT_HOME.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from flotilla.results import RunState, RunSummary, UnitStatus
from tasks.recovery import process_alive
from tasks.store import ArtifactStore, RunStore
from tests.e2e.durability_helpers import (
    REPO_ROOT,
    durable_request,
    invocations,
    kill_leftovers,
    ledger_of,
    marker_pid,
    run_args,
    start_orchestrator,
    wait_for,
)
from tests.e2e.helpers import make_target
from tests.e2e.servers import PrefectServer


def held(path: Path) -> dict:
    return {"HOLD_FILE": str(path)}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_a_run_with_two_agents_running_within_10_s(tmp_path, signum):
    markers, store, key = tmp_path / "markers", str(tmp_path / "store"), "stopped"
    never = tmp_path / "never-released"
    request = durable_request(
        tmp_path, [{"id": "one", "env": held(never)}, {"id": "two", "env": held(never)}], markers
    )
    target = make_target(tmp_path / "target")
    log = tmp_path / "run.log"
    proc = start_orchestrator(run_args(request, target, store, tmp_path / "work", key), {}, log)
    agents: list[int] = []
    try:
        wait_for(
            "two agents running",
            lambda: all((markers / f"{u}.1").exists() for u in ("one", "two")),
            proc=proc,
            log=log,
        )
        agents = [marker_pid(markers, u) for u in ("one", "two")]

        proc.send_signal(signum)
        proc.wait(timeout=10)

        name = signal.Signals(signum).name
        assert proc.returncode == 128 + signum, log.read_text()
        last = log.read_text().strip().splitlines()[-1]
        assert last.startswith(f"Stopped on {name} (killed "), last
        assert last.endswith(f"the run is saved: `flotilla resume {key}`"), last
        assert not any(process_alive(pid) for pid in agents)
        ledger = ledger_of(store, key)
        assert {ledger[u].status for u in ("one", "two")} == {UnitStatus.RUNNING}
        runs = RunStore(ArtifactStore(store), key)
        summary = runs.store.read_model(runs.state_key, RunSummary)
        assert summary.state == RunState.FAILED
        assert summary.error.startswith(f"stopped on {name}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_leftovers(agents)


def flotilla(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "flotilla.cli", *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.slow
def test_a_dead_api_stops_the_run_in_one_line_and_resume_finishes_it(tmp_path):
    server = PrefectServer(tmp_path).start()
    env = {**server.env, "FLOTILLA_API_WAIT_S": "8"}
    markers, store, key = tmp_path / "markers", str(tmp_path / "store"), "api-down"
    release = tmp_path / "released"
    request = durable_request(
        tmp_path, [{"id": "fast", "env": {}}, {"id": "slow", "env": held(release)}], markers
    )
    target = make_target(tmp_path / "target")
    log = tmp_path / "run.log"
    proc = flotilla(env, *run_args(request, target, store, tmp_path / "work", key), log=log)
    agents: list[int] = []
    try:

        def fast_done_slow_running() -> bool:
            ledger = ledger_of(store, key)
            fast = "fast" in ledger and ledger["fast"].status == UnitStatus.SUCCEEDED
            return fast and (markers / "slow.1").exists()

        wait_for("one unit done, one running", fast_done_slow_running, proc=proc, log=log)
        agents = [marker_pid(markers, "slow")]

        server.kill()
        code = proc.wait(timeout=120)

        output = log.read_text()
        assert code == 4, output
        assert output.strip().splitlines()[-1] == (
            f"Prefect API at {server.api_url} unreachable for 8 s; the run is saved: "
            f"`flotilla resume {key}`"
        )
        assert f"Prefect API at {server.api_url} unreachable; waiting up to 8 s" in output
        assert not process_alive(agents[0])
        ledger = ledger_of(store, key)
        assert ledger["fast"].status == UnitStatus.SUCCEEDED  # the ledger is intact
        assert ledger["slow"].status == UnitStatus.RUNNING

        release.touch()
        server.start()
        resume_log = tmp_path / "resume.log"
        resumed = flotilla(env, "resume", key, "--store", store, log=resume_log)
        assert resumed.wait(timeout=300) == 0, resume_log.read_text()
        assert invocations(markers) == {"fast": 1, "slow": 2}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_leftovers(agents)
        server.stop()


def test_a_temporary_server_that_does_not_start_in_time_is_one_line_and_exit_4(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FLOTILLA_"))}
    env |= {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "1",  # no server starts that fast
    }
    request = durable_request(tmp_path, [{"id": "one", "env": {}}], tmp_path / "markers")
    target = make_target(tmp_path / "target")
    store = tmp_path / "store"
    log = tmp_path / "run.log"

    proc = flotilla(env, *run_args(request, target, str(store), tmp_path / "work", "slow"), log=log)

    assert proc.wait(timeout=120) == 4
    errors = [line for line in log.read_text().splitlines() if line.startswith("error:")]
    assert errors == [
        "error: The temporary Prefect server did not start within 1 s "
        "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS; the machine may be busy): raise it, "
        "or start a server (`make server`) and set PREFECT_API_URL, then try again."
    ]
    assert "Traceback" not in log.read_text()
