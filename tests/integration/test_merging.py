"""Integration by plumbing against real repositories: history shapes, trees, conflicts."""

from __future__ import annotations

from pathlib import Path

import pytest

from flotilla.errors import GitError
from tasks.git import cherry_pick_tree, identity_env, merge_trees
from tasks.merging import UnitBranch, integrate, touching_units
from tests.integration.gitrepos import (
    commit_on,
    git,
    isolate_git,
    log_shas,
    message,
    parents,
    tree_files,
)

FEATURE = "flotilla/greet"
UNITS = "flotilla-units/greet"
APP = "line 1\nline 2\nline 3\nline 4\nline 5\n"
ALICE = {
    "GIT_AUTHOR_NAME": "Alice",
    "GIT_AUTHOR_EMAIL": "alice@example.com",
    "GIT_AUTHOR_DATE": "1600000000 +0200",
}


@pytest.fixture(autouse=True)
def no_git_identity(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    isolate_git(monkeypatch, tmp_path_factory.mktemp("home"))


class Repo:
    """A bare repository with `main` and three unit branches: a (two commits, by Alice),
    b (one commit), and c, which depends on a and b and starts from their merge."""

    def __init__(self, path: Path):
        self.path = path
        git(path.parent, "init", "-q", "--bare", "-b", "main", str(path))
        self.base = commit_on(path, None, {"app.py": APP, "README.md": "# App\n"}, "Base", "main")
        a1 = commit_on(path, self.base, {"a.py": "A = 1\n"}, "Add a.py", env=ALICE)
        self.a = commit_on(path, a1, {"a.py": "A = 2\n"}, "Tune a.py", f"{UNITS}/a", env=ALICE)
        self.b = commit_on(path, self.base, {"b.py": "B = 1\n"}, "Add b.py", f"{UNITS}/b")
        self.c_start = commit_on(
            path, self.a, {"b.py": "B = 1\n"}, "Start of unit c", extra_parents=(self.b,)
        )
        self.c = commit_on(
            path,
            self.c_start,
            {"c.py": "from a import A\nfrom b import B\n"},
            "Add c.py",
            f"{UNITS}/c",
        )

    def units(self, *ids: str, with_start: bool = False) -> list[UnitBranch]:
        starts = {"a": self.base, "b": self.base, "c": self.c_start}
        return [
            UnitBranch(
                unit_id=u,
                branch=f"{UNITS}/{u}",
                title=f"Unit {u.upper()}",
                summary=f"Adds {u}.py.",
                start=starts[u] if with_start else "",
            )
            for u in ids
        ]

    def feature(self) -> str | None:
        done = git(self.path, "for-each-ref", "--format=%(objectname)", f"refs/heads/{FEATURE}")
        return done or None


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "repo.git")


EXPECTED = {
    "app.py": APP,
    "README.md": "# App\n",
    "a.py": "A = 2\n",
    "b.py": "B = 1\n",
    "c.py": "from a import A\nfrom b import B\n",
}


def test_merge_strategy_makes_one_merge_commit_per_unit(repo: Repo):
    result = integrate(repo.path, "main", FEATURE, repo.units("a", "b", "c"), "merge", {})
    assert result.ok and result.conflict is None
    assert repo.feature() == result.commit
    assert tree_files(repo.path, result.commit) == EXPECTED
    spine = log_shas(repo.path, result.commit, first_parent=True)
    assert len(spine) == 4 and spine[-1] == repo.base
    assert [m.commit for m in result.merges] == list(reversed(spine[:-1]))
    assert [parents(repo.path, m.commit)[1] for m in result.merges] == [repo.a, repo.b, repo.c]
    assert message(repo.path, result.commit) == "Merge unit c: Unit C"
    assert git(repo.path, "rev-parse", "main") == repo.base


def test_merge_strategy_skips_a_unit_already_contained(repo: Repo):
    units = [*repo.units("a", "b"), UnitBranch(unit_id="a2", branch=f"{UNITS}/a", title="Again")]
    result = integrate(repo.path, "main", FEATURE, units, "merge", {})
    assert result.merges[-1].commit == result.merges[-2].commit


