"""The `nightly-features` flow: run every feature request queued in the store's `inbox/`.

Queue a request by copying its YAML file to `<store>/inbox/`. Each night this flow claims each
waiting request (so two nightly runs never start the same one), runs it, and files it under
`done/` or `failed/` with a `<stem>.result.json` naming its run key, PR and report.

Requests run one after another as `feature` subflows of the nightly run: the morning has one
place to look, and each feature already runs its units in parallel. To spread whole features over
several workers, queue them with `prefect deployment run 'feature/feature'` instead.

The feature flow reads a local file, so each request is downloaded to the work directory first;
a request's relative paths (`repo.url`, `{request_dir}` in agent commands) resolve against that
copy, so inbox requests should use absolute paths or URLs.
"""

from __future__ import annotations

import uuid
from pathlib import Path, PurePosixPath

from prefect import flow, get_run_logger, tags
from prefect.artifacts import create_table_artifact
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectNotFound
from prefect.states import Failed, State
from pydantic import BaseModel, Field

from flotilla.errors import FlotillaError
from flotilla.loading import load_request
from flotilla.results import FeatureResult
from flotilla.runs import new_run_key
from flotilla.settings import get_settings
from flows.feature import build_context, feature
from tasks.inbox import INBOX, RUNNING, Claim, Inbox, InboxResult
from tasks.naming import run_tags
from tasks.store import ArtifactStore, RunStore


class NightlyReport(BaseModel):
    """What one nightly run did: a result per request it ran, and what it left alone."""

    results: list[InboxResult] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list, description="Requests another run holds.")
    released: list[str] = Field(
        default_factory=list, description="Claims of finished or crashed runs, given back."
    )


@flow(name="nightly-features", persist_result=False, log_prints=True)
def nightly_features(
    store: str | None = None,
    repo: str | None = None,
    workflow: str | None = None,
    workdir: str | None = None,
    limit: int | None = None,
) -> NightlyReport | State:
    """Run the inbox of `store`. `repo` is the target for requests without `repo.url`."""
    logger = get_run_logger()
    settings = get_settings()
    inbox = Inbox(ArtifactStore(store or settings.store))
    work_root = Path(workdir or settings.workdir).resolve()
    report = NightlyReport(released=release_stale_claims(inbox))
    waiting = inbox.waiting()
    logger.info("%d request(s) waiting in %s.", len(waiting), inbox.store.uri(INBOX))
    for name in waiting:
        if limit is not None and len(report.results) >= limit:
            logger.info("Stopping after %d request(s) (limit); the rest wait.", limit)
            break
        claim = inbox.claim(name, _flow_run_id())
        if claim is None:
            holder = inbox.holder(name)
            who = (
                f"flow run {holder.flow_run_id or '?'} on {holder.host}"
                if holder
                else "another run"
            )
            logger.info("Skipping %s: %s is already running it.", name, who)
            report.skipped.append(name)
            continue
        result = run_request(inbox, claim, repo=repo, workflow=workflow, work_root=work_root)
        logger.info(
            "%s: %s %s",
            name,
            result.state,
            result.error.splitlines()[0] if result.error else result.pr_path,
        )
        report.results.append(result)
    _publish_table(report)
    failed = [r for r in report.results if r.state != "succeeded"]
    if failed:
        # A Failed final state (not an exception): the run is red in the morning, no traceback.
        names = ", ".join(r.request for r in failed)
        return Failed(
            message=f"{len(failed)} of {len(report.results)} queued request(s) failed: {names}. "
            f"Each one's reason is in {inbox.store.uri('failed')}/<name>.result.json."
        )
    return report


