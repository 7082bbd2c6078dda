"""Real flow runs on a process worker, started by the command prefect.yaml gives the `unit`
deployment: the worker's first flow run starts the worker's engine server, and every flow run
forks from it. A failing flow run fails, a cancelled one ends Cancelled with its process
gone, and when the worker's machine dies, so do its flow run and its engine server."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from deployments.local import Server, prefect_server, run_command, start_worker
from deployments.warm_engine import servers_of
from tests.e2e.pool_helpers import kill_machine, wait_until
from tests.integration.procfs import alive

ROOT = Path(__file__).resolve().parents[2]
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


def unit_job_variables() -> dict:
    """The job variables prefect.yaml gives the `unit` deployment: its command, above all."""
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    [unit] = [d for d in config["deployments"] if d["name"] == "unit"]
    return unit["work_pool"]["job_variables"]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:
    with prefect_server(tmp_path_factory.mktemp("warm-server") / "prefect-home") as server:
        run_command(server.env, sys.executable, "-m", "deployments.setup")
        yield server


def api(server: Server, method: str, route: str, **body) -> dict:
    """One call to the server's REST API; a busy SQLite server's 503 is retried, as Prefect's
    own client does."""
    for _attempt in range(10):
        response = httpx.request(method, f"{server.api_url}{route}", json=body or None, timeout=30)
        if response.status_code != 503:
            break
        time.sleep(0.5)
    response.raise_for_status()
    return response.json()


def whoami_deployment(server: Server) -> str:
    flow = api(server, "POST", "/flows/", name="whoami")
    return api(
        server, "POST", "/deployments/",
        name="warm", flow_id=flow["id"], work_pool_name="flotilla",
        entrypoint="tests/e2e/warm_flow.py:whoami", path=str(ROOT),
        pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}],
        job_variables=unit_job_variables(),
    )["id"]  # fmt: skip


def start(server: Server, deployment: str, **parameters) -> str:
    return api(server, "POST", f"/deployments/{deployment}/create_flow_run", parameters=parameters)[
        "id"
    ]


def state_of(server: Server, flow_run: str) -> str:
    return api(server, "GET", f"/flow_runs/{flow_run}")["state_type"]


def finish(server: Server, flow_run: str, logs: list[Path], limit_s: float = 120) -> str:
    wait_until(
        f"flow run {flow_run} ends", lambda: state_of(server, flow_run) in FINAL, limit_s, logs
    )
    return state_of(server, flow_run)


def test_a_workers_flow_runs_fork_from_its_engine_server(server, tmp_path):
    deployment = whoami_deployment(server)
    worker = start_worker(server, tmp_path / "machine-1")
    logs = [tmp_path / "machine-1" / "worker.log"]
    try:
        seen = []
        for n in range(3):
            out = tmp_path / f"run-{n}.json"
            assert finish(server, start(server, deployment, out=str(out)), logs) == "COMPLETED"
            seen.append(json.loads(out.read_text()))
        [engine_server] = servers_of(worker.pid)
        assert [s["ppid"] for s in seen] == [engine_server] * 3, "each forked by the server"
        assert len({s["pid"] for s in seen}) == 3

        failing = start(server, deployment, out=str(tmp_path / "failing.json"), fail=True)
        assert finish(server, failing, logs) == "FAILED"

        out = tmp_path / "cancelled.json"
        cancelled = start(server, deployment, out=str(out), wait_s=120)
        wait_until("the long flow run started", out.exists, 120, logs)
        engine = json.loads(out.read_text())["pid"]
        api(server, "POST", f"/flow_runs/{cancelled}/set_state",
            state={"type": "CANCELLING"}, force=True)  # fmt: skip
        assert finish(server, cancelled, logs, 90) == "CANCELLED"
        wait_until("the cancelled engine ends", lambda: not alive(engine), 30, logs)

        out = tmp_path / "lost.json"
        lost = start(server, deployment, out=str(out), wait_s=120)
        wait_until("the last flow run started", out.exists, 120, logs)
        engine = json.loads(out.read_text())["pid"]
        assert json.loads(out.read_text())["ppid"] == engine_server
    finally:
        kill_machine(worker)
    wait_until("the lost flow run's engine ends", lambda: not alive(engine), 30, logs)
    wait_until("the engine server ends", lambda: not alive(engine_server), 30, logs)
    assert state_of(server, lost) == "RUNNING", "nothing but its heartbeat can tell it is gone"
