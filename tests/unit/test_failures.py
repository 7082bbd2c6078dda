"""The failure report: per failed unit, attempts, failure class, output tails, where the log is."""

from __future__ import annotations

from flotilla.failures import LogTails, render_failure_report, split_log
from flotilla.results import FailureClass, TestReport, UnitRecord, UnitStatus

LOG = """\
--- flotilla: agent for api, attempt 2, iteration 1: bash agent.sh
first agent run
--- flotilla: tests: pytest -q
old test output
--- flotilla: agent for api, attempt 2, iteration 2: bash agent.sh
second agent run
line two
--- flotilla: tests: pytest -q
E   assert 1 == 2
1 failed in 0.1s
"""


def test_the_log_splits_into_the_last_agent_and_test_sections():
    tails = split_log(LOG)
    assert tails.agent == "second agent run\nline two"
    assert tails.tests == "E   assert 1 == 2\n1 failed in 0.1s"
    assert split_log(LOG, lines=1).agent == "line two"


def test_the_report_names_each_failed_unit_and_what_it_blocked():
    records = [
        UnitRecord(
            unit_id="api",
            status=UnitStatus.FAILED,
            attempts=2,
            iterations=2,
            step="failed",
            failure_class=FailureClass.TESTS_FAILED,
            error="tests failed after 2 iteration(s): FAILED (1 failed) in 0.1s",
            log_path="s3://bucket/runs/k/units/api/logs/attempt-2.log",
            tests=TestReport(command="pytest -q", exit_code=1, failed=1),
        ),
        UnitRecord(unit_id="cli", status=UnitStatus.BLOCKED, blocked_by=["api"]),
        UnitRecord(
            unit_id="worker",
            status=UnitStatus.FAILED,
            attempts=3,
            failure_class=FailureClass.TIMED_OUT,
            error="agent timed out after 60 s",
        ),
        UnitRecord(unit_id="docs", status=UnitStatus.SUCCEEDED, attempts=1),
    ]

    report = render_failure_report(
        "k", "Feature", records, {"api": split_log(LOG), "worker": LogTails()}, "2 failed", "Retry."
    )

    assert report.startswith("# Run k failed: Feature")
    assert "Units: 1 succeeded, 2 failed, 1 blocked, 0 not run." in report
    assert "## api: tests failed" in report and "- Attempts: 2" in report
    assert "Full log: s3://bucket/runs/k/units/api/logs/attempt-2.log" in report
    assert "second agent run" in report and "E   assert 1 == 2" in report
    assert "## worker: timed out" in report and "- Attempts: 3" in report
    assert "(no log was written)" in report
    assert "- cli: waits for api" in report
    assert report.rstrip().endswith("Retry.")
