"""Real Prefect servers for end-to-end tests: `prefect server start` on a free loopback port, with
its own PREFECT_HOME, started and stopped as a user would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

PREFECT = str(Path(sys.executable).with_name("prefect"))


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


def stop(process: subprocess.Popen, signum: int = signal.SIGTERM) -> None:
    """Stop a process started in its own session, and everything it started."""
    if process.poll() is None:
        os.killpg(process.pid, signum)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@dataclass
class PrefectServer:
    api_url: str
    env: dict[str, str]
    process: subprocess.Popen
    log: Path


def wait_until_healthy(server: PrefectServer, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        assert server.process.poll() is None, f"the server exited:\n{server.log.read_text()}"
        assert time.monotonic() < deadline, f"the server did not start:\n{server.log.read_text()}"
        try:
            if httpx.get(f"{server.api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)


@contextmanager
def prefect_server(tmp_path: Path, **extra_env: str) -> Iterator[PrefectServer]:
    """A Prefect server (SQLite in tmp_path/prefect-home unless `extra_env` names a database)."""
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**clean_env(tmp_path, api_url), **extra_env}
    log = tmp_path / f"server-{port}.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = PrefectServer(api_url, env, process, log)
    try:
        wait_until_healthy(server)
        yield server
    finally:
        stop(process)
