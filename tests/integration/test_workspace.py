"""Workspace against real git repositories, on a machine where git has no identity configured."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from flotilla.errors import GitError
from tasks.workspace import Workspace, identity_env
from tests.integration.gitrepos import (
    commit_on,
    git,
    isolate_git,
    log_git_calls,
    make_repo,
    parents,
    snapshot,
    tree_files,
    write_files,
)

FEATURE = "flotilla/greet"
# Not flotilla/greet/<unit>: git cannot hold refs/heads/flotilla/greet and refs/heads/flotilla/greet/a.
UNITS = "flotilla-units/greet"


@pytest.fixture(autouse=True)
def no_git_identity(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    isolate_git(monkeypatch, tmp_path_factory.mktemp("home"))


@pytest.fixture
def target(tmp_path: Path) -> Path:
    """A user's repository: only `main`, no remote, with an uncommitted edit and a staged file."""
    repo = tmp_path / "target"
    make_repo(repo, {"app.py": "print('hi')\n", "README.md": "# App\n", ".gitignore": "*.log\n"})
    write_files(repo, {"README.md": "# App (work in progress)\n", "notes.txt": "mine\n"})
    git(repo, "add", "notes.txt")
    return repo


@pytest.fixture
def workspace(tmp_path: Path, target: Path) -> Workspace:
    return Workspace(tmp_path / "work", str(target), "main")


