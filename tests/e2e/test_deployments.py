"""prefect.yaml against a real Prefect server: deploy, run on a process worker, read the results.

Everything runs as it would for a user: `prefect server start` (SQLite, its own PREFECT_HOME,
the scheduler on), `make deploy`, `prefect deployment run`, and
`prefect worker start --pool flotilla --run-once`, each a real process on 127.0.0.1. The
commands of docs/operations.md that need a server are run here as the guide writes them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.local import prefect_server
from deployments.setup import ensure_automation, ensure_work_pool
from tasks.store import ArtifactStore, RunStore
from tests.e2e.helpers import git, make_target, write_request
from tests.e2e.servers import PREFECT, clean_env, free_port, stop

ROOT = Path(__file__).resolve().parents[2]
UUID = re.compile(r"UUID: ([0-9a-f-]{36})")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, dict[str, str], Path]]:
    """A Prefect server with SQLite on a free loopback port, its scheduler on (the nightly
    deployment's schedule must really fire); yields its API URL, env and log."""
    home = tmp_path_factory.mktemp("prefect-server")
    with prefect_server(home, scheduler=True) as up:
        yield up.api_url, up.env, up.log


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


def wait_until_healthy(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, f"the server exited:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"the server did not start:\n{log.read_text()}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)


@pytest.fixture(scope="module")
def deployed(server) -> dict[str, dict]:
    """`make deploy` against the server: the pool, the automation, prefect.yaml's deployments."""
    api_url, env, _ = server
    shown = cli(
        env, "make", "-s", "-o", ".venv/bin/flotilla", "deploy", f"PREFECT_API_URL={api_url}"
    )
    assert "Work pool 'flotilla': created." in shown
    assert "Automation 'flotilla-crash-zombie-flow-runs': created." in shown
    deployments = httpx.post(f"{api_url}/deployments/filter", json={}, timeout=10).json()
    return {d["name"]: d for d in deployments}


@pytest.mark.slow
def test_make_deploy_creates_the_deployments_on_the_flotilla_pool(server, deployed):
    api_url, _, _ = server
    assert set(deployed) == {"feature", "nightly-features", "unit"}
    nightly = deployed["nightly-features"]
    assert nightly["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
    assert nightly["global_concurrency_limit"]["limit"] == 1  # never two nightly runs at once
    assert {d["work_pool_name"] for d in deployed.values()} == {"flotilla"}
    with temporary_settings({PREFECT_API_URL: api_url}):  # setup is idempotent
        assert not ensure_work_pool()
        assert not ensure_automation()


@pytest.mark.slow
def test_the_feature_deployment_runs_on_a_process_worker(server, deployed, tmp_path):
    api_url, env, _ = server
    target = make_target(tmp_path / "target")
    request = write_request(tmp_path, [{"id": "only"}], timeline=tmp_path / "timeline.txt")
    store = tmp_path / "store"
    by_name = deployed

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

    # Named after its run key and tagged, though Prefect named it at random when it was created.
    created_as = re.search(r"Created flow run '([^']+)'", started).group(1)
    assert created_as != run_key and flow_run["name"] == run_key
    assert {"flotilla", "feature:demo-feature", f"run:{run_key}"} <= set(flow_run["tags"])


def flow_runs_tagged(api_url: str, tag: str) -> list[dict]:
    body = {"flow_runs": {"tags": {"all_": [tag]}}}
    return httpx.post(f"{api_url}/flow_runs/filter", json=body, timeout=10).json()


def scheduled_runs(api_url: str, deployment_id: str) -> list[dict]:
    body = {
        "deployments": {"id": {"any_": [deployment_id]}},
        "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
    }
    return httpx.post(f"{api_url}/flow_runs/filter", json=body, timeout=10).json()


@pytest.mark.slow
def test_the_nightly_cron_gets_scheduled_runs_and_a_worker_runs_one_to_the_end(
    server, deployed, tmp_path
):
    api_url, env, server_log = server
    nightly = deployed["nightly-features"]

    # The server's scheduler fills in the cron's next nights (it cannot, with SQLAlchemy 2.1).
    deadline = time.monotonic() + 120
    while not (upcoming := scheduled_runs(api_url, nightly["id"])):
        assert time.monotonic() < deadline, "the scheduler made no run of nightly-features"
        time.sleep(1)
    assert all(r["expected_start_time"].endswith("T02:00:00Z") for r in upcoming)

    # One night now: a queued request, run by a process worker to the end.
    target = make_target(tmp_path / "target")
    request = write_request(tmp_path, [{"id": "only"}], timeline=tmp_path / "timeline.txt")
    store = tmp_path / "store"
    (store / "inbox").mkdir(parents=True)
    shutil.copy(request, store / "inbox" / "tonight.yaml")
    started = cli(
        env,
        PREFECT,
        "--no-prompt",
        "deployment",
        "run",
        "nightly-features/nightly-features",
        "--param",
        f"store={store}",
        "--param",
        f"repo={target}",
        "--param",
        f"workdir={tmp_path / 'work'}",
    )
    assert "Scheduled start time:" in started and "(now)" in started
    flow_run_id = UUID.search(started).group(1)
    run_worker_once(env, tmp_path / "worker.log")

    flow_run = wait_for_final_state(api_url, flow_run_id)
    assert flow_run["state_type"] == "COMPLETED", (tmp_path / "worker.log").read_text()
    assert flow_run["deployment_id"] == nightly["id"]
    result = json.loads((store / "done" / "tonight.result.json").read_text())
    assert result["state"] == "succeeded", result
    assert git(target, "show", "flotilla/demo-feature:units/only.txt").startswith("only")
    names = {r["name"] for r in flow_runs_tagged(api_url, f"run:{result['run_key']}")}
    assert result["run_key"] in names  # the night's feature subflow, findable by its run
    # The scheduler never hit SQLAlchemy 2.1's "Can't evaluate bulk DML statement".
    assert "InvalidRequestError" not in server_log.read_text()


@pytest.mark.slow
def test_the_nightly_schedule_pauses_and_resumes_as_the_guide_says(server, deployed):
    api_url, env, _ = server
    name = "nightly-features/nightly-features"
    listed = cli(env, PREFECT, "deployment", "schedule", "ls", name, "--output", "json")
    (schedule,) = json.loads(listed)
    assert schedule["active"] is True

    cli(env, PREFECT, "deployment", "schedule", "pause", name, schedule["id"])
    (paused,) = json.loads(cli(env, PREFECT, "deployment", "schedule", "ls", name, "-o", "json"))
    assert paused["active"] is False

    cli(env, PREFECT, "deployment", "schedule", "resume", name, schedule["id"])
    (resumed,) = json.loads(cli(env, PREFECT, "deployment", "schedule", "ls", name, "-o", "json"))
    assert resumed["active"] is True


@pytest.mark.slow
def test_make_server_serves_a_ui_that_calls_its_own_port(tmp_path):
    port = free_port()
    env = {
        **clean_env(
            tmp_path, "http://127.0.0.1:4200/api", scheduler=True
        ),  # a shell set up for another server
        "PREFECT_SERVER_UI_ENABLED": "true",
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
    }
    log = tmp_path / "make-server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            ["make", "-s", "-o", ".venv/bin/flotilla", "server", f"PREFECT_PORT={port}"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_healthy(process, f"http://127.0.0.1:{port}/api/health", log)
        settings = httpx.get(f"http://127.0.0.1:{port}/ui-settings", timeout=10).json()
        assert settings["api_url"] == f"http://127.0.0.1:{port}/api"
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
    finally:
        stop(process)


@pytest.mark.slow
def test_the_quickstart_demo_shows_on_the_make_server_server(server, tmp_path):
    """docs/quickstart.md: with PREFECT_API_URL exported, `make demo` runs on that server, so
    its UI lists the run under its key, with its stages and tags."""
    api_url, env, _ = server
    demo_env = {**env, "PREFECT_API_URL": api_url, "TEXTSTATS_AGENT_SLEEP_S": "0"}
    venv = Path(sys.executable).parent.parent
    make = ["make", "-s", "-f", str(ROOT / "Makefile"), "-o", f"{venv}/.dev", f"VENV={venv}"]
    done = subprocess.run(
        [*make, "demo"], cwd=tmp_path, env=demo_env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    run_key = re.search(r"with run key (\S+)\.", done.stdout).group(1)

    flow_runs = flow_runs_tagged(api_url, f"run:{run_key}")
    names = {r["name"] for r in flow_runs}
    assert run_key in names and f"{run_key} · implement" in names
    assert all("feature:text-stats" in r["tags"] for r in flow_runs)


def test_the_operations_guide_shows_the_automation_file_as_it_is():
    docs = (ROOT / "docs" / "operations.md").read_text()
    shown = docs.split("```yaml\nname: flotilla-crash-zombie-flow-runs\n", 1)[1].split("```", 1)[0]
    text = (ROOT / "deployments" / "zombie-automation.yaml").read_text()
    body = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))
    assert body == "name: flotilla-crash-zombie-flow-runs\n" + shown
