"""Resource-class slots on the Prefect server: leases the orchestrator takes, renews and gives back.

The implement loop counts each class's running units itself (flotilla/scheduling.py), so a unit
is submitted only when its class has room in this run. Across runs that share a server, the
`tag:flotilla:<class>` global concurrency limit is the guard: before it submits a unit the
orchestrator asks for one slot with a lease, without waiting (a full class answers 423 at once
and the unit stays pending for a later tick). It renews the leases it holds. When a unit ends its
slot is parked, not released: the next ready unit of the same class takes the lease over (no
round trip, no database write on the server), and the slots no unit took are released before
the scheduler waits again. A run thus holds a class's slot across back-to-back units, as a worker
holds its seat; it gives it back whenever it has no ready unit of that class.

What can leak: a lease lives in the server's memory, `active_slots` in its database. A server
restart forgets the leases but keeps the count, so slots stay taken by nobody; a killed
orchestrator stops renewing, and its leases only expire after their time-to-live. Hence:

- every lease this machine takes is recorded in a local registry (run key, pid, host, flow run,
  lease id), so the slots of a dead run are released at once, not after the lease expires;
- `active_slots` above the number of live leases is a slot held by no one: `reclaim` frees it;
- a renewal answered 410 Gone (the server restarted) does not fail the unit: its slot is taken
  again, and the unit carries on.

The scheduler asks for, gives back and renews slots on its own thread, between ticks, so none of
those requests waits out Prefect's client back-off (2 s, then 4, 8...). A SQLite-backed server
answers 503 at once when another write overtook a transaction's read (SQLITE_BUSY_SNAPSHOT);
after such a *busy* answer (a 5xx, 429, or no answer) no slot request is made for BUSY_WAIT_S,
and then the request is made again: the unit stays ready, the slot stays parked for release, the
renewal stays due. The scheduler goes on meanwhile (units finish, parked slots pass from unit to
unit), but it does not add writes to a database that is already contended. Giving every slot
back at the end of the stage does use the client's retries.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
from pydantic import BaseModel, Field

from flotilla.results import utcnow
from tasks.api_retries import sent_once
from tasks.liveness import process_alive
from tasks.resources import TAG_PREFIX, tag_for

LEASE_S = 60.0  # the shortest lease the server grants; a dead orchestrator's slots expire soon
RENEW_EVERY_S = 15.0
BUSY_WAIT_S = 1.0  # after a busy answer, no slot request for this long (the scheduler's tick)


def limit_name(resource_class: str) -> str:
    """The global concurrency limit Prefect keeps for a class's tag limit."""
    return f"tag:{tag_for(resource_class)}"


class HeldSlot(BaseModel):
    lease_id: str
    holder_id: str = Field(description="The lease's holder id, listed by the tag limit")
    resource_class: str
    unit_id: str
    acquired_at: str


class SlotHolder(BaseModel):
    """One run's leases, as recorded on this machine."""

    run_key: str
    pid: int
    host: str
    flow_run_id: str = ""
    api_url: str = ""
    slots: dict[str, HeldSlot] = Field(default_factory=dict, description="By unit id")

    @property
    def alive(self) -> bool:
        """False only when certainly gone: a dead pid on this host."""
        return self.host != socket.gethostname() or process_alive(self.pid)


class SlotRegistry:
    """One JSON file per run holding slots, in `$PREFECT_HOME/flotilla-slots/`: the server's
    state lives under PREFECT_HOME, so its holders are recorded beside it."""

    def __init__(self, root: Path | None = None):
        if root is None:
            from prefect.settings import get_current_settings

            root = Path(get_current_settings().home) / "flotilla-slots"
        self.root = Path(root)

    def path(self, run_key: str) -> Path:
        return self.root / f"{run_key}.json"

    def write(self, holder: SlotHolder) -> None:
        if not holder.slots:
            self.path(holder.run_key).unlink(missing_ok=True)
            return
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{holder.run_key}.{os.getpid()}.tmp"
        tmp.write_text(holder.model_dump_json(indent=1))
        os.replace(tmp, self.path(holder.run_key))

    def holders(self) -> list[SlotHolder]:
        found: list[SlotHolder] = []
        for path in sorted(self.root.glob("*.json")) if self.root.is_dir() else []:
            with contextlib.suppress(OSError, ValueError):
                found.append(SlotHolder.model_validate_json(path.read_text()))
        return found

    def delete(self, run_key: str) -> None:
        self.path(run_key).unlink(missing_ok=True)


