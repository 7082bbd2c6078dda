"""The implement stage: run every unit as a Prefect task, as soon as its dependencies allow.

A unit starts only after everything it depends on has succeeded; a failed unit blocks only its
dependents; finished units from an earlier run with the same fingerprint are reused, not redone.
"""

from __future__ import annotations

import concurrent.futures as cf

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from pydantic import BaseModel

from flotilla.plan import Plan
from flotilla.results import UnitRecord, UnitStatus, utcnow
from flotilla.runs import RunContext, unit_fingerprint
from flotilla.scheduling import blocked_by_failures, by_urgency, ready_units
from flotilla.spec import UnitSpec
from tasks.reporting import publish_unit_table
from tasks.units import UnitJob, run_store_for, run_unit, workspace_for


class ImplementResult(BaseModel):
    records: dict[str, UnitRecord]

    @property
    def all_succeeded(self) -> bool:
        return all(r.status == UnitStatus.SUCCEEDED for r in self.records.values())


@flow(name="implement", persist_result=False)
def implement(ctx: RunContext, units: list[UnitSpec], base_commit: str) -> ImplementResult:
    logger = get_run_logger()
    request = ctx.request.model_copy(update={"units": units})
    plan = Plan.from_request(request, ctx.stage("work_loop"))
    stage = ctx.stage("work_loop")
    limit = stage.max_concurrent if stage else 5
    runs = run_store_for(ctx)
    workspace = workspace_for(ctx)
    remaining = plan.remaining_path()

    status: dict[str, UnitStatus] = {u: UnitStatus.PENDING for u in plan.units}
    records: dict[str, UnitRecord] = {}
    ledger = runs.read_ledger()
    running: dict[cf.Future, tuple[str, PrefectFuture]] = {}

    def job_for(unit_id: str) -> UnitJob:
        deps = plan.ancestors(unit_id)
        dep_commits = {d: records[d].commit for d in deps}
        settings = plan.settings[unit_id]
        return UnitJob(
            ctx=ctx,
            unit=plan.units[unit_id],
            settings=settings,
            base_commit=base_commit,
            dep_branches=[ctx.unit_branch(d) for d in deps],
            fingerprint=unit_fingerprint(
                plan.units[unit_id], settings.model_dump_json(), base_commit, dep_commits
            ),
        )

    def reusable(job: UnitJob) -> UnitRecord | None:
        previous = ledger.get(job.unit.id)
        if (
            previous
            and previous.status == UnitStatus.SUCCEEDED
            and previous.fingerprint == job.fingerprint
            and workspace.branch_sha(previous.branch) == previous.commit
        ):
            return previous
        return None

    while True:
        for unit_id, roots in blocked_by_failures(plan, status).items():
            status[unit_id] = UnitStatus.BLOCKED
            records[unit_id] = UnitRecord(
                unit_id=unit_id,
                status=UnitStatus.BLOCKED,
                branch=ctx.unit_branch(unit_id),
                blocked_by=roots,
                error=f"blocked by failed unit(s): {', '.join(roots)}",
                finished_at=utcnow(),
            )
            runs.write_record(records[unit_id])
        started = {name for name, _ in running.values()}
        for unit_id in by_urgency(plan, ready_units(plan, status, started), remaining):
            if len(running) >= limit:
                break
            job = job_for(unit_id)
            if (previous := reusable(job)) is not None:
                logger.info("Unit %s already succeeded in this run; reusing it.", unit_id)
                records[unit_id], status[unit_id] = previous, UnitStatus.SUCCEEDED
                continue
            status[unit_id] = UnitStatus.RUNNING
            future = run_unit.with_options(
                task_run_name=f"unit-{unit_id}",
                tags=[f"flotilla:{plan.settings[unit_id].resources}"],
            ).submit(job)
            running[future.wrapped_future] = (unit_id, future)
        if not running:
            if any(s == UnitStatus.PENDING for s in status.values()):
                continue  # reused units made more units ready
            break
        done, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
        for raw in done:
            unit_id, _future = running.pop(raw)
            record = runs.read_record(unit_id)  # the ledger is the source of truth
            if record is None or not record.status.is_final:
                state = raw.result() if raw.exception() is None else None
                message = state.message if state is not None else str(raw.exception())
                record = _crashed_record(ctx, unit_id, record, message)
                runs.write_record(record)
            records[unit_id], status[unit_id] = record, record.status
            logger.info("Unit %s %s.", unit_id, record.status.value)
        publish_unit_table(ctx.feature_id, [records.get(u) or _pending(ctx, u) for u in plan.units])
    publish_unit_table(ctx.feature_id, [records[u] for u in plan.units])
    return ImplementResult(records={u: records[u] for u in plan.units})


def _pending(ctx: RunContext, unit_id: str) -> UnitRecord:
    return UnitRecord(unit_id=unit_id, branch=ctx.unit_branch(unit_id))


def _crashed_record(
    ctx: RunContext, unit_id: str, record: UnitRecord | None, message: str | None
) -> UnitRecord:
    """A unit task that died without writing its own verdict (a bug, not an agent failure)."""
    from flotilla.results import FailureClass

    base = record or UnitRecord(unit_id=unit_id, branch=ctx.unit_branch(unit_id))
    return base.model_copy(
        update={
            "status": UnitStatus.FAILED,
            "failure_class": FailureClass.ERROR,
            "error": f"the unit's task ended without a verdict: {message}",
            "finished_at": utcnow(),
        }
    )
