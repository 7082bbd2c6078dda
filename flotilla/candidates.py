"""Best-of-N: how many class slots a unit's candidates take, and which candidate wins.

A unit with `best_of: N` runs N candidates in parallel, each in its own worktree on its own
branch `flotilla/<feature>--<unit>+<k>` (git forbids `~` in branch names). The winner's commit
becomes the unit's branch. Pure: the side effects are in `tasks.candidates`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from flotilla.results import CandidateOutcome, CandidateResult, FailureClass, UnitRecord

FIRST_PASS = "first_pass"
ALL_PASS_THEN_JUDGE = "all_pass_then_judge"


def candidate_branch(unit_branch: str, number: int) -> str:
    """`flotilla/<feature>--<unit>+<k>`: the unit's branch with the candidate's number."""
    return f"{unit_branch}+{number}"


def candidate_id(unit_id: str, number: int) -> str:
    """Where a candidate's logs, tests and outputs live in the store: `units/<unit>+<k>/`."""
    return f"{unit_id}+{number}"


def slot_keys(unit_id: str, width: int) -> list[str]:
    """The names the scheduler holds a unit's class slots under: one per candidate running."""
    return [unit_id] if width <= 1 else [candidate_id(unit_id, k) for k in range(1, width + 1)]


def width(best_of: int, class_limit: int | None) -> int:
    """Candidates of a unit that run at once: each takes a slot of the unit's class, so no more
    than the class's limit (the rest start as earlier ones finish)."""
    return max(1, min(best_of, class_limit)) if class_limit else max(1, best_of)


def passing(results: Iterable[CandidateResult]) -> list[CandidateResult]:
    return [r for r in results if r.outcome == CandidateOutcome.PASSED]


def smallest_diff(results: Iterable[CandidateResult]) -> int | None:
    """The passing candidate with the fewest changed lines (the lower number on a tie)."""
    found = passing(results)
    if not found:
        return None
    return min(found, key=lambda r: (r.diff_lines, r.number)).number


def first_passed(finish_order: Iterable[CandidateResult]) -> int | None:
    """`first_pass`: the first candidate, in the order they finished, whose tests passed."""
    found = passing(finish_order)
    return found[0].number if found else None


def read_judge_answer(text: str, allowed: list[int]) -> int:
    """The winner's number from what the judge printed: the last number on its last non-empty
    line. ValueError (saying what was printed) when it names no passing candidate."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    numbers = re.findall(r"\d+", lines[-1]) if lines else []
    shown = lines[-1].strip()[:80] if lines else "(nothing)"
    if not numbers:
        raise ValueError(f"the judge printed no candidate number (last line: {shown!r})")
    number = int(numbers[-1])
    if number not in allowed:
        choices = ", ".join(map(str, allowed))
        raise ValueError(f"the judge chose candidate {number}, which is not one of {choices}")
    return number


def _numbers(numbers: list[int]) -> str:
    """`1`, `1 and 3`, `1, 3 and 4`."""
    text = [str(n) for n in numbers]
    return text[0] if len(text) == 1 else f"{', '.join(text[:-1])} and {text[-1]}"


def _verdict(result: CandidateResult) -> str:
    if result.outcome == CandidateOutcome.STOPPED:
        return "stopped"
    if result.outcome == CandidateOutcome.PASSED:
        return "passed, not chosen"
    if result.outcome == CandidateOutcome.RUNNING:
        return "did not finish"
    if result.failure_class == FailureClass.TESTS_FAILED:
        return "failed tests"
    return f"failed ({(result.failure_class or FailureClass.ERROR).value})"


def pick_note(results: list[CandidateResult], winner: int | None, how: str = "") -> str:
    """One line for the PR and the unit table: "candidate 2 of 3 won: tests passed, 40 lines;
    1 and 3 failed tests"; `how` says why, when the judge or the smallest diff chose."""
    total = len(results)
    by_number = {r.number: r for r in results}
    groups: dict[str, list[int]] = {}
    for result in sorted(results, key=lambda r: r.number):
        if result.number != winner:
            groups.setdefault(_verdict(result), []).append(result.number)
    losers = "; ".join(f"{_numbers(numbers)} {verdict}" for verdict, numbers in groups.items())
    if winner is None:
        return f"no candidate of {total} passed: {losers}"
    chosen = by_number[winner]
    tests = "tests passed" if chosen.tests is not None else "no tests"
    lines = f"{chosen.diff_lines} line{'s' if chosen.diff_lines != 1 else ''}"
    head = f"candidate {winner} of {total} won: {tests}, {lines}"
    head += f" ({how})" if how else ""
    return f"{head}; {losers}" if losers else head


def candidate_lines(record: UnitRecord) -> list[str]:
    """Markdown for the PR description and the unit's report: the pick, then each candidate
    with its agent, branch, verdict, tests and spend (empty for a unit without candidates)."""
    if not record.candidates:
        return []
    lines = [f"**Best of {len(record.candidates)}:** {record.pick_note or 'not decided yet'}", ""]
    for result in record.candidates:
        verdict = "won" if result.number == record.winner else _verdict(result)
        tests = f" · tests {result.tests.one_line()}" if result.tests is not None else ""
        commit = f" at `{result.commit[:10]}`" if result.commit else ""
        lines.append(
            f"- candidate {result.number} (`{result.agent_name}`): {verdict}{tests} · "
            f"{result.total_usage.cost_text()} · branch `{result.branch}`{commit}"
        )
    return [*lines, ""]