class ClassUsage(BaseModel):
    """A class's slots as the server counts them, and who holds them."""

    resource_class: str
    limit: int
    active: int = Field(description="active_slots in the server's database")
    leased: list[str] = Field(description="Holder ids of live leases")

    @property
    def unheld(self) -> int:
        """Slots counted as taken that no live lease holds: leaked."""
        return max(0, self.active - len(self.leased))


def read_usage(client, resource_class: str) -> ClassUsage | None:
    """The class's count, then its leases (in that order, so a racing acquire can only make the
    leak look smaller, never larger)."""
    from prefect.exceptions import ObjectNotFound

    try:
        limit = client.read_global_concurrency_limit_by_name(limit_name(resource_class))
        tag = client.read_concurrency_limit_by_tag(tag_for(resource_class))
    except ObjectNotFound:
        return None
    return ClassUsage(
        resource_class=resource_class,
        limit=limit.limit,
        active=int(limit.active_slots),
        leased=[str(h) for h in tag.active_slots],
    )


def flotilla_classes(client) -> list[str]:
    """Every class that has a Flotilla tag limit on the server."""
    prefix = f"tag:{TAG_PREFIX}"
    names = [lim.name for lim in client.read_global_concurrency_limits(limit=200)]
    return sorted(n.removeprefix(prefix) for n in names if n.startswith(prefix))


def free_unheld(client, resource_class: str, most: int | None = None) -> int:
    """Give back slots of the class that no lease holds; return how many. Measured twice and
    the smaller taken, so an acquire caught between its count and its lease is not freed."""
    first = read_usage(client, resource_class)
    second = read_usage(client, resource_class)
    if first is None or second is None:
        return 0
    count = min(first.unheld, second.unheld)
    if most is not None:
        count = min(count, most)
    if count > 0:
        client.release_concurrency_slots(
            names=[limit_name(resource_class)], slots=count, occupancy_seconds=1.0
        )
    return count


def reclaim(client, registry: SlotRegistry, classes: list[str] | None = None) -> list[str]:
    """Release the leases of runs that are gone, then free slots held by no lease; return what
    was done, one line each, for the log."""
    done: list[str] = []
    for holder in registry.holders():
        if holder.alive:
            continue
        for slot in holder.slots.values():
            released = _release_lease(client, slot.lease_id)
            state = "released" if released else "already gone on the server"
            done.append(
                f"slot of class {slot.resource_class} held by unit {slot.unit_id} of run "
                f"{holder.run_key} (pid {holder.pid} on {holder.host}, dead; lease "
                f"{slot.lease_id}): {state}"
            )
        registry.delete(holder.run_key)
    for resource_class in classes if classes is not None else flotilla_classes(client):
        freed = free_unheld(client, resource_class)
        if freed:
            done.append(f"freed {freed} slot(s) of class {resource_class} held by no live lease")
    return done


def _release_lease(client, lease_id: str) -> bool:
    try:
        client.release_concurrency_slots_with_lease(uuid.UUID(lease_id))
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 404:
            return False
        raise
    return True


