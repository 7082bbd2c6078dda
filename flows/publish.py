"""The finalize stage: push the branches, write PR.md, open or update the PR, show it in the UI.

The token of the github provider is read inside the tasks that use it, never passed as a
parameter, so it reaches neither Prefect's database nor a log.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from flotilla.results import UnitRecord, UnitStatus
from flotilla.runs import RunContext
from flotilla.spec import UnitSpec
from flows.integrate import MergeResult
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
from tasks.reporting import link_for, publish_pr_artifact
from tasks.store import RunStore
from tasks.units import run_store_for, workspace_for

# Files under runs/<key>/feature/ that are this stage's own output, not evidence to link to.
_OWN_FILES = ("pr.md", "report.md", "result.json")


class PublishResult(BaseModel):
    pr_path: str
    pr_url: str = ""
    pushed: list[str]


@flow(name="finalize", persist_result=False)
def finalize(
    ctx: RunContext, units: list[UnitSpec], records: dict[str, UnitRecord], merged: MergeResult
) -> PublishResult:
    runs = run_store_for(ctx)
    workspace = workspace_for(ctx)
    losers = [  # best-of: the other candidates' work, for a reader to compare (on a pool, the
        c.branch  # worker pushed them already and this clone does not have them)
        for unit_id in merged.merge_order
        for c in (records[unit_id].candidates if unit_id in records else [])
        if c.commit and c.number != records[unit_id].winner and workspace.branch_sha(c.branch)
    ]
    branches = [ctx.feature_branch, *map(ctx.unit_branch, merged.merge_order), *losers]
    pushed = push_branches(ctx, branches)
    draft = build_draft(ctx, runs, units, records, merged)
    markdown = render_pr(draft)
    runs.store.write_text(runs.pr_key, markdown)
    pr_path = runs.store.uri(runs.pr_key)
    pr = open_pull_request(ctx, markdown, pr_path)
    # The run's report.md and `<feature>-report` artifact are written by the feature flow
    # (tasks.reporting.publish_run_report) for every outcome; this is the PR's own artifact.
    where = pr.url or pr_path
    publish_pr_artifact(
        ctx.feature_id, render_report(draft, pr, pr_path), f"Run {ctx.run_key}: PR at {where}"
    )
    get_run_logger().info("Pushed %s; PR: %s", ", ".join(pushed), where)
    return PublishResult(pr_path=pr_path, pr_url=pr.url, pushed=pushed)


@task(name="push-branches", persist_result=False, cache_policy=NO_CACHE)
def push_branches(ctx: RunContext, branches: list[str]) -> list[str]:
    """Push to `publish.remote`, else the target; the base branch is never written."""
    workspace = workspace_for(ctx)
    remote = ctx.request.publish.remote
    workspace.env = {**workspace.env, **push_env(ctx.request.publish, remote or ctx.repo)}
    workspace.push(branches, remote)
    return branches


@task(name="open-pull-request", persist_result=False, cache_policy=NO_CACHE)
def open_pull_request(ctx: RunContext, markdown: str, pr_path: str) -> PublishedPR:
    info = PullRequestInfo(
        title=ctx.request.feature.title,
        body=markdown,
        head=ctx.feature_branch,
        base=workspace_for(ctx).base_branch() or ctx.base,  # `HEAD` names no branch
        full_text_url=link_for(pr_path),
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
        artifact_links={u.id: link_for(runs.store.uri(runs.unit_prefix(u.id))) for u in units},
        unit_artifacts={u.id: _links(runs, runs.unit_prefix(u.id)) for u in units},
        feature_artifacts=[
            link for link in _links(runs, feature_dir) if link.name not in _OWN_FILES
        ],
        gate_runs=merged.gate_runs,
        gate_notes=[merged.bisect.explain()] if merged.bisect else [],
        missing_units=[
            u.id
            for u in units
            if u.id not in records or records[u.id].status != UnitStatus.SUCCEEDED
        ],
        run_key=ctx.run_key,
        run_url=link_for(runs.store.uri(runs.prefix)),
    )


def _links(runs: RunStore, prefix: str) -> list[ArtifactLink]:
    return [
        ArtifactLink(name=key[len(prefix) + 1 :], url=link_for(runs.store.uri(key)))
        for key in runs.store.list(prefix)
    ]
