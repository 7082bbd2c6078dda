"""Prefect artifacts: what a team lead sees in the UI while a feature runs and after.

Per run: a progress artifact (share of units finished), a table of the units (status, step,
attempt, elapsed, ETA, last error) updated in place as the ledger changes, a markdown report per
unit when it finishes, link artifacts to its outputs in the store, and a final report. Keys are
stable per feature (`<feature>-progress`, `<feature>-units`, `<feature>-unit-<unit>`, ...), so
the Artifacts page shows each feature's history across runs; each run adds one version.

Reporting never fails a run: a Prefect API error is logged and the next update tries again.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactUpdate

from flotilla.candidates import candidate_lines
from flotilla.eta import (
    RunEta,
    UnitRow,
    error_headline,
    estimate,
    format_duration,
    run_eta_text,
    unit_rows,
)
from flotilla.plan import Plan
from flotilla.results import FeatureResult, FeatureStatus, UnitRecord, UnitStatus, utcnow
from flotilla.runs import RunContext
from flotilla.spec import UnitSpec
from flotilla.usage import Usage
from tasks.links import artifacts_command, branch_markdown, opens_in_browser
from tasks.stats import typical_durations
from tasks.store import ArtifactStore, RunStore

TICK_S = 1.0  # the implement loop wakes this often; the table changes at most once per tick
HEARTBEAT_S = 15.0  # elapsed and ETA cells refresh this often while units run
RETRY_AFTER_S = 30.0  # after a Prefect API error, updates pause this long

log = logging.getLogger("flotilla.reporting")
T = TypeVar("T")


def artifact_key(feature_id: str, kind: str) -> str:
    """Lowercase letters, digits and dashes only, as Prefect requires for artifact keys."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{feature_id}-{kind}".lower()).strip("-")


def publish_pr_artifact(feature_id: str, markdown: str, description: str) -> None:
    create_markdown_artifact(
        key=artifact_key(feature_id, "pr"), markdown=markdown, description=description
    )


