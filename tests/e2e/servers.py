"""Real Prefect servers for end-to-end tests: `prefect server start` (as deployments/local.py's
`SERVER_START` runs it) on a free loopback port with its own PREFECT_HOME, which a test can kill
and start again on the same port and home (its SQLite database survives; its in-memory leases do
not)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from deployments.local import PREFECT, SERVER_START, clean_env, free_port, stop

__all__ = ["PREFECT", "PrefectServer", "clean_env", "free_port", "prefect_server", "stop"]


class PrefectServer:
    """One server's port, home and environment; `start` again after `kill` to restart it."""

    def __init__(self, tmp_path: Path, **extra_env: str):
        self.tmp_path = tmp_path
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.env = {**clean_env(tmp_path, self.api_url), **extra_env}
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> PrefectServer:
        self.starts += 1
        log = self.tmp_path / f"server-{self.port}-{self.starts}.log"
        with log.open("w") as out:
            self.process = subprocess.Popen(
                [*SERVER_START, "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while not self.healthy():
            assert self.process.poll() is None, f"the server exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"the server did not start:\n{log.read_text()}"
            time.sleep(0.3)
        return self

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)

    def kill(self) -> None:
        """SIGKILL the server and everything it started, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def active_slots(self, resource_class: str) -> int:
        name = f"tag:flotilla:{resource_class}"
        return httpx.get(f"{self.api_url}/v2/concurrency_limits/{name}", timeout=10).json()[
            "active_slots"
        ]


@contextmanager
def prefect_server(tmp_path: Path, **extra_env: str) -> Iterator[PrefectServer]:
    """A started server (SQLite in tmp_path/prefect-home unless `extra_env` names a database),
    stopped at the end."""
    server = PrefectServer(tmp_path, **extra_env)
    try:
        yield server.start()
    finally:
        server.stop()
