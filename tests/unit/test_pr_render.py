"""The PR description and the run report: pure rendering of what a reviewer needs."""

from __future__ import annotations

import re

from flotilla.results import MergeRecord, ReworkNote, TestReport, UnitRecord, UnitStatus
from flotilla.spec import FeatureInfo
from tasks.publishing import (
    ArtifactLink,
    PublishedPR,
    PullRequestDraft,
    fit_body,
    render_pr,
    render_report,
)

STORE = "s3://bucket/flotilla"
FETCH = "flotilla artifacts auth-1"


def report(passed: int, failed: int = 0, skipped: int = 0, failing=(), command="pytest -q"):
    return TestReport(
        command=command,
        exit_code=1 if failed else 0,
        passed=passed,
        failed=failed,
        skipped=skipped,
        duration_s=1.5,
        failing_tests=list(failing),
        source="junit",
    )


def unit(unit_id: str, **kw) -> UnitRecord:
    values = {
        "status": UnitStatus.SUCCEEDED,
        "attempts": 1,
        "iterations": 1,
        "branch": f"flotilla/auth--{unit_id}",
        "commit": "c0ffee" * 6,
        "summary": f"Agent summary of {unit_id}.",
        "files_changed": [f"src/{unit_id}.py"],
        "tests": report(3),
        "duration_s": 12.0,
        **kw,
    }
    return UnitRecord(unit_id=unit_id, **values)


def draft(**kw) -> PullRequestDraft:
    units = [
        unit("models", tests=report(4, skipped=1)),
        unit(
            "api",
            files_changed=[f"src/api/f{n}.py" for n in range(15)],
            reworks=[
                ReworkNote(
                    reason="conflict",
                    onto="abcdef1234567",
                    paths=["src/app.py"],
                    ok=True,
                    attempts=1,
                )
            ],
        ),
        unit(
            "docs",
            status=UnitStatus.FAILED,
            tests=report(1, failed=2, failing=["tests/test_docs.py::test_links", "test_toc"]),
            error="Tests failed after 3 iterations.",
        ),
    ]
    values = {
        "feature": FeatureInfo(id="auth", title="Add auth", description="Log in with a password."),
        "base_branch": "main",
        "feature_branch": "flotilla/auth",
        "feature_commit": "1234567890abcdef",
        "units": units,
        "titles": {"models": "User model", "api": "Login endpoint", "docs": "Docs"},
        "merge_order": ["models", "api"],
        "merges": [
            MergeRecord(unit_id="models", commit="aaaa1111bbbb"),
            MergeRecord(
                unit_id="api", commit="cccc2222dddd", conflicts=["src/app.py"], reimplemented=True
            ),
        ],
        "gate": report(9, command="make test"),
        "strategy": "squash",
        "artifact_links": {u.unit_id: f"{FETCH} {u.unit_id} --store {STORE}" for u in units},
        "unit_artifacts": {
            "models": [
                ArtifactLink(name="summary.md", url=f"{FETCH} models --get summary.md"),
                ArtifactLink(name="logs/attempt-1.log", url="https://ci.example/a.log"),
            ]
        },
        "feature_artifacts": [ArtifactLink(name="gate.log", url=f"{FETCH} --get feature/gate.log")],
        "missing_units": ["docs"],
        "run_key": "auth-1",
        "run_url": f"{FETCH} --store {STORE}",
    }
    return PullRequestDraft(**{**values, **kw})