class RunReport:
    """One run's live progress and unit table, held by the process running the implement stage.

    Unit threads report step changes (`note`), which only records them: a unit never waits for
    the Prefect API. The implement loop merges finished records and sends the changes on every
    tick (`merge`), to the same two artifacts, in place, at most once per `interval()`.
    """

    def __init__(self, ctx: RunContext, plan: Plan, typical: dict[str, float]):
        stage = ctx.stage("work_loop")
        self.feature_id, self.run_key = ctx.feature_id, ctx.run_key
        self.plan, self.typical = plan, typical
        self.max_concurrent = stage.max_concurrent if stage else None
        self.records: dict[str, UnitRecord] = {}
        self.outcome: str | None = None  # set when the run is over: no more ETAs
        self.progress_id = self.table_id = None
        self._lock = threading.Lock()  # guards records and timestamps, never held over I/O
        self._sending = threading.Lock()  # one sender at a time, so updates arrive in order
        self._dirty = True
        self._last = self._paused_until = 0.0

    def open(self) -> RunReport:
        """Create this run's versions of the progress and the table artifact."""
        progress, description, rows = self._render()
        key = artifact_key(self.feature_id, "progress")
        self.progress_id = self._call(
            lambda: create_progress_artifact(progress, key=key, description=description)
        )
        key = artifact_key(self.feature_id, "units")
        self.table_id = self._call(
            lambda: create_table_artifact(rows, key=key, description=description)
        )
        self._last, self._dirty = time.monotonic(), False
        return self

    def note(self, record: UnitRecord) -> None:
        """A unit's ledger record changed (called from its thread at every step)."""
        with self._lock:
            self._take(record)

    def merge(self, records: list[UnitRecord]) -> None:
        """The implement loop's view: final records win over what unit threads noted. The loop
        passes the verdicts that are new since its last tick, so a tick costs what changed."""
        with self._lock:
            for record in records:
                if record.status.is_final or record.unit_id not in self.records:
                    self._take(record)
        self.flush()

    def _take(self, record: UnitRecord) -> None:
        known = self.records.get(record.unit_id)
        if known is None or known.model_dump() != record.model_dump():
            self.records[record.unit_id] = record.model_copy(deep=True)
            self._dirty = True

    def flush(self, force: bool = False) -> None:
        """Push the table and progress if they changed (at most once per TICK_S) or went stale."""
        with self._sending:
            with self._lock:
                now = time.monotonic()
                if now < self._paused_until and not force:
                    return
                running = any(r.status == UnitStatus.RUNNING for r in self.records.values())
                due = (
                    force
                    or (self._dirty and now - self._last >= self.interval())
                    or (running and now - self._last >= HEARTBEAT_S)
                )
                if not due:
                    return
                self._dirty, self._last = False, now
                progress, description, rows = self._render()
            self._send(progress, description, rows)

    def interval(self) -> float:
        """Seconds between two sends of the table: TICK_S, and longer for a long table (a
        second per 100 rows), so that a run of 1,000 units does not resend its table with every
        unit that finishes."""
        return TICK_S * max(1.0, len(self.plan.units) / 100)

    def _render(self) -> tuple[float, str, list[dict[str, str]]]:
        eta = self.eta()
        rows = self.rows(eta)
        total = len(rows)
        finished = [r for r in rows if UnitStatus(r.status).is_final]
        counts = {s: sum(r.status == s for r in finished) for s in ("succeeded", "failed")}
        blocked = len(finished) - counts["succeeded"] - counts["failed"]
        parts = [f"{n} {s}" for s, n in (*counts.items(), ("blocked", blocked)) if n]
        detail = f" ({', '.join(parts)})" if parts else ""
        tail = f"the run {self.outcome}" if self.outcome else f"ETA {run_eta_text(eta)}"
        description = (
            f"Run {self.run_key}: {len(finished)} of {total} units finished{detail}; {tail}."
        )
        progress = 100.0 * len(finished) / total if total else 100.0
        return progress, description, [with_cost(r.cells(), self.records.get(r.unit)) for r in rows]

    def eta(self) -> RunEta:
        return estimate(self.plan, self.records, self.typical, utcnow(), self.max_concurrent)

    def rows(self, eta: RunEta | None = None) -> list[UnitRow]:
        return unit_rows(self.plan, self.records, eta or self.eta(), live=self.outcome is None)

    def _send(self, progress: float, description: str, rows: list[dict[str, str]]) -> None:
        if self.progress_id is not None:
            self._call(lambda: update_progress_artifact(self.progress_id, progress, description))
        if self.table_id is not None:
            self._call(lambda: _update_data(self.table_id, json.dumps(rows), description))

    def _call(self, action: Callable[[], T]) -> T | None:
        try:
            return action()
        except Exception as exc:  # reporting must never fail the run
            self._paused_until = time.monotonic() + RETRY_AFTER_S
            log.warning("Could not update the artifacts of run %s: %s", self.run_key, exc)
            return None


def _update_data(artifact_id, data: str, description: str) -> None:
    with get_client(sync_client=True) as client:
        client.update_artifact(artifact_id, ArtifactUpdate(data=data, description=description))


_reports: dict[str, RunReport] = {}
_reports_lock = threading.Lock()


def start_run_report(ctx: RunContext, plan: Plan) -> RunReport:
    """Open the live artifacts of a run; call it in the implement flow, before units start."""
    store = ArtifactStore(ctx.store_url)
    try:
        typical = typical_durations(store)
    except Exception as exc:  # the ETA is a nicety; the run goes on without it
        log.warning("Could not read unit durations from %s: %s", store.url, exc)
        typical = {}
    report = RunReport(ctx, plan, typical)
    with _reports_lock:
        _reports[ctx.run_key] = report
    return report.open()


def report_for(run_key: str | None = None, feature_id: str | None = None) -> RunReport | None:
    with _reports_lock:
        if run_key is not None:
            return _reports.get(run_key)
        found = [r for r in _reports.values() if r.feature_id == feature_id]
    return found[-1] if found else None


def note_unit(run_key: str, record: UnitRecord) -> None:
    """A unit's record changed; the live table shows it at the next tick (no-op if this process
    has no report for the run)."""
    report = report_for(run_key)
    if report is not None:
        report.note(record)


def publish_unit_table(
    feature_id: str, records: list[UnitRecord], run_key: str | None = None
) -> None:
    """Merge the implement loop's records into the live table; call it on every loop tick.

    Without a live report (no `start_run_report` in this process) a new table version is made.
    """
    report = report_for(run_key, feature_id if run_key is None else None)
    if report is not None:
        report.merge(records)
        return
    rows = [
        with_cost(
            UnitRow(
                unit=r.unit_id,
                status=r.status.value,
                step=r.step if r.status == UnitStatus.RUNNING else "",
                attempt=r.attempts,
                max_attempts=max(r.attempts, 1),
                elapsed_s=round(r.duration_s, 1),
                error=error_headline(r.error),
            ).cells(),
            r,
        )
        for r in records
    ]
    create_table_artifact(
        key=artifact_key(feature_id, "units"), table=rows, description="Units of the feature run"
    )


