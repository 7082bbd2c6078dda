"""The merge stage: unit branches become the feature branch, then the feature's test gate runs.

A conflict goes back to the unit's agent (`on_conflict: reimplement`, the default) with the
feature branch merged so far as its new start, or stops the stage (`fail`). When the gate fails,
bisection over the merge order names the unit whose merge broke it; with `on_gate_failure: fix`
that unit's agent fixes its work on top of the units before it and the rest is merged again.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from flotilla.plan import Plan
from flotilla.results import MergeRecord, TestReport, UnitRecord, UnitStatus
from flotilla.runs import RunContext
from flotilla.spec import StageSpec, UnitSpec
from tasks.bisect import BisectResult, bisect_merges, worktree_tester
from tasks.checks import run_tests, test_env
from tasks.merging import (
    ConflictInfo,
    IntegrationResult,
    Strategy,
    UnitBranch,
    integrate,
    touching_units,
)
from tasks.naming import unit_tag, unit_task_name
from tasks.rework import (
    ReworkFailed,
    ReworkJob,
    conflict_brief,
    gate_brief,
    gate_start,
    rework_unit,
)
from tasks.stage_inputs import RunRef, handed, ledger_records, planned_units
from tasks.store import RunStore
from tasks.units import run_store_for, workspace_for


class MergeResult(BaseModel):
    """The feature tip and how it was built; `ok` means merged and (if any) the gate passed."""

    commit: str
    merge_order: list[str]
    merges: list[MergeRecord]
    conflict: ConflictInfo | None = None
    gate: TestReport | None = None
    gate_runs: int = 0  # test runs of the feature's command, bisection included
    bisect: BisectResult | None = None  # the last search, when the gate failed
    culprit: str | None = None  # the unit bisection blames for a failing gate
    records: dict[str, UnitRecord] = Field(default_factory=dict)  # ledger records reworked here
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.conflict is None and not self.error and (self.gate is None or self.gate.ok)

    def failure_message(self) -> str:
        """What stopped the stage: the units and paths of a conflict, or the gate's culprit."""
        if self.conflict:
            c = self.conflict
            text = f"merging unit {c.unit_id!r} conflicts"
            if c.with_units:
                text += f" with unit(s) {', '.join(c.with_units)}"
            text += f" in {', '.join(c.paths)}"
            if self.error:
                return f"{text}; {self.error}"
            return (
                f"{text} (on_conflict: fail); `flotilla retry` would meet the same conflict: "
                "order these units (depends_on) or set `on_conflict: reimplement`, then start a "
                "new run"
            )
        gate = self.gate
        text = f"the feature's test gate failed: {gate.one_line() if gate else 'not run'}"
        if self.bisect:
            text += f"; {self.bisect.explain()}"
        return f"{text}; {self.error}" if self.error else text


@flow(name="merge", persist_result=False)
def merge(run: RunRef, base_commit: str) -> MergeResult:
    """Merge the units the implement stage finished; `run` is a reference
    (tasks/stage_inputs.py), the units and their records come from memory or the store."""
    ctx = run.ctx
    units = handed(ctx.run_key, "units", lambda: planned_units(ctx))
    records = handed(ctx.run_key, "records", lambda: ledger_records(ctx, units))
    result = _merge(ctx, units, records, base_commit)
    runs = run_store_for(ctx)
    runs.store.write_json(merge_result_key(runs), result)  # what finalize reads, if not handed
    return result


def merge_result_key(runs: RunStore) -> str:
    return f"{runs.prefix}/feature/merge.json"


