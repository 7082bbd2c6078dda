"""The `feature` flow: reads the workflow spec and runs its stages in order (the DSL interpreter).

Each stage is a subflow; what it does is named by its `processor`. Everything a stage needs
travels in one `RunContext`, which is also saved to the store so a run can be resumed by key.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, tags
from prefect.states import Cancelled, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from flotilla.errors import FlotillaError, RunError, StoreUnavailable
from flotilla.loading import check_request_for, load_request, load_workflow
from flotilla.results import (
    FeatureResult,
    FeatureStatus,
    RunSummary,
    UnitStatus,
)
from flotilla.runs import RunContext, check_run_key, new_run_key, resolve_repo
from flotilla.settings import get_settings
from flotilla.spec import WorkflowSpec
from flows.decompose import decompose
from flows.implement import ImplementResult, implement
from flows.integrate import MergeResult, merge
from flows.publish import PublishResult, finalize
from tasks.control import pause_requested
from tasks.lifecycle import (
    begin,
    finish,
    load_context,
    pin_base,
    saved_units,
    stopped,
    write_failure_report,
)
from tasks.locking import hold_run_lock
from tasks.naming import label_flow_run, run_tags, stage_run_name
from tasks.preflight import check_target
from tasks.reporting import publish_run_report
from tasks.resources import TAG_PREFIX, apply_run_resources
from tasks.slots import reclaim_now
from tasks.stage_inputs import RunRef, forget, hand_over
from tasks.stopping import watch_api
from tasks.store import ArtifactStore, RunStore
from tasks.units import run_store_for


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
    pool: str | None = None,
) -> RunContext:
    """Validate every input and resolve defaults. Writes nothing: no clone, no store entry.

    The target is checked with `git ls-remote` (a path or a URL): a repository, with a commit,
    that has the base branch. `pool` runs the work_loop stage's units on that Prefect work pool
    (its `work_pool`)."""
    settings = get_settings()
    request_path = Path(request).resolve()
    spec = load_request(request_path)
    flow_spec = on_work_pool(load_workflow(workflow), pool) if pool else load_workflow(workflow)
    check_request_for(spec, flow_spec, str(request_path))  # what `validate` checks, too
    repo_url = repo or (spec.repo.url if spec.repo else None)
    if not repo_url:
        raise RunError(
            f"No target repository for {request}: pass --repo PATH|URL or set `repo.url` "
            "in the request."
        )
    repo_url = resolve_repo(repo_url, request_path.parent if not repo else Path.cwd())
    base = base or (spec.repo.base if spec.repo else "main")
    check_target(repo_url, base)  # not a repository, no commits, no such base: exit 2
    key = check_run_key(run_key or new_run_key(spec.feature.id))
    author = spec.author
    return RunContext(
        run_key=key,
        request=spec,
        workflow=flow_spec,
        request_dir=str(request_path.parent),
        repo=repo_url,
        base=base,
        store_url=ArtifactStore(store or settings.store).url,
        workdir=str(Path(workdir or settings.workdir).resolve() / key),
        author_name=author.name if author else (settings.author_name or "Flotilla"),
        author_email=author.email if author else (settings.author_email or "flotilla@localhost"),
    )


@flow(name="feature", persist_result=False, log_prints=True)
def feature(
    request: str | None = None,
    repo: str | None = None,
    base: str | None = None,
    workflow: str | None = None,
    store: str | None = None,
    run_key: str | None = None,
    workdir: str | None = None,
    resume: bool = False,
    rerun: list[str] | None = None,
    force: bool = False,
    pool: str | None = None,
) -> FeatureResult | State:
    """Run a feature request; or, with `resume` and `run_key`, carry on a run from the store.

    `rerun` (with `resume`) names succeeded units to run again, with everything after them.
    A paused run ends Cancelled, named "Paused": it stopped on request, before the end.
    """
    if resume:
        if not run_key:
            raise RunError("Resuming needs the run key of the run to carry on (run_key).")
        ctx = load_context(run_key, store)
    elif request is None:
        raise RunError("Pass a feature request file (request), or resume=True with a run_key.")
    else:
        ctx = build_context(request, repo, base, workflow, store, run_key, workdir, pool)
    label_flow_run(ctx.run_key, run_tags(ctx))  # a deployment's run was named at random
    with (
        hold_run_lock(ctx.store_url, ctx.run_key, "the feature flow"),  # one writer per key
        tags(*run_tags(ctx)),  # every subflow and task run of the run carries them
    ):
        try:
            result = run_feature(ctx, resume=resume, rerun=rerun, force=force)
        except (FeatureFailed, StoreUnavailable) as failed:  # said in one line, no traceback
            return Failed(message=str(failed))
    if result.status == FeatureStatus.PAUSED:
        return Cancelled(name="Paused", message=result.error)
    return result


def run_feature(
    ctx: RunContext, resume: bool = False, rerun: list[str] | None = None, force: bool = False
) -> FeatureResult:
    logger = get_run_logger()
    runs = run_store_for(ctx)
    flow_run = _flow_run()
    flow_run_id = str(flow_run.id) if flow_run else ""
    summary = begin(ctx, runs, resume, flow_run_id, logger, force)
    watch_api()  # a dead API stops the run after FLOTILLA_API_WAIT_S, resumably
    try:
        return _run_stages(ctx, runs, summary, resume, rerun or [])
    except FeatureFailed:
        raise
    except BaseException as exc:
        if not isinstance(exc, StoreUnavailable):  # else the store cannot hear it either
            stopped(runs, summary, exc)
        raise
    finally:
        forget(ctx.run_key)


def _run_stages(
    ctx: RunContext, runs: RunStore, summary: RunSummary, resume: bool, rerun: list[str]
) -> FeatureResult:
    logger = get_run_logger()
    verb = f"Resuming run {ctx.run_key} (resume {summary.resumes})" if resume else "Run"
    if not resume:
        verb += f" {ctx.run_key}"
    logger.info("%s: feature %s on %s@%s", verb, ctx.feature_id, ctx.repo, ctx.base)
    limits = apply_run_resources(ctx)  # tag concurrency limits per resource class
    for line in reclaim_now([tag.removeprefix(TAG_PREFIX) for tag in limits]):
        logger.warning("Reclaimed a resource slot: %s.", line)
    base_commit, summary = pin_base(ctx, runs, summary, logger)

    run = RunRef.of(ctx)  # stages get the run by reference: no parameter grows with the units
    units = list(ctx.request.units)
    paused = False
    implemented: ImplementResult | None = None
    merged: MergeResult | None = None
    published: PublishResult | None = None
    error = ""
    for stage in ctx.workflow.workflow.stages:
        if implemented is not None and pause_requested(runs):
            logger.warning("Pause requested: stopping before stage %s.", stage.name)
            paused = True
            break
        if stage.processor == "plan_decomposer":
            saved = saved_units(runs) if resume else None
            if saved is not None:
                logger.info("Resuming with the saved plan: %d unit(s).", len(saved))
                units = saved
            else:
                units = decompose.with_options(
                    name=stage.name, flow_run_name=stage_run_name(ctx.run_key, stage.name)
                )(run)
        elif stage.processor == "work_loop":
            runner = ThreadPoolTaskRunner(max_workers=stage.max_concurrent)
            hand_over(ctx.run_key, "units", units)
            implemented = _stage_result(
                implement.with_options(
                    name=stage.name,
                    flow_run_name=stage_run_name(ctx.run_key, stage.name),
                    task_runner=runner,
                )(run, base_commit, rerun, return_state=True)
            )
            units = implemented.units or units
            if implemented.paused:
                paused = True
                error = implemented.pause_reason
                break
            if not implemented.all_succeeded and not stage.allow_partial:
                error = _failed_units_message(implemented)
                break
        elif stage.processor == "pr_merger":
            hand_over(ctx.run_key, "units", units)
            hand_over(ctx.run_key, "records", implemented.records if implemented else {})
            merged = merge.with_options(
                name=stage.name, flow_run_name=stage_run_name(ctx.run_key, stage.name)
            )(run, base_commit)
            if implemented:  # units the merge stage re-did for a conflict or the test gate
                implemented.records.update(merged.records)
            if not merged.ok:
                error = _merge_message(merged)
                break
        elif stage.processor == "feature_pr_creator" and merged is not None:
            hand_over(ctx.run_key, "records", implemented.records if implemented else {})
            hand_over(ctx.run_key, "merged", merged)
            published = finalize.with_options(
                name=stage.name, flow_run_name=stage_run_name(ctx.run_key, stage.name)
            )(run)
            error = published.error  # a refused or failed push: nothing moved

    result = FeatureResult(
        run_key=ctx.run_key,
        feature_id=ctx.feature_id,
        title=ctx.request.feature.title,
        status=FeatureStatus.SUCCEEDED,
        feature_branch=ctx.feature_branch if published and not published.error else "",
        feature_commit=merged.commit if merged else "",
        base_branch=ctx.base,
        pr_path=published.pr_path if published else "",
        pr_url=published.pr_url if published else "",
        units=list(implemented.records.values()) if implemented else [],
        merge_order=merged.merge_order if merged else [],
        merges=merged.merges if merged else [],
        gate=merged.gate if merged else None,
        error=error,
    )
    complete = implemented is not None and implemented.all_succeeded and merged and merged.ok
    if paused:
        result.status = FeatureStatus.PAUSED
        result.error = error or _paused_message(ctx, result)
    elif error or not complete:
        result.status = FeatureStatus.FAILED
        result.error = error or _partial_message(implemented, merged)
    runs.store.write_json(runs.result_key, result)
    if result.status == FeatureStatus.FAILED:
        write_failure_report(ctx, runs, result)
    publish_run_report(ctx, result)
    finish(runs, summary, result)
    if result.status == FeatureStatus.PAUSED:
        logger.warning("Run %s paused: %s", ctx.run_key, result.error)
        return result
    if result.status != FeatureStatus.SUCCEEDED:
        raise FeatureFailed(f"Feature {ctx.feature_id} (run {ctx.run_key}) failed: {result.error}")
    return result


def _stage_result(state: State) -> ImplementResult:
    """The implement stage's result, also when the stage ended Failed because a unit failed;
    any other failure (a crash) is raised as it was."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, ImplementResult):
        return result
    return state.result()


