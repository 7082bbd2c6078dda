"""`flotilla run` end to end: real git, real processes, the Prefect test harness."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from flotilla.cli import main
from tests.e2e.helpers import git, make_target, timeline_of, write_request


@pytest.fixture
def no_git_identity(tmp_path, monkeypatch):
    """A machine where git knows no user: commits must still work."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in (
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("EMAIL", raising=False)


def run(request: Path, target: Path, tmp_path: Path, *extra: str) -> int:
    return main(
        [
            "run",
            str(request),
            "--repo",
            str(target),
            "--store",
            str(tmp_path / "store"),
            "--workdir",
            str(tmp_path / "work"),
            *extra,
        ]
    )


def snapshot(target: Path) -> tuple[str, str, str, str]:
    index = target / ".git" / "index"
    return (
        git(target, "rev-parse", "HEAD"),
        git(target, "rev-parse", "refs/heads/main"),
        git(target, "status", "--porcelain"),
        hashlib.sha256(index.read_bytes()).hexdigest(),
    )


def test_independent_units_overlap_and_dependents_wait(tmp_path, capsys, no_git_identity):
    target = make_target(tmp_path / "target")
    timeline = tmp_path / "timeline.txt"
    request = write_request(
        tmp_path,
        [
            {"id": "left", "env": {"WAIT_FOR": "right"}, "outputs": ["left.json"]},
            {"id": "right", "env": {"WAIT_FOR": "left"}},
            {"id": "join", "depends_on": ["right"], "inputs": ["left/left.json"]},
        ],
        timeline=timeline,
    )
    before = snapshot(target)

    assert run(request, target, tmp_path, "--run-key", "overlap") == 0

    spans = timeline_of(timeline)
    (l_start, l_end), (r_start, r_end) = spans["left"], spans["right"]
    assert l_start < r_end and r_start < l_end, "independent units did not run at the same time"
    assert spans["join"][0] >= max(l_end, r_end), "a unit started before its dependencies ended"
    # the artifact travelled from `left` to `join` through the store
    assert "left/left.json" in git(target, "show", "flotilla/demo-feature:units/join.txt")
    # the target's working tree, index, HEAD and base branch are untouched
    assert snapshot(target) == before
    out = capsys.readouterr().out
    assert "Feature branch: flotilla/demo-feature" in out
    assert "PR description:" in out
    for unit in ("left", "right", "join"):
        assert f"{unit}" in out and "succeeded" in out
    pr = (tmp_path / "store" / "runs" / "overlap" / "feature" / "pr.md").read_text()
    assert pr.startswith("# Demo feature")
    assert "3 of 3 succeeded" in pr and "Wrote units/join.txt." in pr


def test_a_failed_unit_blocks_only_its_dependents(tmp_path, capsys, no_git_identity):
    target = make_target(tmp_path / "target")
    timeline = tmp_path / "timeline.txt"
    request = write_request(
        tmp_path,
        [
            {"id": "broken", "env": {"EXIT_CODE": "3"}, "retry_policy": {"max_attempts": 1}},
            {"id": "after-broken", "depends_on": ["broken"]},
            {"id": "independent"},
        ],
        timeline=timeline,
    )

    assert run(request, target, tmp_path, "--run-key", "isolated") == 1

    spans = timeline_of(timeline)
    assert "after-broken" not in spans
    assert "independent" in spans
    out = capsys.readouterr().out
    assert "broken" in out and "failed" in out and "blocked" in out
    assert "merge and finalize were skipped" in out
    assert git(target, "branch", "--list", "flotilla/*") == ""
