"""While a run waits for an unreachable Prefect API, stderr carries the guard's lines and nothing
of Prefect's log worker: its "--- Error logging to API ---" and error, written with no newline,
once ended up glued to the front of the run's last line ("... unreachable for 8 s; the run is
saved: `flotilla resume KEY`"). The API here is a port nothing listens on; the log worker is
Prefect's own, failing to send a real batch."""

from __future__ import annotations

import logging
import socket
import threading
import time
from datetime import UTC, datetime

import pytest
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

from tasks.stopping import PROBE_EVERY_S, RunGuard


def dead_api_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/api"


def send_a_log_batch() -> None:
    """What Prefect's API log handler does with a flow run's log line, waited for."""
    log = {
        "name": "prefect.flow_runs",
        "level": logging.INFO,
        "message": "a line for the API",
        "timestamp": datetime.now(UTC).isoformat(),
        "flow_run_id": None,
        "task_run_id": None,
    }
    APILogWorker.instance().send(log)
    APILogWorker.drain_all(timeout=30)


@pytest.fixture
def guarded(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOTILLA_API_WAIT_S", "600")  # waits; never stops this test process
    url = dead_api_url()
    with temporary_settings({PREFECT_API_URL: url, PREFECT_CLIENT_MAX_RETRIES: 0}):
        guard = RunGuard("outage-1", str(tmp_path / "store"), str(tmp_path / "work")).install()
        guard.watch_api(url)
        try:
            yield guard
        finally:
            guard.uninstall()


def test_prefects_log_worker_says_nothing_while_the_guard_waits_for_the_api(
    guarded: RunGuard, capfd
) -> None:
    deadline = time.monotonic() + 10 * PROBE_EVERY_S
    while guarded.api_down_since is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert guarded.api_down_since is not None, "the guard never saw the API down"

    send_a_log_batch()

    err = capfd.readouterr().err
    assert "Error logging to API" not in err
    assert err.splitlines() == [
        f"Prefect API at {guarded.api_url} unreachable; waiting up to 600 s for it to come back "
        "(units in flight carry on)."
    ]


def test_without_an_outage_the_log_workers_errors_are_shown_as_prefect_shows_them(
    tmp_path, capfd
) -> None:
    raised_before = logging.raiseExceptions
    with temporary_settings({PREFECT_API_URL: dead_api_url(), PREFECT_CLIENT_MAX_RETRIES: 0}):
        guard = RunGuard("outage-2", str(tmp_path / "store"), str(tmp_path / "work")).install()
        guard.uninstall()  # quiet only while the guard holds the API for down, and never after
        send_a_log_batch()

    assert logging.raiseExceptions == raised_before
    assert "--- Error logging to API ---" in capfd.readouterr().err


def test_a_probe_that_ends_after_the_guard_is_gone_leaves_prefects_errors_shown(
    tmp_path, monkeypatch
) -> None:
    """The API watcher's last probe can fail after `uninstall` (a run's temporary server stops
    as the run ends): Prefect's log errors must stay shown for whatever the process does next."""
    monkeypatch.setattr("tasks.stopping.PROBE_EVERY_S", 0.01)
    raised_before = logging.raiseExceptions
    probing, answer = threading.Event(), threading.Event()
    guard = RunGuard("outage-3", str(tmp_path / "store"), str(tmp_path / "work")).install()

    def probe_that_fails_late() -> bool:
        probing.set()
        answer.wait(10)
        return False

    monkeypatch.setattr(guard, "api_reachable", probe_that_fails_late)
    guard.watch_api(dead_api_url())
    assert probing.wait(10), "the guard never probed the API"
    guard.uninstall()
    answer.set()
    for thread in threading.enumerate():
        if thread.name == "flotilla-api-watch":
            thread.join(10)

    assert logging.raiseExceptions == raised_before
