"""Running a unit's agent again during the merge stage: for a merge conflict, or for a feature
test gate that bisection pinned on the unit.

The new work starts from the feature branch as merged so far (`onto`), so it merges cleanly
afterwards; the agent gets its original prompt plus a brief on what went wrong (the conflicting
paths with both sides' changes, or the failing tests). The agent ⇄ tests loop, the retry policy
and rate-limit waits follow the implement stage's work loop. The unit branch only moves once the
new work passed its tests; a failed rework leaves the branch and the ledger's verdict as they were.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from flotilla.budget import add_attempt_usage
from flotilla.plan import UnitSettings
from flotilla.redaction import redact
from flotilla.results import FailureClass, ReworkNote, TestReport, UnitRecord, UnitStatus, utcnow
from flotilla.runs import RunContext
from flotilla.spec import UnitSpec
from tasks.agents import AgentGaveUp, AgentInvocation, run_agent_until_done
from tasks.checks import run_tests, test_env
from tasks.git import commit_tree, run_git, tree_of
from tasks.merging import ConflictInfo
from tasks.store import RunStore
from tasks.units import (
    attempt_invocation,
    feedback,
    fresh_attempt_dir,
    run_store_for,
    unit_prompt,
    workspace_for,
)
from tasks.workspace import Workspace

REWORK_TRAILER = "Flotilla-Rework"
CONFLICT_HEADING = "## Merge conflict: do this unit again on top of the feature branch"
GATE_HEADING = "## The feature's tests fail once this unit is merged"
DIFF_LINES = 400  # per diff in a prompt; the agent can run git for the rest
TAIL_LINES = 80


class ReworkJob(BaseModel):
    """One rework: which unit, why, on top of what, and what the agent is told."""

    ctx: RunContext
    unit: UnitSpec
    settings: UnitSettings
    record: UnitRecord  # the unit's ledger record before the rework
    reason: Literal["conflict", "gate"]
    onto: str  # the feature commit the new work builds on; becomes the unit's start commit
    worktree_at: str = ""  # where the worktree starts when not at `onto` (a gate fix)
    brief: str  # markdown appended to the unit's original prompt
    paths: list[str] = Field(default_factory=list)
    gate_test: str | None = None  # the feature's test command, checked after the unit's own


class ReworkFailed(Exception):
    """Every attempt failed; `record` is the ledger record as saved (the earlier verdict)."""

    def __init__(self, message: str, record: UnitRecord):
        super().__init__(message)
        self.record = record


class _AttemptFailed(Exception):
    def __init__(self, failure: FailureClass, message: str):
        super().__init__(message)
        self.failure = failure


def rework_unit(job: ReworkJob) -> UnitRecord:
    """Run the unit's agent again within its retry policy; return the updated ledger record."""
    runs, workspace = run_store_for(job.ctx), workspace_for(job.ctx)
    policy = job.settings.retry_policy
    original = job.record
    note = ReworkNote(
        reason=job.reason, onto=job.onto, previous_commit=original.commit, paths=job.paths
    )
    record = original.model_copy(deep=True)
    record.reworks = [*original.reworks, note]
    record.status, record.step = UnitStatus.RUNNING, f"rework ({job.reason})"
    runs.write_record(record)
    started = time.monotonic()
    error = ""
    for attempt in range(1, policy.max_attempts + 1):
        if attempt > 1:
            delay = policy.delay_before(attempt) * (
                1 + random.uniform(-policy.jitter, policy.jitter)
            )
            record.step = f"rework ({job.reason}): waiting {delay:.0f}s before attempt {attempt}"
            runs.write_record(record)
            time.sleep(max(delay, 0.0))
        record.attempts += 1
        note.attempts = attempt
        try:
            sha, tests, summary = _attempt(job, record, runs, workspace, len(record.reworks))
        except _AttemptFailed as failed:
            error = str(failed)
            if failed.failure.value not in policy.retry_on:
                break
            continue
        workspace.set_branch(record.branch, sha)
        runs.store.write_text(runs.summary_key(job.unit.id), summary + "\n")
        note.ok, note.detail = True, f"new commit {sha[:12]}"
        record.reworks = [*original.reworks, note]
        record.status, record.step = UnitStatus.SUCCEEDED, "done"
        record.commit, record.start_commit, record.summary = sha, job.onto, summary
        record.files_changed = workspace.changed_files(job.onto, sha)
        record.tests = tests or record.tests
        record.finished_at = utcnow()
        record.duration_s = original.duration_s + time.monotonic() - started
        runs.write_record(record)
        return record
    note.detail = error
    kept = original.model_copy(
        update={"reworks": [*original.reworks, note], "usage": record.usage}  # spend stays spent
    )
    runs.write_record(kept)
    raise ReworkFailed(
        f"Re-running unit {job.unit.id!r} for a {job.reason} failed after {note.attempts} "
        f"attempt(s): {error}",
        kept,
    )


