"""The `feature` flow: reads the workflow spec and runs its stages in order (the DSL interpreter).

Each stage is a subflow; what it does is named by its `processor`. Everything a stage needs
travels in one `RunContext`, which is also saved to the store so a run can be resumed by key.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flotilla.errors import FlotillaError, RunError
from flotilla.loading import load_request, load_workflow
from flotilla.results import (
    FeatureResult,
    FeatureStatus,
    RunState,
    RunSummary,
    UnitStatus,
    utcnow,
)
from flotilla.runs import RunContext, check_run_key, new_run_key, resolve_repo
from flotilla.settings import get_settings
from flows.decompose import decompose
from flows.implement import ImplementResult, implement
from flows.integrate import MergeResult, merge
from flows.publish import PublishResult, finalize
from tasks.store import ArtifactStore
from tasks.units import run_store_for, workspace_for


class FeatureFailed(FlotillaError):
    """The run finished but did not produce a complete feature; the result says why."""


def build_context(
    request: str,
    repo: str | None = None,
    base: str | None = None,
    workflow: str | None = None,
    store: str | None = None,
    run_key: str | None = None,
    workdir: str | None = None,
) -> RunContext:
    """Validate every input and resolve defaults. Touches nothing: no clone, no store entry."""
    settings = get_settings()
    request_path = Path(request).resolve()
    spec = load_request(request_path)
    flow_spec = load_workflow(workflow)
    repo_url = repo or (spec.repo.url if spec.repo else None)
    if not repo_url:
        raise RunError(
            f"No target repository for {request}: pass --repo PATH|URL or set `repo.url` "
            "in the request."
        )
    repo_url = resolve_repo(repo_url, request_path.parent if not repo else Path.cwd())
    if "://" not in repo_url and not Path(repo_url).exists():
        raise RunError(f"Target repository {repo_url} does not exist; check --repo or `repo.url`.")
    key = check_run_key(run_key or new_run_key(spec.feature.id))
    author = spec.author
    return RunContext(
        run_key=key,
        request=spec,
        workflow=flow_spec,
        request_dir=str(request_path.parent),
        repo=repo_url,
        base=base or (spec.repo.base if spec.repo else "main"),
        store_url=ArtifactStore(store or settings.store).url,
        workdir=str(Path(workdir or settings.workdir).resolve() / key),
        author_name=author.name if author else (settings.author_name or "Flotilla"),
        author_email=author.email if author else (settings.author_email or "flotilla@localhost"),
    )


@flow(name="feature", persist_result=False, log_prints=True)
def feature(
    request: str,
    repo: str | None = None,
    base: str | None = None,
    workflow: str | None = None,
    store: str | None = None,
    run_key: str | None = None,
    workdir: str | None = None,
) -> FeatureResult:
    ctx = build_context(request, repo, base, workflow, store, run_key, workdir)
    return run_feature(ctx)


def run_feature(ctx: RunContext) -> FeatureResult:
    logger = get_run_logger()
    runs = run_store_for(ctx)
    runs.store.write_json(runs.context_key, ctx)
    runs.store.write_json(runs.request_key, ctx.request)
    summary = RunSummary(
        run_key=ctx.run_key,
        feature_id=ctx.feature_id,
        title=ctx.request.feature.title,
        units_total=len(ctx.request.units),
        flow_run_id=str(flow_run_ctx.id) if (flow_run_ctx := _flow_run()) else "",
        host=socket.gethostname(),
        pid=os.getpid(),
    )
    runs.store.write_json(runs.state_key, summary)
    logger.info("Run %s: feature %s on %s@%s", ctx.run_key, ctx.feature_id, ctx.repo, ctx.base)
    base_commit = workspace_for(ctx).prepare()

    units = list(ctx.request.units)
    implemented: ImplementResult | None = None
    merged: MergeResult | None = None
    published: PublishResult | None = None
    error = ""
    for stage in ctx.workflow.workflow.stages:
        if stage.processor == "plan_decomposer":
            units = decompose.with_options(name=stage.name)(ctx)
        elif stage.processor == "work_loop":
            runner = ThreadPoolTaskRunner(max_workers=stage.max_concurrent)
            implemented = implement.with_options(name=stage.name, task_runner=runner)(
                ctx, units, base_commit
            )
            if not implemented.all_succeeded and not stage.allow_partial:
                error = _failed_units_message(implemented)
                break
        elif stage.processor == "pr_merger":
            records = implemented.records if implemented else {}
            merged = merge.with_options(name=stage.name)(ctx, units, records, base_commit)
            if not merged.ok:
                error = _merge_message(merged)
                break
        elif stage.processor == "feature_pr_creator" and merged is not None:
            records = implemented.records if implemented else {}
            published = finalize.with_options(name=stage.name)(ctx, units, records, merged)

    result = FeatureResult(
        run_key=ctx.run_key,
        feature_id=ctx.feature_id,
        title=ctx.request.feature.title,
        status=FeatureStatus.SUCCEEDED,
        feature_branch=ctx.feature_branch if merged else "",
        feature_commit=merged.commit if merged else "",
        base_branch=ctx.base,
        pr_path=published.pr_path if published else "",
        units=list(implemented.records.values()) if implemented else [],
        merge_order=merged.merge_order if merged else [],
        merges=merged.merges if merged else [],
        gate=merged.gate if merged else None,
        error=error,
    )
    complete = implemented is not None and implemented.all_succeeded and merged and merged.ok
    if error or not complete:
        result.status = FeatureStatus.FAILED
        result.error = error or "the workflow did not implement and merge every unit"
    runs.store.write_json(runs.result_key, result)
    done = sum(1 for r in result.units if r.status == UnitStatus.SUCCEEDED)
    summary = summary.model_copy(
        update={
            "state": RunState.SUCCEEDED if result.ok else RunState.FAILED,
            "finished_at": utcnow(),
            "units_total": len(result.units) or summary.units_total,
            "units_done": done,
            "error": result.error,
        }
    )
    runs.store.write_json(runs.state_key, summary)
    if result.status != FeatureStatus.SUCCEEDED:
        raise FeatureFailed(f"Feature {ctx.feature_id} (run {ctx.run_key}) failed: {result.error}")
    return result


def _flow_run():
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx.flow_run if ctx else None


def _failed_units_message(implemented: ImplementResult) -> str:
    bad = [r for r in implemented.records.values() if r.status != UnitStatus.SUCCEEDED]
    failed = [r.unit_id for r in bad if r.status == UnitStatus.FAILED]
    blocked = [r.unit_id for r in bad if r.status == UnitStatus.BLOCKED]
    text = f"{len(failed)} unit(s) failed: {', '.join(failed)}"
    if blocked:
        text += f"; {len(blocked)} blocked: {', '.join(blocked)}"
    return text + "; merge and finalize were skipped"


def _merge_message(merged: MergeResult) -> str:
    if merged.conflict:
        c = merged.conflict
        return f"merging unit {c.unit_id!r} conflicts in {', '.join(c.paths)}"
    gate = merged.gate
    return f"the feature's test gate failed: {gate.one_line() if gate else 'not run'}"
