"""A unit flow run's engine, forked from an interpreter that has Prefect imported already.

    python -m deployments.warm_engine [FLOW_RUN_ID]       the `unit` deployment's command
    python -m deployments.warm_engine --serve SOCKET WORKER_PID [ENGINE_MODULE]
                                                          an engine server (the command starts it)

A process worker starts a new interpreter for every flow run, and `python -m prefect.engine`
spends about 1.9 s of CPU importing Prefect and Flotilla before the unit's first line: on a
worker that runs units of a few seconds, most of its CPU. So the first flow run a worker starts
starts an *engine server* for that worker instead, which imports all that once; every flow run
of the worker is then forked from it. Why it works this way:

- The command the worker starts stays the flow run's process for the worker: it hands its stdin,
  stdout and stderr to the forked engine, passes on SIGTERM, SIGINT and SIGHUP, and ends with
  the engine's exit status (or dies of its signal). When the command is killed outright, the
  engine sees its connection close and kills itself and everything it started, as killing a
  cold engine's process tree would.
- A server belongs to one worker process (it exits within a second of the worker) and one
  environment: a command whose variables differ, other than the per-run `PREFECT__*` ones,
  finds another server. Prefect reads its settings when it is imported, so a server must only
  serve the environment it was started with.
- A server stops forking once a source file it imported (Flotilla's own, or Prefect's profiles)
  has changed: the command starts a successor, which imports the new code.
- A server that dies while it starts (its log, next to its socket, says why) or takes longer
  than a cold start could (SERVER_START_S) leaves the command to run `python -m prefect.engine`
  itself, as do other commands while it is still starting (`<socket>.starting` names it), so
  that servers never pile up. FLOTILLA_WARM_ENGINE=0 runs every engine cold.

Protocol over the server's Unix socket: the command sends an 8-byte length with its three
descriptors, then that many bytes of JSON {argv, env, cwd}. The server answers "pid N" once the
engine is forked (or "stale"), then "exit N" or "signal N" when the engine has ended.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import signal
import socket
import stat
import struct
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from tasks.liveness import process_alive

ROOT = Path(__file__).resolve().parents[1]
PER_RUN_PREFIX = "PREFECT__"  # set by the worker for each flow run; not Prefect settings
ANSWER_TIMEOUT_S = 10.0
SERVER_START_S = 60.0  # a cold engine on a busy machine can take as long to import
ENGINE = "prefect.engine"
RELAYED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # what the command passes on
WARM_MODULES = (  # what `python -m prefect.engine` imports on its way to a unit's first line
    "prefect.engine",
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect._internal.metrics",
    "prefect.deployments.steps",
    "flows.unit",
)


def main(argv: list[str]) -> None:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.split("\n\n")[1])
        raise SystemExit(0)
    if argv[:1] == ["--serve"] and len(argv) in (3, 4):
        engine = argv[3] if len(argv) == 4 else ENGINE
        request = serve(argv[1], int(argv[2]), engine)
        if request is not None:  # in a forked engine: run it as `python -m ENGINE` would
            _become_engine(engine, *request)
        return
    if os.environ.get("FLOTILLA_WARM_ENGINE", "1") == "0":
        _run_cold(argv)
    lasting = lasting_env(os.environ)
    owner = os.getppid()
    path = socket_path(lasting, owner)
    try:
        if _private_folder(Path(path).parent):
            for _attempt in range(2):  # a stale server leaves; its successor has the new code
                conn = _connect(path) or _started_server(path, owner, lasting)
                if conn is None:
                    break
                _run_warm(conn, argv)  # returns only when the server did not take the flow run
    except OSError as exc:
        sys.stderr.write(f"flotilla: no engine server ({exc}); starting the engine cold\n")
    _run_cold(argv)


def lasting_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables every flow run of a worker shares: all but the per-run `PREFECT__*`."""
    return {k: v for k, v in env.items() if not k.startswith(PER_RUN_PREFIX)}


