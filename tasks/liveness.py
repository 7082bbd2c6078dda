"""Whether a process still runs, as this machine's /proc tells it.

Kept to the standard library and apart from the modules that use it, because the `unit`
deployment's command (deployments/warm_engine.py) asks too, and must start in milliseconds.
"""

from __future__ import annotations

import os


def process_alive(pid: int) -> bool:
    """Whether `pid` names a live process on this machine. A zombie has ended: its parent has
    not reaped it yet, or never will (a PID 1 that does not reap)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as status:
            state = status.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != b"Z"
