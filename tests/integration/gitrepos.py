"""Small real git repositories for tests, built without touching any working tree but their own.

Commits here use a fixed test identity passed in the environment, so the helpers work in the
identity-less environment that `isolate_git` sets up (which is what Flotilla itself must survive).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

TEST_IDENTITY = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.com",
}
_IDENTITY_VARS = (*TEST_IDENTITY, "EMAIL", "GIT_AUTHOR_DATE", "GIT_COMMITTER_DATE")


def log_git_calls(monkeypatch: pytest.MonkeyPatch, where: Path) -> Path:
    """Put a `git` first on PATH that appends its arguments to a log, then runs the real git:
    every git process started from now on is one line of the returned file."""
    log, bin_dir = where / "git-calls.log", where / "counting-bin"
    bin_dir.mkdir(parents=True)
    wrapper = bin_dir / "git"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {shutil.which("git")} "$@"\n')
    wrapper.chmod(0o755)
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def isolate_git(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """Point HOME and git's global config at an empty place: no identity exists at all.

    `user.useConfigOnly` stops git from guessing one from the host name, so any commit made
    without an explicit identity fails, as it would on a fresh CI machine.
    """
    home.mkdir(parents=True, exist_ok=True)
    config = home / ".gitconfig"
    config.write_text("[user]\n\tuseConfigOnly = true\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in _IDENTITY_VARS:
        monkeypatch.delenv(name, raising=False)


def git(repo: Path, *args: str, input: str | None = None, env: dict[str, str] | None = None) -> str:
    """Run git in `repo` with the test identity; fail the test with git's words on error."""
    full_env = {**os.environ, **TEST_IDENTITY, **(env or {})}
    done = subprocess.run(
        ["git", *args], cwd=repo, env=full_env, input=input, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed in {repo}: {done.stderr}")
    return done.stdout.strip()


def make_repo(path: Path, files: dict[str, str], branch: str = "main") -> str:
    """A non-bare repository with one commit holding `files`, no remote; returns the commit."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "--quiet", "-b", branch)
    write_files(path, files)
    git(path, "add", "--all")
    git(path, "commit", "--quiet", "-m", "Initial commit")
    return git(path, "rev-parse", "HEAD")


def write_files(root: Path, files: dict[str, str | None]) -> None:
    """Write (or, for None, delete) files under `root`."""
    for name, content in files.items():
        target = root / name
        if content is None:
            target.unlink(missing_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)


def commit_on(
    repo: Path,
    parent: str | None,
    files: dict[str, str | None],
    message: str,
    branch: str | None = None,
    extra_parents: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> str:
    """A commit on top of `parent` changing `files`, built with a private index (no checkout).

    With `branch`, refs/heads/<branch> is moved to it. Works in bare and non-bare repos.
    """
    index = repo / f"tmp-index-{os.getpid()}-{hashlib.sha1(message.encode()).hexdigest()[:8]}"
    index_env = {**(env or {}), "GIT_INDEX_FILE": str(index)}
    try:
        if parent:
            git(repo, "read-tree", parent, env=index_env)
        else:
            git(repo, "read-tree", "--empty", env=index_env)
        for name, content in files.items():
            if content is None:
                git(repo, "update-index", "--force-remove", "--", name, env=index_env)
                continue
            blob = git(repo, "hash-object", "-w", "--stdin", input=content)
            git(
                repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},{name}", env=index_env
            )
        tree = git(repo, "write-tree", env=index_env)
    finally:
        index.unlink(missing_ok=True)
    parents = [p for p in (parent, *extra_parents) if p]
    args = ["commit-tree", tree]
    for p in parents:
        args += ["-p", p]
    sha = git(repo, *args, input=message + "\n", env=env)
    if branch:
        git(repo, "update-ref", f"refs/heads/{branch}", sha)
    return sha


def tree_files(repo: Path, revision: str) -> dict[str, str]:
    """Every file of a commit with its content."""
    names = git(repo, "ls-tree", "-r", "--name-only", "-z", revision).split("\0")
    return {n: git_raw(repo, "show", f"{revision}:{n}") for n in names if n}


def git_raw(repo: Path, *args: str) -> str:
    """Like `git` but keeps the output exactly (trailing newlines included)."""
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout


def parents(repo: Path, commit: str) -> list[str]:
    return git(repo, "rev-list", "--parents", "-n", "1", commit).split()[1:]


def log_shas(repo: Path, revision: str, first_parent: bool = False) -> list[str]:
    """Commits reachable from `revision`, newest first."""
    args = ["rev-list", revision] + (["--first-parent"] if first_parent else [])
    return git(repo, *args).split()


def message(repo: Path, commit: str) -> str:
    return git(repo, "show", "-s", "--format=%B", commit)


def snapshot(repo: Path) -> dict[str, str]:
    """What a user would notice changing in a non-bare repo: status, HEAD, index, branches."""
    index = repo / ".git" / "index"
    return {
        "status": git_raw(repo, "status", "--porcelain", "--untracked-files=all"),
        "head": git(repo, "rev-parse", "HEAD"),
        "head_ref": git(repo, "symbolic-ref", "HEAD"),
        "index": hashlib.sha256(index.read_bytes()).hexdigest(),
        "main": git(repo, "rev-parse", "refs/heads/main"),
    }
