"""Reading a rate-limit or usage-limit answer: is it one, and how long until it resets?

Pure text parsing, so it lives in `flotilla/` and is tested without processes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

RATE_LIMIT_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"
RATE_LIMIT_SCAN_LINES = 40  # limit messages come last; older lines may quote code or logs
DEFAULT_MAX_WAIT_S = 3600.0

_LIMIT_PATTERNS = [
    r"rate[ _-]?limit(?:ed|s|_?error)?\b|usage[ _-]limit(?:s|_reached)?\b",
    r"hit your (?:\w+ )?limit|limit reached",
    r"quota exceeded|exceeded your (?:current )?quota|resource[ _]exhausted",
    r"too many requests|overloaded_error|try again in \d|retry (?:in|after) \d",
    r"\b429\b.{0,40}(?:too many|rate|quota|exhausted|limit)|(?:status|code|http|error)\W{0,4}429\b",
]
_LIMIT_RE = re.compile("|".join(f"(?:{p})" for p in _LIMIT_PATTERNS), re.IGNORECASE)

_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_DURATION = re.compile(
    r"(\d+(?:\.\d+)?)\s*(milliseconds?|minutes?|seconds?|hours?|days?|mins?|secs?|hrs?|ms|d|h|m|s)"
    r"(?![a-z])",
    re.IGNORECASE,
)
_DURATION_AFTER = re.compile(
    r"(?:try again|retry|resets?|available again|wait)\s*(?:in|after)\s*:?\s*", re.IGNORECASE
)
_BARE_SECONDS = re.compile(
    r"retry[- ]after\s*:?\s*(\d+(?:\.\d+)?)(?!\.?\d|\s*[a-z])", re.IGNORECASE
)
_RETRY_DELAY = re.compile(r'(?:"retryDelay"\s*:\s*"|"resets_in_seconds"\s*:\s*)(\d+(?:\.\d+)?)')
_EPOCH = re.compile(r"limit reached\|(\d{9,11})\b", re.IGNORECASE)
_CLOCK = re.compile(
    r"(?:resets?|try again|available again)\s+(?:at\s+)?(\d{1,2})(?::(\d{2}))?\s*([ap]\.?m\.?)"
    r"(?:\s*\(([A-Za-z_]+(?:/[A-Za-z0-9_+-]+)*)\))?",
    re.IGNORECASE,
)
_DATE_CLOCK = re.compile(
    r"(?:resets?|try again)\s+(?:at|on)\s+([A-Z][a-z]{2})[a-z]*\.?\s+(\d{1,2})(?:st|nd|rd|th)?,?"
    r"\s+(\d{4}),?\s+(\d{1,2}):(\d{2})\s*([AP]M)",
    re.IGNORECASE,
)


def detect_rate_limit(
    exit_code: int | None,
    output: str,
    *,
    max_wait_s: float = DEFAULT_MAX_WAIT_S,
    now: datetime | None = None,
) -> tuple[bool, float | None]:
    """(rate limited?, seconds to wait if the output says) for a finished agent.

    Exit 75 always means "rate limited"; any other non-zero exit counts only when one of the
    known limit messages is in the last lines of the output. A successful run never does.
    """
    if exit_code is None or exit_code == 0:
        return False, None
    tail = "\n".join(output.splitlines()[-RATE_LIMIT_SCAN_LINES:])
    if exit_code != RATE_LIMIT_EXIT_CODE and not _LIMIT_RE.search(tail):
        return False, None
    delay = parse_retry_after(tail, now=now)
    return True, None if delay is None else min(max(delay, 1.0), max_wait_s)


def limit_message(output: str, limit: int = 200) -> str:
    """The last line of `output` that reads like a limit message, cut to `limit` characters."""
    lines = output.splitlines()[-RATE_LIMIT_SCAN_LINES:]
    said = next((line.strip() for line in reversed(lines) if _LIMIT_RE.search(line)), "")
    return said if len(said) <= limit else said[: limit - 1] + "…"


def parse_retry_after(text: str, *, now: datetime | None = None) -> float | None:
    """Seconds until a limit resets, from the last delay or reset time `text` names."""
    now = now or datetime.now().astimezone()
    readers: list[tuple[re.Pattern[str], Callable[[re.Match[str]], float | None]]] = [
        (_DURATION_AFTER, lambda m: _duration_at(text, m.end())),
        (_BARE_SECONDS, lambda m: float(m.group(1))),
        (_RETRY_DELAY, lambda m: float(m.group(1))),
        (_EPOCH, lambda m: int(m.group(1)) - now.timestamp()),
        (_CLOCK, lambda m: _until_clock(m, now)),
        (_DATE_CLOCK, lambda m: _until_date(m, now)),
    ]
    found = [  # (position, seconds): the latest mention wins
        (m.start(), seconds)
        for pattern, read in readers
        for m in pattern.finditer(text)
        if (seconds := read(m)) is not None
    ]
    return max(found)[1] if found else None


def _duration_at(text: str, pos: int) -> float | None:
    """Sum a run of durations starting at `pos`: "5 days 22 hours 11 minutes", "6m0s"."""
    total, seen = 0.0, False
    separator = re.compile(r"[\s,]*(?:and\s+)?")
    while True:
        match = _DURATION.match(text, pos)
        if not match:
            break
        unit = match.group(2).lower()
        key = "ms" if unit.startswith("milli") or unit == "ms" else unit[0]
        total += float(match.group(1)) * _UNITS[key]
        seen = True
        pos = separator.match(text, match.end()).end()
    return total if seen else None


def _until_clock(match: re.Match[str], now: datetime) -> float | None:
    hour, minute = int(match.group(1)), int(match.group(2) or 0)
    if not 1 <= hour <= 12 or minute > 59:
        return None
    hour = hour % 12 + (12 if match.group(3).lower().startswith("p") else 0)
    tz = now.tzinfo
    if match.group(4):
        try:
            tz = ZoneInfo(match.group(4))
        except (ZoneInfoNotFoundError, ValueError):
            tz = now.tzinfo
    local_now = now.astimezone(tz)
    target = local_now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if target <= local_now:
        target += timedelta(days=1)
    return (target - local_now).total_seconds()


def _until_date(match: re.Match[str], now: datetime) -> float | None:
    stamp = " ".join(match.group(i) for i in range(1, 7))  # "Jul 5 2026 8 19 PM"
    try:
        target = datetime.strptime(stamp, "%b %d %Y %I %M %p").replace(tzinfo=now.tzinfo)
    except ValueError:
        return None
    return (target - now).total_seconds()
