"""A clone made before units finished elsewhere (a resumed run, an orchestrator whose units ran
on pool workers) gets their branches from the target, with a few git processes however many
units the run has."""

from __future__ import annotations

from pathlib import Path

import pytest

from flotilla.results import UnitRecord, UnitStatus
from tasks.recovery import restore_unit_branches
from tasks.workspace import Workspace
from tests.integration.gitrepos import commit_on, git, log_git_calls, make_repo

pytestmark = pytest.mark.usefixtures("git_without_identity")

UNITS = "flotilla/greet--"


@pytest.fixture
def target(tmp_path: Path) -> Path:
    repo = tmp_path / "target"
    make_repo(repo, {"app.py": "print('hi')\n"})
    return repo


def pushed_units(target: Path, names: str) -> list[UnitRecord]:
    """Succeeded units whose branches an earlier run pushed to the target."""
    base = git(target, "rev-parse", "main")
    return [
        UnitRecord(
            unit_id=name,
            status=UnitStatus.SUCCEEDED,
            branch=f"{UNITS}{name}",
            commit=commit_on(target, base, {f"{name}.py": "x\n"}, name, branch=f"{UNITS}{name}"),
        )
        for name in names
    ]


def test_branches_pushed_after_the_clone_are_fetched_at_once(
    tmp_path: Path, target: Path, monkeypatch: pytest.MonkeyPatch
):
    workspace = Workspace(tmp_path / "work", str(target), "main")
    workspace.prepare()
    records = pushed_units(target, "abcdefghij")
    records.append(UnitRecord(unit_id="failed", status=UnitStatus.FAILED, branch=f"{UNITS}zz"))
    log = log_git_calls(monkeypatch, tmp_path)

    restored, missing = restore_unit_branches(workspace, records)
    calls = log.read_text().splitlines()

    assert restored == list("abcdefghij") and missing == []
    for record in records[:-1]:
        assert workspace.branch_sha(record.branch) == record.commit
    # look at the branches, fetch the ten, look again: not three processes per unit
    assert len(calls) == 3 and " fetch " in calls[1]


def test_branches_the_target_lacks_are_reported_and_the_others_restored(
    tmp_path: Path, target: Path
):
    workspace = Workspace(tmp_path / "work", str(target), "main")
    workspace.prepare()
    records = pushed_units(target, "ab")
    lost = pushed_units(target, "c")
    git(target, "branch", "-D", f"{UNITS}c")  # it was only ever in a clone that is gone

    assert restore_unit_branches(workspace, records + lost) == (["a", "b"], ["c"])
    assert workspace.branch_sha(f"{UNITS}b") == records[1].commit
    assert workspace.branch_sha(f"{UNITS}c") is None


def test_a_clone_that_has_every_branch_fetches_nothing(
    tmp_path: Path, target: Path, monkeypatch: pytest.MonkeyPatch
):
    workspace = Workspace(tmp_path / "work", str(target), "main")
    workspace.prepare()
    records = pushed_units(target, "ab")
    workspace.fetch([r.branch for r in records])
    log = log_git_calls(monkeypatch, tmp_path)

    assert restore_unit_branches(workspace, records) == ([], [])
    assert len(log.read_text().splitlines()) == 1  # one look at the branches, no fetch
