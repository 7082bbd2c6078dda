"""Checks of the target repository before a run starts, so a wrong target costs nothing.

`git ls-remote` answers for a path and a URL alike, without a clone: is it a git repository,
does it have a commit, is the base one of its branches (or tags). Each failure is one sentence
naming the repository or the branch and the fix; nothing is written before or after.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from flotilla.errors import TargetError
from tasks.git import git_env

LS_REMOTE_TIMEOUT_S = 120.0
_SHA = re.compile(r"^[0-9a-f]{7,64}$")


def check_target(repo: str, base: str) -> None:
    """Raise TargetError unless `repo` is a reachable git repository with commits and `base`."""
    local = _is_local(repo)
    if local and not Path(repo).exists():
        raise TargetError(
            f"The target repository {repo} does not exist; pass --repo with a git repository's "
            "path or URL, or fix `repo.url` in the request."
        )
    refs = _ls_remote(repo)
    if not refs:
        how = f" (git -C {repo} commit --allow-empty -m 'Initial commit')" if local else ""
        raise TargetError(
            f"The target repository {repo} has no commits yet; commit to its {base!r} branch "
            f"first{how}."
        )
    if _has_base(repo, base, refs, local):
        return
    branches = sorted(r.removeprefix("refs/heads/") for r in refs if r.startswith("refs/heads/"))
    raise TargetError(
        f"The base branch {base!r} does not exist in the target repository {repo} (its branches: "
        f"{', '.join(branches) or 'none'}); pass --base with one of them or set `repo.base` in "
        "the request."
    )


def _is_local(repo: str) -> bool:
    return "://" not in repo and not re.match(r"^[\w.-]+@[\w.-]+:", repo)


def _ls_remote(repo: str) -> dict[str, str]:
    """ref name -> sha of every ref the repository advertises (empty: no commits)."""
    try:
        done = subprocess.run(
            ["git", "ls-remote", "--", repo],
            cwd="/",  # never the repository the user stands in
            env=git_env(),
            capture_output=True,
            text=True,
            timeout=LS_REMOTE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise TargetError(
            f"The target repository {repo} did not answer within {LS_REMOTE_TIMEOUT_S:.0f} s "
            "(git ls-remote); check the URL and the network."
        ) from None
    if done.returncode != 0:
        said = _first_fatal(done.stderr)
        what = "is not a git repository" if _is_local(repo) else "cannot be read"
        raise TargetError(
            f"The target repository {repo} {what} (git ls-remote: {said}); pass --repo with a "
            "git repository's path or URL (one that reads without a password prompt), or fix "
            "`repo.url` in the request."
        )
    refs: dict[str, str] = {}
    for line in done.stdout.splitlines():
        sha, _, name = line.partition("\t")
        if name:
            refs[name] = sha
    return refs


def _has_base(repo: str, base: str, refs: dict[str, str], local: bool) -> bool:
    candidates = {base, f"refs/heads/{base}", f"refs/tags/{base}"}
    if candidates & refs.keys():
        return True
    if not _SHA.match(base):
        return False
    if any(sha.startswith(base) for sha in refs.values()):
        return True
    if not local:
        return True  # a commit of a remote can only be checked by fetching it: the clone will
    done = subprocess.run(
        ["git", "-C", repo, "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}"],
        env=git_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode == 0


def _first_fatal(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    fatal = [line for line in lines if line.startswith("fatal:")]
    return (fatal or lines or ["no output"])[0]
