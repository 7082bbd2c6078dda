"""The checked-in demo feature, end to end, as `make demo` runs it (agents without the sleep)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from examples.demo_repo import build_demo_repo
from flotilla.cli import main
from flotilla.loading import load_request
from tests.e2e.helpers import git

REQUEST = Path(__file__).parents[2] / "examples" / "text-stats" / "request.yaml"


def test_the_demo_feature_becomes_one_tested_feature_branch(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TEXTSTATS_AGENT_SLEEP_S", "0")
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{__import__('os').environ['PATH']}")
    repo = build_demo_repo(tmp_path / "demo-repo")
    units = [u.id for u in load_request(REQUEST).units]

    code = main(
        [
            "run",
            str(REQUEST),
            "--repo",
            str(repo),
            "--store",
            str(tmp_path / "store"),
            "--workdir",
            str(tmp_path / "work"),
            "--run-key",
            "demo",
        ]
    )

    out = capsys.readouterr().out
    assert code == 0, out
    # one commit per unit on top of main, in dependency order
    subjects = git(repo, "log", "--format=%s", "--reverse", "main..flotilla/text-stats")
    assert len(subjects.splitlines()) == len(units) >= 5
    trailers = git(
        repo, "log", "--format=%(trailers:key=Flotilla-Unit,valueonly)", "main..flotilla/text-stats"
    )
    assert sorted(t for t in trailers.split() if t) == sorted(units)
    # the target's own tests pass on the feature branch
    checkout = tmp_path / "checkout"
    git(repo, "worktree", "add", "--detach", str(checkout), "flotilla/text-stats")
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q"], cwd=checkout, capture_output=True, text=True
    )
    assert tests.returncode == 0, tests.stdout
    for unit in units:
        assert f"{unit}" in out
    assert "Test gate:      passed" in out