def test_squash_makes_one_commit_per_unit_with_a_trailer(repo: Repo):
    result = integrate(
        repo.path, "main", FEATURE, repo.units("a", "b", "c", with_start=True), "squash", {}
    )
    assert tree_files(repo.path, result.commit) == EXPECTED
    history = log_shas(repo.path, result.commit)
    assert len(history) == 4 and history[-1] == repo.base
    assert all(len(parents(repo.path, sha)) == 1 for sha in history[:-1])
    assert message(repo.path, history[0]) == ("Unit C\n\nAdds c.py.\n\nFlotilla-Unit: c")
    trailers = git(
        repo.path, "log", "-1", "--format=%(trailers:key=Flotilla-Unit,valueonly)", history[1]
    )
    assert trailers == "b"
    # With its start commit known, c's squash holds only its own change.
    assert git(repo.path, "diff", "--name-only", history[1], history[0]) == "c.py"


def test_squash_without_start_still_merges_cleanly(repo: Repo):
    result = integrate(repo.path, "main", FEATURE, repo.units("a", "b", "c"), "squash", {})
    assert result.ok
    assert tree_files(repo.path, result.commit) == EXPECTED
    assert len(log_shas(repo.path, result.commit)) == 4


@pytest.mark.parametrize("with_start", [True, False])
def test_sequential_rebase_replays_each_commit_linearly(repo: Repo, with_start: bool):
    units = repo.units("a", "b", "c", with_start=with_start)
    result = integrate(repo.path, "main", FEATURE, units, "sequential_rebase", {})
    assert tree_files(repo.path, result.commit) == EXPECTED
    history = log_shas(repo.path, result.commit)
    # a's two commits, b's one, c's one; c's start merge and its copies of a and b are skipped.
    assert len(history) == 5 and history[-1] == repo.base
    assert all(len(parents(repo.path, sha)) == 1 for sha in history[:-1])
    subjects = git(repo.path, "log", "--format=%s|%an|%cn", f"{repo.base}..{result.commit}")
    assert subjects.splitlines() == [
        "Add c.py|Test Author|Flotilla",
        "Add b.py|Test Author|Flotilla",
        "Tune a.py|Alice|Flotilla",
        "Add a.py|Alice|Flotilla",
    ]
    assert [m.unit_id for m in result.merges] == ["a", "b", "c"]
    assert result.merges[0].commit == history[2]
    # The author's date travels with the author; the message is kept verbatim.
    shown = git(repo.path, "show", "-s", "--format=%ad|%B", "--date=raw", history[3])
    assert shown == "1600000000 +0200|Add a.py"


def test_sequential_rebase_skips_a_change_already_present(repo: Repo):
    commit_on(repo.path, repo.base, {"a.py": "A = 2\n"}, "Same as a", f"{UNITS}/same")
    units = [*repo.units("a"), UnitBranch(unit_id="same", branch=f"{UNITS}/same", title="Same")]
    result = integrate(repo.path, "main", FEATURE, units, "sequential_rebase", {})
    assert len(log_shas(repo.path, result.commit)) == 3
    assert result.merges[1].commit == result.merges[0].commit


@pytest.mark.parametrize("strategy", ["merge", "squash", "sequential_rebase"])
def test_conflict_is_found_before_any_ref_is_written(repo: Repo, strategy):
    commit_on(repo.path, repo.base, {"a.py": "A = 99\n", "app.py": "x\n"}, "Clash", f"{UNITS}/x")
    units = [*repo.units("a", "b"), UnitBranch(unit_id="x", branch=f"{UNITS}/x", title="X")]
    result = integrate(repo.path, "main", FEATURE, units, strategy, identity_env())
    assert not result.ok
    assert result.conflict is not None
    assert result.conflict.unit_id == "x"
    assert result.conflict.paths == ["a.py"]
    assert "CONFLICT" in result.conflict.message and "a.py" in result.conflict.message
    assert repo.feature() is None
    assert result.commit == result.merges[1].commit  # the tip after a and b, unreferenced
    assert tree_files(repo.path, result.commit)["b.py"] == "B = 1\n"
    assert result.merges[-1].conflicts == ["a.py"]
    assert git(repo.path, "rev-parse", "main") == repo.base


def test_a_conflict_leaves_an_earlier_feature_branch_alone(repo: Repo):
    first = integrate(repo.path, "main", FEATURE, repo.units("a"), "merge", {})
    commit_on(repo.path, repo.base, {"a.py": "A = 99\n"}, "Clash", f"{UNITS}/x")
    units = [*repo.units("b"), UnitBranch(unit_id="x", branch=f"{UNITS}/x", title="X")]
    again = integrate(repo.path, "main", FEATURE, [*repo.units("a"), *units], "merge", {})
    assert again.conflict is not None
    assert repo.feature() == first.commit


