"""A run says when Prefect's client waits to retry a request the server answered 503, instead of
standing still without a word (a SQLite-backed server answers 503 while its database is locked).

The server here is a small local HTTP server that answers 503 a given number of times; the
client is Prefect's own, with its own retries and waits (2 s, then 4 s)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from prefect.client.base import PrefectHttpxSyncClient
from prefect.settings import PREFECT_CLIENT_RETRY_JITTER_FACTOR, temporary_settings

from tasks.api_retries import CLIENT_LOGGER, ClientRetryNotice, say_client_retries
from tasks.stopping import RunGuard
from tests.integration.local_api import JsonHandler, LocalApi, serving


class BusyServer(LocalApi):
    """Like a Prefect server whose database is locked: `/api/health` answers 200 at once, any
    other request `status` (503) `busy` times, then 200."""

    def __init__(self, busy: int, status: int = 503):
        super().__init__(HealthHandler)
        self.busy, self.status = busy, status


class HealthHandler(JsonHandler):
    server: BusyServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path != "/api/health" and self.server.busy > 0:
            self.server.busy -= 1
            self.answer(self.server.status, {"detail": "database is locked"})
        else:
            self.answer(200, True)


@pytest.fixture
def busy_server(request) -> Iterator[BusyServer]:
    with (
        serving(BusyServer(*request.param)) as server,
        temporary_settings({PREFECT_CLIENT_RETRY_JITTER_FACTOR: 0}),  # waits of exactly 2, 4 s
    ):
        yield server


@pytest.fixture
def client_logger() -> Iterator[logging.Logger]:
    """Prefect's client logger without any notice installed, as it was again afterwards."""
    logger = logging.getLogger(CLIENT_LOGGER)
    for f in list(logger.filters):
        if isinstance(f, ClientRetryNotice):
            f.remove()
    level, filters = logger.level, list(logger.filters)
    yield logger
    for f in list(logger.filters):
        if isinstance(f, ClientRetryNotice):
            f.remove()
    assert (logger.level, logger.filters) == (level, filters)  # `remove` restores it all


def read_flow_run(url: str) -> int:
    with PrefectHttpxSyncClient(base_url=url) as client:
        return client.get("/flow_runs/5f0c9b0e-0000-4000-8000-000000000000").status_code


@pytest.mark.parametrize("busy_server", [(2,)], indirect=True)
def test_the_second_wait_of_a_request_is_said_and_the_first_is_not(
    busy_server: BusyServer, client_logger: logging.Logger
) -> None:
    said: list[str] = []
    assert say_client_retries(said.append) is not None
    assert say_client_retries(said.append) is None  # once per process

    assert read_flow_run(busy_server.url) == 200  # after waits of 2 and 4 s

    assert said == [
        "Prefect API answered HTTP 503; Prefect's client tries again in 4 s (attempt 2 of 6; "
        "a SQLite-backed server answers 503 while its database is locked)."
    ]


def test_the_client_logger_shows_what_it_showed_before(client_logger: logging.Logger) -> None:
    shown: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: shown.append(record.getMessage())  # type: ignore[method-assign]
    client_logger.addHandler(handler)
    before = client_logger.getEffectiveLevel()
    try:
        say_client_retries(lambda line: None)
        client_logger.debug("a debug line of the client")
        client_logger.log(before, "a line at the level it showed before")
    finally:
        client_logger.removeHandler(handler)

    assert shown == ["a line at the level it showed before"]


@pytest.mark.parametrize("busy_server", [(2,)], indirect=True)
def test_a_run_says_it_on_stderr(
    busy_server: BusyServer, client_logger: logging.Logger, capfd, tmp_path
) -> None:
    level = client_logger.level
    guard = RunGuard("retries-1", str(tmp_path / "store"), str(tmp_path / "work")).install()
    guard.watch_api(busy_server.url)  # what `flotilla run` does once it knows its API
    try:
        assert read_flow_run(busy_server.url) == 200
    finally:
        guard.uninstall()  # the command is over: the watchers end, the logger is as it was
    assert client_logger.level == level

    err = capfd.readouterr().err
    assert (
        "Prefect API answered HTTP 503; Prefect's client tries again in 4 s (attempt 2 of 6" in err
    )
    assert "unreachable" not in err  # its /health answered all along


@pytest.mark.parametrize("busy_server", [(2, 502)], indirect=True)
def test_another_retried_answer_is_said_without_the_sqlite_hint(
    busy_server: BusyServer, client_logger: logging.Logger
) -> None:
    said: list[str] = []
    say_client_retries(said.append)

    assert read_flow_run(busy_server.url) == 200

    assert said == [
        "Prefect API answered HTTP 502; Prefect's client tries again in 4 s (attempt 2 of 6)."
    ]
