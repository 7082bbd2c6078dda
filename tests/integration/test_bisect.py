"""Bisection over the merge order against real repositories and a real test command.

Eight units each add their own file and would pass their own tests; one of them also writes a
marker that the feature's test command rejects. The search must name that unit, in at most
ceil(log2 8) = 3 runs on top of the failing gate run, under every merge strategy.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flotilla.results import MergeRecord
from tasks.bisect import bisect_merges, worktree_tester
from tasks.merging import UnitBranch, integrate
from tasks.workspace import Workspace
from tests.integration.gitrepos import commit_on, isolate_git, make_repo

FEATURE = "flotilla/gate"
UNITS = [f"u{i}" for i in range(1, 9)]


@pytest.fixture(autouse=True)
def no_git_identity(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    isolate_git(monkeypatch, tmp_path_factory.mktemp("home"))


class Setup:
    """A workspace clone with eight unit branches; `culprit` writes what the gate rejects."""

    def __init__(self, tmp_path: Path, culprit: str | None):
        target = tmp_path / "target"
        make_repo(target, {"README.md": "# Gate\n", "units/.keep": ""})
        self.workspace = Workspace(tmp_path / "work", str(target), "main")
        self.base = self.workspace.prepare()
        self.repo = self.workspace.clone_dir
        self.counter = tmp_path / "runs.txt"
        # The feature's test: count the run, then fail if any unit left the marker.
        self.command = f"echo run >> {self.counter} && ! grep -rq BROKEN units"
        for unit in UNITS:
            text = "BROKEN\n" if unit == culprit else f"{unit}\n"
            commit_on(self.repo, self.base, {f"units/{unit}.txt": text}, unit, self.branch(unit))

    def branch(self, unit: str) -> str:
        return f"flotilla/gate--{unit}"

    def integrate(self, strategy: str) -> list[MergeRecord]:
        branches = [
            UnitBranch(unit_id=u, branch=self.branch(u), title=u, start=self.base) for u in UNITS
        ]
        result = integrate(self.repo, "main", FEATURE, branches, strategy, self.workspace.env)
        assert result.ok
        return result.merges

    def runs(self) -> int:
        return len(self.counter.read_text().splitlines()) if self.counter.exists() else 0


@pytest.mark.parametrize("strategy", ["merge", "squash", "sequential_rebase"])
@pytest.mark.parametrize("culprit", ["u2", "u5", "u8"])
def test_bisection_names_the_culprit_among_8_units_in_log2_runs(
    tmp_path: Path, strategy: str, culprit: str
):
    setup = Setup(tmp_path, culprit)
    merges = setup.integrate(strategy)
    test = worktree_tester(setup.workspace, setup.command)
    gate = test(merges[-1].commit)  # the gate run at the feature tip
    assert not gate.ok

    found = bisect_merges(setup.base, merges, test, last=gate)

    assert found.culprit == culprit
    assert setup.runs() == 1 + found.runs <= 4  # the gate run plus ceil(log2 8) = 3
    position = UNITS.index(culprit)
    assert found.passing_units == UNITS[:position]
    assert found.commit == merges[position].commit
    assert found.before == (merges[position - 1].commit if position else setup.base)
    assert found.report is not None and not found.report.ok
    assert f"names unit {culprit!r}" in found.explain()
    # every probe left no worktree behind
    assert not any(p.name.startswith("scratch-") for p in setup.workspace.worktrees_dir.iterdir())


def test_blaming_the_first_unit_checks_the_base_once_more(tmp_path: Path):
    setup = Setup(tmp_path, "u1")
    merges = setup.integrate("merge")
    found = bisect_merges(setup.base, merges, worktree_tester(setup.workspace, setup.command))
    assert found.culprit == "u1" and not found.base_fails
    assert found.probes[-1].unit_id == "" and found.probes[-1].ok  # the base passed
    assert found.runs == 4
    assert "(no other unit)" in found.explain()


def test_a_base_that_already_fails_blames_no_unit(tmp_path: Path):
    setup = Setup(tmp_path, None)
    merges = setup.integrate("squash")
    always_failing = f"echo run >> {setup.counter} && false"
    found = bisect_merges(setup.base, merges, worktree_tester(setup.workspace, always_failing))
    assert found.culprit is None and found.base_fails
    assert found.runs == setup.runs() == 4
    assert "already fail on the base commit" in found.explain()


def test_units_whose_merge_changed_nothing_are_not_candidates(tmp_path: Path):
    setup = Setup(tmp_path, "u3")
    merges = setup.integrate("merge")
    # Pretend u2 and u4 merged as no-ops: their tips equal the one before them.
    padded = [
        merges[0],
        MergeRecord(unit_id="noop-a", commit=merges[0].commit),
        *merges[1:3],
        MergeRecord(unit_id="noop-b", commit=merges[2].commit),
        *merges[3:],
    ]
    tested: list[str] = []
    tester = worktree_tester(setup.workspace, setup.command)

    def test(commit: str):
        tested.append(commit)
        return tester(commit)

    found = bisect_merges(setup.base, padded, test)
    assert found.culprit == "u3" and found.candidates == 8
    assert found.passing_units == ["u1", "noop-a", "u2"]
    assert len(tested) == len(set(tested)) == 3


def test_the_worktree_tester_runs_at_the_commit_and_logs(tmp_path: Path):
    setup = Setup(tmp_path, "u4")
    merges = setup.integrate("merge")
    log = tmp_path / "bisect.log"
    test = worktree_tester(setup.workspace, "ls units", log_file=log, name="probe")
    assert test(merges[1].commit).ok
    text = log.read_text()
    assert f"--- flotilla: probe at {merges[1].commit}" in text
    assert "u2.txt" in text and "u3.txt" not in text
