"""The redactor: every secret Flotilla knows of becomes `***` in whatever it writes.

What counts as a secret: the value of an environment variable whose name says so (`*TOKEN*`,
`*SECRET*`, `*KEY*`, `*PASSWORD*`, `*CREDENTIAL*`, `AWS_*`, `FLOTILLA_S3_*`), values
registered at run time (a token read from a Prefect Secret block), and text shaped like a
well-known credential (`ghp_…`, `github_pat_…`, `AKIA…`, `sk-…`, a password in a URL) wherever
it comes from. Values shorter than `MIN_SECRET_LENGTH` are left alone: `MAX_TOKENS=4096` is
not a credential, and hiding every "4096" would make logs lie.

Pure: it reads only the mapping it is given (`os.environ` by default) and caches the compiled
pattern per set of secrets, so calling it on every write costs a dictionary scan.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"
MIN_SECRET_LENGTH = 8

SECRET_NAME = re.compile(
    r"TOKEN|SECRET|KEY|PASSWORD|PASSWD|CREDENTIAL|^AWS_|^FLOTILLA_S3_", re.IGNORECASE
)
# Names that match SECRET_NAME but hold no secret; their values are everyday words and paths.
NOT_SECRET_NAMES = frozenset({"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "KEYMAP"})
# A file path (`AWS_CA_BUNDLE`, `GOOGLE_APPLICATION_CREDENTIALS`) or a URL without a password
# (`AWS_ENDPOINT_URL`) names where a secret is, and is not one.
_PLAIN_VALUE = re.compile(r"^(?:~?/|\./)\S*$|^[a-z][a-z0-9+.-]*://[^\s@]*$", re.IGNORECASE)

TOKEN_SHAPES = (
    r"\bgh[pousr]_[A-Za-z0-9]{20,}",  # GitHub classic tokens (personal, OAuth, app, refresh)
    r"\bgithub_pat_[A-Za-z0-9_]{20,}",  # GitHub fine-grained tokens
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key ids
    r"\bsk-[A-Za-z0-9_-]{20,}",  # OpenAI and Anthropic API keys (sk-…, sk-proj-…, sk-ant-…)
    r"\bAIza[0-9A-Za-z_-]{35}",  # Google API keys
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}",  # Slack tokens
    r"\bglpat-[A-Za-z0-9_-]{20,}",  # GitLab personal access tokens
)
# `scheme://user:password@host`: the password goes, the user and host stay readable.
URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^\s:/@]+:)[^\s/@]+(?=@)", re.I)
_SHAPES = re.compile("|".join(f"(?:{p})" for p in TOKEN_SHAPES))

_registered: set[str] = set()
_lock = threading.Lock()
_cache: dict[frozenset[str], Redactor] = {}


def looks_secret(name: str, value: str) -> bool:
    """True when `name=value` is a credential by the rules above (name and length)."""
    value = value.strip()
    if name.upper() in NOT_SECRET_NAMES or len(value) < MIN_SECRET_LENGTH:
        return False
    if _PLAIN_VALUE.match(value):
        return False
    return bool(SECRET_NAME.search(name)) or bool(_SHAPES.search(value))


def secret_values(environ: Mapping[str, str]) -> set[str]:
    """The values in `environ` that must never be written anywhere."""
    return {value.strip() for name, value in environ.items() if looks_secret(name, value)}


def register_secret(value: str) -> None:
    """Add a value to hide from now on in this process (e.g. a token read from a block)."""
    value = value.strip()
    if len(value) >= MIN_SECRET_LENGTH:
        with _lock:
            _registered.add(value)


class Redactor:
    """Replaces known values and credential shapes with `***` in text, bytes and JSON data."""

    def __init__(self, values: Iterable[str] = ()):
        self.values = frozenset(v for v in values if len(v) >= MIN_SECRET_LENGTH)
        # Longest first, so a secret that contains another is hidden whole.
        literal = "|".join(re.escape(v) for v in sorted(self.values, key=len, reverse=True))
        self._text = re.compile(f"{literal}|{_SHAPES.pattern}" if literal else _SHAPES.pattern)
        raw = b"|".join(re.escape(v.encode()) for v in sorted(self.values, key=len, reverse=True))
        shapes = _SHAPES.pattern.encode()
        self._bytes = re.compile(raw + b"|" + shapes if raw else shapes)

    def text(self, text: str) -> str:
        if not text:
            return text
        hidden = self._text.sub(MASK, text)
        return URL_PASSWORD.sub(lambda m: m.group("head") + MASK, hidden)

    def bytes(self, data: bytes) -> bytes:
        """Works on any bytes (logs in any encoding, binary artifacts): only matches change."""
        if not data:
            return data
        return self._bytes.sub(MASK.encode(), data)

    def data(self, value: Any) -> Any:
        """Strings anywhere inside dicts, lists and tuples (keys included), redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.data(k): self.data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.data(v) for v in value)
        return value


def current_redactor(environ: Mapping[str, str] | None = None) -> Redactor:
    """The redactor for the secrets in `environ` (default: this process's) and those registered."""
    with _lock:
        registered = set(_registered)
    values = frozenset(secret_values(os.environ if environ is None else environ) | registered)
    found = _cache.get(values)
    if found is None:
        found = Redactor(values)
        with _lock:
            if len(_cache) > 64:  # environments change in tests, rarely in a run
                _cache.clear()
            _cache[values] = found
    return found


def redact(text: str) -> str:
    """`text` with every known secret replaced by `***`."""
    return current_redactor().text(text)


def redact_bytes(data: bytes) -> bytes:
    return current_redactor().bytes(data)