def on_work_pool(workflow: WorkflowSpec, pool: str) -> WorkflowSpec:
    """The workflow with its work_loop stage's units sent to the work pool `pool`."""
    stages = [
        s.model_copy(update={"work_pool": pool}) if s.processor == "work_loop" else s
        for s in workflow.workflow.stages
    ]
    return workflow.model_copy(
        update={"workflow": workflow.workflow.model_copy(update={"stages": stages})}
    )


def _flow_run():
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx.flow_run if ctx else None


def _failed_units_message(implemented: ImplementResult) -> str:
    return implemented.failure_line() + "; merge and finalize were skipped"


def _merge_message(merged: MergeResult) -> str:
    return merged.failure_message()


def _partial_message(implemented: ImplementResult | None, merged: MergeResult | None) -> str:
    if implemented is None or merged is None:
        return "the workflow did not implement and merge every unit"
    missing = [u for u, r in implemented.records.items() if r.status != UnitStatus.SUCCEEDED]
    return (
        f"partial feature: {len(missing)} unit(s) missing ({', '.join(missing)}); the others "
        "were merged and published because the work_loop stage says allow_partial"
    )


def _paused_message(ctx: RunContext, result: FeatureResult) -> str:
    waiting = [r.unit_id for r in result.units if r.status != UnitStatus.SUCCEEDED]
    left = f"{len(waiting)} unit(s) not done ({', '.join(waiting)})" if waiting else "no unit left"
    return f"paused on request with {left}; `flotilla resume {ctx.run_key}` carries it on"