def with_cost(cells: dict[str, str], record: UnitRecord | None) -> dict[str, str]:
    """The unit-table cells with a `cost` column before the last error."""
    cells = dict(cells)
    error = cells.pop("last error", "")
    usage = record.total_usage if record is not None and record.usage else None
    cells["cost"] = usage.cost_text() if usage is not None else ""
    cells["last error"] = error
    return cells


def publish_unit_report(
    ctx: RunContext, unit: UnitSpec, record: UnitRecord, diff: str = ""
) -> None:
    """The unit's markdown report, its diff (tasks/unit_diff.py) and links to its outputs; call
    it when the unit ends."""
    note_unit(ctx.run_key, record)
    try:
        create_markdown_artifact(
            key=artifact_key(ctx.feature_id, f"unit-{unit.id}"),
            markdown=unit_markdown(ctx, unit, record, diff),
            description=f"Unit {unit.id} of run {ctx.run_key}: {record.status.value}",
        )
    except Exception as exc:  # never turn a finished unit into a failed one
        log.warning("Could not publish the report of unit %s: %s", unit.id, exc)


def unit_markdown(ctx: RunContext, unit: UnitSpec, record: UnitRecord, diff: str = "") -> str:
    lines = [
        f"# Unit `{unit.id}`: {unit.display_title}",
        "",
        "| Status | Attempts | Iterations | Duration | Cost | Branch | Commit |",
        "|---|---|---|---|---|---|---|",
        f"| {record.status.value} | {record.attempts} | {record.iterations} | "
        f"{format_duration(record.duration_s)} | {record.total_usage.cost_text()} | "
        f"{branch_markdown(ctx, record.branch)} | "
        f"{f'`{record.commit[:12]}`' if record.commit else 'none'} |",
        "",
        *usage_lines(record),
        *candidate_lines(record),
        "## Summary",
        "",
        record.summary or "_The agent wrote no summary._",
        "",
        "## Tests",
        "",
    ]
    tests = record.tests
    if tests is None:
        lines.append("_No test command for this unit._")
    else:
        lines.append(f"`{tests.command}`: {tests.one_line()}")
        lines += [f"- failing: `{t}`" for t in tests.failing_tests[:20]]
    lines += ["", f"## Files changed ({len(record.files_changed)})", ""]
    lines += [f"- `{f}`" for f in record.files_changed] or ["_None._"]
    if diff:
        lines += ["", diff.rstrip()]
    if record.error:
        lines += ["", "## Last error", "", "```", record.error.strip(), "```"]
    return "\n".join([*lines, "", *_unit_files(ctx, unit.id, record)]) + "\n"


def _unit_files(ctx: RunContext, unit_id: str, record: UnitRecord) -> list[str]:
    """How to fetch what the unit stored, from any machine that reaches the store."""

    def fetch(name: str) -> str:
        return f"`{artifacts_command(ctx.run_key, ctx.store_url, unit_id, get=name)}`"

    lines = [
        "## Stored files",
        "",
        f"All of them: `{artifacts_command(ctx.run_key, ctx.store_url, unit_id)}`",
        "",
    ]
    lines += [f"- output `{n}`: {fetch(f'outputs/{n}')}" for n in record.outputs]
    if record.log_path:
        log_name = record.log_path.rsplit("/", 1)[-1]
        lines.append(f"- log of attempt {record.attempts}: {fetch(f'logs/{log_name}')}")
    return lines


def usage_lines(record: UnitRecord) -> list[str]:
    """`**Usage:** …` and one line per attempt, when the unit's agent reported any."""
    if not record.usage:
        return []
    lines = [f"**Usage:** {record.total_usage.one_line()}", ""]
    if len(record.usage) > 1:
        what = "candidate" if record.candidates else "attempt"  # best-of: one entry each
        lines += [f"- {what} {a.attempt}: {a.usage.one_line()}" for a in record.usage] + [""]
    return lines


