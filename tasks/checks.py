"""Running a test command and reading its results: JUnit XML when there is some, else pytest's
summary line, else the exit code alone.

The command runs through bash in the worktree with a hard time limit, in an environment chosen
like an agent's (the basics and what the request names, see `test_env`), never Flotilla's own.
A `{junit}` placeholder becomes a report path outside the worktree, so a report never ends up in
a unit's commit.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from pathlib import Path

from pydantic import BaseModel, Field

from flotilla.environment import child_env
from flotilla.redaction import redact
from flotilla.results import TestReport
from tasks.processes import run_process

JUNIT_PLACEHOLDER = "{junit}"


class TestCounts(BaseModel):
    """What a results format tells: counts, duration and the names of failing tests."""

    __test__ = False  # not a pytest class

    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    duration_s: float = 0.0
    failing_tests: list[str] = Field(default_factory=list)


def test_env(
    pass_env: Iterable[str] = (), values: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A test command's environment: the basics plus the request's `pass_env` and `env`."""
    return child_env(os.environ, pass_env=pass_env, values=values)


test_env.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def run_tests(
    command: str,
    *,
    cwd: Path,
    timeout_s: float | None,
    env: dict[str, str] | None = None,
    log_file: Path | None = None,
) -> TestReport:
    """Run `command` with bash in `cwd` and report what it says about its tests.

    `env` is the command's whole environment (`test_env`); without it, only the basics.
    """
    tmp = Path(tempfile.mkdtemp(prefix="flotilla-junit-")) if JUNIT_PLACEHOLDER in command else None
    try:
        if tmp is not None:
            junit: Path | None = tmp / "junit.xml"
            shell = command.replace(JUNIT_PLACEHOLDER, shlex.quote(str(junit)))
        else:
            junit = _junitxml_option(command, cwd)
            shell = command
        before = _stamp(junit)
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            with log_file.open("a", encoding="utf-8") as log:
                log.write(redact(f"--- flotilla: tests: {shell}\n"))
        result = run_process(shell, cwd=cwd, env=env, timeout_s=timeout_s, log_file=log_file)
        report = TestReport(
            command=command,
            exit_code=result.exit_code,
            duration_s=result.duration_s,
            output_tail=result.output_tail,
            timed_out=result.timed_out,
        )
        counts, source = None, "exit-code"
        if junit is not None and _stamp(junit) not in (None, before):
            counts, source = _try_junit(junit), "junit"
        if counts is None:
            counts, source = parse_pytest_summary(result.output_tail), "pytest-summary"
        if counts is None:
            return report
        fields = counts.model_dump(exclude={"duration_s"})
        return report.model_copy(update={**fields, "source": source})
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _junitxml_option(command: str, cwd: Path) -> Path | None:
    """The path of pytest's `--junitxml=PATH` / `--junitxml PATH`, relative to `cwd`."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    for i, word in enumerate(words):
        value = None
        if word.startswith("--junitxml=") or word.startswith("--junit-xml="):
            value = word.split("=", 1)[1]
        elif word in ("--junitxml", "--junit-xml") and i + 1 < len(words):
            value = words[i + 1]
        if value:
            path = Path(value).expanduser()
            return path if path.is_absolute() else cwd / path
    return None


def _stamp(path: Path | None) -> tuple[int, int] | None:
    """(mtime, size) of a report, so a stale one from an earlier run is never read."""
    if path is None or not path.is_file():
        return None
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def _try_junit(path: Path) -> TestCounts | None:
    try:
        return parse_junit_xml(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):
        return None


def parse_junit_xml(text: str) -> TestCounts:
    """Counts from a JUnit XML report (`<testsuites>` or a single `<testsuite>` root).

    Raises ValueError when the text is not JUnit XML.
    """
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ValueError(f"not well-formed XML: {exc}") from exc
    if root.tag not in ("testsuites", "testsuite"):
        raise ValueError(f"root element is <{root.tag}>, expected <testsuites> or <testsuite>")
    suites = [root] if root.tag == "testsuite" else root.findall(".//testsuite")
    counts = TestCounts(
        duration_s=_float(root.get("time")) or sum(_float(s.get("time")) for s in suites)
    )
    cases = root.findall(".//testcase")
    if not cases:  # a summary-only report: trust the suites' attributes
        for suite in suites:
            counts.failed += int(_float(suite.get("failures")))
            counts.errors += int(_float(suite.get("errors")))
            counts.skipped += int(_float(suite.get("skipped")))
            counts.passed += int(_float(suite.get("tests"))) - int(
                _float(suite.get("failures"))
                + _float(suite.get("errors"))
                + _float(suite.get("skipped"))
            )
        counts.passed = max(counts.passed, 0)
        return counts
    for case in cases:
        name = case.get("name", "?")
        classname = case.get("classname")
        full = f"{classname}::{name}" if classname else name
        if case.find("failure") is not None:
            counts.failed += 1
            counts.failing_tests.append(full)
        elif case.find("error") is not None:
            counts.errors += 1
            counts.failing_tests.append(full)
        elif case.find("skipped") is not None:
            counts.skipped += 1
        else:
            counts.passed += 1
    return counts


def _float(value: str | None) -> float:
    try:
        return float(value) if value else 0.0
    except ValueError:
        return 0.0


_SUMMARY_ITEM = re.compile(
    r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected|warnings?|rerun)"
)
_SUMMARY_LINE = re.compile(
    r"^[=\s]*((?:\d+ \w+(?:, )?)+|no tests ran) in (\d+(?:\.\d+)?)s\b", re.MULTILINE
)
_FAILED_LINE = re.compile(r"^(FAILED|ERROR) (\S+?)(?: - .*)?$", re.MULTILINE)
_KIND = {"passed": "passed", "xpassed": "passed", "failed": "failed", "skipped": "skipped"}
_KIND |= {"xfailed": "skipped", "error": "errors", "errors": "errors"}


def parse_pytest_summary(output: str) -> TestCounts | None:
    """Counts from pytest's final line ("3 passed, 1 failed, 2 skipped in 0.12s"), or None.

    Failing test names come from the "FAILED path::name" lines of the short summary.
    """
    lines = list(_SUMMARY_LINE.finditer(output))
    if not lines:
        return None
    last = lines[-1]
    counts = TestCounts(duration_s=float(last.group(2)))
    for number, word in _SUMMARY_ITEM.findall(last.group(1)):
        kind = _KIND.get(word)
        if kind:
            setattr(counts, kind, getattr(counts, kind) + int(number))
    counts.failing_tests = [m.group(2) for m in _FAILED_LINE.finditer(output[: last.start()])]
    return counts