def socket_path(env: Mapping[str, str], owner: int) -> str:
    """Where the server for this worker, interpreter and environment listens."""
    key = json.dumps([sys.executable, owner, sorted(lasting_env(env).items())]).encode()
    folder = Path(env.get("TMPDIR") or "/tmp") / f"flotilla-engine-{os.getuid()}"
    return str(folder / f"{hashlib.sha256(key).hexdigest()[:24]}.sock")


def _private_folder(folder: Path) -> bool:
    """Make the sockets' folder, and check that no other user can reach into it: the command
    sends its environment, secrets included, to whatever listens there."""
    folder.mkdir(mode=0o700, exist_ok=True)
    found = os.lstat(folder)
    if stat.S_ISDIR(found.st_mode) and found.st_uid == os.getuid() and not found.st_mode & 0o077:
        return True
    sys.stderr.write(
        f"flotilla: {folder} is not a directory private to this user (owner uid "
        f"{found.st_uid}, mode {stat.filemode(found.st_mode)}); starting the engine cold. "
        "Remove it, or set TMPDIR to a private directory.\n"
    )
    return False


def _log_path(path: str) -> str:
    """The server's stderr, kept only when it says something."""
    return path.removesuffix(".sock") + ".log"


def _run_cold(argv: list[str]) -> None:
    os.execv(sys.executable, [sys.executable, "-m", "prefect.engine", *argv])


def _connect(path: str) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(ANSWER_TIMEOUT_S)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        return None
    return conn


def _started_server(path: str, owner: int, lasting: dict[str, str]) -> socket.socket | None:
    """Start a server and connect to it once it listens: the flow run waits for the imports it
    would otherwise do itself. None, to run cold, if the server dies or takes too long, or if
    another server is still starting (one slow to import must not have others pile up)."""
    if (starting := _starting_server(path)) and process_alive(starting):
        return None
    server = _start_server(path, owner, lasting)
    _mark_starting(path, server)
    deadline = time.monotonic() + SERVER_START_S
    while (conn := _connect(path)) is None and process_alive(server):
        if time.monotonic() > deadline:
            return None  # still starting: the mark stays until it listens or dies
        time.sleep(0.05)
    if _starting_server(path) == server:  # it listens, or it failed (or lost to another)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}.starting")
    return conn or _connect(path)


def _starting_server(path: str) -> int:
    """The pid of the server a command started that does not listen yet (0 if none)."""
    try:
        with open(f"{path}.starting", "rb") as marker:
            return int(marker.read() or 0)
    except (OSError, ValueError):
        return 0


def _mark_starting(path: str, server: int) -> None:
    """Say that `server` is starting, until it listens (see _listen) or dies."""
    written = f"{path}.starting.{os.getpid()}"
    with open(written, "w") as marker:
        marker.write(str(server))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{path}.starting")  # a dead server's: checked alive before
    with contextlib.suppress(FileExistsError):
        os.link(written, f"{path}.starting")
    os.unlink(written)


