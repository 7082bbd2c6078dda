"""Git plumbing: the one place Flotilla runs git, and the small operations built on it.

`run_git` runs every git command of the project with a clean environment (no repository
variables leaking in), no signing prompts and no background gc racing parallel worktrees; it
turns a failure into a GitError that says what to do. On top of it: the identity of Flotilla's
commits, a per-repository lock, and the merge and replay of trees in memory
(`git merge-tree --write-tree`, `git commit-tree`) that workspaces and the merge stage build on.
The git on supported machines may lack `merge-tree --merge-base`, so a cherry-pick is expressed
as a merge against a throwaway commit whose parent is the wanted merge base.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, Field

from flotilla.errors import GitError

DEFAULT_NAME = "Flotilla"
DEFAULT_EMAIL = "flotilla@localhost"
# Variables that would point git at another repository than the one we name.
_REPO_VARS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_PREFIX")
# Settings on every call: no signing prompts, no background gc racing parallel worktrees.
_CONFIG = ("-c", "commit.gpgsign=false", "-c", "gc.auto=0", "-c", "maintenance.auto=false")


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


def commits_of(repo: Path, revisions: list[str]) -> list[str | None]:
    """Each revision's commit sha, or None where it names no commit: one git process for any
    number of them (a unit deep in a long chain has hundreds of dependency branches)."""
    if not revisions:
        return []
    done = run_git(
        repo,
        "cat-file",
        "--batch-check=%(objectname) %(objecttype)",
        input="".join(f"{revision}^{{commit}}\n" for revision in revisions),
    )
    shas: list[str | None] = []
    for line in done.stdout.splitlines():
        sha, _, kind = line.rpartition(" ")
        shas.append(sha if kind == "commit" else None)
    return shas


def independent_commits(repo: Path, commits: list[str]) -> set[str]:
    """The fewest of `commits` that reach all the others (`git merge-base --independent`):
    the only ones a merge of them all needs."""
    return set(git_out(repo, "merge-base", "--independent", *commits).split())


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