def _merge(
    ctx: RunContext, units: list[UnitSpec], records: dict[str, UnitRecord], base_commit: str
) -> MergeResult:
    logger = get_run_logger()
    plan = Plan.from_request(
        ctx.request.model_copy(update={"units": units}), ctx.stage("work_loop")
    )
    order = [u for u in plan.order() if u in records and records[u].status == UnitStatus.SUCCEEDED]
    stage = ctx.stage("pr_merger") or StageSpec(name="merge", processor="pr_merger")
    result = MergeResult(commit=base_commit, merge_order=order, merges=[])
    run = _Merging(ctx, plan, stage, dict(records), result, base_commit)
    merged = run.merge_from(base_commit)
    while merged and ctx.request.test:
        result.gate = test_gate(ctx, result.commit)
        result.gate_runs += 1
        logger.info("Feature test gate: %s", result.gate.one_line())
        if result.gate.ok:
            result.culprit = None
            break
        found = bisect_gate(ctx, base_commit, result.merges, result.gate)
        result.bisect, result.culprit = found, found.culprit
        result.gate_runs += found.runs
        logger.warning("Bisection: %s", found.explain())
        if stage.on_gate_failure != "fix" or not found.culprit or found.culprit in run.fixed:
            break
        if not run.fix_for_gate(found.culprit, found):
            break
        merged = run.merge_from(found.before)
    logger.info(
        "Merged %d unit(s) (%s) into %s: %s",
        len(result.merges),
        stage.merge_strategy,
        ctx.feature_branch,
        result.commit[:12],
    )
    return result


class _Merging:
    """One merge stage's state: the ledger records as they change, and what was re-done."""

    def __init__(
        self,
        ctx: RunContext,
        plan: Plan,
        stage: StageSpec,
        records: dict[str, UnitRecord],
        result: MergeResult,
        base_commit: str,
    ):
        self.ctx, self.plan, self.stage = ctx, plan, stage
        self.records, self.result, self.base_commit = records, result, base_commit
        self.repo = workspace_for(ctx).clone_dir
        self.redone: dict[str, list[str]] = {}  # unit -> paths it conflicted in
        self.fixed: set[str] = set()  # units fixed after a failing gate

    def merge_from(self, tip: str) -> bool:
        """Merge the units after `result.merges` onto `tip`; a conflict goes back to the agent."""
        result = self.result
        pending = result.merge_order[len(result.merges) :]
        redone_now: set[str] = set()  # a unit re-done in this pass merges cleanly; never twice
        while True:
            branches = [self.branch(u) for u in pending]
            outcome = merge_branches(self.ctx, branches, tip, self.stage.merge_strategy)
            result.merges += [self.marked(m) for m in outcome.merges if not m.conflicts]
            result.commit = outcome.commit
            conflict = outcome.conflict
            if conflict is None:
                return True
            conflict.with_units = touching_units(
                self.repo, self.base_commit, result.merges, conflict.paths
            )
            unit_id = conflict.unit_id
            get_run_logger().warning("%s", conflict.message)
            if self.stage.on_conflict == "fail" or unit_id in redone_now:
                result.conflict = conflict
                return False
            record = self.records[unit_id]
            job = self.job(
                unit_id,
                reason="conflict",
                onto=conflict.tip,
                brief=conflict_brief(self.repo, conflict, record.commit, record.start_commit),
                paths=conflict.paths,
            )
            if not self.rework(job):
                result.conflict = conflict
                return False
            self.redone[unit_id] = conflict.paths
            redone_now.add(unit_id)
            tip = conflict.tip
            pending = pending[pending.index(unit_id) :]

    def fix_for_gate(self, unit_id: str, found: BisectResult) -> bool:
        """The culprit's agent fixes its work on top of the units before it."""
        test = self.ctx.request.test or ""
        start = gate_start(
            self.repo,
            found.before,
            found.commit,
            self.plan.units[unit_id],
            workspace_for(self.ctx).env,
        )
        job = self.job(
            unit_id,
            reason="gate",
            onto=found.before,
            worktree_at=start,
            brief=gate_brief(test, found.report or self.result.gate, found.passing_units),
            gate_test=test,
        )
        if not self.rework(job):
            return False
        self.fixed.add(unit_id)
        position = [m.unit_id for m in self.result.merges].index(unit_id)
        self.result.merges = self.result.merges[:position]
        return True

    def job(self, unit_id: str, **details) -> ReworkJob:
        return ReworkJob(
            ctx=self.ctx,
            unit=self.plan.units[unit_id],
            settings=self.plan.settings[unit_id],
            record=self.records[unit_id],
            **details,
        )

    def rework(self, job: ReworkJob) -> bool:
        """Run the unit's agent again; on success its new record replaces the old one."""
        unit_id = job.unit.id
        try:
            record = rework_unit_task.with_options(
                task_run_name=unit_task_name(unit_id, "rework"), tags=[unit_tag(unit_id)]
            )(job)
        except ReworkFailed as failed:
            self.result.error = str(failed)
            self.result.records[unit_id] = failed.record
            return False
        self.records[unit_id] = self.result.records[unit_id] = record
        get_run_logger().info("Unit %s re-done (%s): %s", unit_id, job.reason, record.commit[:12])
        return True

    def branch(self, unit_id: str) -> UnitBranch:
        record = self.records[unit_id]
        return UnitBranch(
            unit_id=unit_id,
            branch=self.ctx.unit_branch(unit_id),
            title=self.plan.units[unit_id].display_title,
            summary=record.summary,
            start=record.start_commit,
        )

    def marked(self, merged: MergeRecord) -> MergeRecord:
        unit_id = merged.unit_id
        return merged.model_copy(
            update={
                "reimplemented": unit_id in self.redone,
                "conflicts": self.redone.get(unit_id, []),
                "fixed_for_gate": unit_id in self.fixed,
            }
        )