class RunSlots:
    """The leases one run holds while its units run; used by the implement loop."""

    def __init__(self, client, holder: SlotHolder, registry: SlotRegistry, logger):
        self.client, self.holder, self.registry, self.logger = client, holder, registry, logger
        self.renewed_at = time.monotonic()
        self.unleased: set[str] = set()  # units running whose lease was lost and not yet retaken
        self.parked: list[str] = []  # finished units whose slot the next unit may take over
        self.busy: set[str] = set()  # classes whose last acquisition got a busy answer
        self.quiet_until = 0.0  # after a busy answer: no slot request before this time

    def try_acquire(self, resource_class: str, unit_id: str) -> bool:
        """One slot of the class on the server, now or never: False when the class is full."""
        from prefect.client.schemas.objects import ConcurrencyLeaseHolder

        if self._take_parked(resource_class, unit_id):
            return True
        if self.waiting_out_busy():
            self.busy.add(resource_class)
            return False
        holder_id = uuid.uuid4()
        self.busy.discard(resource_class)
        try:
            with sent_once():
                response = self.client.increment_concurrency_slots_with_lease(
                    names=[limit_name(resource_class)],
                    slots=1,
                    mode="concurrency",
                    lease_duration=LEASE_S,
                    holder=ConcurrencyLeaseHolder(type="task_run", id=holder_id),
                )
        except httpx.HTTPError as exc:
            if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 423:
                return False  # full: other runs hold the rest
            if not is_busy(exc):
                raise
            # busy, or the API is away (tasks/stopping.py bounds that wait): a later tick asks
            self.busy.add(resource_class)
            self._answered_busy()
            return False
        self.holder.slots[unit_id] = HeldSlot(
            lease_id=response.json()["lease_id"],
            holder_id=str(holder_id),
            resource_class=resource_class,
            unit_id=unit_id,
            acquired_at=utcnow().isoformat(timespec="seconds"),
        )
        self.registry.write(self.holder)
        return True

    def park(self, unit_id: str) -> None:
        """A finished unit's slot stays the run's until the scheduler next submits: a ready unit
        of the same class takes it over without a round trip to the server (each acquisition is
        a database write there), and `release_parked` gives back the ones no unit took."""
        if unit_id in self.holder.slots and unit_id not in self.parked:
            self.parked.append(unit_id)

    def _take_parked(self, resource_class: str, unit_id: str) -> bool:
        for key in self.parked:
            slot = self.holder.slots[key]
            if slot.resource_class == resource_class:
                self.parked.remove(key)
                del self.holder.slots[key]
                self.holder.slots[unit_id] = slot.model_copy(
                    update={
                        "unit_id": unit_id,
                        "acquired_at": utcnow().isoformat(timespec="seconds"),
                    }
                )
                self.registry.write(self.holder)
                return True
        return False

    def release_parked(self) -> None:
        """Give back the slots no ready unit took; one the server was too busy to take back
        stays parked for the next tick."""
        parked, self.parked = self.parked, []
        for unit_id in parked:
            if self.waiting_out_busy() or not self.release(unit_id, at_once=True):
                self.parked.append(unit_id)

    def release(self, unit_id: str, at_once: bool = False) -> bool:
        """Give the unit's slot back; False only when `at_once` and the server was busy (the
        slot is still held)."""
        if unit_id in self.parked:
            self.parked.remove(unit_id)
        self.unleased.discard(unit_id)
        slot = self.holder.slots.pop(unit_id, None)
        if slot is None:
            return True
        try:
            with sent_once() if at_once else contextlib.nullcontext():
                if not _release_lease(self.client, slot.lease_id):
                    free_unheld(self.client, slot.resource_class, most=1)  # server restarted
        except httpx.HTTPError as exc:
            self.holder.slots[unit_id] = slot
            if at_once and is_busy(exc):
                self._answered_busy()
                return False
            self.logger.warning(
                "Could not release the %s slot of unit %s (%s); the next run reclaims it.",
                slot.resource_class,
                unit_id,
                exc,
            )
        self.registry.write(self.holder)
        return True

    def release_all(self) -> None:
        for unit_id in list(self.holder.slots):
            self.release(unit_id)
        self.registry.delete(self.holder.run_key)

    def keep_alive(self, classes: dict[str, str]) -> None:
        """Renew the leases when due; a lease the server no longer knows (410 Gone after a
        restart) is taken again, and its unit carries on either way. `classes` maps each
        running unit to its class."""
        if time.monotonic() - self.renewed_at < RENEW_EVERY_S and not self.unleased:
            return
        if self.waiting_out_busy():
            return
        try:
            self._renew(time.monotonic() - self.renewed_at >= RENEW_EVERY_S, classes)
        except httpx.TransportError:  # the API is away (tasks/stopping.py bounds that wait)
            self._answered_busy()
        self.registry.write(self.holder)

    def _answered_busy(self) -> None:
        """The server answered a slot request busy (or not at all): ask it nothing for a tick."""
        self.quiet_until = time.monotonic() + BUSY_WAIT_S

    def waiting_out_busy(self) -> bool:
        """True for BUSY_WAIT_S after the server last answered a slot request busy."""
        return time.monotonic() < self.quiet_until

    def _renew(self, due: bool, classes: dict[str, str]) -> None:
        if due:
            for unit_id, slot in list(self.holder.slots.items()):
                try:
                    with sent_once():
                        self.client.renew_concurrency_lease(uuid.UUID(slot.lease_id), LEASE_S)
                except httpx.HTTPStatusError as exc:
                    if is_busy(exc):  # still due: renewed after BUSY_WAIT_S (a lease lasts LEASE_S)
                        self._answered_busy()
                        return
                    if exc.response.status_code != 410:
                        raise
                    self.logger.warning(
                        "The server lost the lease of unit %s's %s slot (410 Gone: it "
                        "restarted?); taking the slot again, the unit carries on.",
                        unit_id,
                        slot.resource_class,
                    )
                    del self.holder.slots[unit_id]
                    free_unheld(self.client, slot.resource_class, most=1)
                    self.unleased.add(unit_id)
            self.renewed_at = time.monotonic()
        for unit_id in sorted(self.unleased):
            if unit_id in classes and self.try_acquire(classes[unit_id], unit_id):
                self.unleased.discard(unit_id)


