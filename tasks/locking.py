"""One writer per run key: an exclusive, renewed lease on the run in the store.

Two `flotilla run` (or `resume`, `retry`) of one key at once would delete each other's worktrees
and pay every agent twice. So a writer first claims `runs/<key>/lock/<generation>.json` with an
exclusive create: a hard link that fails on an existing name locally, a conditional PUT
(`If-None-Match: *`) on S3. Of two processes that claim one generation, exactly one wins.

The holder renews a heartbeat in that object from a background thread. A lock is free again when
its holder released it, when its heartbeat is older than its time to live (a crashed holder on
another machine), or at once when its holder is a dead process on this machine; the next writer
then claims the next generation, which again only one can win. Generations only grow, so no
writer ever deletes a lock another writer has just taken.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import datetime, timedelta
from types import TracebackType

from pydantic import BaseModel

from flotilla.errors import RunLocked
from flotilla.results import utcnow
from flotilla.settings import get_settings
from tasks.liveness import process_alive
from tasks.store import ArtifactStore, RunStore
from tasks.store_faults import retry_budget

log = logging.getLogger("flotilla.locking")

_CLAIM_TRIES = 5
_held: dict[tuple[str, str], RunLock] = {}  # locks this process holds, for re-entry
_held_guard = threading.Lock()


class LockInfo(BaseModel):
    """`runs/<key>/lock/<generation>.json`: who holds the run, since when, still alive when."""

    run_key: str
    generation: int
    token: str
    command: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    ttl_s: float
    released: bool = False

    def free(self, now: datetime) -> bool:
        """Whether another writer may take the run: released, expired, or its holder is dead."""
        if self.released or now - self.heartbeat_at > timedelta(seconds=self.ttl_s):
            return True
        return self.host == socket.gethostname() and not process_alive(self.pid)

    def holder(self, now: datetime) -> str:
        age = max(0.0, (now - self.heartbeat_at).total_seconds())
        return (
            f"pid {self.pid} on {self.host}, started {self.started_at:%Y-%m-%d %H:%M:%S} UTC by "
            f"{self.command}, last heartbeat {age:.0f} s ago"
        )


class RunLock:
    """The run's lock, held from `acquire()` to `release()`; a context manager."""

    def __init__(self, runs: RunStore, command: str, ttl_s: float | None = None):
        self.runs = runs
        self.command = command
        self.ttl_s = ttl_s if ttl_s is not None else get_settings().lock_ttl_s
        self.info: LockInfo | None = None
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def prefix(self) -> str:
        return f"{self.runs.prefix}/lock"

    def key(self, generation: int) -> str:
        return f"{self.prefix}/{generation}.json"

    # -- taking and giving back ----------------------------------------------------------------

    def acquire(self) -> RunLock:
        """Take the lock or raise RunLocked naming the live holder and how to stop it."""
        for _ in range(_CLAIM_TRIES):
            latest = self._latest()
            now = utcnow()
            if latest is not None and not latest.free(now):
                raise RunLocked(self._refusal(latest, now))
            generation = latest.generation + 1 if latest else 1
            info = LockInfo(
                run_key=self.runs.run_key,
                generation=generation,
                token=uuid.uuid4().hex,
                command=self.command,
                host=socket.gethostname(),
                pid=os.getpid(),
                started_at=now,
                heartbeat_at=now,
                ttl_s=self.ttl_s,
            )
            if self.runs.store.create(self.key(generation), _encode(info)) or self._ours(info):
                self.info = info
                self._forget_older(generation)
                self._start_heartbeat()
                return self
        latest = self._latest()
        raise RunLocked(self._refusal(latest, utcnow()) if latest else "the run's lock is busy")

    def release(self) -> None:
        """Stop the heartbeat and mark the lock released (unless another writer took it).

        A store that cannot be reached now is no reason to fail: the lock of a process that
        has ended is free anyway (its pid is gone, and its heartbeat soon expires)."""
        self._stop.set()
        info, self.info = self.info, None
        if self._thread is not None:
            self._thread.join(timeout=1.0)  # a beat stuck on an unreachable store is not waited
        if info is None:
            return
        try:
            with retry_budget(min(self.ttl_s, 5.0)):
                if not self.lost and not self._superseded(info):
                    done = info.model_copy(update={"released": True, "heartbeat_at": utcnow()})
                    self.runs.store.write_bytes(self.key(info.generation), _encode(done))
        except Exception as exc:
            log.warning("Run %s: could not release the run's lock: %s", info.run_key, exc)

    def __enter__(self) -> RunLock:
        return self.acquire() if self.info is None else self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    # -- inside ----------------------------------------------------------------------------------

    def _latest(self) -> LockInfo | None:
        generations = sorted(self._generations(), reverse=True)
        for generation in generations:
            try:
                return self.runs.store.read_model(self.key(generation), LockInfo)
            except KeyError:  # removed by a newer holder between listing and reading
                continue
        return None

    def _generations(self) -> list[int]:
        found = []
        for key in self.runs.store.list(self.prefix):
            name = key.rsplit("/", 1)[-1].removesuffix(".json")
            if name.isdigit():
                found.append(int(name))
        return found

    def _superseded(self, info: LockInfo) -> bool:
        return any(g > info.generation for g in self._generations())

    def _ours(self, info: LockInfo) -> bool:
        """After a lost answer to our create: is the object there the one we sent?"""
        try:
            there = self.runs.store.read_model(self.key(info.generation), LockInfo)
        except KeyError:
            return False
        return there.token == info.token

    def _forget_older(self, generation: int) -> None:
        for older in self._generations():
            if older < generation:
                self.runs.store.delete(self.key(older))

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._beat, name=f"flotilla-lock-{self.runs.run_key}", daemon=True
        )
        self._thread.start()

    def _beat(self) -> None:
        interval = max(self.ttl_s / 4, 0.05)
        while not self._stop.wait(interval):
            info = self.info
            if info is None:
                return
            try:
                with retry_budget(self.ttl_s / 2):
                    superseded = self._superseded(info)
                if superseded:
                    self.lost = True
                    log.error(
                        "Run %s: another writer took the run's lock (its heartbeat here was "
                        "late by more than %.0f s). Stop this process.",
                        info.run_key,
                        self.ttl_s,
                    )
                    return
                info = info.model_copy(update={"heartbeat_at": utcnow()})
                if self._stop.is_set():
                    return  # released meanwhile: a beat now would undo the release
                with retry_budget(self.ttl_s / 2):
                    self.runs.store.write_bytes(self.key(info.generation), _encode(info))
                if self.info is not None:
                    self.info = info
            except Exception as exc:  # the next beat tries again; the TTL allows a few misses
                log.warning("Run %s: could not renew the run's lock: %s", info.run_key, exc)

    def _refusal(self, latest: LockInfo, now: datetime) -> str:
        key = self.runs.run_key
        return (
            f"Run {key} is already running ({latest.holder(now)}); one writer per run key. "
            f"Stop it with `flotilla pause {key}` (or `kill {latest.pid}` on {latest.host}) or "
            f"wait for it to end; a lock whose holder died expires {latest.ttl_s:.0f} s after "
            "its last heartbeat."
        )


def _encode(info: LockInfo) -> bytes:
    return info.model_dump_json(indent=2).encode("utf-8") + b"\n"


class hold_run_lock:
    """`with hold_run_lock(store_url, key, "flotilla run"):` - re-entrant within one process."""

    def __init__(self, store_url: str, run_key: str, command: str):
        self.slot = (ArtifactStore(store_url).url, run_key)
        self.runs = RunStore(ArtifactStore(store_url), run_key)
        self.command = command
        self.lock: RunLock | None = None

    def __enter__(self) -> RunLock:
        with _held_guard:
            held = _held.get(self.slot)
            if held is not None:
                return held
            self.lock = RunLock(self.runs, self.command).acquire()
            _held[self.slot] = self.lock
            return self.lock

    def __exit__(self, *exc_info: object) -> None:
        if self.lock is None:
            return
        with _held_guard:
            _held.pop(self.slot, None)
        self.lock.release()