@task(name="merge-branches", persist_result=False, cache_policy=NO_CACHE)
def merge_branches(
    ctx: RunContext, branches: list[UnitBranch], tip: str, strategy: Strategy
) -> IntegrationResult:
    """Merge `branches` onto `tip`; the feature branch moves only if all of them merge."""
    workspace = workspace_for(ctx)
    return integrate(
        workspace.clone_dir,
        ctx.base,
        ctx.feature_branch,
        branches,
        strategy,
        workspace.env,
        onto=tip,
    )


@task(name="rework-unit", persist_result=False, cache_policy=NO_CACHE)
def rework_unit_task(job: ReworkJob) -> UnitRecord:
    return rework_unit(job)


@task(name="test-gate", persist_result=False, cache_policy=NO_CACHE)
def test_gate(ctx: RunContext, commit: str) -> TestReport:
    workspace = workspace_for(ctx)
    runs = run_store_for(ctx)
    worktree = workspace.scratch_worktree("gate", commit)
    log_file = Path(ctx.workdir) / "feature" / "gate.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        report = run_tests(
            ctx.request.test or "",
            cwd=worktree,
            timeout_s=None,
            env=_gate_env(ctx),
            log_file=log_file,
        )
    finally:
        workspace.remove_worktree(worktree)
    runs.store.write_json(runs.feature_tests_key, report)
    runs.store.upload_file(f"{runs.prefix}/feature/gate.log", log_file)
    return report


@task(name="bisect", persist_result=False, cache_policy=NO_CACHE)
def bisect_gate(
    ctx: RunContext, base_commit: str, merges: list[MergeRecord], failed: TestReport
) -> BisectResult:
    runs = run_store_for(ctx)
    log_file = Path(ctx.workdir) / "feature" / "bisect.log"
    tester = worktree_tester(
        workspace_for(ctx), ctx.request.test or "", log_file=log_file, env=_gate_env(ctx)
    )
    found = bisect_merges(base_commit, merges, tester, last=failed)
    runs.store.write_json(f"{runs.prefix}/feature/bisect.json", found)
    if log_file.exists():
        runs.store.upload_file(f"{runs.prefix}/feature/bisect.log", log_file)
    return found


def _gate_env(ctx: RunContext) -> dict[str, str]:
    """The feature's test gate runs with what `defaults` names, like every unit's tests."""
    return test_env(ctx.request.defaults.pass_env, ctx.request.defaults.env)
