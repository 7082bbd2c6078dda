"""Publishing a run's branches: nothing foreign is dropped, and all branches move or none."""

from __future__ import annotations

from pathlib import Path

import pytest

from flotilla.errors import ForeignCommits, GitError
from tasks.pushing import push_all, read_push_ledger
from tasks.store import ArtifactStore, RunStore
from tasks.workspace import Workspace, identity_env
from tests.integration.gitrepos import TEST_IDENTITY, git, make_repo, write_files

FEATURE, UNIT = "flotilla/greet", "flotilla/greet--a"


@pytest.fixture
def target(tmp_path: Path) -> Path:
    repo = tmp_path / "target"
    make_repo(repo, {"app.py": "print('hi')\n"})
    return repo


def workspace_for(tmp_path: Path, target: Path, name: str = "work") -> Workspace:
    ws = Workspace(tmp_path / name, str(target), "main", identity_env("Robo", "robo@x.org"))
    ws.prepare()
    return ws


def build(ws: Workspace, text: str) -> str:
    """A unit commit on UNIT and the feature branch at it."""
    tree = ws.create_worktree(UNIT, ws.prepare())
    write_files(tree, {"a.py": text})
    sha = ws.commit_all(tree, f"a: {text.strip()}")
    ws.set_branch(FEATURE, sha)
    return sha


def runs_for(tmp_path: Path, key: str) -> RunStore:
    return RunStore(ArtifactStore(str(tmp_path / "store")), key)


def reviewer_commit(target: Path, branch: str) -> str:
    env = ["-c", f"user.name={TEST_IDENTITY['GIT_AUTHOR_NAME']}", "-c", "user.email=r@x.org"]
    git(target, "checkout", "-q", branch)
    write_files(target, {"REVIEW.md": "ok\n"})
    git(target, "add", "REVIEW.md")
    git(target, *env, "commit", "-qm", "Reviewer's fix")
    git(target, "checkout", "-q", "main")
    return git(target, "rev-parse", branch)


def test_first_push_then_a_rerun_of_the_same_key_moves_its_own_branches(tmp_path, target):
    ws, runs = workspace_for(tmp_path, target), runs_for(tmp_path, "k")
    first = build(ws, "A\n")
    assert push_all(ws, runs, str(target), [FEATURE, UNIT], "greet", False).pushed == [
        FEATURE,
        UNIT,
    ]
    second = build(ws, "A2\n")  # a retry redid the unit: not a fast-forward, but the run's own
    done = push_all(ws, runs, str(target), [FEATURE, UNIT], "greet", False)
    assert done.pushed == [FEATURE, UNIT] and done.backups == {}
    assert git(target, "rev-parse", FEATURE) == second
    assert read_push_ledger(runs).tips[UNIT] == [first, second]
    # and again with nothing changed: nothing moves
    assert push_all(ws, runs, str(target), [FEATURE, UNIT], "greet", False).pushed == []


def test_a_reviewers_commit_is_refused_then_kept_in_a_backup_with_force(tmp_path, target):
    ws, runs = workspace_for(tmp_path, target), runs_for(tmp_path, "k")
    build(ws, "A\n")
    push_all(ws, runs, str(target), [FEATURE, UNIT], "greet", False)
    reviewed = reviewer_commit(target, FEATURE)
    mine = build(ws, "A2\n")

    with pytest.raises(ForeignCommits) as refused:
        push_all(ws, runs, str(target), [FEATURE, UNIT], "greet", False)
    message = str(refused.value)
    assert "\n" not in message and refused.value.exit_code == 5
    assert f'Branch {FEATURE} in {target} holds commit {reviewed[:12]} "Reviewer\'s fix"' in (
        message
    )
    assert git(target, "rev-parse", FEATURE) == reviewed  # untouched, and the unit too
    assert git(target, "rev-parse", UNIT) != mine

    done = push_all(ws, runs, str(target), [FEATURE, UNIT], "greet", True)
    (backup,) = done.backups.values()
    assert backup.startswith("refs/flotilla/backup/greet/")
    assert git(target, "rev-parse", backup) == reviewed
    assert git(target, "rev-parse", FEATURE) == mine == git(target, "rev-parse", UNIT)


def test_another_runs_result_is_foreign_to_a_new_run_key(tmp_path, target):
    ws = workspace_for(tmp_path, target)
    build(ws, "A\n")
    push_all(ws, runs_for(tmp_path, "first"), str(target), [FEATURE, UNIT], "greet", False)
    other = workspace_for(tmp_path, target, "other")
    build(other, "B\n")
    with pytest.raises(ForeignCommits, match="which run second did not make"):
        push_all(other, runs_for(tmp_path, "second"), str(target), [FEATURE, UNIT], "greet", False)


def test_a_branch_the_target_refuses_moves_no_branch_at_all(tmp_path, target):
    ws, runs = workspace_for(tmp_path, target), runs_for(tmp_path, "k")
    build(ws, "A\n")
    push_all(ws, runs, str(target), [FEATURE, UNIT], "greet", False)
    git(target, "checkout", "-q", FEATURE)  # a non-bare target refuses to move it
    before = git(target, "for-each-ref", "--format=%(objectname) %(refname)")
    build(ws, "A2\n")

    with pytest.raises(GitError) as failed:
        push_all(ws, runs, str(target), [FEATURE, UNIT], "greet", False)

    assert str(failed.value) == (
        f"Pushing to {target} refused '{FEATURE}' (it is checked out in that repository; check "
        "out another branch there); the push is atomic, so no branch moved. Fix that, then "
        "resume the run."
    )
    assert git(target, "for-each-ref", "--format=%(objectname) %(refname)") == before
