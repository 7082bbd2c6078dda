"""Running a child process with a hard time limit, a chosen environment and redacted output.

Prefect's `timeout_seconds` does not stop a subprocess, so agents and test commands go through
here: each runs in its own session under a runner (`tasks/reaper.py`, forked by this process's
runner server in `tasks/spawner.py`), which ends whatever the command leaves behind (even what
left the session); at the limit the group gets SIGTERM, then SIGKILL.
The child's environment is exactly the one given (never Flotilla's own), and its output is
redacted line by line before it reaches the log file or the caller.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel

from flotilla.environment import basic_env
from flotilla.redaction import current_redactor
from tasks.spawner import Runner, spawn

TAIL_LINES = 60
KILL_GRACE_S = 3.0
STOP_POLL_S = 1.0


class ProcessResult(BaseModel):
    exit_code: int | None
    timed_out: bool
    duration_s: float
    output_tail: str


def run_process(
    command: list[str] | str,
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout_s: float | None = None,
    log_file: Path | None = None,
    stop: Callable[[], bool] | None = None,
) -> ProcessResult:
    """Run `command` (argv, or a string for bash) and return its exit code and last lines.

    `env` is the child's whole environment (see `flotilla.environment.child_env`); without
    one it gets only the basics. Output (stdout and stderr interleaved, secrets redacted) is
    appended to `log_file` as it arrives. `stop()`, asked every STOP_POLL_S, ends it early like
    the time limit does (a hard budget).
    """
    argv = ["bash", "-c", command] if isinstance(command, str) else command
    full_env = dict(env) if env is not None else basic_env(os.environ)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    log = open(log_file, "ab") if log_file else None  # noqa: SIM115 - closed in finally
    started = time.monotonic()
    try:
        proc = spawn(argv, cwd=cwd, env=full_env, stdin=stdin is not None)
        if stdin is not None and proc.stdin:
            try:
                proc.stdin.write(stdin.encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass
        reader = threading.Thread(target=_copy_output, args=(proc, tail, log), daemon=True)
        reader.start()
        timed_out = not _wait(proc, timeout_s, stop)
        if timed_out or not proc.left_nothing:  # a runner without prctl or /proc cannot tell
            kill_group(proc)
        reader.join(timeout=10)
        exit_code = None if timed_out else proc.returncode
    finally:
        if log:
            log.close()
    return ProcessResult(
        exit_code=exit_code,
        timed_out=timed_out,
        duration_s=time.monotonic() - started,
        output_tail="".join(tail),
    )


def _wait(proc: Runner, timeout_s: float | None, stop: Callable[[], bool] | None) -> bool:
    """True when the process ended on its own; False at the time limit or when stopped."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        slice_s = (
            left if stop is None else min(left if left is not None else STOP_POLL_S, STOP_POLL_S)
        )
        try:
            proc.wait(timeout=slice_s)
            return True
        except subprocess.TimeoutExpired:
            if (deadline is not None and time.monotonic() >= deadline) or (stop and stop()):
                return False


def _copy_output(proc: Runner, tail: deque[str], log: BinaryIO | None) -> None:
    assert proc.stdout is not None
    redactor = current_redactor()
    for line in iter(proc.stdout.readline, b""):
        raw = redactor.bytes(line)
        if log:
            log.write(raw)
            log.flush()
        tail.append(raw.decode(errors="replace"))
    proc.stdout.close()


def kill_group(proc: Runner) -> None:
    """SIGTERM the process group, then SIGKILL whatever is still there after a grace period.

    The reaper at the head of the group ends what left the group when it gets the SIGTERM.
    """
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + KILL_GRACE_S
    while time.monotonic() < deadline:
        proc.poll()
        if not _group_alive(proc.pid):
            break
        time.sleep(0.05)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _group_alive(pgid: int) -> bool:
    """True while a live (non-zombie) process remains in the group; zombies may never be
    reaped in a container whose PID 1 does not wait for orphans."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        return True
    for stat in proc_dir.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
