"""Starting a command under its own runner (`tasks/reaper.py`) without a new interpreter per command.

Each Flotilla process (the orchestrator, a worker's unit flow run) starts one reaper server on
first use and asks it for a runner per command; the server forks one (about 1 ms of CPU, where
starting the runner's interpreter cost about 20). The runner is the same code either way, so a
command still runs in a session of its own under a subreaper that ends what it leaves behind.

The server starts with only the basic environment, so neither it nor a runner (whose parent it
is) shows Flotilla's own variables in /proc to an agent; each command gets exactly the
environment run_process was given. It ends when this process's end of its socket closes, even
after a kill -9; runners already started carry on, as one-shot runners did.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

from flotilla.environment import basic_env

REAPER = Path(__file__).with_name("reaper.py")
GONE = (
    f"Flotilla's runner server ({REAPER} --serve) ended before it could start the command; its "
    "error, if any, is on Flotilla's stderr"
)


class _Lines:
    """Lines from a runner's connection, kept across reads (the pid and the end may come at once)."""

    def __init__(self, conn: socket.socket):
        self.conn = conn
        self.buffer = b""

    def next(self, timeout: float | None = None) -> str:
        """The next line; "" once the runner closed without one. TimeoutError at `timeout`."""
        self.conn.settimeout(timeout)
        while b"\n" not in self.buffer:
            try:
                chunk = self.conn.recv(256)
            except BlockingIOError:  # timeout 0 makes the socket non-blocking
                raise TimeoutError from None
            if not chunk:
                return ""
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()


class Runner:
    """A started command, seen through its runner: the parts of `subprocess.Popen` Flotilla uses."""

    def __init__(self, lines: _Lines, pid: int, stdin: IO[bytes] | None, stdout: IO[bytes]):
        self._lines = lines
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.returncode: int | None = None
        self.left_nothing = False  # the runner saw to it that nothing the command started lives

    def wait(self, timeout: float | None = None) -> int:
        """The command's exit code, negative for death by a signal, like Popen.returncode."""
        if self.returncode is not None:
            return self.returncode
        try:
            line = self._lines.next(timeout)
        except TimeoutError:
            raise subprocess.TimeoutExpired(f"runner {self.pid}", timeout or 0) from None
        self._lines.conn.close()
        how, _, rest = line.partition(" ")  # "exit N", "signal N", either + " clean"; or ""
        value, _, flag = rest.partition(" ")
        self.left_nothing = flag == "clean"
        if how == "exit":
            self.returncode = int(value)
        elif how == "signal":
            self.returncode = -int(value)
        else:  # killed before it could say: SIGKILL is the only signal it cannot catch
            self.returncode = -signal.SIGKILL
        return self.returncode

    def poll(self) -> int | None:
        try:
            return self.wait(timeout=0)
        except subprocess.TimeoutExpired:
            return None


class _Server:
    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.owner = os.getpid()
        self.control = ours
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-S", str(REAPER), "--serve", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                env=basic_env(os.environ),
                cwd="/",
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )


_lock = threading.Lock()
_server: _Server | None = None


@atexit.register
def _stop_server() -> None:
    """Close the server's socket and reap it, so its CPU is counted as this process's children's."""
    if _server is not None and _server.owner == os.getpid():
        _server.control.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            _server.process.wait(timeout=5)


def spawn(argv: list[str], *, cwd: Path, env: dict[str, str], stdin: bool) -> Runner:
    """Start `argv` in `cwd` with exactly `env`, its output (stdout and stderr) on one pipe.

    Raises OSError, as Popen does, when the runner cannot enter `cwd`."""
    conn, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    out_read, out_write = os.pipe()
    in_read, in_write = os.pipe() if stdin else (os.open(os.devnull, os.O_RDONLY), -1)
    with theirs:
        try:
            _send_request([theirs.fileno(), in_read, out_write])
        finally:
            os.close(in_read)
            os.close(out_write)
    stdout = os.fdopen(out_read, "rb")
    stdin_file = os.fdopen(in_write, "wb") if stdin else None
    lines = _Lines(conn)
    try:
        conn.sendall(json.dumps({"argv": argv, "cwd": str(cwd), "env": env}).encode())
        conn.shutdown(socket.SHUT_WR)
        reply = lines.next()
    except OSError:  # the server ended with the request unread
        reply = ""
    how, _, value = reply.partition(" ")
    if how != "pid":
        for end in (conn, stdout, stdin_file):
            if end:
                end.close()
        if how != "error":
            raise OSError(f"cannot start {argv[0]!r}: {GONE}")
        code = int(value)
        raise OSError(code, f"cannot start {argv[0]!r} in {cwd}: {os.strerror(code)}", str(cwd))
    return Runner(lines, int(value), stdin_file, stdout)


def _send_request(fds: list[int]) -> None:
    """Hand the runner's descriptors to this process's server, starting it (again) if needed."""
    global _server
    with _lock:
        for attempt in range(2):
            if _server is None or _server.owner != os.getpid():
                _server = _Server()
            try:
                socket.send_fds(_server.control, [b"r"], fds)
                return
            except OSError as exc:  # it died (someone killed it): start another once
                _server.control.close()
                _server = None
                if attempt:
                    raise OSError(f"cannot start a command: {GONE}") from exc
