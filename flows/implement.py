"""The implement stage: run every unit as a Prefect task, as soon as its dependencies allow.

A unit starts only after everything it depends on has succeeded; a failed unit blocks only its
dependents; finished units from an earlier run with the same fingerprint are reused, not redone.
Between submissions the loop reads the store for a pause request; after each finished unit it
writes a checkpoint and takes in the follow-up units the unit's agent proposed.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from logging import Logger, LoggerAdapter

from prefect import flow, get_run_logger
from prefect.states import Failed, State
from pydantic import BaseModel, Field

from flotilla.candidates import slot_keys
from flotilla.candidates import width as candidate_width
from flotilla.growth import AddedUnit, review_proposals
from flotilla.plan import Plan, resource_limits
from flotilla.results import FailureClass, UnitRecord, UnitStatus, utcnow
from flotilla.runs import RunContext, unit_fingerprint
from flotilla.scheduling import ClassRoom, blocked_by_failures, by_urgency, ready_units
from flotilla.spec import UnitSpec
from tasks.checkpoints import CheckpointWriter
from tasks.control import load_added, pause_requested, proposals_key, save_added
from tasks.launching import launcher_for
from tasks.naming import unit_tag
from tasks.reporting import TICK_S, publish_unit_table, start_run_report
from tasks.slots import RunSlots, run_slots
from tasks.spending import budget_pause_message, clear_stop, request_stop, run_budget_spent
from tasks.stage_inputs import RunRef, handed, planned_units
from tasks.stats import typical_durations
from tasks.tag_limits import only_limited_tags
from tasks.units import UnitJob, run_store_for, workspace_for


class ImplementResult(BaseModel):
    records: dict[str, UnitRecord]
    units: list[UnitSpec] = Field(default_factory=list, description="The plan's units at the end")
    added: list[str] = Field(default_factory=list, description="Units that joined mid-run")
    paused: bool = False
    pause_reason: str = ""

    @property
    def all_succeeded(self) -> bool:
        return all(r.status == UnitStatus.SUCCEEDED for r in self.records.values())

    def failure_line(self) -> str:
        bad = [r for r in self.records.values() if r.status != UnitStatus.SUCCEEDED]
        failed = [r.unit_id for r in bad if r.status == UnitStatus.FAILED]
        blocked = [r.unit_id for r in bad if r.status == UnitStatus.BLOCKED]
        text = f"{len(failed)} unit(s) failed: {', '.join(failed)}"
        return text + (f"; {len(blocked)} blocked: {', '.join(blocked)}" if blocked else "")


@flow(name="implement", persist_result=False)
def implement(
    run: RunRef, base_commit: str, rerun: list[str] | None = None
) -> ImplementResult | State:
    """Run the plan's units. `run` is a reference (tasks/stage_inputs.py): the units come from
    the feature flow or the saved plan. `rerun` names units to run again even if an earlier run
    of this key finished them."""
    ctx = run.ctx
    only_limited_tags()  # unit task runs' tags have no limits: no slot round trips for them
    units = handed(ctx.run_key, "units", lambda: planned_units(ctx))
    loop = UnitLoop(ctx, units, base_commit, set(rerun or ()), get_run_logger())
    loop.report = start_run_report(ctx, loop.plan)
    with run_slots(ctx.run_key, loop.logger) as loop.slots:
        while True:
            loop.block_dependents()
            reused = 0 if loop.pausing() else loop.submit_ready()
            loop.slots.release_parked()  # finished units' slots that no ready unit took over
            if not loop.running:
                if reused:
                    continue  # reused units made more units ready
                if not loop.deferred or loop.pause_seen:
                    break
                time.sleep(TICK_S)  # other runs hold every slot these units need
                continue
            done, _ = cf.wait(list(loop.running), timeout=TICK_S, return_when=cf.FIRST_COMPLETED)
            for raw in done:
                loop.finish(raw)
            loop.slots.keep_alive(loop.running_classes())
            loop.report.merge(loop.take_verdicts())
            loop.checkpoint_if_due()
    loop.launcher.close()  # unit flow runs still in flight (on a pool) go on without us
    loop.checkpoint_if_due(now=True)
    publish_unit_table(ctx.feature_id, loop.table(), ctx.run_key)
    result = loop.result()
    if result.all_succeeded or result.paused:
        return result
    # the stage's state says what happened to its units; the feature flow reads the result
    return Failed(message=result.failure_line(), data=result)


class UnitLoop:
    """The scheduler's state: the plan (which may grow), each unit's status, what runs now."""

    def __init__(
        self,
        ctx: RunContext,
        units: list[UnitSpec],
        base_commit: str,
        rerun: set[str],
        logger: Logger | LoggerAdapter,
    ):
        self.ctx, self.base_commit, self.rerun, self.logger = ctx, base_commit, rerun, logger
        self.run = RunRef.of(ctx)  # what unit tasks get instead of the context itself
        self.runs = run_store_for(ctx)
        self.workspace = workspace_for(ctx)
        self.stage = ctx.stage("work_loop")
        self.limit = self.stage.max_concurrent if self.stage else 5
        self.class_limits = resource_limits(ctx.request, ctx.workflow)
        self.slots: RunSlots | None = None
        self.deferred: set[str] = set()  # classes held back because other runs fill them
        self.requeues: dict[str, int] = {}  # units whose task the Prefect API lost
        self.durations = typical_durations(self.runs.store)
        self.added = load_added(self.runs)
        known = {u.id for u in units}
        self.units = [*units, *(u for u in self.added.specs() if u.id not in known)]
        self.report = None
        self._replan()
        self.status: dict[str, UnitStatus] = {u: UnitStatus.PENDING for u in self.plan.units}
        self.records: dict[str, UnitRecord] = {}
        self.verdicts: list[UnitRecord] = []  # new since the live table last took them
        self.unsaved: list[str] = []  # verdicts since the last checkpoint
        self.checkpointed_at = time.monotonic()
        self.ledger = self.runs.read_ledger()
        self.running: dict[cf.Future, tuple[str, cf.Future]] = {}
        self.launcher = launcher_for(ctx, self.runs, self.workspace, logger)
        self.checkpoints = CheckpointWriter(ctx, self.runs, self.workspace)
        self.pause_seen = False
        self.budget_note = ""  # set once the run's budget is spent: no unit starts after
        self.budget_checked_at = -1  # len(self.records) at the last look at the ledger
        clear_stop(self.runs)  # a hard budget's stop from an earlier run must not stop this one
        self._mark_pending(list(self.plan.units))

    # -- the plan --------------------------------------------------------------------------

    def _replan(self) -> None:
        request = self.ctx.request.model_copy(update={"units": self.units})
        self.plan = Plan.from_request(request, self.stage, self.ctx.workflow, self.durations)
        self.remaining = self.plan.remaining_path()
        if self.report is not None:
            self.report.plan = self.plan

    def _mark_pending(self, unit_ids: list[str]) -> None:
        """Write `pending` for units with no verdict yet: the ledger lists every unit."""
        for unit_id in unit_ids:
            previous = self.ledger.get(unit_id)
            if previous is None or not previous.status.is_final:
                pending = _pending(self.ctx, unit_id)
                if previous is not None:  # what it spent before a crash stays spent
                    pending.usage = previous.usage
                self.runs.write_record(pending)

    # -- starting units --------------------------------------------------------------------

    def pausing(self) -> bool:
        """True once `flotilla pause` asked; from then on no unit starts."""
        if not self.pause_seen and (request := pause_requested(self.runs)) is not None:
            self.pause_seen = True
            self.logger.warning(
                "Pause requested (%s, pid %d on %s): starting no new unit; waiting for %d in "
                "flight.",
                request.requested_at.isoformat(timespec="seconds"),
                request.pid,
                request.host,
                len(self.running),
            )
        return self.pause_seen

    def budget_spent(self) -> bool:
        """True once the run's budget is spent (read from the ledger): no unit starts after."""
        finished = len(self.records)  # spend reaches the scheduler as units finish
        if not self.budget_note and finished != self.budget_checked_at:
            self.budget_checked_at = finished
            budget, reached = run_budget_spent(self.runs, self.ctx)
            if reached:
                self.budget_note = budget_pause_message(self.ctx.run_key, reached)
                if budget is not None and budget.hard:
                    request_stop(self.runs, self.budget_note)  # units in flight stop too
                self.logger.warning(
                    "%s (%d unit(s) in flight finish)", self.budget_note, len(self.running)
                )
        return bool(self.budget_note)

    def block_dependents(self) -> None:
        for unit_id, roots in blocked_by_failures(self.plan, self.status).items():
            self.status[unit_id] = UnitStatus.BLOCKED
            self.records[unit_id] = UnitRecord(
                unit_id=unit_id,
                status=UnitStatus.BLOCKED,
                branch=self.ctx.unit_branch(unit_id),
                blocked_by=roots,
                error=f"blocked by failed unit(s): {', '.join(roots)}",
                finished_at=utcnow(),
                usage=earlier.usage if (earlier := self.ledger.get(unit_id)) else [],
            )
            self.runs.write_record(self.records[unit_id])
            self.verdicts.append(self.records[unit_id])

    def submit_ready(self) -> int:
        """Start ready units, most urgent first, up to the stage's limit; return how many
        were reused from an earlier run instead."""
        reused = 0
        started = {name for name, _ in self.running.values()}
        ready = ready_units(self.plan, self.status, started)
        room = ClassRoom(self.class_limits, self.running_classes().values())
        self.deferred = set()
        for unit_id in by_urgency(self.plan, ready, self.remaining):
            if len(self.running) >= self.limit:
                break
            if self.budget_spent():
                break
            resource_class = self.plan.settings[unit_id].resources
            keys = self.slot_keys(unit_id)
            if not room.has_room(resource_class, len(keys)):
                continue
            job = self.job_for(unit_id)
            if (previous := self.reusable(job)) is not None:
                self.logger.info("Unit %s already succeeded in this run; reusing it.", unit_id)
                self.records[unit_id], self.status[unit_id] = previous, UnitStatus.SUCCEEDED
                self.verdicts.append(previous)
                self.take_proposals(unit_id)
                reused += 1
                continue
            if not self.acquire(resource_class, keys):
                room.close(resource_class)  # full across runs: this unit waits for a later tick
                self.deferred.add(resource_class)
                continue
            room.take(resource_class, len(keys))
            self.status[unit_id] = UnitStatus.RUNNING
            handle = self.launcher.launch(job, [unit_tag(unit_id)])
            self.running[handle] = (unit_id, handle)
        full = self.deferred - (self.slots.busy if self.slots is not None else set())
        if full and not self.running:
            self.logger.info(
                "Waiting for a free slot of class(es) %s: other runs on this Prefect server "
                "hold them all.",
                ", ".join(sorted(full)),
            )
        return reused

    def running_classes(self) -> dict[str, str]:
        """Each class slot held (a unit's, or each of a best-of unit's candidates') -> class."""
        return {
            key: self.plan.settings[u].resources
            for u, _ in self.running.values()
            for key in self.slot_keys(u)
        }

    def slot_keys(self, unit_id: str) -> list[str]:
        """A best-of-N unit takes a slot of its class per candidate running at once (see
        tasks/candidates.py); any other unit one."""
        settings = self.plan.settings[unit_id]
        limit = self.class_limits.get(settings.resources)
        return slot_keys(unit_id, candidate_width(settings.best_of, limit))

    def acquire(self, resource_class: str, keys: list[str]) -> bool:
        """The server's slots for every key, or none of them."""
        if self.slots is None:
            return True
        for at, key in enumerate(keys):
            if not self.slots.try_acquire(resource_class, key):
                for taken in keys[:at]:
                    self.slots.release(taken)
                return False
        return True

    def job_for(self, unit_id: str) -> UnitJob:
        # conflict-only predecessors count only when they succeeded (a failed one has no work)
        deps = [
            d
            for d in self.plan.ancestors(unit_id)
            if (rec := self.records.get(d)) is not None and rec.status == UnitStatus.SUCCEEDED
        ]
        dep_commits = {d: self.records[d].commit for d in deps}
        settings = self.plan.settings[unit_id]
        unit = self.plan.units[unit_id]
        return UnitJob(
            run=self.run,
            unit=unit,
            settings=settings,
            base_commit=self.base_commit,
            dep_branches=[self.ctx.unit_branch(d) for d in deps],
            covered_branches=[self.ctx.unit_branch(d) for d in self.plan.covered(deps)],
            fingerprint=unit_fingerprint(
                unit, settings.model_dump_json(), self.base_commit, dep_commits
            ),
        )

    def reusable(self, job: UnitJob) -> UnitRecord | None:
        """The earlier success of this unit, if nothing it depends on has changed since."""
        previous = self.ledger.get(job.unit.id)
        if (
            job.unit.id not in self.rerun
            and previous
            and previous.status == UnitStatus.SUCCEEDED
            and previous.fingerprint == job.fingerprint
            and self.workspace.branch_sha(previous.branch) == previous.commit
        ):
            return previous
        return None

    # -- finished units --------------------------------------------------------------------

    def finish(self, raw: cf.Future) -> None:
        unit_id, _future = self.running.pop(raw)
        if self.slots is not None:
            for key in self.slot_keys(unit_id):
                self.slots.park(key)  # the next unit of its class may take it over
        record = self.runs.read_record(unit_id)  # the ledger is the source of truth
        if record is None or not record.status.is_final:
            state = raw.result() if raw.exception() is None else None
            message = (state.message if state is not None else str(raw.exception())) or ""
            if self.requeue(unit_id, record, message):
                return
            record = _crashed_record(self.ctx, unit_id, record, message)
            self.runs.write_record(record)
        self.records[unit_id], self.status[unit_id] = record, record.status
        self.verdicts.append(record)
        self.logger.info("Unit %s %s.", unit_id, record.status.value)
        self.budget_spent()  # its spend may have used up the run's budget
        if record.status == UnitStatus.SUCCEEDED:
            self.take_proposals(unit_id)
        self.checkpoint(f"unit {unit_id} {record.status.value}")

    def requeue(self, unit_id: str, record: UnitRecord | None, message: str) -> bool:
        """A unit whose task the Prefect API lost (a 503 while taking its tags' slots, a server
        under load) has no verdict: it goes back to the ready units, no attempt spent, up to
        REQUEUES times. True when it did."""
        if not is_api_trouble(message) or self.requeues.get(unit_id, 0) >= REQUEUES:
            return False
        self.requeues[unit_id] = self.requeues.get(unit_id, 0) + 1
        self.logger.warning(
            "Unit %s lost its task to the Prefect API (%s); starting it again (%d of %d, no "
            "attempt spent).",
            unit_id,
            message.splitlines()[0][:200] if message else "no message",
            self.requeues[unit_id],
            REQUEUES,
        )
        self.status[unit_id] = UnitStatus.PENDING
        pending = _pending(self.ctx, unit_id)
        if record is not None:  # keep what its earlier attempts spent
            pending = pending.model_copy(update={"usage": record.usage})
        self.runs.write_record(pending)
        return True

    def take_proposals(self, unit_id: str) -> None:
        """Add the valid units `unit_id`'s agent proposed to the plan; report the rest."""
        if unit_id in self.added.processed:
            return
        try:
            text = self.runs.store.read_text(proposals_key(self.runs, unit_id))
        except KeyError:
            return
        accepted, rejected = review_proposals(text, self.ctx.request, self.units, unit_id)
        for bad in rejected:
            self.logger.warning(
                "Ignored unit %r proposed by %s: %s",
                bad.unit_id or "(unnamed)",
                unit_id,
                "; ".join(bad.problems),
            )
        self.added.units += [AddedUnit(unit=u, proposed_by=unit_id) for u in accepted]
        self.added.rejected += rejected
        self.added.processed.append(unit_id)
        save_added(self.runs, self.added)
        if not accepted:
            return
        self.units += accepted
        self._replan()
        for unit in accepted:
            self.status[unit.id] = UnitStatus.PENDING
        self._mark_pending([u.id for u in accepted])
        self.logger.info(
            "Unit %s proposed %d follow-up unit(s), now in the plan: %s",
            unit_id,
            len(accepted),
            ", ".join(u.id for u in accepted),
        )

    def checkpoint(self, reason: str) -> None:
        """A checkpoint after each unit; while other units still run, the verdicts of up to
        CHECKPOINT_EVERY_S seconds share one (a checkpoint holds every unit: one per verdict
        would cost a 1,000-unit run a million records)."""
        self.unsaved.append(reason)
        if not self.running:
            self.checkpoint_if_due(now=True)

    def checkpoint_if_due(self, now: bool = False) -> None:
        """Write the verdicts not yet in a checkpoint: `now`, or once CHECKPOINT_EVERY_S passed."""
        if not self.unsaved:
            return
        if not now and time.monotonic() - self.checkpointed_at < CHECKPOINT_EVERY_S:
            return
        reasons, self.unsaved = self.unsaved, []
        reason = (
            reasons[0]
            if len(reasons) == 1
            else f"{len(reasons)} units: " + ", ".join(r.removeprefix("unit ") for r in reasons)
        )
        checkpoint = self.checkpoints.write(reason, list(self.plan.units), self.records, self.added)
        self.checkpointed_at = time.monotonic()
        self.logger.debug("Checkpoint %d: %s", checkpoint.number, reason)

    def take_verdicts(self) -> list[UnitRecord]:
        """The verdicts since the last call, for the live table."""
        taken, self.verdicts = self.verdicts, []
        return taken

    # -- the outcome -----------------------------------------------------------------------

    def table(self) -> list[UnitRecord]:
        return [self.records.get(u) or _pending(self.ctx, u) for u in self.plan.units]

    def result(self) -> ImplementResult:
        unfinished = [u for u in self.plan.units if not self.status[u].is_final]
        if any(r.failure_class == FailureClass.BUDGET for r in self.records.values()):
            self.budget_spent()  # a unit stopped on the run's budget: the run pauses too
        short = [u for u in self.plan.units if self.status[u] != UnitStatus.SUCCEEDED]
        paused = (self.pause_seen and bool(unfinished)) or (bool(self.budget_note) and bool(short))
        if paused:
            checkpoint = self.checkpoints.write(
                "pause", list(self.plan.units), self.records, self.added
            )
            self.logger.warning(
                "Paused with %d unit(s) not started: %s. Checkpoint %d written.",
                len(unfinished),
                ", ".join(unfinished),
                checkpoint.number,
            )
        added = {a.unit.id for a in self.added.units}
        return ImplementResult(
            records={r.unit_id: r for r in self.table()},
            units=self.units,
            added=[u for u in self.plan.units if u in added],
            paused=paused,
            pause_reason=self.budget_note if paused else "",
        )


REQUEUES = 3
CHECKPOINT_EVERY_S = 5.0
_API_TROUBLE = (
    "Unable to acquire concurrency slots",
    "Service Unavailable",
    "Internal Server Error",
    "Bad Gateway",
    "Gateway Timeout",
    "database is locked",
    "ConnectError",
    "ReadTimeout",
    "RemoteProtocolError",
)


def is_api_trouble(message: str) -> bool:
    """Does a unit task's end say that the Prefect API failed it, not the unit itself?"""
    return any(sign in message for sign in _API_TROUBLE)


def _pending(ctx: RunContext, unit_id: str) -> UnitRecord:
    return UnitRecord(unit_id=unit_id, branch=ctx.unit_branch(unit_id))


def _crashed_record(
    ctx: RunContext, unit_id: str, record: UnitRecord | None, message: str | None
) -> UnitRecord:
    """A unit task that died without writing its own verdict (a bug, not an agent failure)."""
    base = record or UnitRecord(unit_id=unit_id, branch=ctx.unit_branch(unit_id))
    return base.model_copy(
        update={
            "status": UnitStatus.FAILED,
            "failure_class": FailureClass.ERROR,
            "error": f"the unit's task ended without a verdict: {message}",
            "finished_at": utcnow(),
        }
    )
