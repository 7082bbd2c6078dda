"""What runs produce: test reports, unit records (the ledger), the feature result.

These models cross process boundaries (Prefect pickles results, the store holds JSON), so they
live at module level and carry only plain data.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from flotilla.usage import AttemptUsage, Usage


def utcnow() -> datetime:
    return datetime.now(UTC)


class UnitStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    BLOCKED = "blocked"
    SKIPPED = "skipped"

    @property
    def is_final(self) -> bool:
        return self not in (UnitStatus.PENDING, UnitStatus.RUNNING)


class FailureClass(StrEnum):
    AGENT_FAILED = "agent_failed"
    TESTS_FAILED = "tests_failed"
    TIMED_OUT = "timed_out"
    RATE_LIMITED = "rate_limited"
    MERGE_CONFLICT = "merge_conflict"
    BUDGET = "budget"
    ERROR = "error"


class TestReport(BaseModel):
    """One run of a test command, parsed from JUnit XML when there is some, else exit code."""

    __test__ = False  # not a pytest class

    command: str = ""
    exit_code: int | None = None
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    duration_s: float = 0.0
    failing_tests: list[str] = Field(default_factory=list)
    output_tail: str = ""
    source: str = "exit-code"  # "junit", "pytest-summary" or "exit-code"
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def one_line(self) -> str:
        if self.timed_out:
            return f"timed out after {self.duration_s:.0f}s"
        if self.exit_code is None:
            return "no tests run"
        verdict = "passed" if self.ok else ("timed out" if self.timed_out else "FAILED")
        counts = [
            f"{n} {label}"
            for n, label in (
                (self.passed, "passed"),
                (self.failed, "failed"),
                (self.errors, "errors"),
                (self.skipped, "skipped"),
            )
            if n
        ]
        detail = f" ({', '.join(counts)})" if counts else f" (exit {self.exit_code})"
        return f"{verdict}{detail} in {self.duration_s:.1f}s"

    @classmethod
    def combine(cls, reports: list[TestReport]) -> TestReport:
        """Totals over many reports, for the PR's summary line."""
        ran = [r for r in reports if r.exit_code is not None]
        return cls(
            command="(all units)",
            exit_code=0 if all(r.ok for r in ran) else 1,
            passed=sum(r.passed for r in ran),
            failed=sum(r.failed for r in ran),
            errors=sum(r.errors for r in ran),
            skipped=sum(r.skipped for r in ran),
            duration_s=sum(r.duration_s for r in ran),
            failing_tests=[t for r in ran for t in r.failing_tests],
            source="combined",
        )


class ReworkNote(BaseModel):
    """One time the merge stage had a unit's agent redo its work (a conflict or a test gate)."""

    reason: Literal["conflict", "gate"]
    onto: str = ""  # the feature commit the new work was built on
    previous_commit: str = ""
    paths: list[str] = Field(default_factory=list)
    ok: bool = False
    attempts: int = 0
    detail: str = ""


class CandidateOutcome(StrEnum):
    RUNNING = "running"
    PASSED = "passed"  # its tests passed (or the unit has none) and its work is committed
    FAILED = "failed"  # its tests failed, or its agent did
    STOPPED = "stopped"  # another candidate won first (`first_pass`)


class CandidateResult(BaseModel):
    """One candidate of a best-of-N unit: its agent, branch, work, tests and spend."""

    number: int
    agent_name: str = ""
    branch: str = ""
    outcome: CandidateOutcome = CandidateOutcome.RUNNING
    attempts: int = 0
    iterations: int = 0
    start_commit: str = ""
    commit: str = ""
    diff_lines: int = 0
    tests: TestReport | None = None
    failure_class: FailureClass | None = None
    error: str = ""
    summary: str = ""
    log_path: str = ""
    fingerprint: str = ""
    usage: list[AttemptUsage] = Field(default_factory=list)

    @property
    def total_usage(self) -> Usage:
        return Usage.total(a.usage for a in self.usage)


class UnitRecord(BaseModel):
    """A unit's entry in the run ledger: the single source of truth for its state."""

    model_config = ConfigDict(validate_assignment=True)

    unit_id: str
    status: UnitStatus = UnitStatus.PENDING
    step: str = ""
    attempts: int = 0
    iterations: int = 0
    fingerprint: str = ""
    branch: str = ""
    base_commit: str = ""
    start_commit: str = ""
    commit: str = ""
    files_changed: list[str] = Field(default_factory=list)
    summary: str = ""
    tests: TestReport | None = None
    outputs: list[str] = Field(default_factory=list)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float = 0.0
    error: str = ""
    failure_class: FailureClass | None = None
    log_path: str = ""
    blocked_by: list[str] = Field(default_factory=list)
    reworks: list[ReworkNote] = Field(default_factory=list)
    usage: list[AttemptUsage] = Field(
        default_factory=list, description="What each attempt's agent calls spent, in order"
    )
    candidates: list[CandidateResult] = Field(
        default_factory=list, description="best_of > 1: every candidate, the winner's included"
    )
    winner: int | None = None
    pick_note: str = ""  # "candidate 2 of 3 won: tests passed, 40 lines; 1 and 3 failed tests"
    steps_s: dict[str, float] = Field(
        default_factory=dict,
        description="Seconds in each plumbing step (worktree, inputs, commit, outputs), all "
        "attempts together; agent calls and tests are task runs of their own",
    )

    @property
    def total_usage(self) -> Usage:
        return Usage.total(a.usage for a in self.usage)

    def _cost(self) -> str:
        total = self.total_usage
        return total.cost_text() if total.cost_usd is not None else ""

    def line(self) -> str:
        """One line for the end-of-run summary."""
        tail = f" - {self.error.splitlines()[0]}" if self.error else ""
        return (
            f"{self.unit_id:<24} {self.status.value:<10} attempts={self.attempts} "
            f"{self.duration_s:6.1f}s {self._cost():>7}{tail}"
        )


class FeatureStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PAUSED = "paused"


class MergeRecord(BaseModel):
    """How one unit branch entered the feature branch."""

    unit_id: str
    commit: str
    conflicts: list[str] = Field(default_factory=list)
    reimplemented: bool = False
    fixed_for_gate: bool = False


class FeatureResult(BaseModel):
    """The outcome of a whole feature run, returned by the `feature` flow."""

    run_key: str
    feature_id: str
    title: str
    status: FeatureStatus
    feature_branch: str = ""
    feature_commit: str = ""
    base_branch: str = ""
    pr_path: str = ""
    pr_url: str = ""
    units: list[UnitRecord] = Field(default_factory=list)
    merge_order: list[str] = Field(default_factory=list)
    merges: list[MergeRecord] = Field(default_factory=list)
    gate: TestReport | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == FeatureStatus.SUCCEEDED


class RunState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PAUSED = "paused"
    CRASHED = "crashed"


class RunSummary(BaseModel):
    """`runs/<key>/state.json`: the run as a whole, for `flotilla runs` and the nightly inbox."""

    run_key: str
    feature_id: str
    title: str
    state: RunState = RunState.RUNNING
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    units_total: int = 0
    units_done: int = 0
    flow_run_id: str = ""
    host: str = ""
    pid: int = 0
    error: str = ""
    base_commit: str = ""  # pinned at the first start; a resume builds on the same commit
    resumes: int = 0  # how often `flotilla resume`/`retry` carried this run on
