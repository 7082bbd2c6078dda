"""A flow that says which process ran it, for tests/e2e/test_warm_engine.py."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from prefect import flow


@flow(name="whoami", persist_result=False)
def whoami(out: str, fail: bool = False, wait_s: float = 0) -> None:
    """Write this process's pid and parent to `out`; then wait, and fail if asked to."""
    Path(out).write_text(json.dumps({"pid": os.getpid(), "ppid": os.getppid()}))
    time.sleep(wait_s)
    if fail:
        raise RuntimeError("asked to fail")