def _start_server(path: str, owner: int, lasting: dict[str, str]) -> int:
    """Start the server in a session of its own, not as this process's child (this process may
    become the engine, which waits for no children it did not start); returns its pid."""
    log = os.open(_log_path(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    read_pid, write_pid = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.setsid()
            server = os.fork()
            if server == 0:
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, 0)
                os.dup2(log, 1)
                os.dup2(log, 2)
                os.chdir("/")
                serve = [sys.executable, "-m", "deployments.warm_engine", "--serve", path]
                os.execve(sys.executable, [*serve, str(owner)], lasting)
            os.write(write_pid, str(server).encode())
        finally:
            os._exit(0)
    os.close(write_pid)
    os.waitpid(middle, 0)
    os.close(log)
    with os.fdopen(read_pid, "rb") as pipe:
        return int(pipe.read() or 0)


def _run_warm(conn: socket.socket, argv: list[str]) -> None:
    """Have the server fork the engine, then be its stand-in until it ends, and end the same
    way. Returns only if the server did not take the flow run (stale, gone or stuck)."""
    body = json.dumps({"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}).encode()
    lines = _Lines(conn)
    # From the request on, a signal waits until there is an engine to pass it to: the engine
    # can print (and the worker signal) before the server's "pid" answer reaches this process.
    signal.pthread_sigmask(signal.SIG_BLOCK, RELAYED)
    try:
        socket.send_fds(conn, [struct.pack("!Q", len(body))], [0, 1, 2])
        conn.sendall(body)
        answer = lines.next()
    except OSError:
        answer = ""
    how, _, value = answer.partition(" ")
    if how != "pid":
        conn.close()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, RELAYED)  # one that came ends us, as cold
        return
    engine = int(value)

    def relay(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(engine, signum)

    for sig in RELAYED:
        signal.signal(sig, relay)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, RELAYED)
    conn.settimeout(None)
    how, _, value = lines.next().partition(" ")
    if how == "signal":
        with contextlib.suppress(OSError, ValueError):  # SIGKILL cannot be caught anyway
            signal.signal(int(value), signal.SIG_DFL)
        os.kill(os.getpid(), int(value))
        time.sleep(1)
        os._exit(128 + int(value))
    if how != "exit":
        sys.stderr.write("flotilla: the engine server ended before the flow run's engine did\n")
        os._exit(1)
    os._exit(int(value))


class _Lines:
    """Lines from the server, one at a time (both answers can arrive in one read)."""

    def __init__(self, conn: socket.socket):
        self.conn = conn
        self.buffer = b""

    def next(self) -> str:
        while b"\n" not in self.buffer:
            chunk = self.conn.recv(256)
            if not chunk:
                return ""
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()


# The server.


def serve(
    path: str, owner: int, engine: str = ENGINE
) -> tuple[socket.socket, list[int], dict] | None:
    """Accept commands until the worker `owner` is gone or a source changed. Returns only in a
    forked engine, with its connection, descriptors and request."""
    import importlib

    for name in (*WARM_MODULES, engine):
        importlib.import_module(name)
    sources = _sources()
    if not _private_folder(Path(path).parent):
        return None
    listener = _listen(path)
    if listener is None:
        return None
    wake_r, wake_w = socket.socketpair()
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    signal.signal(signal.SIGCHLD, lambda *_: None)
    engines: dict[int, socket.socket] = {}
    serving = True
    while serving or engines:
        ready, _, _ = select.select([listener, wake_r] if serving else [wake_r], [], [], 1.0)
        if wake_r in ready:
            wake_r.recv(4096)
        _report_ended(engines)
        if serving and not process_alive(owner):
            serving = _stop_serving(listener, path)
        if not serving or listener not in ready:
            continue
        try:
            conn, _ = listener.accept()
        except OSError:  # the command gave up before it was accepted
            continue
        request = _receive(conn)
        if request is None:
            conn.close()
            continue
        fds, body = request
        if _changed(sources):  # gone from `path` first, so the command starts a successor
            serving = _stop_serving(listener, path)
            answer = "stale"
        else:
            pid = os.fork()
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for other in [listener, wake_r, wake_w, *engines.values()]:
                    other.close()
                return conn, fds, body
            engines[pid] = conn
            answer = f"pid {pid}"
        for fd in fds:
            os.close(fd)
        with contextlib.suppress(OSError):  # a command that died meanwhile: its engine follows
            conn.sendall(f"{answer}\n".encode())
        if answer == "stale":
            conn.close()
    return None


def _listen(path: str) -> socket.socket | None:
    """The listening socket at `path`, or None when another server already answers there. It
    appears at `path` already listening (bound elsewhere, then linked), so a command never finds
    a socket that refuses it."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = f"{path}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(bound)
    listener.bind(bound)
    listener.listen(64)
    try:
        while True:
            try:
                os.link(bound, path)
                if _starting_server(path) == os.getpid():
                    os.unlink(f"{path}.starting")
                return listener
            except FileExistsError:
                answer = _connect(path)
                if answer is not None:
                    answer.close()
                    listener.close()
                    return None
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # left by a server that died
    finally:
        os.unlink(bound)


def _stop_serving(listener: socket.socket, path: str) -> bool:
    """Take the socket away (engines already forked run on): returns the new `serving`."""
    listener.close()
    for leftover in (path, _log_path(path)):
        try:
            if leftover == path or os.stat(leftover).st_size == 0:
                os.unlink(leftover)
        except OSError:
            pass
    return False


def _receive(conn: socket.socket) -> tuple[list[int], dict] | None:
    conn.settimeout(ANSWER_TIMEOUT_S)
    try:
        header, fds, _flags, _addr = socket.recv_fds(conn, 8, 3)
        if len(header) != 8 or len(fds) != 3:
            for fd in fds:
                os.close(fd)
            return None
        (size,) = struct.unpack("!Q", header)
        body = bytearray()
        while len(body) < size:
            chunk = conn.recv(min(1 << 16, size - len(body)))
            if not chunk:
                raise ConnectionError("short request")
            body += chunk
    except (OSError, ValueError):
        return None
    conn.settimeout(None)
    for fd in fds:
        os.set_inheritable(fd, False)
    return fds, json.loads(body)


def _report_ended(engines: dict[int, socket.socket]) -> None:
    while engines:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = engines.pop(pid, None)
        if conn is None:
            continue
        if os.WIFSIGNALED(status):
            report = f"signal {os.WTERMSIG(status)}\n"
        else:
            report = f"exit {os.waitstatus_to_exitcode(status)}\n"
        with contextlib.suppress(OSError):
            conn.sendall(report.encode())
        conn.close()


def _sources() -> dict[str, int]:
    """Modification times of what the server imported that can change under it."""
    files = [
        getattr(module, "__file__", None)
        for module in list(sys.modules.values())
        if getattr(module, "__file__", None)
    ]
    watched = [f for f in files if f and Path(f).resolve().is_relative_to(ROOT)]
    home = os.environ.get("PREFECT_HOME", str(Path.home() / ".prefect"))
    watched.append(str(Path(home) / "profiles.toml"))
    return {f: _mtime(f) for f in watched}


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def _changed(sources: dict[str, int]) -> bool:
    return any(_mtime(f) != mtime for f, mtime in sources.items())


def _become_engine(engine: str, conn: socket.socket, fds: list[int], request: dict) -> None:
    """In the forked engine: take the command's place, then run the engine's `__main__`."""
    import runpy
    import threading

    os.setsid()
    for target, fd in zip((0, 1, 2), fds, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    # The watcher blocks every signal, so the engine's signals reach its main thread as in a cold
    # engine: one the kernel gave this thread would leave the main thread asleep, unhandled.
    unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    threading.Thread(target=_die_with_command, args=(conn,), daemon=True).start()
    signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
    sys.argv = [engine, *request["argv"]]
    sys.modules.pop(engine, None)  # run afresh as __main__; what it imports stays warm
    runpy.run_module(engine, run_name="__main__", alter_sys=True)


def _die_with_command(conn: socket.socket) -> None:
    """The command is the flow run's process for the worker: when it is killed, so is this, with
    everything it started (a cold engine's processes are the command's own descendants)."""
    try:
        while conn.recv(256):
            pass
    except OSError:
        pass
    for _round in range(20):  # again, for any the engine started while the last round ran
        victims = [pid for pid in _descendants(os.getpid()) if process_alive(pid)]
        if not victims:
            break
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    os.killpg(0, signal.SIGKILL)


def servers_of(owner: int) -> list[int]:
    """The engine servers of worker `owner`, from /proc: they are not its descendants, so
    whoever counts or ends a worker's processes must look for them here."""
    found: dict[int, int] = {}  # pid -> parent; engines forked by a server share its command line
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                argv = cmdline.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as status:
                parent = int(status.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if b"deployments.warm_engine" in argv and b"--serve" in argv:
            serve_at = argv.index(b"--serve")
            if argv[serve_at + 2 : serve_at + 3] == [str(owner).encode()]:
                found[int(entry)] = parent
    return sorted(pid for pid, parent in found.items() if parent not in found)


def _descendants(root: int) -> list[int]:
    """Every process below `root`, from /proc (none without it)."""
    children: dict[int, list[int]] = {}
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return []
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat", "rb") as status:
                parent = int(status.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


if __name__ == "__main__":
    main(sys.argv[1:])