def _attempt(
    job: ReworkJob, record: UnitRecord, runs: RunStore, workspace: Workspace, number: int
) -> tuple[str, TestReport | None, str]:
    """One attempt in a fresh detached worktree; returns (commit, unit tests, summary)."""
    unit, settings = job.unit, job.settings
    name = f"rework-{number}-attempt-{record.attempts}"
    local = Path(job.ctx.workdir) / "units" / unit.id / name
    log_file = fresh_attempt_dir(local)
    start = job.worktree_at or job.onto
    worktree = workspace.scratch_worktree(f"rework-{unit.id}", start)
    try:
        _fetch_artifacts(job, runs, local)
        prompt_file = local / "prompt.md"
        prompt_file.write_text(unit_prompt(job.ctx, unit) + "\n" + job.brief)
        invocation = attempt_invocation(
            job.ctx, unit, settings, worktree, local, record.attempts, workspace.env
        )
        tests: TestReport | None = None
        failing: TestReport | None = None
        for iteration in range(1, settings.max_iterations + 1):
            record.iterations = iteration
            record.step = f"rework ({job.reason}): agent (iteration {iteration})"
            runs.write_record(record)
            _run_agent(job, invocation.model_copy(update={"iteration": iteration}), record)
            runs.write_record(record)
            tests, failing = _check(job, worktree, log_file)
            if failing is None:
                break
            with prompt_file.open("a") as prompt:
                prompt.write(feedback(iteration, failing))
        if failing is not None:
            raise _AttemptFailed(
                FailureClass.TESTS_FAILED,
                f"`{failing.command}` failed after {record.iterations} iteration(s): "
                f"{failing.one_line()}",
            )
        written = local / "summary.md"
        summary = written.read_text().strip() if written.exists() else ""
        summary = redact(summary or job.record.summary)  # a commit message and the PR
        message = (
            f"{unit.display_title}\n\n{summary}\n\nFlotilla-Unit: {unit.id}\n"
            f"{REWORK_TRAILER}: {job.reason}\n"
        )
        sha = workspace.commit_all(worktree, message)
        if job.reason == "conflict" and sha == start:
            raise _AttemptFailed(
                FailureClass.AGENT_FAILED,
                "the agent changed nothing, so the unit's work would vanish from the feature",
            )
        _publish_outputs(job, runs, local / "outputs")
        if tests is not None:
            runs.store.write_json(runs.unit_tests_key(unit.id), tests)
        return sha, tests, summary
    finally:
        runs.store.upload_file(f"{runs.unit_prefix(unit.id)}/logs/{name}.log", log_file)
        workspace.remove_worktree(worktree)


def _fetch_artifacts(job: ReworkJob, runs: RunStore, local: Path) -> None:
    """The unit's declared inputs, and its earlier outputs so the agent can update them."""
    for ref in job.unit.inputs:
        producer, name = ref.split("/", 1)
        key = runs.output_key(producer, name)
        if runs.store.exists(key):
            runs.store.download_file(key, local / "inputs" / producer / name)
    if job.unit.outputs:
        runs.store.download_dir(runs.outputs_prefix(job.unit.id), local / "outputs")


def _publish_outputs(job: ReworkJob, runs: RunStore, outputs: Path) -> None:
    missing = [n for n in job.unit.outputs if not (outputs / n).is_file()]
    if missing:
        raise _AttemptFailed(
            FailureClass.AGENT_FAILED,
            f"the agent removed its declared output(s) {', '.join(missing)} from "
            "$FLOTILLA_OUTPUTS_DIR",
        )
    if job.unit.outputs:
        runs.store.upload_dir(runs.outputs_prefix(job.unit.id), outputs)


def _run_agent(job: ReworkJob, invocation: AgentInvocation, record: UnitRecord) -> None:
    """One agent run; a rate limit is waited out without spending the attempt. What it spent
    joins the unit's ledger record, as a rework attempt of its own."""
    try:
        usage = run_agent_until_done(job.settings.agent, invocation).usage
    except AgentGaveUp as gave_up:
        add_attempt_usage(record, record.attempts, gave_up.usage)
        raise _AttemptFailed(FailureClass(gave_up.failure), str(gave_up)) from None
    add_attempt_usage(record, record.attempts, usage)