def test_identity_comes_from_env(repo: Repo):
    env = identity_env("Robo", "robo@example.com")
    result = integrate(repo.path, "main", FEATURE, repo.units("a"), "merge", env)
    assert git(repo.path, "log", "-1", "--format=%an <%ae>|%cn", result.commit) == (
        "Robo <robo@example.com>|Robo"
    )


def test_the_base_branch_is_refused_as_feature_branch(repo: Repo):
    with pytest.raises(GitError, match="never writes the base branch"):
        integrate(repo.path, "main", "main", repo.units("a"), "merge", {})


def test_unknown_branch_is_a_clear_error(repo: Repo):
    units = [UnitBranch(unit_id="z", branch=f"{UNITS}/z", title="Z")]
    with pytest.raises(GitError, match="No commit named 'flotilla-units/greet/z'"):
        integrate(repo.path, "main", FEATURE, units, "merge", {})


def test_merge_trees_reports_clean_and_conflicted(repo: Repo):
    clean = merge_trees(repo.path, repo.a, repo.b)
    assert clean.clean and clean.conflicts == []
    assert set(tree_files(repo.path, clean.tree)) == {"app.py", "README.md", "a.py", "b.py"}
    weird = "dir with space/ü.py"
    left = commit_on(repo.path, repo.base, {weird: "1\n", "app.py": "L\n"}, "left")
    right = commit_on(repo.path, repo.base, {weird: "2\n", "app.py": "R\n"}, "right")
    clash = merge_trees(repo.path, left, right)
    assert not clash.clean and clash.tree is None
    assert clash.conflicts == ["app.py", weird]
    assert "Merge conflict in app.py" in clash.message
    assert "Auto-merging" not in clash.message


def test_cherry_pick_tree_takes_only_that_commits_change(repo: Repo):
    edited = APP.replace("line 5", "line five")
    first = commit_on(repo.path, repo.base, {"extra.py": "E\n"}, "unrelated first commit")
    second = commit_on(repo.path, first, {"app.py": edited}, "edit line 5")
    onto = commit_on(repo.path, repo.base, {"app.py": APP.replace("line 1", "line one")}, "onto")
    picked = cherry_pick_tree(repo.path, onto, second)
    files = tree_files(repo.path, picked.tree)
    assert "extra.py" not in files
    assert files["app.py"] == APP.replace("line 1", "line one").replace("line 5", "line five")

    root = cherry_pick_tree(repo.path, repo.a, repo.base)  # a root commit replays onto anything
    assert root.clean


def test_unknown_strategy_is_refused(repo: Repo):
    with pytest.raises(GitError, match="Unknown merge strategy 'octopus'"):
        integrate(repo.path, "main", FEATURE, [], "octopus", {})  # type: ignore[arg-type]


def test_a_conflict_names_the_units_that_touched_its_paths(repo: Repo):
    commit_on(repo.path, repo.base, {"a.py": "A = 99\n"}, "Clash", f"{UNITS}/x")
    units = [*repo.units("a", "b"), UnitBranch(unit_id="x", branch=f"{UNITS}/x", title="X")]
    result = integrate(repo.path, "main", FEATURE, units, "merge", {})
    assert result.conflict is not None
    assert result.conflict.with_units == ["a"]  # b never touched a.py
    assert result.conflict.tip == result.merges[1].commit
    assert "conflicts with the feature branch so far (a)" in result.conflict.message
    assert touching_units(repo.path, repo.base, result.merges[:2], ["b.py", "nope"]) == ["b"]


@pytest.mark.parametrize("strategy", ["merge", "squash", "sequential_rebase"])
def test_integration_continues_from_a_tip_built_earlier(repo: Repo, strategy):
    """What the merge stage does after re-doing a unit: merge the rest onto the tip so far."""
    first = integrate(repo.path, "main", FEATURE, repo.units("a", with_start=True), strategy, {})
    rest = repo.units("b", "c", with_start=True)
    again = integrate(repo.path, "main", FEATURE, rest, strategy, {}, onto=first.commit)
    assert again.ok and repo.feature() == again.commit
    assert tree_files(repo.path, again.commit) == EXPECTED
    assert first.commit in log_shas(repo.path, again.commit, first_parent=True)
    assert [m.unit_id for m in again.merges] == ["b", "c"]
    assert git(repo.path, "rev-parse", "main") == repo.base
