"""A run's life in the store: how it starts, how a resume picks it up, how it ends.

Everything here reads or writes `runs/<key>/…` only, so a run can be resumed from its key on
any machine that reaches the store; nothing depends on the Prefect server's history.
"""

from __future__ import annotations

import os
import socket
from logging import Logger, LoggerAdapter
from pathlib import Path

from flotilla.errors import GitError, RunError
from flotilla.failures import LogTails, render_failure_report, split_log
from flotilla.results import FeatureResult, RunState, RunSummary, UnitStatus, utcnow
from flotilla.runs import RunContext
from flotilla.spec import UnitSpec
from tasks.control import clear_pause
from tasks.git import rev
from tasks.recovery import recover, restore_unit_branches
from tasks.store import ArtifactStore, RunStore
from tasks.workspace import Workspace

Log = Logger | LoggerAdapter


def failures_key(runs: RunStore) -> str:
    """The failure report's own key; `feature/report.md` gets the same text."""
    return f"{runs.prefix}/feature/failures.md"


def load_context(run_key: str, store: str | None = None) -> RunContext:
    """The RunContext a run saved at its start; a RunError naming the store when it is missing."""
    from flotilla.settings import get_settings

    runs = RunStore(ArtifactStore(store or get_settings().store), run_key)
    try:
        return runs.store.read_model(runs.context_key, RunContext)
    except KeyError:
        raise RunError(
            f"There is no run {run_key!r} in the store {runs.store.url} "
            f"({runs.store.uri(runs.context_key)} is missing). Check the run key and pass the "
            "store the run used with --store."
        ) from None


def read_summary(runs: RunStore) -> RunSummary | None:
    try:
        return runs.store.read_model(runs.state_key, RunSummary)
    except KeyError:
        return None


def begin(
    ctx: RunContext, runs: RunStore, resume: bool, flow_run_id: str, log: Log, force: bool = False
) -> RunSummary:
    """Write the run's start (or a resume's restart) to the store; recover from a crash first."""
    previous = read_summary(runs) if resume else None
    if previous is not None:
        workspace = workspace_of(ctx)
        for line in recover(previous, Path(ctx.workdir), workspace.clone_dir, force):
            log.warning("Recovering: %s.", line)
    if not resume:
        runs.store.write_json(runs.context_key, ctx)
        runs.store.write_json(runs.request_key, ctx.request)
    clear_pause(runs)  # a request left over from an earlier stop must not stop this one
    runs.store.delete(runs.result_key)  # superseded; a reader must not take it for this run's
    here = {"flow_run_id": flow_run_id, "host": socket.gethostname(), "pid": os.getpid()}
    if previous is None:
        summary = RunSummary(
            run_key=ctx.run_key,
            feature_id=ctx.feature_id,
            title=ctx.request.feature.title,
            units_total=len(ctx.request.units),
            **here,
        )
    else:
        summary = previous.model_copy(
            update={
                **here,
                "state": RunState.RUNNING,
                "finished_at": None,
                "error": "",
                "resumes": previous.resumes + 1,
            }
        )
    runs.store.write_json(runs.state_key, summary)
    return summary


def workspace_of(ctx: RunContext) -> Workspace:
    from tasks.units import workspace_for

    return workspace_for(ctx)


