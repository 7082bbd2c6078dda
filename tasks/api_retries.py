"""Prefect's client retries: saying when it waits to retry a request, so that a run never
stalls without a word, and sending once the requests that have a better place to wait.

Prefect's HTTP client retries a request the server answered 503 (a SQLite-backed server whose
database is locked), 502, 408 or 429, after about 2, 4, 8, 16 and 32 s (or the server's
Retry-After), and logs each wait only at DEBUG. A run of many units whose requests meet a locked
database can stand still for a minute that way while `/health` still answers, so the run's API
watcher (tasks/stopping.py) sees nothing wrong. From the second wait of a request on (4 s and
more), one line on stderr says which answer the client got and how long it waits; the first, 2 s
wait stays quiet, as it is common on SQLite and over at once.

A request its caller will simply make again on its next tick (the scheduler's class slots,
tasks/slots.py) must not wait at all: the scheduler's one thread would stand still, and with it
every unit's start and verdict. Inside `sent_once()` the client sends each request once and a
retryable answer comes back as the error it is. Setting PREFECT_CLIENT_MAX_RETRIES to 0 is not
enough: the client sleeps the back-off before it checks the count.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar

CLIENT_LOGGER = "prefect.client"
SAY_FROM_S = 4.0  # Prefect's second wait; the first (2 s) is routine on a busy SQLite server
SAY_EVERY_S = 5.0  # requests of several threads back off together: one line for the lot
RETRY = re.compile(
    r"Received response with retryable status code (?P<status>\d+)\. "
    r"Another attempt will be made in (?P<wait>[\d.]+)s\. "
    r"This is attempt (?P<attempt>\d+)/(?P<tries>\d+)\."
)


class ClientRetryNotice(logging.Filter):
    """On Prefect's client logger: turns its DEBUG line about a retry into one line for people,
    and lets through exactly what the logger let through before."""

    def __init__(self, say: Callable[[str], None], logger: logging.Logger):
        super().__init__()
        self.say, self.logger = say, logger
        self.own_level = logger.level  # restored by `remove`
        self.shown_from = logger.getEffectiveLevel()
        self.said_at = float("-inf")

    def remove(self) -> None:
        """Leave the logger as it was (for a process that goes on after its run, such as a
        test session)."""
        self.logger.removeFilter(self)
        self.logger.setLevel(self.own_level)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.shown_from:
            return True
        match = RETRY.search(record.getMessage())
        if match is None or float(match["wait"]) < SAY_FROM_S:
            return False
        now = time.monotonic()
        if now - self.said_at >= SAY_EVERY_S:
            self.said_at = now
            why = (
                "; a SQLite-backed server answers 503 while its database is locked"
                if match["status"] == "503"
                else ""
            )
            self.say(
                f"Prefect API answered HTTP {match['status']}; Prefect's client tries again in "
                f"{float(match['wait']):.0f} s (attempt {match['attempt']} of {match['tries']}"
                f"{why})."
            )
        return False


def say_client_retries(say: Callable[[str], None]) -> ClientRetryNotice | None:
    """Install the notice (once per process: None if one is there). The client logger is opened
    to DEBUG so that its retry lines reach the filter, which drops every record the old level
    would have dropped. With the logger at DEBUG already, Prefect's own lines say it all."""
    logger = logging.getLogger(CLIENT_LOGGER)
    if any(isinstance(f, ClientRetryNotice) for f in logger.filters):
        return None
    notice = ClientRetryNotice(say, logger)
    logger.addFilter(notice)
    logger.setLevel(min(notice.shown_from, logging.DEBUG))
    return notice


_SEND_ONCE: ContextVar[bool] = ContextVar("flotilla_send_once", default=False)


@contextlib.contextmanager
def sent_once() -> Iterator[None]:
    """Prefect's sync client sends the requests made in this context (this thread, this task)
    once: a 503, 502, 429 or 408 raises at once, as does a dropped connection."""
    _patch_sync_client()
    token = _SEND_ONCE.set(True)
    try:
        yield
    finally:
        _SEND_ONCE.reset(token)


def _patch_sync_client() -> None:
    """Have Prefect's sync HTTP client retry nothing inside `sent_once`; elsewhere it is
    unchanged. Its own `_send_with_retry` still sends, so CSRF tokens and the rest stay its."""
    from prefect.client.base import PrefectHttpxSyncClient

    original = PrefectHttpxSyncClient._send_with_retry
    if getattr(original, "flotilla_send_once", False):
        return

    def send_with_retry(self, request, send, send_args, send_kwargs, retry_codes=(), **kw):
        if _SEND_ONCE.get():
            retry_codes, kw["retry_exceptions"] = set(), ()
        return original(self, request, send, send_args, send_kwargs, retry_codes, **kw)

    send_with_retry.flotilla_send_once = True  # type: ignore[attr-defined]
    PrefectHttpxSyncClient._send_with_retry = send_with_retry  # type: ignore[method-assign]
