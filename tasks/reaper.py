"""The runner between Flotilla and an agent or test command: nothing the command starts outlives it.

    python -I -S reaper.py -- COMMAND [ARG...]

It runs COMMAND, waits for it, ends every process COMMAND left behind, and exits with COMMAND's
status (or dies of the same signal). Why it works this way:

- A process group or session is not a boundary: `setsid cmd &` or a double fork leaves both, and
  the orphan is re-parented to init, where nobody can tell which unit it came from.
- This runner makes itself a child subreaper (`prctl(PR_SET_CHILD_SUBREAPER)`, Linux >= 3.4), so
  every orphan of its subtree is re-parented to it instead. Once COMMAND has exited, the
  runner's remaining children are exactly what COMMAND left behind, however it detached: they
  get SIGTERM, then SIGKILL after a grace period, and are reaped (their own orphans come back to
  the runner in turn, until none is left).
- It is its own small process, one per command, because making Flotilla itself the subreaper
  would mix the orphans of units running side by side in threads, and reaping them would race
  with the waits of Flotilla's other subprocesses (git, a Prefect server).
- A cgroup would also hold processes that escape by stranger means, but needs a writable cgroup
  hierarchy (root or systemd delegation), which containers and CI machines rarely give.
- A SIGTERM from Flotilla (a time limit) ends the whole subtree the same way. When Flotilla
  itself dies (kill -9), the runner and its agent carry on like any orphan, in a session of
  their own whose working directory is the worktree: `flotilla resume` finds and ends them
  (`tasks.recovery.kill_orphans`) before the unit runs again.
- Without prctl or /proc (not Linux), it still runs COMMAND in its process group, which
  Flotilla ends as a whole afterwards.

It starts once per agent call and test run, so its start is part of every unit's fixed cost:
standard library only, started with `-I -S`, no module that pulls in others (`_signal` rather
than `signal`, which imports `enum`; no `contextlib`), and the command spawned rather than forked.
That is about 21 ms of CPU per command instead of 34 (Python's own start is 11 of them).
"""

from __future__ import annotations

import _signal as signal  # `signal` without the enum wrappers: same functions and numbers
import ctypes
import os
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
GRACE_S = 2.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _Stop(Exception):
    pass


_waiting = False
_stopped: list[int] = []


def _on_signal(signum: int, _frame: object) -> None:
    _stopped.append(signum)
    if _waiting:
        raise _Stop


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _children() -> list[tuple[int, str]]:
    """(pid, state) of this process's children, found through /proc (empty without it)."""
    me, found = os.getpid(), []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == me:
            found.append((int(entry), fields[0].decode()))
    return found


def _reap(command: int, status: list[int]) -> None:
    """Collect every child that has exited; remember the command's own status."""
    while True:
        try:
            pid, code = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == command:
            status.append(code)


def _end_leftovers(command: int, status: list[int]) -> None:
    """SIGTERM every remaining child (adopted orphans included), SIGKILL after GRACE_S."""
    deadline = time.monotonic() + GRACE_S
    termed: set[int] = set()
    while True:
        _reap(command, status)
        live = [pid for pid, state in _children() if state != "Z"]
        if not live:
            _reap(command, status)
            return
        late = time.monotonic() > deadline
        for pid in live:
            if late or pid not in termed:
                try:  # noqa: SIM105 - importing contextlib would slow every start
                    os.kill(pid, signal.SIGKILL if late else signal.SIGTERM)
                except ProcessLookupError:
                    pass
                termed.add(pid)
        time.sleep(0.02)


def _exit_like(code: int | None, stopped_by: int | None) -> None:
    """Exit as the command did: its exit code, or death by its signal."""
    sig = None
    if code is not None and os.WIFSIGNALED(code):
        sig = os.WTERMSIG(code)
    elif code is None:
        sig = stopped_by or signal.SIGTERM
    if sig is not None:
        try:  # noqa: SIM105 - as above
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):  # SIGKILL cannot be caught anyway
            pass
        os.kill(os.getpid(), sig)
        time.sleep(1)
        os._exit(128 + sig)
    assert code is not None
    sys.exit(os.waitstatus_to_exitcode(code))


def main(argv: list[str]) -> None:
    global _waiting
    if len(argv) < 2 or argv[0] != "--":
        sys.stderr.write("usage: reaper.py -- COMMAND [ARG...]\n")
        sys.exit(2)
    command_argv = argv[1:]
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_signal)
    try:  # a spawn, not a fork: the command starts with the stop signals at their defaults
        pid = os.posix_spawnp(command_argv[0], command_argv, os.environ, setsigdef=STOP_SIGNALS)
    except OSError as exc:
        sys.stderr.write(f"flotilla: cannot run {command_argv[0]!r}: {exc.strerror}\n")
        sys.stderr.flush()
        os._exit(127 if isinstance(exc, FileNotFoundError) else 126)
    status: list[int] = []
    try:
        _waiting = True
        while not status and not _stopped:
            try:
                done, code = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            if done == pid:
                status.append(code)
    except _Stop:
        pass
    finally:
        _waiting = False
    _end_leftovers(pid, status)
    _exit_like(status[0] if status else None, _stopped[0] if _stopped else None)


if __name__ == "__main__":
    main(sys.argv[1:])