def publish_run_report(ctx: RunContext, result: FeatureResult) -> None:
    """End of a run, whatever its outcome: the last table and progress, and the final report as
    the `<feature>-report` artifact. A failed run's `feature/report.md` is the failure report
    (tasks/lifecycle.py; call this after it), shown with the table of every unit appended;
    otherwise the report is rendered here and written to `feature/report.md` too."""
    report = report_for(ctx.run_key)
    if report is not None:
        report.outcome = result.status.value
        report.merge(result.units)
        report.flush(force=True)
        with _reports_lock:
            _reports.pop(ctx.run_key, None)
    runs = RunStore(ArtifactStore(ctx.store_url), ctx.run_key)
    try:
        if result.status == FeatureStatus.FAILED and runs.store.exists(runs.feature_report_key):
            failure = runs.store.read_text(runs.feature_report_key).rstrip()
            markdown = failure + "\n\n## All units\n\n" + units_markdown(result, runs)
        else:
            markdown = run_markdown(ctx, result, runs)
            runs.store.write_text(runs.feature_report_key, markdown)
        create_markdown_artifact(
            key=artifact_key(ctx.feature_id, "report"),
            markdown=markdown,
            description=f"Run {ctx.run_key}: {result.status.value}",
        )
        create_markdown_artifact(
            key=artifact_key(ctx.feature_id, "store"),
            markdown=f"Everything run `{ctx.run_key}` stored (ledger, logs, outputs, reports), "
            f"from any machine that reaches the store:\n\n"
            f"`{artifacts_command(ctx.run_key, ctx.store_url)}`\n",
            description=f"Everything run {ctx.run_key} stored: ledger, logs, outputs, reports",
        )
        if opens_in_browser(result.pr_url):
            create_link_artifact(
                key=artifact_key(ctx.feature_id, "pull-request"),
                link=result.pr_url,
                link_text=result.pr_url,
                description=f"The pull request of run {ctx.run_key}",
            )
    except Exception as exc:  # the run's outcome is already decided and saved
        log.warning("Could not publish the report of run %s: %s", ctx.run_key, exc)


def run_markdown(ctx: RunContext, result: FeatureResult, runs: RunStore) -> str:
    """The run at a glance: outcome, where the PR is, what happened to every unit and why."""
    elapsed = (utcnow() - ctx.created_at).total_seconds()
    lines = [
        f"# Flotilla report: {result.title}",
        "",
        f"- **Run:** `{ctx.run_key}` · {result.status.value} after {format_duration(elapsed)}"
        f" (started {ctx.created_at:%Y-%m-%d %H:%M:%S} UTC)",
        f"- **Target:** `{ctx.repo}` from `{ctx.base}`",
    ]
    if result.error:
        lines.append(f"- **Problem:** {result.error}")
    if result.feature_branch:
        lines.append(
            f"- **Feature branch:** {branch_markdown(ctx, result.feature_branch)} at "
            f"`{result.feature_commit[:12]}`"
        )
    if opens_in_browser(result.pr_url):
        lines.append(f"- **Pull request:** [{result.pr_url}]({result.pr_url})")
    elif result.pr_path:
        command = artifacts_command(ctx.run_key, ctx.store_url, get="feature/pr.md")
        lines.append(f"- **Pull request description:** `{command}`")
    if result.gate:
        lines.append(f"- **Feature test gate:** {result.gate.one_line()}")
    spend = Usage.total(r.total_usage for r in result.units)
    lines.append(f"- **Agent spend:** {spend.one_line()}")
    return "\n".join(lines) + "\n\n" + units_markdown(result, runs)


def units_markdown(result: FeatureResult, runs: RunStore) -> str:
    """Every unit in one table, then how to fetch the run's files."""
    lines = [
        "| Unit | Status | Attempts | Duration | Cost | Tests | Files | Last error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result.units:
        tests = r.tests.one_line() if r.tests else ""
        error = error_headline(r.error).replace("|", "\\|")
        lines.append(
            f"| `{r.unit_id}` | {r.status.value} | {r.attempts} | "
            f"{format_duration(r.duration_s)} | {r.total_usage.cost_text()} | {tests} | "
            f"{len(r.files_changed)} | {error} |"
        )
    command = artifacts_command(result.run_key, runs.store.url)
    lines += ["", f"Everything the run stored: `{command}`"]
    return "\n".join(lines) + "\n"
