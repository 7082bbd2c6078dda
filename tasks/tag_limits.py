"""Ask the Prefect server for tag slots only for tags that have a limit.

Prefect's task engine asks the server for a slot of every tag of every task run, before the task
starts, whether or not the tag has a concurrency limit (PrefectHQ/prefect#19367). Flotilla tags
every task run with `flotilla`, `feature:…`, `run:…` and `unit:…` so that runs are findable, and
none of those usually has a limit: each unit's task runs then paid a round trip through a
per-tag-set client queue (a new thread and HTTP client per unit) for nothing, about a second per
task run on a busy server.

`only_limited_tags()` wraps the engine's acquisition so it asks only for the tags that have a tag
limit on the server. Which tags have one is read once and then at most every `REFRESH_S` seconds,
so a limit someone creates mid-run is obeyed within that time; if the server cannot say, every
tag is asked for, as Prefect does. Resource classes do not depend on this: the scheduler takes
their slots itself (tasks/slots.py) and unit task runs carry no class tag.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import nullcontext
from typing import Any

import prefect.task_engine as engine
from prefect.client.orchestration import get_client

REFRESH_S = 10.0
PAGE = 200
log = logging.getLogger("flotilla.tag_limits")


class LimitedTags:
    """The `tag:…` concurrency limit names on the server, cached for `refresh_s` seconds."""

    def __init__(self, refresh_s: float = REFRESH_S):
        self.refresh_s = refresh_s
        self._names: frozenset[str] | None = None
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def names(self) -> frozenset[str] | None:
        """The limited tag names, or None when the server could not be asked."""
        with self._lock:
            if time.monotonic() - self._read_at >= self.refresh_s:
                self._names = self._read()
                self._read_at = time.monotonic()
            return self._names

    def forget(self) -> None:
        with self._lock:
            self._read_at = float("-inf")

    @staticmethod
    def _read() -> frozenset[str] | None:
        try:
            names: set[str] = set()
            with get_client(sync_client=True) as client:
                offset = 0
                while True:
                    page = client.read_global_concurrency_limits(limit=PAGE, offset=offset)
                    names.update(limit.name for limit in page if limit.name.startswith("tag:"))
                    if len(page) < PAGE:
                        return frozenset(names)
                    offset += PAGE
        except Exception as exc:  # ask for every tag, as Prefect itself would
            log.debug("Could not read the server's tag limits: %s", exc)
            return None


LIMITED = LimitedTags()
_prefect_concurrency = engine._concurrency


def _limited_concurrency(names: str | list[str], *args: Any, **kwargs: Any):
    """The engine's slot acquisition, for the names that have a limit only."""
    wanted = [names] if isinstance(names, str) else list(names)
    if not wanted:
        return nullcontext()
    limited = LIMITED.names()
    if limited is not None:
        wanted = [name for name in wanted if name in limited]
        if not wanted:
            return nullcontext()
    return _prefect_concurrency(wanted, *args, **kwargs)


def only_limited_tags() -> None:
    """Install the wrapper into Prefect's task engine (idempotent) and read the limits afresh."""
    LIMITED.forget()
    engine._concurrency = _limited_concurrency
