"""The run's own clone of the target, one worktree per unit, and the branches between them.

Flotilla never touches the user's working tree: it clones the target (a path or URL) into the
run's work directory as a bare repository and gives each unit a worktree of that clone. Commits
carry their identity in the environment, so a machine without any git config works. Operations
that take git's repository-wide locks (fetch, worktree add/remove, moving shared refs) hold a lock
per clone, so many threads or processes can drive one clone at once.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import cast

from flotilla.errors import GitError
from tasks.git import (
    commit_tree,
    commits_of,
    git_out,
    identity_env,
    independent_commits,
    is_ancestor,
    merge_trees,
    repo_lock,
    run_git,
)

__all__ = ["Workspace", "identity_env"]

NETWORK_TIMEOUT_S = 900.0
FORCED_PREFIXES = ("flotilla/", "flotilla-")


class Workspace:
    """One feature run's git workspace under `root`: `repo.git` and `worktrees/<unit>`."""

    def __init__(self, root: Path, target: str, base: str, identity: dict[str, str] | None = None):
        self.root = Path(root)
        self.target = str(target)
        self.base = base
        self.env = identity or identity_env()
        self.clone_dir = self.root / "repo.git"
        self.worktrees_dir = self.root / "worktrees"

    # -- clone -----------------------------------------------------------------------------

    def prepare(self) -> str:
        """Clone the target (or fetch its base branch again) and return the base commit sha."""
        if not (self.clone_dir / "HEAD").is_file():
            self._clone()
        else:
            with repo_lock(self.clone_dir):
                run_git(self.clone_dir, "remote", "set-url", "origin", self.target)
                if self._target_has_branch(self.base):
                    spec = f"+refs/heads/{self.base}:refs/heads/{self.base}"
                    self._git("fetch", "--no-tags", "origin", spec, timeout_s=NETWORK_TIMEOUT_S)
        return self._base_commit()

    def _clone(self) -> None:
        """Clone into a temporary directory and rename it, so a half-made clone is never used."""
        self.root.mkdir(parents=True, exist_ok=True)
        temp = self.root / f"repo.git.tmp-{os.getpid()}"
        shutil.rmtree(temp, ignore_errors=True)
        run_git(
            self.root,
            "clone",
            "--bare",
            "--quiet",
            "--",
            self.target,
            str(temp),
            timeout_s=NETWORK_TIMEOUT_S,
            hint=f"Could not clone the target repository {self.target!r}. Check that the path or "
            "URL is right and readable without a password prompt.",
        )
        for key, value in (("gc.auto", "0"), ("maintenance.auto", "false")):
            run_git(temp, "config", key, value)
        try:
            temp.rename(self.clone_dir)
        except OSError:
            if not (self.clone_dir / "HEAD").is_file():
                raise
            shutil.rmtree(temp, ignore_errors=True)  # another process cloned first

    def _target_has_branch(self, branch: str) -> bool:
        found = git_out(
            self.clone_dir,
            "ls-remote",
            "--heads",
            "origin",
            f"refs/heads/{branch}",
            timeout_s=NETWORK_TIMEOUT_S,
            hint=f"Could not reach the target repository {self.target!r}.",
        )
        return bool(found)

    def _base_commit(self) -> str:
        for candidate in (f"refs/heads/{self.base}", self.base):
            sha = self._resolve(candidate)
            if sha:
                return sha
        branches = git_out(
            self.clone_dir, "for-each-ref", "--format=%(refname:short)", "refs/heads"
        )
        listed = ", ".join(branches.split()) or "none"
        raise GitError(
            f"The base {self.base!r} does not exist in the target repository {self.target!r} "
            f"(its branches: {listed}). Pass an existing branch as the base."
        )

    def base_branch(self) -> str | None:
        """The branch name of the base, if it is a branch (resolving HEAD to its branch)."""
        if self.base == "HEAD":
            done = run_git(self.clone_dir, "symbolic-ref", "--quiet", "HEAD", ok_codes=(0, 1))
            return done.stdout.strip().removeprefix("refs/heads/") or None
        return self.base.removeprefix("refs/heads/")

    def fetch(self, branches: list[str]) -> None:
        """Force-fetch `branches` from the target (e.g. unit branches pushed by other machines)."""
        if not branches:
            return
        self._refuse_base(branches, "fetch into")
        specs = [f"+refs/heads/{b}:refs/heads/{b}" for b in branches]
        with repo_lock(self.clone_dir):
            self._git("fetch", "--no-tags", "origin", *specs, timeout_s=NETWORK_TIMEOUT_S)

    # -- branches and commits --------------------------------------------------------------

    def branch_sha(self, branch: str) -> str | None:
        return self._resolve(f"refs/heads/{branch.removeprefix('refs/heads/')}")

    def branch_shas(self, branches: list[str]) -> dict[str, str | None]:
        """Each branch's commit (None where it does not exist), from one git process."""
        refs = [f"refs/heads/{b.removeprefix('refs/heads/')}" for b in branches]
        return dict(zip(branches, commits_of(self.clone_dir, refs), strict=True))

    def branches_not_at(self, expected: dict[str, str]) -> list[str]:
        """The branches (of `expected`: branch -> sha) missing or elsewhere, from one process."""
        found = self.branch_shas(list(expected))
        return [b for b, sha in expected.items() if found[b] != sha]

    def _resolve(self, revision: str) -> str | None:
        done = run_git(
            self.clone_dir,
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            f"{revision}^{{commit}}",
            ok_codes=(0, 1, 128),
        )
        sha = done.stdout.strip()
        return sha if done.returncode == 0 and sha else None

    def start_commit(
        self,
        base_commit: str,
        dep_branches: list[str],
        message: str,
        covered: Collection[str] = (),
    ) -> str:
        """The base plus every dependency branch, merged in the given (topological) order.

        A dependency another one already contains (its own dependencies, usually) adds nothing,
        so only the independent tips are merged: a unit costs the same few git processes
        however many units it builds on. `covered` names the branches the plan says another
        dependency holds already; they are left out of the search for tips, then checked to be
        in the start (one `git rev-list`), and taken in after all if one is not.
        """
        if not dep_branches:
            return base_commit
        found = self.branch_shas(dep_branches)
        for branch, sha in found.items():
            if sha is None:
                raise GitError(
                    f"The dependency branch {branch!r} does not exist in {self.clone_dir}. The "
                    "unit that produces it must finish before this unit can start."
                )
        shas = cast(dict[str, str], found)
        covered = set(covered)
        start = self._merge_tips(base_commit, dep_branches, shas, message, covered)
        held = [shas[b] for b in dep_branches if b in covered]
        if held and git_out(self.clone_dir, "rev-list", "--max-count=1", *held, "--not", start):
            return self._merge_tips(base_commit, dep_branches, shas, message, set())
        return start

    def _merge_tips(
        self,
        base_commit: str,
        dep_branches: list[str],
        shas: dict[str, str],
        message: str,
        skip: set[str],
    ) -> str:
        candidates = [b for b in dep_branches if b not in skip]
        tips = independent_commits(self.clone_dir, [base_commit, *(shas[b] for b in candidates)])
        merge: dict[str, str] = {}  # tip -> the first branch at it, in the given order
        for branch in candidates:
            if shas[branch] in tips and shas[branch] != base_commit:
                merge.setdefault(shas[branch], branch)
        base_in_a_tip = base_commit not in tips
        current = base_commit
        for sha, branch in merge.items():
            if (
                current == base_commit
                and base_in_a_tip
                and (len(merge) == 1 or is_ancestor(self.clone_dir, base_commit, sha))
            ):
                current = sha  # a fast-forward: this tip has the base
                continue
            attempt = merge_trees(self.clone_dir, current, sha)
            if attempt.tree is None:
                earlier = ", ".join(dep_branches[: dep_branches.index(branch)]) or "the base"
                raise GitError(
                    f"The dependency branch {branch!r} conflicts with {earlier} in: "
                    f"{', '.join(attempt.conflicts)}.\n{attempt.message}\nDeclare an order "
                    "between these units (depends_on) so that one builds on the other."
                )
            body = f"{message.rstrip()}\n\nMerged dependency {branch}.\n"
            current = commit_tree(self.clone_dir, attempt.tree, [current, sha], body, self.env)
        return current

    def set_branch(self, branch: str, sha: str) -> None:
        """Point a branch of the clone at `sha` (never the base branch)."""
        branch = branch.removeprefix("refs/heads/")
        self._refuse_base([branch], "move")
        with repo_lock(self.clone_dir):
            self._git("update-ref", f"refs/heads/{branch}", sha)

    def changed_files(self, since: str, until: str) -> list[str]:
        """Paths that differ between two commits (a rename counts as both paths)."""
        if since == until:
            return []
        out = self._git("diff", "--name-only", "--no-renames", "-z", since, until).stdout
        return sorted(p for p in out.split("\0") if p)

    def diff(self, since: str, until: str) -> tuple[str, str]:
        """What changed between two commits, for a reader: `git diff --stat` and the patch."""
        if since == until:
            return "", ""
        both = self._git("diff", "--no-color", "--stat", "--patch", since, until).stdout
        at = both.find("\ndiff --git ")
        return (both, "") if at < 0 else (both[: at + 1], both[at + 1 :])

    # -- worktrees -------------------------------------------------------------------------

    def create_worktree(self, unit_branch: str, start: str) -> Path:
        """A fresh worktree on `unit_branch`, reset to `start`; a stale one is removed first."""
        unit_branch = unit_branch.removeprefix("refs/heads/")
        self._refuse_base([unit_branch], "check out")
        path = self.worktrees_dir / unit_branch.rsplit("/", 1)[-1]
        self.worktrees_dir.mkdir(parents=True, exist_ok=True)
        add = ("worktree", "add", "--quiet", "-B", unit_branch, str(path), start)
        with repo_lock(self.clone_dir):
            if path.exists():
                self._remove_locked(path)
            elif self._git(*add, ok_codes=(0, 128)).returncode == 0:
                return path
            else:  # a worktree deleted by hand is still registered: forget it, then try again
                self._git("worktree", "prune")
            self._git(
                *add,
                hint=f"Could not create a worktree for {unit_branch!r} at {path}. If another "
                "worktree has that branch checked out, remove it first.",
            )
        return path

    def scratch_worktree(self, name: str, commit: str) -> Path:
        """A detached worktree at `commit` (no branch), for test gates and bisection."""
        path = self.worktrees_dir / f"scratch-{name}"
        self.worktrees_dir.mkdir(parents=True, exist_ok=True)
        with repo_lock(self.clone_dir):
            self._remove_locked(path)
            self._git("worktree", "add", "--quiet", "--detach", str(path), commit)
        return path

    def remove_worktree(self, path: Path) -> None:
        """Remove a unit's worktree; its branch (and so its commits) stays."""
        with repo_lock(self.clone_dir):
            self._remove_locked(Path(path))

    def _remove_locked(self, path: Path) -> None:
        if path.exists():
            done = run_git(
                self.clone_dir,
                "worktree",
                "remove",
                "--force",
                "--force",
                str(path),
                ok_codes=(0, 128),
            )
            if done.returncode == 0:
                return
            shutil.rmtree(path, ignore_errors=True)
        self._git("worktree", "prune")

    def commit_all(self, worktree: Path, message: str) -> str:
        """Stage everything not ignored and commit it if anything changed; return HEAD.

        The agent may have committed on its own; then there may be nothing left to commit.
        """
        run_git(worktree, "add", "--all", env=self.env)
        head, staged = _head_and_staged(worktree)
        if staged:
            run_git(
                worktree,
                "commit",
                "--quiet",
                "--no-verify",
                "--cleanup=whitespace",
                "--file=-",
                env=self.env,
                input=message,
                hint=f"Could not commit the changes in {worktree}.",
            )
            head = git_out(worktree, "rev-parse", "HEAD")
        return head

    # -- publishing ------------------------------------------------------------------------

    def push(self, branches: list[str], remote: str | None = None) -> None:
        """Push branches to the target (or `remote`) at once; flotilla/* and flotilla-*/ are
        force-updated. Used for a unit's own branch (the `unit` flow); a run's publishing goes
        through `tasks.pushing`, which never drops a commit it did not make.

        The base branch is refused, so the user's history is never rewritten.
        """
        if not branches:
            return
        names = [b.removeprefix("refs/heads/") for b in branches]
        self._refuse_base(names, "push")
        specs = []
        for name in names:
            if self.branch_sha(name) is None:
                raise GitError(
                    f"Cannot push {name!r}: the branch does not exist in {self.clone_dir}. "
                    "Integrate the feature before publishing it."
                )
            force = "+" if name.startswith(FORCED_PREFIXES) else ""
            specs.append(f"{force}refs/heads/{name}:refs/heads/{name}")
        destination = remote or self.target
        self._git(
            "push",
            "--quiet",
            "--atomic",
            "--no-verify",
            destination,
            *specs,
            timeout_s=NETWORK_TIMEOUT_S,
            hint=f"Could not push to {destination!r}. Check that it is writable and that "
            "none of these branches is checked out there.",
        )

    # -- helpers ---------------------------------------------------------------------------

    def _refuse_base(self, branches: list[str], action: str) -> None:
        base = self.base_branch() if (self.clone_dir / "HEAD").is_file() else self.base
        for branch in branches:
            if base and branch.removeprefix("refs/heads/") == base:
                raise GitError(
                    f"Refusing to {action} the base branch {base!r}: Flotilla never writes the "
                    "base branch. Use a flotilla/<feature> branch instead."
                )

    def _git(self, *args: str, **kwargs):
        kwargs.setdefault("env", self.env)
        return run_git(self.clone_dir, *args, **kwargs)


def _head_and_staged(worktree: Path) -> tuple[str, bool]:
    """HEAD's commit and whether the index differs from it, from one `git status`."""
    out = run_git(
        worktree, "status", "--porcelain=v2", "--branch", "-z", "--untracked-files=no"
    ).stdout
    head, staged = "", False
    entries = iter(out.split("\0"))
    for entry in entries:
        if entry.startswith("# branch.oid "):
            head = entry.removeprefix("# branch.oid ")
        elif entry[:2] in ("1 ", "2 ", "u "):
            staged = staged or entry[0] == "u" or entry[2] != "."  # X: the index against HEAD
            if entry[0] == "2":
                next(entries, None)  # a rename's original path is the next field
    if not head or head == "(initial)":
        raise GitError(f"{worktree} has no commit checked out; recreate the unit's worktree.")
    return head, staged
