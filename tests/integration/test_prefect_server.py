"""The minute-long freeze of a Prefect server on SQLite, reproduced with the parts that cause it:
SQLAlchemy's aiosqlite adapter, a real SQLite file and the garbage collector on the event loop.

Connection A's statement fails with "database is locked" while B holds the write lock, and the
error's traceback keeps A's cursor in a reference cycle. Later A waits, in SQLite's busy handler,
for B's lock; B commits only when the event loop lets it. If the collector frees A's old cursor
on the event loop then, it waits for A, A waits for B and B for the event loop, until A's busy
timeout runs out (60 s in Prefect's server, 3 s here)."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_cursor
from sqlalchemy.ext.asyncio import create_async_engine

from deployments.prefect_server import close_cursors_on_errors

BUSY_TIMEOUT_MS = 3000


async def write_while_the_collector_runs(db: Path) -> str:
    """What becomes of A's write that waits for B's lock while the collector runs on the loop."""
    url = f"sqlite+aiosqlite:///{db}"
    engine_a = create_async_engine(url, connect_args={"timeout": 0.1})
    engine_b = create_async_engine(url)
    async with engine_b.begin() as conn:
        await conn.execute(text("create table t (x int)"))
    async with engine_b.connect() as conn_b, engine_a.connect() as conn_a:
        await conn_b.execute(text("begin immediate"))
        await conn_b.execute(text("insert into t values (1)"))
        with pytest.raises(Exception, match="database is locked"):
            await conn_a.execute(text("insert into t values (2)"))
        await conn_a.rollback()
        driver = (await conn_a.get_raw_connection()).driver_connection
        await driver.execute(f"pragma busy_timeout = {BUSY_TIMEOUT_MS}")
        waiting = asyncio.ensure_future(conn_a.execute(text("insert into t values (3)")))
        await asyncio.sleep(0.3)  # A is in its busy wait now
        gc.collect()
        await conn_b.commit()
        try:
            await waiting
            await conn_a.commit()
            outcome = "went through"
        except Exception as exc:
            outcome = f"failed: {str(exc).splitlines()[0]}"
    await engine_a.dispose()
    await engine_b.dispose()
    return outcome


@pytest.fixture
def unfixed(monkeypatch):
    """SQLAlchemy's own adapter method, put back after the test whatever the test changes."""
    original = AsyncAdapt_aiosqlite_cursor._close_interrupted
    monkeypatch.setattr(AsyncAdapt_aiosqlite_cursor, "_close_interrupted", original)


def run_without_automatic_collection(db: Path) -> str:
    gc.collect()
    gc.disable()
    try:
        return asyncio.run(write_while_the_collector_runs(db))
    finally:
        gc.enable()


def test_unfixed_the_collector_freezes_the_event_loop_until_the_busy_timeout(unfixed, tmp_path):
    outcome = run_without_automatic_collection(tmp_path / "db.sqlite")
    assert outcome == "failed: (sqlite3.OperationalError) database is locked"


def test_with_the_fix_the_write_goes_through_once_the_lock_is_free(unfixed, tmp_path):
    assert close_cursors_on_errors()
    assert run_without_automatic_collection(tmp_path / "db.sqlite") == "went through"


def test_the_launcher_says_how_to_use_it_when_given_no_command(tmp_path):
    # A PREFECT_HOME of its own and a time limit, should the launcher ever start a server here.
    done = subprocess.run(
        [sys.executable, "-m", "deployments.prefect_server", "server", "start"],
        capture_output=True,
        text=True,
        env={**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")},
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert "got server start" in done.stderr
    assert "python -m deployments.prefect_server prefect server start" in done.stderr
