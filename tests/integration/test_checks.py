"""Test commands against a real pytest project in a temporary directory."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from tasks.checks import parse_junit_xml, parse_pytest_summary, run_tests

PYTEST = f"{shlex.quote(sys.executable)} -m pytest -q -p no:cacheprovider"

SAMPLE_TESTS = """
import pytest


def test_pass():
    assert 1 + 1 == 2


def test_fail():
    assert 1 + 1 == 3


def test_skip():
    pytest.skip("not on this machine")
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A small project with one passing, one failing and one skipped test."""
    root = tmp_path / "my project"
    root.mkdir()
    (root / "test_sample.py").write_text(SAMPLE_TESTS)
    return root


def test_junit_placeholder_gives_counts_and_failing_names(project: Path, tmp_path: Path) -> None:
    log = tmp_path / "logs" / "tests.log"
    report = run_tests(f"{PYTEST} --junitxml={{junit}}", cwd=project, timeout_s=60, log_file=log)
    assert report.source == "junit"
    assert (report.passed, report.failed, report.errors, report.skipped) == (1, 1, 0, 1)
    assert report.failing_tests == ["test_sample::test_fail"]
    assert report.exit_code == 1 and not report.ok and not report.timed_out
    assert report.command.endswith("--junitxml={junit}")
    assert "1 failed" in report.output_tail
    assert sorted(p.name for p in project.iterdir()) == ["test_sample.py"]  # report kept outside
    assert "1 failed, 1 passed, 1 skipped" in log.read_text()


def test_junitxml_option_is_read_relative_to_the_worktree(project: Path) -> None:
    report = run_tests(f"{PYTEST} --junitxml=reports/junit.xml", cwd=project, timeout_s=60)
    assert report.source == "junit"
    assert (report.passed, report.failed, report.skipped) == (1, 1, 1)
    assert report.failing_tests == ["test_sample::test_fail"]


def test_a_stale_junit_file_is_not_read(project: Path) -> None:
    (project / "old.xml").write_text('<testsuite tests="9" failures="9"/>')
    report = run_tests("echo --junitxml=old.xml; exit 2", cwd=project, timeout_s=30)
    assert report.source == "exit-code"
    assert (report.passed, report.failed, report.exit_code) == (0, 0, 2)


def test_pytest_summary_line_is_the_fallback(project: Path) -> None:
    report = run_tests(PYTEST, cwd=project, timeout_s=60)
    assert report.source == "pytest-summary"
    assert (report.passed, report.failed, report.errors, report.skipped) == (1, 1, 0, 1)
    assert report.failing_tests == ["test_sample.py::test_fail"]
    assert report.exit_code == 1


def test_a_passing_run(project: Path) -> None:
    (project / "test_sample.py").write_text("def test_ok():\n    assert True\n")
    report = run_tests(f"{PYTEST} --junitxml={{junit}}", cwd=project, timeout_s=60)
    assert report.ok and report.passed == 1 and report.failing_tests == []
    assert report.one_line().startswith("passed (1 passed)")


def test_other_commands_report_their_exit_code_only(project: Path) -> None:
    failing = run_tests("echo checking; exit 3", cwd=project, timeout_s=30, env={"X": "1"})
    assert failing.source == "exit-code" and failing.exit_code == 3 and not failing.ok
    assert (failing.passed, failing.failed) == (0, 0)
    assert "checking" in failing.output_tail
    passing = run_tests(
        'test "$X" = 1 && test -f test_sample.py', cwd=project, timeout_s=30, env={"X": "1"}
    )
    assert passing.ok and passing.source == "exit-code"


def test_timeout_marks_the_report(project: Path) -> None:
    report = run_tests("sleep 30", cwd=project, timeout_s=1)
    assert report.timed_out and report.exit_code is None and not report.ok


def test_output_tail_keeps_the_last_lines(project: Path) -> None:
    report = run_tests("for i in $(seq 1 200); do echo line $i; done", cwd=project, timeout_s=30)
    lines = report.output_tail.splitlines()
    assert lines[-1] == "line 200" and len(lines) <= 60


JUNIT_SUITES = """<?xml version="1.0" encoding="utf-8"?>
<testsuites time="1.5">
  <testsuite name="a" tests="3" failures="1" errors="1" skipped="0" time="1.0">
    <testcase classname="pkg.test_a" name="test_one" time="0.1"/>
    <testcase classname="pkg.test_a.TestThing" name="test_two" time="0.2">
      <failure message="boom">Traceback</failure>
    </testcase>
    <testcase classname="pkg.test_a" name="test_three" time="0.1">
      <error message="fixture broke"/>
    </testcase>
  </testsuite>
  <testsuite name="b" tests="1" skipped="1" time="0.5">
    <testcase classname="pkg.test_b" name="test_four"><skipped/></testcase>
  </testsuite>
</testsuites>
"""


def test_parse_junit_xml_counts_each_case() -> None:
    counts = parse_junit_xml(JUNIT_SUITES)
    assert (counts.passed, counts.failed, counts.errors, counts.skipped) == (1, 1, 1, 1)
    assert counts.failing_tests == ["pkg.test_a.TestThing::test_two", "pkg.test_a::test_three"]
    assert counts.duration_s == 1.5


def test_parse_junit_xml_summary_only_and_bad_input() -> None:
    counts = parse_junit_xml('<testsuite tests="5" failures="1" errors="0" skipped="2" time="2"/>')
    assert (counts.passed, counts.failed, counts.skipped, counts.duration_s) == (2, 1, 2, 2.0)
    with pytest.raises(ValueError):
        parse_junit_xml("<html>not a report</html>")
    with pytest.raises(ValueError):
        parse_junit_xml("<testsuite")


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("3 passed, 1 failed, 2 skipped in 0.12s", (3, 1, 0, 2, 0.12)),
        ("===== 2 passed, 1 warning in 1.03s =====", (2, 0, 0, 0, 1.03)),
        ("== 1 failed, 4 passed, 1 error, 1 xfailed, 1 xpassed in 3.50s ==", (5, 1, 1, 1, 3.5)),
        ("no tests ran in 0.01s", (0, 0, 0, 0, 0.01)),
    ],
)
def test_parse_pytest_summary(output: str, expected: tuple) -> None:
    counts = parse_pytest_summary("collected things\n" + output + "\n")
    assert counts is not None
    got = (counts.passed, counts.failed, counts.errors, counts.skipped, counts.duration_s)
    assert got == expected


def test_parse_pytest_summary_names_failures_and_ignores_other_output() -> None:
    output = (
        "..F\n=== short test summary info ===\n"
        "FAILED tests/test_x.py::test_b - AssertionError: assert 1 == 2\n"
        "ERROR tests/test_y.py::test_c\n"
        "1 failed, 1 passed, 1 error in 0.30s\n"
    )
    counts = parse_pytest_summary(output)
    assert counts is not None
    assert counts.failing_tests == ["tests/test_x.py::test_b", "tests/test_y.py::test_c"]
    assert parse_pytest_summary("make: *** [all] Error 2\n") is None
