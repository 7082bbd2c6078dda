"""Which store errors are worth waiting out, and how long to wait.

A store on the network blips: a refused connection while a load balancer restarts, a timeout,
a 5xx, S3's `SlowDown`. Those are retried with backoff for `FLOTILLA_STORE_RETRY_S` before
anything gives up; a missing key, a refused permission or a bad request are not retried.
"""

from __future__ import annotations

import errno
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from flotilla.errors import StoreUnavailable
from flotilla.settings import get_settings

T = TypeVar("T")
log = logging.getLogger("flotilla.store")

STORE_UNREACHABLE = "unreachable for"  # in the message of every StoreUnavailable
_TRANSIENT_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.EPIPE,
    errno.EAGAIN,
    getattr(errno, "EREMOTEIO", errno.EIO),  # s3fs: InternalError and other 5xx answers
}
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
}
_FIRST_DELAY_S, _MAX_DELAY_S = 0.2, 5.0


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is a fault that may pass: network, timeout, 5xx."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _transient_here(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _transient_here(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, FileExistsError, PermissionError, KeyError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    try:
        from botocore import exceptions as boto
    except ImportError:  # pragma: no cover - s3fs brings botocore
        return False
    if isinstance(exc, (boto.ConnectionError, boto.HTTPClientError)):
        return True
    if isinstance(exc, boto.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or status == 429 or error.get("Code") in _TRANSIENT_CODES
    try:
        import aiohttp
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, aiohttp.ClientError)


def reason_of(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


_local = threading.local()


@contextmanager
def retry_budget(seconds: float) -> Iterator[None]:
    """Within this block (in this thread), store calls wait out faults for `seconds` only:
    for work that has a deadline of its own, such as a lock's heartbeat."""
    saved = getattr(_local, "budget", None)
    _local.budget = seconds
    try:
        yield
    finally:
        _local.budget = saved


def with_retries(call: Callable[[], T], where: str, budget_s: float | None = None) -> T:
    """`call()`, retried on transient faults with backoff for `budget_s` (the setting).

    Raises StoreUnavailable, one line naming `where` and the last reason, when the time is up."""
    if budget_s is None:
        budget_s = getattr(_local, "budget", None)
    budget = get_settings().store_retry_s if budget_s is None else budget_s
    start = time.monotonic()
    delay = _FIRST_DELAY_S
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc):
                raise
            waited = time.monotonic() - start
            if waited + delay > budget:
                raise StoreUnavailable(
                    f"store {where} {STORE_UNREACHABLE} {max(waited, budget):.0f} s: "
                    f"{reason_of(exc)}"
                ) from exc
            if attempt == 1:
                log.warning(
                    "Store %s: %s; retrying for up to %.0f s.", where, reason_of(exc), budget
                )
            time.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, _MAX_DELAY_S)
