"""`flotilla plan`."""

from __future__ import annotations


def register(sub) -> None:
    """No commands here yet."""
