"""The temporary server Prefect starts for these tests (and for `flotilla run` with no API set)
runs through deployments/prefect_server.py, so it has the fix for SQLite's minute-long freeze."""

from __future__ import annotations

from pathlib import Path

from prefect.server.api.server import SubprocessASGIServer


def test_the_temporary_server_starts_through_the_launcher_with_the_fix():
    running = [
        s.server_process for s in SubprocessASGIServer._instances.values() if s.server_process
    ]
    assert running, "the session's harness started no temporary server"
    for process in running:
        assert process.args[1:4] == ["-m", "deployments.prefect_server", "uvicorn"]
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        assert b"deployments.prefect_server" in cmdline
        assert b"prefect.server.api.server:create_app" in cmdline
