"""`flotilla resume`, `retry`, `pause`, `checkpoints`, `rollback`."""

from __future__ import annotations


def register(sub) -> None:
    """No commands here yet."""
