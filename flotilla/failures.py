"""The failure report: one page that says, per failed unit, what happened and where to look.

It is written to `runs/<key>/feature/report.md` when a run does not produce a complete feature
and printed by the CLI, so the person who comes back to a six-hour run reads one page instead
of fifty logs.
"""

from __future__ import annotations

from pydantic import BaseModel

from flotilla.results import FailureClass, UnitRecord, UnitStatus

TAIL_LINES = 15
AGENT_MARK = "--- flotilla: agent for "
TESTS_MARK = "--- flotilla: tests: "

FAILURE_NAMES = {
    FailureClass.AGENT_FAILED: "agent exit (the agent ended with an error)",
    FailureClass.TESTS_FAILED: "tests failed",
    FailureClass.TIMED_OUT: "timed out",
    FailureClass.RATE_LIMITED: "rate-limited too long",
    FailureClass.MERGE_CONFLICT: "merge conflict",
    FailureClass.ERROR: "error (Flotilla could not run the unit)",
}


class LogTails(BaseModel):
    """The last lines of the last agent run and the last test run in one attempt's log."""

    agent: str = ""
    tests: str = ""


def split_log(text: str, lines: int = TAIL_LINES) -> LogTails:
    """Find the last agent section and the last tests section of an attempt log."""
    agent: list[str] = []
    tests: list[str] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith(AGENT_MARK):
            agent = []
            current = agent
            continue
        if line.startswith(TESTS_MARK):
            tests = []
            current = tests
            continue
        if current is not None:
            current.append(line)
    return LogTails(agent="\n".join(agent[-lines:]), tests="\n".join(tests[-lines:]))


def failure_name(record: UnitRecord) -> str:
    if record.failure_class is None:
        return "unknown"
    return FAILURE_NAMES.get(record.failure_class, record.failure_class.value)


def render_failure_report(
    run_key: str,
    title: str,
    records: list[UnitRecord],
    logs: dict[str, LogTails],
    problem: str,
    resume_hint: str = "",
) -> str:
    """Markdown: the problem, then one section per failed unit, then what was blocked."""
    failed = [r for r in records if r.status == UnitStatus.FAILED]
    blocked = [r for r in records if r.status == UnitStatus.BLOCKED]
    done = [r for r in records if r.status == UnitStatus.SUCCEEDED]
    lines = [
        f"# Run {run_key} failed: {title}",
        "",
        problem,
        "",
        f"Units: {len(done)} succeeded, {len(failed)} failed, {len(blocked)} blocked, "
        f"{len(records) - len(done) - len(failed) - len(blocked)} not run.",
    ]
    for record in failed:
        tails = logs.get(record.unit_id, LogTails())
        lines += [
            "",
            f"## {record.unit_id}: {failure_name(record)}",
            "",
            f"- Attempts: {record.attempts} (iterations in the last one: {record.iterations})",
            f"- Error: {_one_line(record.error)}",
            f"- Full log: {record.log_path or '(no log was written)'}",
        ]
        if record.step and record.step not in ("failed", "done"):
            lines.append(f"- Last step: {record.step}")
        if record.tests is not None:
            lines.append(f"- Tests: `{record.tests.command}` {record.tests.one_line()}")
        agent_tail = tails.agent.strip()
        test_tail = tails.tests.strip() or (
            record.tests.output_tail.strip() if record.tests else ""
        )
        if agent_tail:
            lines += ["", "Last lines of the agent's output:", "", "```", agent_tail, "```"]
        if test_tail:
            test_tail = "\n".join(test_tail.splitlines()[-TAIL_LINES:])
            lines += ["", "Last lines of the test output:", "", "```", test_tail, "```"]
    if blocked:
        lines += ["", "## Blocked (never started)", ""]
        lines += [f"- {r.unit_id}: waits for {', '.join(r.blocked_by)}" for r in blocked]
    if resume_hint:
        lines += ["", "## What now", "", resume_hint]
    return "\n".join(lines) + "\n"


def _one_line(error: str) -> str:
    """The error's first line; when that only introduces what follows, its last line too."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    if not lines:
        return "(none)"
    if lines[0].endswith(":") and len(lines) > 1:
        return f"{lines[0]} {lines[-1]}"
    return lines[0]