def section(markdown: str, heading: str) -> str:
    """The text under `heading` up to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = markdown.index(heading + "\n")
    rest = markdown[start + len(heading) + 1 :]
    end = re.search(rf"^#{{1,{len(level)}}} ", rest, re.M)
    return rest[: end.start()] if end else rest


def test_summary_carries_the_feature_and_its_totals():
    text = render_pr(draft())

    assert text.startswith("# Add auth\n\nLog in with a password.\n")
    assert "`flotilla/auth` → `main` (head `1234567890ab`)" in text
    assert "- **Units:** 2 of 3 succeeded" in text
    assert "- **Merge order** (squash): `models` → `api`" in text
    assert "- **Files changed:** 16" in text
    assert "- **Unit tests:** passed (7 passed, 1 skipped) in 3.0s" in text
    assert "- **Feature test gate:** passed (9 passed) in 1.5s" in text
    assert "- **Conflicts resolved:** 1" in text
    assert f"- **Run:** `auth-1` · artifacts: `{FETCH} --store {STORE}`" in text
    assert "file://" not in text
    assert "**Partial feature.** These units are missing: `docs`" in text


def test_merge_order_is_numbered_with_commits_and_notes():
    order = section(render_pr(draft()), "## Merge order")

    assert "1. `models` User model · `aaaa1111bb`" in order
    assert "2. `api` Login endpoint · `cccc2222dd` · re-done after a merge conflict" in order
    assert order.index("models") < order.index("api")


def test_tests_table_has_one_row_per_unit_plus_totals_and_gate():
    table = section(render_pr(draft()), "## Test results")

    assert "| `models` | passed | 4 | 0 | 0 | 1 | 1.5s |" in table
    assert "| `docs` | **failed** | 1 | 2 | 0 | 0 | 1.5s |" in table
    assert "| **All units** | passed | 7 | 0 | 0 | 1 | 3.0s |" in table
    assert "| **Feature gate** | passed | 9 | 0 | 0 | 0 | 1.5s |" in table


def test_conflicts_and_gate_sections():
    text = render_pr(draft())

    conflicts = section(text, "## Conflicts resolved")
    assert "`api` (Login endpoint): conflicted in `src/app.py`; re-implemented" in conflicts
    gate = section(text, "## Feature test gate")
    assert "`make test`: passed (9 passed) in 1.5s (from junit)" in gate
    assert "Artifacts: `gate.log`" in gate


def test_a_clean_run_says_so():
    text = render_pr(draft(merges=[MergeRecord(unit_id="models", commit="a1")], gate=None))

    assert "_None: every unit merged cleanly._" in section(text, "## Conflicts resolved")
    assert "the gate did not run" in section(text, "## Feature test gate")
    assert "| **Feature gate** | not run |" in text


def test_one_section_per_unit_in_merge_order_then_the_rest():
    text = render_pr(draft())
    headings = re.findall(r"^### (.*)$", text, re.M)

    assert headings == ["User model (`models`)", "Login endpoint (`api`)", "Docs (`docs`)"]
    models = section(text, "### User model (`models`)")
    assert "Agent summary of models." in models
    assert "**Tests:** passed (4 passed, 1 skipped) in 1.5s · `pytest -q`" in models
    assert "**Files changed (1):** `src/models.py`" in models
    # store paths are local to the machine that wrote them: names, and the command to fetch
    assert "`summary.md` · [logs/attempt-1.log](https://ci.example/a.log)" in models
    assert f"`{FETCH} models --store {STORE}` (`--get NAME` prints one)" in models


def test_a_failed_unit_lists_its_failing_tests_and_error():
    docs = section(render_pr(draft()), "### Docs (`docs`)")

    assert "Status: **failed**" in docs and "Tests failed after 3 iterations." in docs
    assert "- `tests/test_docs.py::test_links`" in docs and "- `test_toc`" in docs
    assert f"**Artifacts:** `{FETCH} docs --store {STORE}`" in docs


def test_many_files_fold_and_reworks_are_told():
    api = section(render_pr(draft()), "### Login endpoint (`api`)")

    assert "<details><summary><b>Files changed (15)</b></summary>" in api
    assert "- `src/api/f14.py`" in api
    assert (
        "after a merge conflict in `src/app.py` on top of `abcdef1234`; 1 attempt(s), done" in api
    )


def test_a_unit_fixed_after_the_gate_is_named():
    merges = [
        MergeRecord(unit_id="models", commit="a1", fixed_for_gate=True),
        MergeRecord(unit_id="api", commit="b2"),
    ]
    text = render_pr(draft(merges=merges))

    assert "- **Fixed after the test gate:** `models`" in text
    assert "`models` broke the feature's tests once merged" in section(text, "## Feature test gate")
    assert "fixed after the test gate" in section(text, "## Merge order")


def test_gate_runs_and_bisection_are_told():
    note = "bisection over 2 merge(s), 1 test run(s) names unit 'api'"
    gate = section(render_pr(draft(gate_runs=3, gate_notes=[note])), "## Feature test gate")

    assert "The feature's tests ran 3 times, bisection included." in gate
    assert f"- {note}" in gate


def test_nothing_merged():
    text = render_pr(draft(merge_order=[], merges=[]))

    assert "_Nothing was merged._" in text and "**Merge order** (squash): none" in text


def test_report_leads_with_the_pull_request_then_the_same_content():
    pr = PublishedPR(provider="github", url="https://github.com/acme/app/pull/7", created=True)

    text = render_report(draft(), pr, f"{FETCH} --get feature/pr.md")

    assert text.startswith("# Feature PR: Add auth\n")
    assert "- **Pull request:** https://github.com/acme/app/pull/7 (opened on github)" in text
    assert "- **Run:** `auth-1` · succeeded" in text
    for heading in ("## Merge order", "## Test results", "## Conflicts resolved", "## Units"):
        assert heading in text
    assert text.count("\n# ") == 0  # one title only


def test_report_for_the_local_provider_points_at_pr_md():
    text = render_report(draft(), PublishedPR(provider="local"), f"{FETCH} --get feature/pr.md")

    assert f"`flotilla/auth`; its description: `{FETCH} --get feature/pr.md`" in text


def test_fit_body_cuts_at_a_section_and_says_where_the_rest_is():
    many = [unit(f"u{n:02d}", summary="x" * 400) for n in range(40)]
    text = render_pr(draft(units=many, merge_order=[u.unit_id for u in many], merges=[]))
    assert len(text) > 15_000

    cut = fit_body(text, 15_000, f"{FETCH} --get feature/pr.md")

    assert len(cut) <= 15_000
    assert cut.endswith(f"The full description: `{FETCH} --get feature/pr.md`._\n")
    body = cut.rsplit("\n---\n", 1)[0].rstrip()
    last = re.findall(r"^### u(\d+) ", body, re.M)[-1]
    assert body.endswith(f"**Files changed (1):** `src/u{last}.py`")  # the last section is whole
    assert fit_body("short", 15_000) == "short"
