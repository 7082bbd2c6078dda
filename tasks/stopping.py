"""Stopping a run cleanly, whatever its main thread is doing: on SIGTERM or SIGINT, and when the
Prefect API stays unreachable longer than FLOTILLA_API_WAIT_S.

Prefect swaps in its own SIGTERM handler while a flow runs, and its teardown waits for the task
threads, whose agents may run for hours; an API that went away makes its client wait and retry.
So neither the signal nor the outage is handled on the main thread: a signal only wakes a
watcher thread (through `signal.set_wakeup_fd`, which fires whatever handler is installed), and
a second thread probes the API's /health. Either one stops the run the same way: kill the
agents' process groups (and every other child, such as a temporary server), note in the run's
summary why it stopped, print the resume command, and leave the process at once. Every unit
verdict is already in the ledger, written atomically, so nothing is lost but the units in flight.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import httpx

from flotilla.errors import ApiUnreachable
from flotilla.results import RunState, UnitStatus, utcnow
from flotilla.settings import get_settings
from tasks.api_retries import ClientRetryNotice, say_client_retries
from tasks.recovery import kill_orphans

EXIT_API_UNREACHABLE = ApiUnreachable.exit_code
PROBE_EVERY_S = 2.0
STATUS_EVERY_S = 15.0
KILL_GRACE_S = 2.0
SUMMARY_WRITE_S = 3.0

_guard: RunGuard | None = None


class RunGuard:
    """Installed by `flotilla run` and `resume` around the feature flow, in the main thread."""

    def __init__(self, run_key: str, store_url: str, workdir: str):
        self.run_key, self.store_url, self.workdir = run_key, store_url, workdir
        self.api_wait_s = get_settings().api_wait_s
        self.api_url = ""
        self.api_down_since: float | None = None
        self.api_was_down = False
        self._stopping = threading.Lock()
        self._retry_notice: ClientRetryNotice | None = None
        self._raise_exceptions_before = logging.raiseExceptions
        self._quiet_lock = threading.Lock()
        self.done = False

    # -- signals ---------------------------------------------------------------------------

    def install(self) -> RunGuard:
        global _guard
        _guard = self
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        self._reader, self._wake = reader, writer
        self._previous_fd, self._previous = -1, {}
        if threading.current_thread() is not threading.main_thread():
            return self  # an in-process caller off the main thread keeps its own signals
        self._previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        self._previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGTERM, signal.SIGINT)
        }
        threading.Thread(
            target=self._watch_signals, args=(reader,), name="flotilla-signals", daemon=True
        ).start()
        return self

    def uninstall(self) -> None:
        """The command is over (in-process callers such as tests carry on): hand the signals
        back and let the watcher threads end."""
        global _guard
        self.done = True
        if self._previous:  # installed on the main thread
            signal.set_wakeup_fd(self._previous_fd)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        with contextlib.suppress(OSError):
            self._wake.send(b"\0")  # wakes the signal watcher, which sees `done`
        if self._retry_notice is not None:
            self._retry_notice.remove()
        self._quiet_prefect_log_errors(False)
        if _guard is self:
            _guard = None

    def _on_signal(self, signum, _frame) -> None:
        # Runs on the main thread when it gets a chance; the wakeup fd has already fired.
        with contextlib.suppress(OSError):
            self._wake.send(bytes([signum]))

    def _watch_signals(self, reader: socket.socket) -> None:
        while not self.done:
            data = reader.recv(16)
            signums = [b for b in data if b in (signal.SIGTERM, signal.SIGINT)]
            if signums and not self.done:
                name = signal.Signals(signums[0]).name
                self.stop(
                    f"Stopped on {name}", f"stopped on {name}", 128 + signums[0], api_down=False
                )

    # -- the Prefect API -------------------------------------------------------------------

    def watch_api(self, api_url: str) -> None:
        """Probe the API from now on; started once the run knows its API (a temporary server
        gets its address when it starts)."""
        if self.api_url:
            return
        self.api_url = api_url.rstrip("/")
        self._retry_notice = say_client_retries(_say)  # 503 for a minute is not unreachable
        threading.Thread(target=self._watch_api, name="flotilla-api-watch", daemon=True).start()

    def api_reachable(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/health", timeout=3.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _watch_api(self) -> None:
        said_at = 0.0
        while not self.done:
            time.sleep(PROBE_EVERY_S)
            if self.done:
                return
            now = time.monotonic()
            if self.api_reachable():
                if self.api_down_since is not None:
                    _say(
                        f"Prefect API at {self.api_url} is back after {now - self.api_down_since:.0f} s."
                    )
                    self._quiet_prefect_log_errors(False)
                self.api_down_since = None
                continue
            if self.api_down_since is None:
                self.api_down_since, self.api_was_down, said_at = now, True, now
                self._quiet_prefect_log_errors(True)
                _say(
                    f"Prefect API at {self.api_url} unreachable; waiting up to "
                    f"{self.api_wait_s:.0f} s for it to come back (units in flight carry on)."
                )
            down = now - self.api_down_since
            if down >= self.api_wait_s:
                self.stop_for_api()
            if now - said_at >= STATUS_EVERY_S:
                said_at = now
                _say(f"Still waiting for the Prefect API at {self.api_url} ({down:.0f} s).")

    def _quiet_prefect_log_errors(self, quiet: bool) -> None:
        """While the API is down, Prefect's log worker would write "--- Error logging to API ---"
        and the error to stderr on every batch: nothing the guard does not say, and with no
        newline, so it can end up glued to the front of the guard's last line. It writes only
        while `logging.raiseExceptions` holds (as the standard library's handlers do).

        A probe that ends after `uninstall` (the run over, its temporary server gone) must not
        quiet them again: that would outlive the guard, in a process that carries on."""
        with self._quiet_lock:
            if quiet and self.done:
                return
            logging.raiseExceptions = False if quiet else self._raise_exceptions_before

    def stop_for_api(self) -> None:
        line = (
            f"Prefect API at {self.api_url} unreachable for {self.api_wait_s:.0f} s; the run is "
            f"saved: `flotilla resume {self.run_key}`"
        )
        self.stop(line, "the Prefect API was unreachable", EXIT_API_UNREACHABLE, api_down=True)

    def settle(self) -> None:
        """After the flow returned: if the API is down right now, the outage decides how the
        run ends (back within the wait, or a stop at its end)."""
        while self.api_down_since is not None and not self.done:
            time.sleep(0.2)

    # -- the stop --------------------------------------------------------------------------

    def stop(self, line: str, why: str, code: int, api_down: bool) -> None:
        """Kill the agents, note the stop in the run's summary, say how to resume, leave."""
        if not self._stopping.acquire(blocking=False):
            return
        # The stop line must be the run's last: a unit that sees its agent killed would log
        # Prefect's "Task run failed" after it (it did not fail; `_note_stop` says so).
        logging.disable(logging.CRITICAL)
        in_flight: list = []
        _bounded(lambda: in_flight.extend(_units_in_flight(self.store_url, self.run_key)), 2.0)
        killed = kill_children() + kill_orphans(Path(self.workdir))
        killed = sorted({*killed, *kill_children()})  # an attempt its unit started meanwhile
        # a unit whose agent was just killed may have written a failure: it did not fail
        _bounded(lambda: _note_stop(self.store_url, self.run_key, why, in_flight), SUMMARY_WRITE_S)
        if not api_down:
            line += (
                f" (killed {len(killed)} agent or server process group(s)); the run is saved: "
                f"`flotilla resume {self.run_key}`"
            )
        _say(line)
        sys.stdout.flush()
        os._exit(code)


def watch_api() -> None:
    """Have the installed guard (if any: a flow run started by a worker has none) watch the
    API this process talks to."""
    if _guard is None:
        return
    from prefect import get_client

    with get_client(sync_client=True) as client:
        _guard.watch_api(str(client.api_url))


def kill_children() -> list[int]:
    """SIGTERM every child of this process (an agent leads a process group of its own: the whole
    group), then SIGKILL what is left after a short grace; return the pids."""
    me = os.getpid()
    children: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == me:
                children.append(int(stat.parent.name))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(pid) == pid:
                    os.killpg(pid, sig)
                else:
                    os.kill(pid, sig)
        if sig == signal.SIGTERM:
            deadline = time.monotonic() + KILL_GRACE_S
            while time.monotonic() < deadline and any(_alive(p) for p in children):
                time.sleep(0.05)
    return children


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _units_in_flight(store_url: str, run_key: str) -> list:
    from tasks.store import ArtifactStore, RunStore

    ledger = RunStore(ArtifactStore(store_url), run_key).read_ledger()
    return [r for r in ledger.values() if r.status == UnitStatus.RUNNING]


def _note_stop(store_url: str, run_key: str, why: str, in_flight: list) -> None:
    from tasks.lifecycle import read_summary
    from tasks.store import ArtifactStore, RunStore

    runs = RunStore(ArtifactStore(store_url), run_key)
    for record in in_flight:
        runs.write_record(record)
    summary = read_summary(runs)
    if summary is None or summary.state != RunState.RUNNING:
        return
    runs.store.write_json(
        runs.state_key,
        summary.model_copy(
            update={
                "state": RunState.FAILED,
                "finished_at": utcnow(),
                "error": f"{why}; `flotilla resume {run_key}` carries the run on",
            }
        ),
    )


def _bounded(work, seconds: float) -> None:
    """Run `work` in a thread, waiting at most `seconds` (a store that hangs must not)."""
    thread = threading.Thread(target=lambda: _quietly(work), daemon=True)
    thread.start()
    thread.join(seconds)


def _quietly(work) -> None:
    with contextlib.suppress(Exception):
        work()


def _say(line: str) -> None:
    sys.stderr.write(f"{line}\n")  # one write: no other thread's text between line and newline
    sys.stderr.flush()
