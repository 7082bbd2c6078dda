"""What the tests of `flotilla run --pool` do to the laptop trial's processes (a server, the
deployments and workers, started by `deployments.local`): kill a machine, wait for a state."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil


def kill_machine(worker: subprocess.Popen) -> list[int]:
    """`kill -9` of a worker and everything it started (its flow runs, their agents): the
    machine is gone. Returns the pids killed."""
    family = [worker.pid]
    with contextlib.suppress(psutil.NoSuchProcess):
        family += [p.pid for p in psutil.Process(worker.pid).children(recursive=True)]
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    worker.wait(timeout=10)
    return family


def wait_until(what: str, check: Callable[[], bool], limit_s: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{tails(logs)}")
        time.sleep(0.3)


def tails(logs: list[Path]) -> str:
    """The end of each log (orchestrator, workers): what a failed pool test shows."""
    return "\n".join(f"--- {p}\n{p.read_text()[-4000:]}" for p in logs if p.exists())