def run_request(
    inbox: Inbox, claim: Claim, *, repo: str | None, workflow: str | None, work_root: Path
) -> InboxResult:
    """Validate, run and file one claimed request; every outcome ends in done/ or failed/."""
    name = claim.name
    started = InboxResult(
        request=name, state="invalid", request_key="", claimed_at=claim.claimed_at
    )
    download_dir = work_root / "nightly" / f"{PurePosixPath(name).stem}-{uuid.uuid4().hex[:8]}"
    try:
        local = inbox.download(name, download_dir)
        spec = load_request(local)
        has_repo = bool(spec.repo and spec.repo.url)
        ctx = build_context(
            str(local),
            repo=None if has_repo else repo,
            workflow=workflow,
            store=inbox.store.url,
            run_key=unique_run_key(inbox.store, spec.feature.id),
            workdir=str(work_root),
        )
    except Exception as exc:  # every request must leave running/, whatever went wrong
        error = str(exc) if isinstance(exc, FlotillaError) else f"{type(exc).__name__}: {exc}"
        # name the request as the user queued it, not as the local copy
        error = error.replace(str(download_dir / name), inbox.store.uri(f"{INBOX}/{name}"))
        return inbox.finish(name, started.model_copy(update={"error": error}))

    with tags(*run_tags(ctx)):
        state = feature.with_options(flow_run_name=ctx.run_key)(
            request=str(local),
            repo=ctx.repo,
            workflow=workflow,
            store=inbox.store.url,
            run_key=ctx.run_key,
            workdir=str(work_root),
            return_state=True,
        )
    runs = RunStore(inbox.store, ctx.run_key)
    outcome = _feature_result(runs)
    ok = state.is_completed()
    error = "" if ok else (outcome.error if outcome and outcome.error else str(state.message))
    report_key = next(
        (k for k in (runs.feature_report_key, runs.pr_key) if runs.store.exists(k)), ""
    )
    result = started.model_copy(
        update={
            "state": "succeeded" if ok else "failed",
            "run_key": ctx.run_key,
            "feature_id": ctx.feature_id,
            "pr_path": outcome.pr_path if outcome else "",
            "pr_url": outcome.pr_url if outcome else "",
            "report": runs.store.uri(report_key) if report_key else "",
            "run": runs.store.uri(runs.prefix),
            "flow_run_id": str(state.state_details.flow_run_id or ""),
            "error": error,
        }
    )
    return inbox.finish(name, result)


def unique_run_key(store: ArtifactStore, feature_id: str) -> str:
    """A new run key that no run in the store uses yet (two requests may share a feature id)."""
    base = new_run_key(feature_id)
    key, n = base, 2
    while store.list(f"runs/{key}"):
        key, n = f"{base}-{n}", n + 1
    return key


def release_stale_claims(inbox: Inbox) -> list[str]:
    """Give back claims whose flow run has finished or crashed, so their requests run again.

    A claim outlives its run only when that process died between claiming and filing; the
    request goes back to the inbox. Claims whose flow run Prefect no longer knows stay: delete
    `running/<name>.claim.json` by hand once you are sure nothing runs it.
    """
    released = []
    for key in inbox.store.list(RUNNING):
        if not key.endswith(".claim.json"):
            continue
        name = key[len(RUNNING) + 1 : -len(".claim.json")]
        claim = inbox.holder(name)
        if claim is None or not claim.flow_run_id or claim.flow_run_id == _flow_run_id():
            continue
        if not _flow_run_finished(claim.flow_run_id):
            continue
        if inbox.store.exists(f"{RUNNING}/{name}") and not inbox.store.exists(f"{INBOX}/{name}"):
            inbox.store.move(f"{RUNNING}/{name}", f"{INBOX}/{name}")
        inbox.store.delete(key)
        get_run_logger().warning(
            "Released %s: flow run %s claimed it but ended without filing it; it runs again.",
            name,
            claim.flow_run_id,
        )
        released.append(name)
    return released


def _flow_run_finished(flow_run_id: str) -> bool:
    try:
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(uuid.UUID(flow_run_id))
    except (ObjectNotFound, ValueError):
        return False
    return bool(flow_run.state and flow_run.state.is_final())


def _feature_result(runs: RunStore) -> FeatureResult | None:
    try:
        return runs.store.read_model(runs.result_key, FeatureResult)
    except (KeyError, FlotillaError):
        return None


def _flow_run_id() -> str:
    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else ""


def _publish_table(report: NightlyReport) -> None:
    rows = [
        {
            "request": r.request,
            "state": r.state,
            "run_key": r.run_key,
            "pr": r.pr_url or r.pr_path,
            "report": r.report,
            "error": (r.error.splitlines() or [""])[0][:200],
        }
        for r in report.results
    ]
    blank = dict.fromkeys(("run_key", "pr", "report", "error"), "")
    rows += [
        {"request": n, "state": "skipped: another run has it", **blank} for n in report.skipped
    ]
    create_table_artifact(
        key="nightly-features", table=rows, description="Requests run by this nightly run"
    )
