"""prefect.yaml against a real Prefect server: deploy, run on a process worker, read the results.

Everything runs as it would for a user: `prefect server start` (SQLite, its own PREFECT_HOME),
`python -m deployments.setup`, `prefect deploy --all`, `prefect deployment run`, and
`prefect worker start --pool flotilla --run-once`, each a real process on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.setup import ensure_automation, ensure_work_pool
from tasks.store import ArtifactStore, RunStore
from tests.e2e.helpers import git, make_target, write_request

ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
UUID = re.compile(r"UUID: ([0-9a-f-]{36})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(tmp_path: Path, api_url: str) -> dict[str, str]:
    """This process's environment without its Prefect or Flotilla settings, plus the server's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FLOTILLA_"))}
    return {
        **env,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",  # no nightly run at 02:00
        "PREFECT_SERVER_UI_ENABLED": "false",
    }


def stop(process: subprocess.Popen) -> None:
    """Stop a process started in its own session, and everything it started."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, dict[str, str]]]:
    """A Prefect server with SQLite on a free loopback port; yields its API URL and env."""
    tmp_path = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = clean_env(tmp_path, api_url)
    log = tmp_path / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"the server exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"the server did not start:\n{log.read_text()}"
            try:
                if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        yield api_url, env
    finally:
        stop(process)


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def run_worker_once(env: dict[str, str], log: Path) -> None:
    """One polling round of a process worker; it returns when the runs it took are done."""
    with log.open("w") as out:
        worker = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", "flotilla", "--run-once"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        worker.wait(timeout=180)
    finally:
        stop(worker)


def wait_for_final_state(api_url: str, flow_run_id: str, limit_s: float = 60) -> dict:
    deadline = time.monotonic() + limit_s
    while True:
        flow_run = httpx.get(f"{api_url}/flow_runs/{flow_run_id}", timeout=10).json()
        if flow_run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return flow_run
        assert time.monotonic() < deadline, f"flow run still {flow_run['state_type']}"
        time.sleep(0.5)


@pytest.mark.slow
def test_the_feature_deployment_runs_on_a_process_worker(server, tmp_path):
    api_url, env = server
    target = make_target(tmp_path / "target")
    request = write_request(tmp_path, [{"id": "only"}], timeline=tmp_path / "timeline.txt")
    store = tmp_path / "store"

    setup = cli(env, sys.executable, "-m", "deployments.setup", "--automation")
    assert "Work pool 'flotilla': created." in setup
    assert "Automation 'flotilla-crash-zombie-flow-runs': created." in setup
    cli(env, PREFECT, "--no-prompt", "deploy", "--all")
    deployments = httpx.post(f"{api_url}/deployments/filter", json={}, timeout=10).json()
    by_name = {d["name"]: d for d in deployments}
    assert set(by_name) == {"feature", "nightly-features", "unit"}
    nightly = by_name["nightly-features"]
    assert nightly["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
    assert nightly["global_concurrency_limit"]["limit"] == 1  # never two nightly runs at once
    assert {d["work_pool_name"] for d in deployments} == {"flotilla"}

    started = cli(
        env,
        PREFECT,
        "--no-prompt",
        "deployment",
        "run",
        "feature/feature",
        "--param",
        f"request={request}",
        "--param",
        f"repo={target}",
        "--param",
        f"store={store}",
        "--param",
        f"workdir={tmp_path / 'work'}",
    )
    flow_run_id = UUID.search(started).group(1)
    run_worker_once(env, tmp_path / "worker.log")

    flow_run = wait_for_final_state(api_url, flow_run_id)
    worker_log = (tmp_path / "worker.log").read_text()
    assert flow_run["state_type"] == "COMPLETED", worker_log
    assert flow_run["deployment_id"] == by_name["feature"]["id"]
    keys = ["demo-feature-pr", "demo-feature-units"]
    artifacts = httpx.post(
        f"{api_url}/artifacts/filter",
        json={"artifacts": {"key": {"any_": keys}}},
        timeout=10,
    ).json()
    assert {a["key"] for a in artifacts} == set(keys)
    pr = next(a for a in artifacts if a["key"] == "demo-feature-pr")
    assert "Demo feature" in pr["data"].splitlines()[0]
    (run_key,) = {k.split("/")[1] for k in ArtifactStore(str(store)).list("runs")}
    runs = RunStore(ArtifactStore(str(store)), run_key)
    assert runs.store.read_json(runs.state_key)["flow_run_id"] == flow_run_id
    assert git(target, "show", "flotilla/demo-feature:units/only.txt").startswith("only")

    with temporary_settings({PREFECT_API_URL: api_url}):  # setup is idempotent
        assert not ensure_work_pool()
        assert not ensure_automation()


def test_the_operations_guide_shows_the_automation_file_as_it_is():
    docs = (ROOT / "docs" / "operations.md").read_text()
    shown = docs.split("```yaml\nname: flotilla-crash-zombie-flow-runs\n", 1)[1].split("```", 1)[0]
    text = (ROOT / "deployments" / "zombie-automation.yaml").read_text()
    body = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))
    assert body == "name: flotilla-crash-zombie-flow-runs\n" + shown