def _check(
    job: ReworkJob, worktree: Path, log_file: Path
) -> tuple[TestReport | None, TestReport | None]:
    """The unit's own tests, then (for a gate fix) the feature's; returns (unit's, first failing)."""
    unit_tests: TestReport | None = None
    timeout = job.settings.timeout_s
    if job.settings.test:
        unit_tests = run_tests(
            job.settings.test,
            cwd=worktree,
            timeout_s=timeout,
            env=test_env(job.settings.pass_env, job.settings.env),
            log_file=log_file,
        )
        if not unit_tests.ok:
            return unit_tests, unit_tests
    if job.gate_test:
        defaults = job.ctx.request.defaults
        gate = run_tests(
            job.gate_test,
            cwd=worktree,
            timeout_s=None,
            env=test_env(defaults.pass_env, defaults.env),
            log_file=log_file,
        )
        if not gate.ok:
            return unit_tests, gate
    return unit_tests, None


# --- what the agent is told ----------------------------------------------------------------------


def conflict_brief(repo: Path, conflict: ConflictInfo, unit_commit: str, unit_start: str) -> str:
    """Paths, the feature branch's change to them, and the unit's whole earlier change."""
    found = run_git(repo, "merge-base", conflict.tip, unit_commit, ok_codes=(0, 1))
    base = found.stdout.strip() or unit_start
    others = ", ".join(conflict.with_units) or "other units"
    theirs = _diff(repo, base, conflict.tip, conflict.paths)
    ours = _diff(repo, unit_start or base, unit_commit, [])
    return (
        f"{CONFLICT_HEADING}\n\n"
        f"Your earlier work on this unit (commit {unit_commit[:12]}) could not be merged into the "
        f"feature branch: it conflicts with the work of {others} in "
        f"{', '.join(conflict.paths)}. The worktree now holds the feature branch as merged so "
        f"far (commit {conflict.tip[:12]}), without your earlier change. Do this unit's work "
        "again on top of it, so that the result keeps what the other units did and adds what "
        "this unit is for.\n\n"
        f"### What the feature branch changed in those paths\n\n```diff\n{theirs}\n```\n\n"
        f"### Your earlier change (`git diff {(unit_start or base)[:12]} {unit_commit[:12]}`)\n\n"
        f"```diff\n{ours}\n```\n"
    )


def gate_brief(command: str, report: TestReport, passing_units: list[str]) -> str:
    """The failing test run, and why the unit is the one asked to fix it."""
    before = ", ".join(passing_units) or "none"
    failing = "".join(f"- `{name}`\n" for name in report.failing_tests[:50])
    tail = "\n".join(report.output_tail.splitlines()[-TAIL_LINES:])
    return (
        f"{GATE_HEADING}\n\n"
        f"Every unit passed its own tests, but the feature's test command `{command}` fails "
        "once this unit is merged, and passes with only the units merged before it "
        f"({before}); bisection over the merge order found this. The worktree holds those "
        "units plus your earlier change to this unit, as one commit. Change this unit's work "
        "so that the feature's tests pass, keeping what the other units did.\n\n"
        f"Result: {report.one_line()}\n\n"
        + (f"Failing tests:\n{failing}\n" if failing else "")
        + f"```\n{tail or '(the command printed nothing)'}\n```\n"
    )


def gate_start(repo: Path, before: str, after: str, unit: UnitSpec, env: dict[str, str]) -> str:
    """One commit on `before` holding the unit's change exactly as it was merged at `after`."""
    message = (
        f"{unit.display_title} (as merged before the feature test gate failed)\n\n"
        f"Flotilla-Unit: {unit.id}\n"
    )
    return commit_tree(repo, tree_of(repo, after), [before], message, env)


def _diff(repo: Path, old: str, new: str, paths: list[str]) -> str:
    specs = ["--", *[f":(literal){p}" for p in paths]] if paths else []
    text = run_git(repo, "diff", "--no-color", "--no-ext-diff", old, new, *specs).stdout
    lines = text.rstrip("\n").splitlines()
    if len(lines) > DIFF_LINES:
        cut = len(lines) - DIFF_LINES
        lines = [*lines[:DIFF_LINES], f"... ({cut} more lines; see the commits named above)"]
    return "\n".join(lines) or "(no change)"
