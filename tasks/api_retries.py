"""Saying when Prefect's client is waiting to retry a request, so that a run never stalls
without a word.

Prefect's HTTP client retries a request the server answered 503 (a SQLite-backed server whose
database is locked), 502, 408 or 429, after about 2, 4, 8, 16 and 32 s (or the server's
Retry-After), and logs each wait only at DEBUG. A run of many units whose requests meet a locked
database can stand still for a minute that way while `/health` still answers, so the run's API
watcher (tasks/stopping.py) sees nothing wrong. From the second wait of a request on (4 s and
more), one line on stderr says which answer the client got and how long it waits; the first, 2 s
wait stays quiet, as it is common on SQLite and over at once.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

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
