"""The finalize stage: push the branches, write the PR description, show it in the UI."""

from __future__ import annotations

from prefect import flow, get_run_logger
from pydantic import BaseModel

from flotilla.results import UnitRecord, UnitStatus
from flotilla.runs import RunContext
from flotilla.spec import UnitSpec
from flows.integrate import MergeResult
from tasks.publishing import PullRequestDraft, render_pr
from tasks.reporting import publish_pr_artifact
from tasks.units import run_store_for, workspace_for


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
    pushed = [ctx.feature_branch] + [ctx.unit_branch(u) for u in merged.merge_order]
    remote = ctx.request.publish.remote
    workspace.push(pushed, remote)
    draft = PullRequestDraft(
        feature=ctx.request.feature,
        base_branch=ctx.base,
        feature_branch=ctx.feature_branch,
        feature_commit=merged.commit,
        units=[records[u.id] for u in units],
        titles={u.id: u.display_title for u in units},
        merge_order=merged.merge_order,
        merges=merged.merges,
        gate=merged.gate,
        strategy=(ctx.stage("pr_merger").merge_strategy if ctx.stage("pr_merger") else "merge"),
        artifact_links={u.id: runs.store.uri(runs.unit_prefix(u.id)) for u in units},
        missing_units=[u.id for u in units if records[u.id].status != UnitStatus.SUCCEEDED],
    )
    markdown = render_pr(draft)
    runs.store.write_text(runs.pr_key, markdown)
    publish_pr_artifact(ctx.feature_id, markdown, f"Feature PR for {ctx.feature_id}")
    pr_path = runs.store.uri(runs.pr_key)
    get_run_logger().info("Pushed %s; PR description at %s", ", ".join(pushed), pr_path)
    return PublishResult(pr_path=pr_path, pushed=pushed)