def is_busy(exc: httpx.HTTPError) -> bool:
    """An answer worth asking again soon: the server is busy (5xx, 429) or did not answer."""
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500 or exc.response.status_code == 429
    return isinstance(exc, httpx.TransportError)


def new_holder(run_key: str, flow_run_id: str, api_url: str) -> SlotHolder:
    return SlotHolder(
        run_key=run_key,
        pid=os.getpid(),
        host=socket.gethostname(),
        flow_run_id=flow_run_id,
        api_url=api_url,
    )


def holders_by_id(registry: SlotRegistry) -> dict[str, tuple[SlotHolder, HeldSlot]]:
    """Every recorded slot by its lease holder id, for `flotilla slots`."""
    return {s.holder_id: (h, s) for h in registry.holders() for s in h.slots.values()}


@contextlib.contextmanager
def run_slots(run_key: str, logger) -> Iterator[RunSlots]:
    """The run's slot leases for the length of a stage; every one is given back at its end,
    however the stage ends (a kill -9 leaves the registry record for `reclaim`)."""
    from prefect import get_client
    from prefect.context import FlowRunContext

    flow_ctx = FlowRunContext.get()
    flow_run_id = str(flow_ctx.flow_run.id) if flow_ctx and flow_ctx.flow_run else ""
    with get_client(sync_client=True) as client:
        holder = new_holder(run_key, flow_run_id, str(client.api_url))
        slots = RunSlots(client, holder, SlotRegistry(), logger)
        try:
            yield slots
        finally:
            try:
                slots.release_all()
            except httpx.HTTPError as exc:
                logger.warning(
                    "Could not give back the run's resource slots (%s); the next run or "
                    "`flotilla slots --reclaim` frees them.",
                    exc,
                )


def reclaim_now(classes: list[str] | None = None) -> list[str]:
    """`reclaim` with a client of its own: at the start of every run and resume."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return reclaim(client, SlotRegistry(), classes)
