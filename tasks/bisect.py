"""Finding the unit whose merge broke the feature's tests, in about log2(n) test runs.

Every unit passed its own tests, yet the merged feature fails: one unit's change breaks what
another built. Integration records the feature tip after each unit (`MergeRecord.commit`: the
first-parent history under the `merge` strategy, the tip after the unit's last commit under
`squash` and `sequential_rebase`), so the first failing tip in merge order is found by binary
search over those tips. The search assumes the commit before the first unit passes; when it ends
at the first unit, one more run checks that, so a base that already fails is reported as such
instead of blaming the first unit.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, Field

from flotilla.results import MergeRecord, TestReport
from tasks.checks import run_tests
from tasks.workspace import Workspace

Tester = Callable[[str], TestReport]


class Probe(BaseModel):
    """One test run of the search: the tip after `unit_id` merged ("" for the base)."""

    unit_id: str
    commit: str
    ok: bool
    summary: str


class BisectResult(BaseModel):
    """The first unit in merge order whose merge makes the tests fail, and how it was found."""

    culprit: str | None = None
    commit: str = ""  # the feature tip right after the culprit merged (fails)
    before: str = ""  # the tip right before it (passes)
    passing_units: list[str] = Field(default_factory=list)  # merged before the culprit
    candidates: int = 0
    probes: list[Probe] = Field(default_factory=list)
    base_fails: bool = False
    report: TestReport | None = None  # a failing run at `commit`

    @property
    def runs(self) -> int:
        return len(self.probes)

    def explain(self) -> str:
        """One sentence for logs, errors and the PR."""
        searched = f"bisection over {self.candidates} merge(s), {self.runs} test run(s)"
        if self.base_fails:
            return (
                f"the tests already fail on the base commit before any unit merged ({searched}); "
                "fix the base branch or the feature's test command"
            )
        if self.culprit is None:
            return f"{searched} found no unit to blame"
        before = ", ".join(self.passing_units) or "no other unit"
        return (
            f"{searched} names unit {self.culprit!r}: the tests pass with the units merged "
            f"before it ({before}) and fail once it is merged (commit {self.commit[:12]})"
        )


def bisect_merges(
    start: str, merges: list[MergeRecord], test: Tester, last: TestReport | None = None
) -> BisectResult:
    """Search `merges` (in merge order, on top of `start`) for the first tip that fails `test`.

    The last tip is known to fail (`last` is that run, if the caller has it), so n merges cost
    ceil(log2 n) runs. A unit whose merge changed nothing cannot break anything and is skipped.
    """
    candidates: list[tuple[MergeRecord, str]] = []
    before = start
    for merged in merges:
        if merged.commit != before:
            candidates.append((merged, before))
        before = merged.commit
    result = BisectResult(candidates=len(candidates))
    if not candidates:
        result.base_fails = True
        return result
    reports: dict[int, TestReport | None] = {len(candidates) - 1: last}
    low, high = 0, len(candidates) - 1  # `high` fails; everything before `low` passes
    while low < high:
        middle = (low + high) // 2
        merged = candidates[middle][0]
        report = _probe(result, merged.unit_id, merged.commit, test)
        if report.ok:
            low = middle + 1
        else:
            high = middle
            reports[middle] = report
    if high == 0 and not _probe(result, "", start, test).ok:
        result.base_fails = True
        return result
    culprit, previous = candidates[high]
    position = next(i for i, m in enumerate(merges) if m is culprit)
    result.culprit = culprit.unit_id
    result.commit = culprit.commit
    result.before = previous
    result.passing_units = [m.unit_id for m in merges[:position]]
    result.report = reports.get(high)
    return result


def _probe(result: BisectResult, unit_id: str, commit: str, test: Tester) -> TestReport:
    report = test(commit)
    result.probes.append(
        Probe(unit_id=unit_id, commit=commit, ok=report.ok, summary=report.one_line())
    )
    return report


def worktree_tester(
    workspace: Workspace,
    command: str,
    *,
    timeout_s: float | None = None,
    log_file: Path | None = None,
    name: str = "bisect",
    env: dict[str, str] | None = None,
) -> Tester:
    """Run `command` at a commit in a fresh detached worktree, removed afterwards.

    A fresh worktree per run keeps files a previous run left behind (caches, build output) from
    deciding the next verdict.
    """

    def test(commit: str) -> TestReport:
        worktree = workspace.scratch_worktree(name, commit)
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            with log_file.open("a", encoding="utf-8") as log:
                log.write(f"--- flotilla: {name} at {commit}\n")
        try:
            return run_tests(command, cwd=worktree, timeout_s=timeout_s, env=env, log_file=log_file)
        finally:
            workspace.remove_worktree(worktree)

    return test
