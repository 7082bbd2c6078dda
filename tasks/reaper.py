"""The runner between Flotilla and an agent or test command: nothing the command starts outlives it.

    python -I -S reaper.py -- COMMAND [ARG...]      one command, then exit
    python -I -S reaper.py --serve FD               fork a runner per request (tasks/spawner.py)

A runner runs COMMAND, waits for it, ends every process COMMAND left behind, and exits with
COMMAND's status (or dies of the same signal). Why it works this way:

- A process group or session is not a boundary: `setsid cmd &` or a double fork leaves both, and
  the orphan is re-parented to init, where nobody can tell which unit it came from.
- The runner makes itself a child subreaper (`prctl(PR_SET_CHILD_SUBREAPER)`, Linux >= 3.4), so
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

A runner starts once per agent call and test run, so its start is part of every unit's fixed
cost. Starting this interpreter costs about 21 ms of CPU even kept lean (`-I -S`, `_signal`
rather than `signal`, which imports `enum`; no `contextlib`); so Flotilla starts it once per
process as a server (`serve`), which forks a runner per command for about 5 ms of CPU in all.
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
# Python ignores SIGPIPE and SIGXFSZ; a command must not inherit that (`yes | head` would
# complain of a broken pipe instead of ending quietly).
DEFAULT_SIGNALS = (*STOP_SIGNALS, signal.SIGPIPE, signal.SIGXFSZ)


class _Stop(Exception):
    pass


_waiting = False
_stopped: list[int] = []
_subreaper = False  # True once this runner adopts orphans and can see its children in /proc


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


def _ending(code: int | None, stopped_by: int | None) -> tuple[str, int]:
    """How the command ended, from its wait status (None if it was stopped first):
    ("exit", its exit code) or ("signal", the signal it died of, or was stopped by)."""
    if code is not None and not os.WIFSIGNALED(code):
        return "exit", os.waitstatus_to_exitcode(code)
    return "signal", os.WTERMSIG(code) if code is not None else stopped_by or signal.SIGTERM


def _end_as(how: str, value: int) -> None:
    """Exit as the command did: its exit code, or death by its signal."""
    if how == "signal":
        try:  # noqa: SIM105 - as above
            signal.signal(value, signal.SIG_DFL)
        except (OSError, ValueError):  # SIGKILL cannot be caught anyway
            pass
        os.kill(os.getpid(), value)
        time.sleep(1)
        os._exit(128 + value)
    sys.stderr.flush()
    os._exit(value)  # not sys.exit: a forked runner must not unwind


def _run(command_argv: list[str], environ: dict[str, str]) -> tuple[int | None, int | None]:
    """Run the command to its end and end what it left: (its wait status, the stop signal)."""
    global _waiting
    global _subreaper
    _subreaper = _prctl(PR_SET_CHILD_SUBREAPER, 1) and os.path.isdir("/proc")
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_signal)
    try:  # a spawn, not a fork; the command starts with these signals at their defaults
        pid = os.posix_spawnp(command_argv[0], command_argv, environ, setsigdef=DEFAULT_SIGNALS)
    except OSError as exc:
        sys.stderr.write(f"flotilla: cannot run {command_argv[0]!r}: {exc.strerror}\n")
        sys.stderr.flush()
        return (127 if isinstance(exc, FileNotFoundError) else 126) << 8, None
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
    return (status[0] if status else None), (_stopped[0] if _stopped else None)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--serve"] and len(argv) == 2:
        serve(int(argv[1]))
        return
    if len(argv) < 2 or argv[0] != "--":
        sys.stderr.write("usage: reaper.py -- COMMAND [ARG...]  |  reaper.py --serve FD\n")
        sys.exit(2)
    _end_as(*_ending(*_run(argv[1:], dict(os.environ))))


# Serving: one long-lived process per Flotilla process forks a runner per command, because
# starting this interpreter costs about 20 ms of CPU a command and a fork about one.
# Protocol, over a Unix socket pair whose other end Flotilla holds (tasks/spawner.py): each
# request is one byte carrying three descriptors, [connection, stdin, output]. The forked
# runner reads {"argv", "cwd", "env"} as JSON from the connection until Flotilla shuts its
# side, answers "pid N" once it leads a session of its own in `cwd` (or "error ERRNO" when it
# cannot enter it), and "exit STATUS" or "signal N" when done, then ends the same way. The
# server exits when Flotilla's end closes: its runners carry on like the one-shot ones do.


def serve(control_fd: int) -> None:
    import json  # noqa: F401 - imported once here, so each forked runner has it already
    import socket

    control = socket.socket(fileno=control_fd)
    signal.signal(signal.SIGCHLD, _reap_runners)
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(control, 1, 3)
        except OSError:
            return
        if not data:
            return
        if len(fds) == 3 and os.fork() == 0:
            try:
                control.close()
                _serve_one(*fds)
            finally:
                os._exit(125)
        for fd in fds:
            os.close(fd)


def _reap_runners(_signum: int, _frame: object) -> None:
    _reap(-1, [])  # the server has no command of its own: collect every runner that ended


def _serve_one(conn_fd: int, stdin_fd: int, output_fd: int) -> None:
    """In the forked runner: take the request, run it as the one-shot runner would, report."""
    import json
    import socket

    for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    os.setsid()
    os.set_inheritable(conn_fd, False)  # descriptors that came in a message are inheritable
    conn = socket.socket(fileno=conn_fd)
    chunks = []
    while chunk := conn.recv(1 << 16):
        chunks.append(chunk)
    request = json.loads(b"".join(chunks))
    try:
        os.chdir(request["cwd"])
    except OSError as exc:
        conn.sendall(f"error {exc.errno}\n".encode())
        os._exit(126)
    os.dup2(stdin_fd, 0)
    os.dup2(output_fd, 1)
    os.dup2(output_fd, 2)
    os.close(stdin_fd)
    os.close(output_fd)
    os.environ.clear()  # posix_spawnp looks the command up on this process's own PATH
    os.environ.update(request["env"])
    conn.sendall(f"pid {os.getpid()}\n".encode())
    how, value = _ending(*_run(request["argv"], request["env"]))
    report = f"{how} {value}"
    if _subreaper:  # nothing the command started is left: Flotilla need not look for any
        report += " clean"
    try:  # noqa: SIM105 - as above
        conn.sendall(f"{report}\n".encode())
    except OSError:  # Flotilla is gone: end the same way all the same
        pass
    conn.close()
    _end_as(how, value)


if __name__ == "__main__":
    main(sys.argv[1:])