def test_git_really_has_no_identity(tmp_path: Path):
    repo = tmp_path / "plain"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    done = subprocess.run(
        ["git", "commit", "--allow-empty", "-m", "x"], cwd=repo, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "auto-detection is disabled" in done.stderr


def test_prepare_clones_a_target_without_remote(workspace: Workspace, target: Path):
    base = workspace.prepare()
    assert base == git(target, "rev-parse", "main")
    assert workspace.clone_dir.joinpath("HEAD").is_file()
    assert workspace.branch_sha("main") == base
    assert workspace.branch_sha("flotilla/nothing") is None
    assert git(target, "remote") == ""


def test_prepare_again_fetches_the_base(workspace: Workspace, target: Path):
    workspace.prepare()
    git(target, "commit", "-q", "-m", "user keeps working")
    assert workspace.prepare() == git(target, "rev-parse", "main")


def test_prepare_names_a_missing_base_branch(tmp_path: Path, target: Path):
    with pytest.raises(GitError, match=r"'develop' does not exist.*branches: main"):
        Workspace(tmp_path / "work", str(target), "develop").prepare()


def test_prepare_names_a_missing_target(tmp_path: Path):
    with pytest.raises(GitError, match="Could not clone the target repository"):
        Workspace(tmp_path / "work", str(tmp_path / "nowhere"), "main").prepare()


def test_start_commit_merges_dependency_branches(workspace: Workspace):
    base = workspace.prepare()
    repo = workspace.clone_dir
    commit_on(repo, base, {"a.py": "A = 1\n"}, "unit a", branch=f"{UNITS}/a")
    commit_on(repo, base, {"b.py": "B = 2\n"}, "unit b", branch=f"{UNITS}/b")
    start = workspace.start_commit(base, [f"{UNITS}/a", f"{UNITS}/b"], "Start of unit c")
    files = tree_files(repo, start)
    assert files["a.py"] == "A = 1\n" and files["b.py"] == "B = 2\n"
    assert files["app.py"] == "print('hi')\n"
    assert len(parents(repo, start)) == 2
    assert git(repo, "log", "-1", "--format=%an <%ae>", start) == "Flotilla <flotilla@localhost>"


def test_start_commit_without_dependencies_is_the_base(workspace: Workspace):
    base = workspace.prepare()
    assert workspace.start_commit(base, [], "Start") == base
    one = commit_on(workspace.clone_dir, base, {"a.py": "A\n"}, "a", branch=f"{UNITS}/a")
    assert workspace.start_commit(base, [f"{UNITS}/a"], "Start") == one  # fast-forward


def test_start_commit_conflict_names_branches_and_paths(workspace: Workspace):
    base = workspace.prepare()
    repo = workspace.clone_dir
    commit_on(repo, base, {"app.py": "print('a')\n"}, "a", branch=f"{UNITS}/a")
    commit_on(repo, base, {"app.py": "print('b')\n"}, "b", branch=f"{UNITS}/b")
    with pytest.raises(GitError, match=rf"'{UNITS}/b' conflicts with {UNITS}/a in: app.py"):
        workspace.start_commit(base, [f"{UNITS}/a", f"{UNITS}/b"], "Start")


def test_start_commit_fast_forwards_to_a_dependency_that_contains_the_others(
    workspace: Workspace,
):
    base = workspace.prepare()
    repo = workspace.clone_dir
    a = commit_on(repo, base, {"a.py": "A\n"}, "a", branch=f"{UNITS}/a")
    b = commit_on(repo, base, {"b.py": "B\n"}, "b", branch=f"{UNITS}/b")
    c = commit_on(repo, a, {"c.py": "C\n"}, "c on a and b", extra_parents=(b,), branch=f"{UNITS}/c")
    start = workspace.start_commit(base, [f"{UNITS}/a", f"{UNITS}/b", f"{UNITS}/c"], "Start")
    assert start == c  # a and b are in c already: no merge commit of its own


def test_start_commit_merges_only_the_independent_tips(workspace: Workspace):
    base = workspace.prepare()
    repo = workspace.clone_dir
    a = commit_on(repo, base, {"a.py": "A\n"}, "a", branch=f"{UNITS}/a")
    b = commit_on(repo, a, {"b.py": "B\n"}, "b after a", branch=f"{UNITS}/b")
    x = commit_on(repo, base, {"x.py": "X\n"}, "x", branch=f"{UNITS}/x")
    start = workspace.start_commit(base, [f"{UNITS}/a", f"{UNITS}/b", f"{UNITS}/x"], "Start")
    assert parents(repo, start) == [b, x]
    assert {"a.py", "b.py", "x.py", "app.py"} <= set(tree_files(repo, start))
    assert git(repo, "log", "-1", "--format=%B", start).endswith(f"Merged dependency {UNITS}/x.")


def test_start_commit_of_dependencies_that_changed_nothing_is_the_base(workspace: Workspace):
    base = workspace.prepare()
    for name in "ab":
        git(workspace.clone_dir, "branch", f"{UNITS}/{name}", base)
    assert workspace.start_commit(base, [f"{UNITS}/a", f"{UNITS}/b"], "Start") == base


def test_start_commit_names_a_missing_dependency_branch(workspace: Workspace):
    base = workspace.prepare()
    commit_on(workspace.clone_dir, base, {"a.py": "A\n"}, "a", branch=f"{UNITS}/a")
    with pytest.raises(GitError, match=rf"branch '{UNITS}/gone' does not exist.*must finish"):
        workspace.start_commit(base, [f"{UNITS}/a", f"{UNITS}/gone"], "Start")


def test_start_commit_runs_a_few_git_processes_however_long_the_chain(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A unit at the end of a 300-unit chain has 299 dependency branches, all but the last held
    by the last (the plan says so): git runs three times for it (resolve them all, find the
    tips among the rest, check that the start holds the others), not twice per branch."""
    base = workspace.prepare()
    repo = workspace.clone_dir
    branches, tip = [], base
    for i in range(300):
        tip = commit_on(repo, tip, {f"u{i}.py": f"{i}\n"}, f"u{i}", branch=f"{UNITS}/u{i:03d}")
        branches.append(f"{UNITS}/u{i:03d}")
    log = log_git_calls(monkeypatch, tmp_path)

    start = workspace.start_commit(base, branches, "Start of the last unit", covered=branches[:-1])
    assert start == tip
    assert len(log.read_text().splitlines()) == 3
    # without the plan's word, git finds the same start in as few processes
    assert workspace.start_commit(base, branches, "Start of the last unit") == tip
    assert len(log.read_text().splitlines()) == 5


def test_a_branch_said_to_be_covered_but_not_in_the_start_is_merged_all_the_same(
    workspace: Workspace,
):
    base = workspace.prepare()
    repo = workspace.clone_dir
    commit_on(repo, base, {"a.py": "A\n"}, "a", branch=f"{UNITS}/a")
    commit_on(repo, base, {"b.py": "B\n"}, "b", branch=f"{UNITS}/b")
    branches = [f"{UNITS}/a", f"{UNITS}/b"]

    start = workspace.start_commit(base, branches, "Start", covered=[f"{UNITS}/a"])
    assert {"a.py", "b.py"} <= set(tree_files(repo, start))


def test_worktree_commit_and_changed_files(workspace: Workspace):
    base = workspace.prepare()
    repo = workspace.clone_dir
    commit_on(repo, base, {"a.py": "A = 1\n"}, "unit a", branch=f"{UNITS}/a")
    start = workspace.start_commit(base, [f"{UNITS}/a"], "Start of unit b")
    tree = workspace.create_worktree(f"{UNITS}/b", start)
    assert tree == workspace.root / "worktrees" / "b"
    assert git(tree, "symbolic-ref", "HEAD") == f"refs/heads/{UNITS}/b"
    assert (tree / "a.py").read_text() == "A = 1\n"
    assert (tree / "README.md").read_text() == "# App\n"  # the commit, not the user's edit
    assert not (tree / "notes.txt").exists()

    write_files(tree, {"b.py": "B = 2\n", "debug.log": "noise\n", "app.py": None})
    sha = workspace.commit_all(tree, "Add b\n\n# Heading kept\n\nFlotilla-Unit: b\n")
    assert workspace.branch_sha(f"{UNITS}/b") == sha
    assert parents(repo, sha) == [start]
    assert "# Heading kept" in git(repo, "show", "-s", "--format=%B", sha)
    assert workspace.changed_files(start, sha) == ["app.py", "b.py"]  # *.log is ignored
    assert workspace.commit_all(tree, "nothing to do") == sha  # clean tree: no new commit

    # The agent may commit by itself; commit_all then picks up only what is left.
    write_files(tree, {"c.py": "C\n"})
    git(tree, "add", "c.py")
    git(tree, "commit", "-q", "-m", "agent commit")
    write_files(tree, {"d.py": "D\n"})
    last = workspace.commit_all(tree, "leftovers")
    assert workspace.changed_files(sha, last) == ["c.py", "d.py"]
    assert len(parents(repo, last)) == 1

    workspace.remove_worktree(tree)
    assert not tree.exists()
    assert workspace.branch_sha(f"{UNITS}/b") == last


def test_create_worktree_replaces_a_stale_one(workspace: Workspace):
    base = workspace.prepare()
    first = workspace.create_worktree(f"{UNITS}/a", base)
    write_files(first, {"half-done.py": "x\n"})
    sha = workspace.commit_all(first, "first attempt")
    again = workspace.create_worktree(f"{UNITS}/a", base)  # retry: start over
    assert again == first
    assert not (again / "half-done.py").exists()
    assert workspace.branch_sha(f"{UNITS}/a") == base != sha


def test_identity_can_be_overridden(tmp_path: Path, target: Path):
    ws = Workspace(tmp_path / "work", str(target), "main", identity_env("Robo", "robo@example.com"))
    base = ws.prepare()
    tree = ws.create_worktree(f"{UNITS}/a", base)
    write_files(tree, {"a.py": "A\n"})
    sha = ws.commit_all(tree, "a")
    assert git(tree, "log", "-1", "--format=%an <%ae>|%cn", sha) == "Robo <robo@example.com>|Robo"


def test_push_leaves_the_users_tree_alone(workspace: Workspace, target: Path):
    before = snapshot(target)
    base = workspace.prepare()
    tree = workspace.create_worktree(f"{UNITS}/a", base)
    write_files(tree, {"a.py": "A\n"})
    unit = workspace.commit_all(tree, "a")
    workspace.set_branch(FEATURE, unit)
    workspace.push([FEATURE, f"{UNITS}/a"])
    assert snapshot(target) == before
    assert git(target, "rev-parse", FEATURE) == unit
    assert git(target, "rev-parse", f"{UNITS}/a") == unit

    # Publishing again after a re-run force-updates the flotilla branches.
    redo = workspace.create_worktree(f"{UNITS}/a", base)
    write_files(redo, {"a.py": "A2\n"})
    second = workspace.commit_all(redo, "a again")
    workspace.set_branch(FEATURE, second)
    workspace.push([FEATURE, f"{UNITS}/a"])
    assert git(target, "rev-parse", FEATURE) == second
    assert snapshot(target) == before


def test_base_branch_is_never_written(workspace: Workspace, target: Path):
    base = workspace.prepare()
    with pytest.raises(GitError, match="Refusing to push the base branch 'main'"):
        workspace.push(["main"])
    with pytest.raises(GitError, match="Refusing to move the base branch"):
        workspace.set_branch("main", base)
    with pytest.raises(GitError, match="does not exist"):
        workspace.push(["flotilla/never-made"])


def test_push_to_another_remote(workspace: Workspace, tmp_path: Path):
    base = workspace.prepare()
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    workspace.set_branch(FEATURE, base)
    workspace.push([FEATURE], remote=str(remote))
    assert git(remote, "for-each-ref", "--format=%(refname)") == f"refs/heads/{FEATURE}"


def test_many_threads_share_one_clone(workspace: Workspace):
    base = workspace.prepare()
    units = [f"u{i}" for i in range(8)]

    def run_unit(unit: str) -> tuple[str, str]:
        tree = workspace.create_worktree(f"{UNITS}/{unit}", base)
        write_files(tree, {f"{unit}.py": f"NAME = {unit!r}\n"})
        sha = workspace.commit_all(tree, f"Unit {unit}")
        workspace.remove_worktree(tree)
        return unit, sha

    with ThreadPoolExecutor(max_workers=8) as pool:
        done = dict(pool.map(run_unit, units))
    for unit, sha in done.items():
        assert workspace.branch_sha(f"{UNITS}/{unit}") == sha
        assert workspace.changed_files(base, sha) == [f"{unit}.py"]
    assert git(workspace.clone_dir, "worktree", "list").count("\n") == 0  # only the bare repo
