"""The merge stage: unit branches become the feature branch, then the feature's test gate runs."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from flotilla.plan import Plan
from flotilla.results import MergeRecord, TestReport, UnitRecord, UnitStatus
from flotilla.runs import RunContext
from flotilla.spec import UnitSpec
from tasks.checks import run_tests
from tasks.merging import ConflictInfo, UnitBranch, integrate
from tasks.units import run_store_for, workspace_for


class MergeResult(BaseModel):
    commit: str
    merge_order: list[str]
    merges: list[MergeRecord]
    conflict: ConflictInfo | None = None
    gate: TestReport | None = None

    @property
    def ok(self) -> bool:
        return self.conflict is None and (self.gate is None or self.gate.ok)


@flow(name="merge", persist_result=False)
def merge(
    ctx: RunContext, units: list[UnitSpec], records: dict[str, UnitRecord], base_commit: str
) -> MergeResult:
    plan = Plan.from_request(ctx.request.model_copy(update={"units": units}))
    order = [u for u in plan.order() if records[u].status == UnitStatus.SUCCEEDED]
    stage = ctx.stage("pr_merger")
    strategy = stage.merge_strategy if stage else "merge"
    result = merge_branches(ctx, plan, order, records, base_commit, strategy)
    if result.conflict is None and ctx.request.test:
        result.gate = test_gate(ctx, result.commit)
    logger = get_run_logger()
    logger.info("Merged %d unit(s) (%s): %s", len(order), strategy, result.commit[:12])
    if result.gate:
        logger.info("Feature test gate: %s", result.gate.one_line())
    return result


@task(name="merge-branches", persist_result=False, cache_policy=NO_CACHE)
def merge_branches(
    ctx: RunContext,
    plan: Plan,
    order: list[str],
    records: dict[str, UnitRecord],
    base_commit: str,
    strategy: str,
) -> MergeResult:
    workspace = workspace_for(ctx)
    branches = [
        UnitBranch(
            unit_id=u,
            branch=ctx.unit_branch(u),
            title=plan.units[u].display_title,
            summary=records[u].summary,
            start=records[u].start_commit,
        )
        for u in order
    ]
    outcome = integrate(
        workspace.clone_dir, base_commit, ctx.feature_branch, branches, strategy, workspace.env
    )
    return MergeResult(
        commit=outcome.commit, merge_order=order, merges=outcome.merges, conflict=outcome.conflict
    )


@task(name="test-gate", persist_result=False, cache_policy=NO_CACHE)
def test_gate(ctx: RunContext, commit: str) -> TestReport:
    workspace = workspace_for(ctx)
    runs = run_store_for(ctx)
    worktree = workspace.scratch_worktree("gate", commit)
    log_file = Path(ctx.workdir) / "feature" / "gate.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        report = run_tests(ctx.request.test or "", cwd=worktree, timeout_s=None, log_file=log_file)
    finally:
        workspace.remove_worktree(worktree)
    runs.store.write_json(runs.feature_tests_key, report)
    runs.store.upload_file(f"{runs.prefix}/feature/gate.log", log_file)
    return report
