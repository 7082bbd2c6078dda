"""Integration by git plumbing: merge-tree, commit-tree, update-ref; never a checkout.

Every merge is computed in memory (`git merge-tree --write-tree`) and only becomes a commit once it
is known to be clean, so a conflict leaves no ref behind. The git runner and the in-memory merge
and replay of trees this builds on live in tasks/git.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from flotilla.errors import GitError
from flotilla.results import MergeRecord
from tasks.git import (
    MergeAttempt,
    commit_tree,
    git_out,
    is_ancestor,
    merge_trees,
    replay_tree,
    repo_lock,
    rev,
    run_git,
    tree_of,
)

UNIT_TRAILER = "Flotilla-Unit"

Strategy = Literal["merge", "squash", "sequential_rebase"]


class UnitBranch(BaseModel):
    """A finished unit as integration sees it. `start` (the unit's start commit), when known,
    lets squash and sequential_rebase take only the unit's own change, not its dependencies'."""

    unit_id: str
    branch: str
    title: str
    summary: str = ""
    start: str = ""


class ConflictInfo(BaseModel):
    """A unit that could not be merged: where (`paths`), with whom (`with_units`, the units
    merged before it that changed those paths), and the feature tip it failed to merge onto."""

    unit_id: str
    paths: list[str]
    message: str
    with_units: list[str] = Field(default_factory=list)
    tip: str = ""


class IntegrationResult(BaseModel):
    """The feature tip after integration; `conflict` set means it stopped at that unit."""

    commit: str
    merges: list[MergeRecord] = Field(default_factory=list)
    conflict: ConflictInfo | None = None

    @property
    def ok(self) -> bool:
        return self.conflict is None


class _Conflict(Exception):
    def __init__(self, attempt: MergeAttempt, what: str):
        super().__init__(what)
        self.attempt = attempt
        self.what = what


def integrate(
    repo: Path,
    base: str,
    feature_branch: str,
    units: list[UnitBranch],
    strategy: Strategy,
    env: dict[str, str],
    onto: str | None = None,
) -> IntegrationResult:
    """Build `feature_branch` from `base` (or from `onto`, a tip built earlier) plus every unit,
    in the order given.

    Nothing is written to a ref until every unit merged cleanly; on a conflict the result names
    the unit and paths and `commit` is the tip built so far (an unreferenced commit).
    """
    ref = feature_branch if feature_branch.startswith("refs/") else f"refs/heads/{feature_branch}"
    if feature_branch in (base, f"refs/heads/{base}"):
        raise GitError(
            f"The feature branch {feature_branch!r} is the base branch; Flotilla never writes the "
            "base branch. Choose a different feature branch name."
        )
    if strategy not in ("merge", "squash", "sequential_rebase"):
        raise GitError(
            f"Unknown merge strategy {strategy!r}; use merge, squash or sequential_rebase."
        )
    start = rev(repo, onto or base)
    build = _Builder(repo, env, start)
    step = {"merge": build.merge, "squash": build.squash, "sequential_rebase": build.rebase}
    merges: list[MergeRecord] = []
    for unit, unit_tip in zip(units, _resolve_all(repo, [u.branch for u in units]), strict=True):
        try:
            step[strategy](unit, unit_tip)
        except _Conflict as conflict:
            paths = conflict.attempt.conflicts
            others = touching_units(repo, start, merges, paths)
            so_far = f" ({', '.join(others)})" if others else ""
            message = (
                f"Unit {unit.unit_id!r} ({unit.branch}) conflicts with the feature branch so far"
                f"{so_far} while {conflict.what}, in: {', '.join(paths)}.\n"
                f"{conflict.attempt.message}"
            )
            merges.append(MergeRecord(unit_id=unit.unit_id, commit=build.tip, conflicts=paths))
            info = ConflictInfo(
                unit_id=unit.unit_id, paths=paths, message=message, with_units=others, tip=build.tip
            )
            return IntegrationResult(commit=build.tip, merges=merges, conflict=info)
        merges.append(MergeRecord(unit_id=unit.unit_id, commit=build.tip))
    with repo_lock(repo):
        run_git(repo, "update-ref", "-m", "flotilla: integrate", ref, build.tip)
    return IntegrationResult(commit=build.tip, merges=merges)


def _resolve_all(repo: Path, revisions: list[str]) -> list[str]:
    """Commit shas of many revisions in one git call; a missing one gets `rev`'s clear error."""
    if not revisions:
        return []
    done = run_git(repo, "rev-parse", *[f"{r}^{{commit}}" for r in revisions], ok_codes=(0, 128))
    shas = done.stdout.split()
    if done.returncode != 0 or len(shas) != len(revisions):
        return [rev(repo, r) for r in revisions]
    return shas


def touching_units(
    repo: Path, start: str, merges: list[MergeRecord], paths: list[str]
) -> list[str]:
    """The units whose merge (each record's commit against the one before) changed `paths`."""
    found: list[str] = []
    before = start
    for merged in merges:
        if merged.commit != before and paths:
            specs = [f":(literal){path}" for path in paths]
            names = git_out(repo, "diff", "--name-only", before, merged.commit, "--", *specs)
            if names:
                found.append(merged.unit_id)
        before = merged.commit
    return found


class _Builder:
    """The feature tip under construction. Its tree is tracked, so no step asks git for it."""

    def __init__(self, repo: Path, env: dict[str, str], tip: str):
        self.repo, self.env = repo, env
        self.tip, self.tree = tip, tree_of(repo, tip)
        self.replayed: set[str] = set()  # commits sequential_rebase already applied

    def _commit(self, tree: str, parents: list[str], message: str, env: dict[str, str]) -> None:
        self.tip, self.tree = commit_tree(self.repo, tree, parents, message, env), tree

    def _replay(self, base: str | None, commit: str) -> MergeAttempt:
        return replay_tree(self.repo, self.tip, base, commit, onto_tree=self.tree)

    def merge(self, unit: UnitBranch, unit_tip: str) -> None:
        """A merge commit (parents: tip, unit tip), unless the unit adds nothing new."""
        attempt = merge_trees(self.repo, self.tip, unit_tip)
        if attempt.tree is None:
            raise _Conflict(attempt, "merging")
        if attempt.tree == self.tree and is_ancestor(self.repo, unit_tip, self.tip):
            return
        message = f"Merge unit {unit.unit_id}: {unit.title}\n"
        self._commit(attempt.tree, [self.tip, unit_tip], message, self.env)

    def squash(self, unit: UnitBranch, unit_tip: str) -> None:
        """One commit holding the unit's whole change, parent the current tip."""
        if unit.start:
            attempt = self._replay(unit.start, unit_tip)
        else:
            attempt = merge_trees(self.repo, self.tip, unit_tip)
        if attempt.tree is None:
            raise _Conflict(attempt, "squashing")
        if attempt.tree == self.tree:
            return
        body = f"\n\n{unit.summary.strip()}" if unit.summary.strip() else ""
        message = f"{unit.title}{body}\n\n{UNIT_TRAILER}: {unit.unit_id}\n"
        self._commit(attempt.tree, [self.tip], message, self.env)

    def rebase(self, unit: UnitBranch, unit_tip: str) -> None:
        """Replay the unit's own non-merge commits, oldest first, keeping author and message.

        Commits already replayed for an earlier unit (a dependency's, reachable from this branch)
        and commits whose replay changes nothing are skipped.
        """
        exclude = [f"^{unit.start}"] if unit.start else []
        listed = git_out(
            self.repo, "rev-list", "--reverse", "--no-merges", unit_tip, f"^{self.tip}", *exclude
        )
        for commit in listed.split():
            if commit in self.replayed:
                continue
            parents, author, message = _read_commit(self.repo, commit)
            attempt = self._replay(parents[0] if parents else None, commit)
            if attempt.tree is None:
                raise _Conflict(attempt, f"replaying commit {commit[:12]}")
            self.replayed.add(commit)
            if attempt.tree != self.tree:
                self._commit(attempt.tree, [self.tip], message, {**self.env, **author})


def _read_commit(repo: Path, commit: str) -> tuple[list[str], dict[str, str], str]:
    """Parents, original author (as GIT_AUTHOR_* variables) and message, from one git call.

    The committer stays Flotilla; the author's name, e-mail and date are kept.
    """
    raw = run_git(repo, "cat-file", "commit", commit).stdout
    header, _, message = raw.partition("\n\n")
    parents: list[str] = []
    author: dict[str, str] = {}
    for line in header.splitlines():
        if line.startswith("parent "):
            parents.append(line.split()[1])
        elif line.startswith("author "):
            who, _, when = line[len("author ") :].rpartition("> ")
            name, _, email = who.partition(" <")
            author = {
                "GIT_AUTHOR_NAME": name,
                "GIT_AUTHOR_EMAIL": email,
                "GIT_AUTHOR_DATE": when,
            }
    return parents, author, message or "\n"
