"""Integration by git plumbing: merge-tree, commit-tree, update-ref; never a checkout.

Every merge is computed in memory (`git merge-tree --write-tree`) and only becomes a commit once it
is known to be clean, so a conflict leaves no ref behind. The git on supported machines may lack
`merge-tree --merge-base`, so a cherry-pick is expressed as a merge against a throwaway commit
whose parent is the wanted merge base.

This module also holds the small git runner that `tasks.workspace` builds on.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from flotilla.errors import GitError
from flotilla.results import MergeRecord

DEFAULT_NAME = "Flotilla"
DEFAULT_EMAIL = "flotilla@localhost"
UNIT_TRAILER = "Flotilla-Unit"
# Variables that would point git at another repository than the one we name.
_REPO_VARS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_PREFIX")
# Settings on every call: no signing prompts, no background gc racing parallel worktrees.
_CONFIG = ("-c", "commit.gpgsign=false", "-c", "gc.auto=0", "-c", "maintenance.auto=false")

Strategy = Literal["merge", "squash", "sequential_rebase"]


def identity_env(name: str | None = None, email: str | None = None) -> dict[str, str]:
    """Author and committer for every commit Flotilla makes; works with no git config at all."""
    name = name or DEFAULT_NAME
    email = email or DEFAULT_EMAIL
    return {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }


def git_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The process environment for git: no prompts, the default identity unless `env` names one."""
    full = {k: v for k, v in os.environ.items() if k not in _REPO_VARS}
    full.update(identity_env())
    full.update({"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"})
    full.update(env or {})
    return full


def run_git(
    cwd: Path,
    *args: str,
    env: dict[str, str] | None = None,
    input: str | None = None,
    ok_codes: tuple[int, ...] = (0,),
    hint: str = "",
    timeout_s: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `git <args>` in `cwd`; any exit code outside `ok_codes` becomes a GitError."""
    command = ["git", *_CONFIG, *args]
    shown = "git " + " ".join(args)
    try:
        done = subprocess.run(
            command,
            cwd=cwd,
            env=git_env(env),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except FileNotFoundError as missing:
        raise GitError(
            f"Could not run `{shown}` in {cwd}: {missing}. Install git (2.38 or newer) and make "
            "sure the directory exists."
        ) from missing
    except subprocess.TimeoutExpired as slow:
        raise GitError(
            f"`{shown}` in {cwd} did not finish within {timeout_s:g} s. Check that the "
            "repository is reachable without a password prompt."
        ) from slow
    if done.returncode not in ok_codes:
        said = (done.stderr or done.stdout).strip() or "(git printed nothing)"
        message = f"`{shown}` failed in {cwd} (exit {done.returncode}): {said}"
        raise GitError(f"{message}\n{hint}" if hint else message)
    return done


def git_out(cwd: Path, *args: str, **kwargs) -> str:
    """stdout of a successful git call, without the trailing newline."""
    return run_git(cwd, *args, **kwargs).stdout.strip()


@contextmanager
def repo_lock(repo: Path) -> Iterator[None]:
    """Serialise operations that take repository-wide locks, across threads and processes.

    Each acquisition opens its own descriptor, so `flock` excludes threads of one process too.
    """
    git_dir = repo / ".git" if (repo / ".git").is_dir() else repo
    with open(git_dir / "flotilla.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def rev(repo: Path, revision: str) -> str:
    """The commit sha `revision` names, or a GitError saying it does not exist."""
    return git_out(
        repo,
        "rev-parse",
        "--verify",
        "--end-of-options",
        f"{revision}^{{commit}}",
        hint=f"No commit named {revision!r} exists in {repo}; check the branch or commit name.",
    )


def is_ancestor(repo: Path, older: str, newer: str) -> bool:
    return (
        run_git(repo, "merge-base", "--is-ancestor", older, newer, ok_codes=(0, 1)).returncode == 0
    )


def tree_of(repo: Path, commit: str) -> str:
    return git_out(repo, "rev-parse", "--verify", f"{commit}^{{tree}}")


def commit_tree(
    repo: Path, tree: str, parents: list[str], message: str, env: dict[str, str] | None = None
) -> str:
    """Write a commit object (no ref moves); the message is passed on stdin, verbatim."""
    args = ["commit-tree", tree]
    for parent in parents:
        args += ["-p", parent]
    return git_out(
        repo, *args, env=env, input=message if message.endswith("\n") else message + "\n"
    )


class MergeAttempt(BaseModel):
    """An in-memory merge: the resulting tree when clean, the conflicted paths when not."""

    tree: str | None
    conflicts: list[str] = Field(default_factory=list)
    message: str = ""

    @property
    def clean(self) -> bool:
        return self.tree is not None


def merge_trees(repo: Path, ours: str, theirs: str, allow_unrelated: bool = False) -> MergeAttempt:
    """Three-way merge of two commits at their merge base; writes objects, never refs."""
    args = ["merge-tree", "--write-tree", "--name-only", "-z", "--messages"]
    if allow_unrelated:
        args.append("--allow-unrelated-histories")
    done = run_git(
        repo,
        *args,
        ours,
        theirs,
        ok_codes=(0, 1),
        hint=f"Could not merge {theirs} into {ours}; check that both commits exist in {repo}.",
    )
    head, _, messages = done.stdout.partition("\0\0")
    oid, *paths = [part for part in head.split("\0") if part]
    text = _messages(messages)
    if done.returncode == 0:
        return MergeAttempt(tree=oid, message=text)
    return MergeAttempt(tree=None, conflicts=sorted(set(paths)), message=text)


def _messages(raw: str) -> str:
    """Readable lines from merge-tree's -z messages (<n> NUL <paths> NUL <type> NUL <text> NUL).

    "Auto-merging" notes are dropped; the CONFLICT lines are what a reader needs.
    """
    parts = raw.split("\0")
    lines: list[str] = []
    i = 0
    while i < len(parts) and parts[i].isdigit():
        text_at = i + int(parts[i]) + 2
        if text_at >= len(parts):
            break
        text = parts[text_at].strip()
        if text and not text.startswith("Auto-merging"):
            lines.append(text)
        i = text_at + 1
    return "\n".join(lines)


def replay_tree(
    repo: Path, onto: str, base: str | None, commit: str, onto_tree: str | None = None
) -> MergeAttempt:
    """Apply the change base..commit onto `onto` (cherry-pick semantics); no ref is written.

    A throwaway commit carries onto's tree (`onto_tree` when the caller knows it) with `base` as
    its parent, so the merge base of it and `commit` is `base`. With no base (a root commit) the
    empty tree is the base.
    """
    parents = [base] if base else []
    tree = onto_tree or tree_of(repo, onto)
    temp = commit_tree(repo, tree, parents, "flotilla: temporary replay base")
    return merge_trees(repo, temp, commit, allow_unrelated=base is None)


def cherry_pick_tree(repo: Path, onto: str, commit: str) -> MergeAttempt:
    """Replay one commit's own change (against its first parent) onto `onto`."""
    parents = git_out(repo, "rev-list", "--parents", "-n", "1", commit).split()[1:]
    return replay_tree(repo, onto, parents[0] if parents else None, commit)


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