def pin_base(
    ctx: RunContext, runs: RunStore, summary: RunSummary, log: Log
) -> tuple[str, RunSummary]:
    """Clone or fetch the target; a resumed run keeps the base commit it started from."""
    workspace = workspace_of(ctx)
    had_clone = (workspace.clone_dir / "HEAD").is_file()
    latest = workspace.prepare()
    base = summary.base_commit or latest
    if summary.base_commit:
        try:
            rev(workspace.clone_dir, base)
        except GitError:
            raise RunError(
                f"Run {ctx.run_key} started from commit {base[:12]} of {ctx.repo}, which is no "
                "longer there (was the base branch rewritten?). Start a new run instead."
            ) from None
        if latest != base:
            log.info("The base moved to %s; the run stays on %s.", latest[:12], base[:12])
    if summary.base_commit and not had_clone:
        log.warning("The run's clone %s was missing; cloned the target again.", workspace.clone_dir)
        restored, missing = restore_unit_branches(workspace, list(runs.read_ledger().values()))
        if restored:
            log.info("Fetched the pushed branches of %s from the target.", ", ".join(restored))
        if missing:
            log.warning(
                "The branches of %s were only in the lost clone; these units run again.",
                ", ".join(missing),
            )
    summary = summary.model_copy(update={"base_commit": base})
    runs.store.write_json(runs.state_key, summary)
    return base, summary


def saved_units(runs: RunStore) -> list[UnitSpec] | None:
    """The units the decompose stage saved in plan.json, so a resume never plans again."""
    try:
        plan = runs.store.read_json(runs.plan_key)
    except KeyError:
        return None
    return [UnitSpec.model_validate(u) for u in plan.get("units", [])]


def finish(runs: RunStore, summary: RunSummary, result: FeatureResult) -> RunSummary:
    states = {"succeeded": RunState.SUCCEEDED, "paused": RunState.PAUSED}
    done = sum(1 for r in result.units if r.status == UnitStatus.SUCCEEDED)
    summary = summary.model_copy(
        update={
            "state": states.get(result.status.value, RunState.FAILED),
            "finished_at": utcnow(),
            "units_total": len(result.units) or summary.units_total,
            "units_done": done,
            "error": result.error,
        }
    )
    runs.store.write_json(runs.state_key, summary)
    return summary


def stopped(runs: RunStore, summary: RunSummary, error: BaseException) -> None:
    """The orchestrator is leaving on an exception: say so, rather than stay `running`."""
    what = f"{type(error).__name__}: {error}".strip()
    summary = read_summary(runs) or summary  # the latest one, with the pinned base commit
    summary = summary.model_copy(
        update={
            "state": RunState.FAILED,
            "finished_at": utcnow(),
            "error": f"the run stopped on an error ({what}); `flotilla resume "
            f"{summary.run_key}` carries it on once the cause is fixed",
        }
    )
    runs.store.write_json(runs.state_key, summary)


def write_failure_report(ctx: RunContext, runs: RunStore, result: FeatureResult) -> str:
    """Render the failure report from the ledger and the logs; store it; return it."""
    logs: dict[str, LogTails] = {}
    for record in result.units:
        if record.status != UnitStatus.FAILED or not record.attempts:
            continue
        try:
            text = runs.store.read_text(runs.log_key(record.unit_id, record.attempts))
        except KeyError:
            continue
        logs[record.unit_id] = split_log(text)
    hint = _next_step(ctx, result)
    report = render_failure_report(
        ctx.run_key, ctx.request.feature.title, result.units, logs, result.error, hint
    )
    runs.store.write_text(failures_key(runs), report)
    runs.store.write_text(runs.feature_report_key, report)
    return report


def _next_step(ctx: RunContext, result: FeatureResult) -> str:
    """What helps: `retry` re-runs failed units; it cannot help when none failed."""
    from tasks.pushing import PUSH_FAILED, PUSH_REFUSED

    key = ctx.run_key
    if any(r.status == UnitStatus.FAILED for r in result.units):
        return (
            f"Fix the cause, then `flotilla retry {key}` runs the failed units and those "
            "they blocked again, reusing every unit that succeeded."
        )
    if PUSH_REFUSED in result.error:
        return (
            f"`flotilla resume {key} --force` publishes anyway, keeping each overwritten tip "
            "under refs/flotilla/backup/ first."
        )
    if PUSH_FAILED in result.error:
        return f"Fix the target, then `flotilla resume {key}` publishes the same work again."
    return (
        f"No unit failed, so `flotilla retry {key}` would meet the same problem; change what "
        "the problem above names and start a new run."
    )
