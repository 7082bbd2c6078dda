"""The finalize stage: push the branches, write PR.md, open or update the PR, show it in the UI.

The token of the github provider is read inside the tasks that use it, never passed as a
parameter, so it reaches neither Prefect's database nor a log.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from flotilla.errors import FlotillaError
from flotilla.results import UnitRecord, UnitStatus
from flotilla.runs import RunContext
from flotilla.spec import UnitSpec
from flows.integrate import MergeResult, merge_result_key
from tasks.links import artifacts_command
from tasks.publishing import (
    ArtifactLink,
    PublishedPR,
    PullRequestDraft,
    PullRequestInfo,
    publish_pull_request,
    push_env,
    render_pr,
    render_report,
)
from tasks.pushing import overwrite_allowed, push_all
from tasks.reporting import publish_pr_artifact
from tasks.stage_inputs import RunRef, handed, ledger_records, planned_units
from tasks.store import RunStore
from tasks.units import run_store_for, workspace_for

# Files under runs/<key>/feature/ that are this stage's own output, not evidence to link to.
_OWN_FILES = ("pr.md", "report.md", "result.json")


class PublishResult(BaseModel):
    pr_path: str
    pr_url: str = ""
    pushed: list[str]
    error: str = ""  # the push was refused or failed; nothing moved
    exit_code: int = 0


@flow(name="finalize", persist_result=False)
def finalize(run: RunRef) -> PublishResult:
    """Push and publish what the merge stage built; `run` is a reference
    (tasks/stage_inputs.py), the rest comes from memory or the store."""
    ctx = run.ctx
    runs = run_store_for(ctx)
    units = handed(ctx.run_key, "units", lambda: planned_units(ctx))
    records = handed(ctx.run_key, "records", lambda: ledger_records(ctx, units))
    merged = handed(
        ctx.run_key,
        "merged",
        lambda: runs.store.read_model(merge_result_key(runs), MergeResult),
    )
    return _finalize(ctx, runs, units, records, merged)


def _finalize(
    ctx: RunContext,
    runs: RunStore,
    units: list[UnitSpec],
    records: dict[str, UnitRecord],
    merged: MergeResult,
) -> PublishResult:
    workspace = workspace_for(ctx)
    losers = [  # best-of: the other candidates' work, for a reader to compare (on a pool, the
        c.branch  # worker pushed them already and this clone does not have them)
        for unit_id in merged.merge_order
        for c in (records[unit_id].candidates if unit_id in records else [])
        if c.commit and c.number != records[unit_id].winner and workspace.branch_sha(c.branch)
    ]
    branches = [ctx.feature_branch, *map(ctx.unit_branch, merged.merge_order), *losers]
    push = push_branches(ctx, branches)
    if push.error:  # said in one line by the run's result, not as a traceback
        return PublishResult(pr_path="", pushed=[], error=push.error, exit_code=push.exit_code)
    pushed = push.pushed
    draft = build_draft(ctx, runs, units, records, merged)
    markdown = render_pr(draft)
    runs.store.write_text(runs.pr_key, markdown)
    pr_path = runs.store.uri(runs.pr_key)
    pr = open_pull_request(ctx, markdown, pr_path)
    # The run's report.md and `<feature>-report` artifact are written by the feature flow
    # (tasks.reporting.publish_run_report) for every outcome; this is the PR's own artifact.
    where = pr.url or pr_path
    publish_pr_artifact(
        ctx.feature_id,
        render_report(
            draft, pr, artifacts_command(ctx.run_key, ctx.store_url, get="feature/pr.md")
        ),
        f"Run {ctx.run_key}: PR at {where}",
    )
    get_run_logger().info("Pushed %s; PR: %s", ", ".join(pushed) or "nothing new", where)
    return PublishResult(pr_path=pr_path, pr_url=pr.url, pushed=pushed)


class PushReport(BaseModel):
    pushed: list[str] = []
    error: str = ""
    exit_code: int = 0


@task(name="push-branches", persist_result=False, cache_policy=NO_CACHE)
def push_branches(ctx: RunContext, branches: list[str]) -> PushReport:
    """Push to `publish.remote`, else the target, all at once; the base branch is never written.

    A branch holding commits this run did not make is left alone unless the run said --force.
    """
    workspace = workspace_for(ctx)
    runs = run_store_for(ctx)
    remote = ctx.request.publish.remote or ctx.repo
    workspace.env = {**workspace.env, **push_env(ctx.request.publish, remote)}
    logger = get_run_logger()
    try:
        done = push_all(workspace, runs, remote, branches, ctx.feature_id, overwrite_allowed(runs))
    except FlotillaError as exc:
        logger.error("%s", exc)
        return PushReport(error=str(exc), exit_code=exc.exit_code)
    for branch, ref in done.backups.items():
        logger.warning("Overwrote %s (--force); its old tip is kept at %s.", branch, ref)
    if done.unchanged and not done.pushed:
        logger.info("Nothing to push: every branch in %s is already at this run's commit.", remote)
    return PushReport(pushed=done.pushed)


@task(name="open-pull-request", persist_result=False, cache_policy=NO_CACHE)
def open_pull_request(ctx: RunContext, markdown: str, pr_path: str) -> PublishedPR:
    info = PullRequestInfo(
        title=ctx.request.feature.title,
        body=markdown,
        head=ctx.feature_branch,
        base=workspace_for(ctx).base_branch() or ctx.base,  # `HEAD` names no branch
        full_text_url=artifacts_command(ctx.run_key, ctx.store_url, get="feature/pr.md"),
    )
    logger = get_run_logger()
    pr = publish_pull_request(ctx.request.publish, info, logger)
    if pr.url:
        logger.info("Pull request %s: %s", "opened" if pr.created else "updated", pr.url)
    return pr


def build_draft(
    ctx: RunContext,
    runs: RunStore,
    units: list[UnitSpec],
    records: dict[str, UnitRecord],
    merged: MergeResult,
) -> PullRequestDraft:
    stage = ctx.stage("pr_merger")
    feature_dir = f"{runs.prefix}/feature"
    return PullRequestDraft(
        feature=ctx.request.feature,
        base_branch=ctx.base,
        feature_branch=ctx.feature_branch,
        feature_commit=merged.commit,
        units=[records[u.id] for u in units if u.id in records],
        titles={u.id: u.display_title for u in units},
        merge_order=merged.merge_order,
        merges=merged.merges,
        gate=merged.gate,
        strategy=stage.merge_strategy if stage else "merge",
        artifact_links={u.id: artifacts_command(ctx.run_key, ctx.store_url, u.id) for u in units},
        unit_artifacts={u.id: _links(ctx, runs, runs.unit_prefix(u.id), u.id) for u in units},
        feature_artifacts=[
            link for link in _links(ctx, runs, feature_dir) if link.name not in _OWN_FILES
        ],
        gate_runs=merged.gate_runs,
        gate_notes=[merged.bisect.explain()] if merged.bisect else [],
        missing_units=[
            u.id
            for u in units
            if u.id not in records or records[u.id].status != UnitStatus.SUCCEEDED
        ],
        run_key=ctx.run_key,
        run_url=artifacts_command(ctx.run_key, ctx.store_url),
    )


def _links(
    ctx: RunContext, runs: RunStore, prefix: str, unit: str | None = None
) -> list[ArtifactLink]:
    """What the run stored under `prefix`, each with the command that prints it: a store path
    is local to the machine that wrote it, and no browser opens `s3://`."""
    return [
        ArtifactLink(
            name=(name := key[len(prefix) + 1 :]),
            url=artifacts_command(
                ctx.run_key, ctx.store_url, unit, get=name if unit else key[len(runs.prefix) + 1 :]
            ),
        )
        for key in runs.store.list(prefix)
    ]
