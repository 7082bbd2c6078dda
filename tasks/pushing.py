"""Publishing a run's branches without discarding anyone's commits, all or nothing.

Before it moves a branch in the target, a run looks at what is there. A branch that is absent,
already at the run's commit, behind it, or at a commit this run key pushed before (a re-run, a
retry) may move. Anything else holds a commit this run did not make (a reviewer's fix, another
run's result): the run refuses, naming the branch and the commit, unless it was started with
`--force`, and then it first keeps the old tip at `refs/flotilla/backup/<feature>/<time>`.

Every branch of a run moves in one `git push --atomic`, each guarded by `--force-with-lease`
at the tip that was checked, so either all branches move or none, and a commit pushed between
the check and the push is never lost either.
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel

from flotilla.errors import ForeignCommits, GitError
from flotilla.results import utcnow
from tasks.git import git_out, is_ancestor, repo_lock, run_git, tree_of
from tasks.store import RunStore
from tasks.workspace import NETWORK_TIMEOUT_S, Workspace

PUSH_REFUSED = "Flotilla does not overwrite it"  # in the run's error when a push was refused
PUSH_FAILED = "no branch moved"  # in the run's error when the target refused the atomic push
_SEEN = "refs/flotilla/seen"  # the target's tips, fetched into the run's clone to compare


class PushLedger(BaseModel):
    """`runs/<key>/publish/pushed.json`: every tip this run key pushed (or set out to), by branch.

    A tip is recorded before the push, so a crash between the two never makes the run's own
    commit look foreign to its resume."""

    tips: dict[str, list[str]] = {}


class OverwritePolicy(BaseModel):
    """`runs/<key>/publish/policy.json`: whether the latest start of the run said `--force`."""

    force: bool = False


class BranchUpdate(BaseModel):
    branch: str
    old: str | None  # the target's tip, None if the branch is not there
    new: str
    foreign: str = ""  # a commit in `old` that this run did not make
    foreign_subject: str = ""

    @property
    def moves(self) -> bool:
        return self.old != self.new


class PushOutcome(BaseModel):
    pushed: list[str] = []
    unchanged: list[str] = []
    backups: dict[str, str] = {}  # branch -> backup ref holding its old tip


def _ledger_key(runs: RunStore) -> str:
    return f"{runs.prefix}/publish/pushed.json"


def _policy_key(runs: RunStore) -> str:
    return f"{runs.prefix}/publish/policy.json"


def set_overwrite_policy(runs: RunStore, force: bool) -> None:
    """Written by `run`, `resume` and `retry` on every start, so a `--force` never lingers."""
    runs.store.write_json(_policy_key(runs), OverwritePolicy(force=force))


def overwrite_allowed(runs: RunStore) -> bool:
    try:
        return runs.store.read_model(_policy_key(runs), OverwritePolicy).force
    except KeyError:
        return False


def read_push_ledger(runs: RunStore) -> PushLedger:
    try:
        return runs.store.read_model(_ledger_key(runs), PushLedger)
    except KeyError:
        return PushLedger()


def own_tips(runs: RunStore) -> dict[str, list[str]]:
    """Every tip this run key made, by branch: what it pushed, and each unit's commit in the
    run's ledger (a worker of a work pool pushes its unit's branch itself)."""
    tips = {branch: list(shas) for branch, shas in read_push_ledger(runs).tips.items()}
    for record in runs.read_ledger().values():
        if record.commit and record.branch:
            tips.setdefault(record.branch, []).append(record.commit)
    return tips


# -- looking before pushing ----------------------------------------------------------------------


def remote_tips(workspace: Workspace, destination: str, prefix: str) -> dict[str, str]:
    """Branches of `destination` that are `prefix` or start with `prefix--`, with their tips
    (the feature branch and its unit branches)."""
    out = git_out(
        workspace.clone_dir if workspace.clone_dir.is_dir() else Path.cwd(),
        "ls-remote",
        "--heads",
        destination,
        env=workspace.env,
        timeout_s=NETWORK_TIMEOUT_S,
        hint=f"Could not read the branches of {destination!r}.",
    )
    tips = {}
    for line in out.splitlines():
        sha, _, ref = line.partition("\t")
        name = ref.removeprefix("refs/heads/")
        if name == prefix or name.startswith(f"{prefix}--"):
            tips[name] = sha
    return tips


def foreign_branches(
    workspace: Workspace, runs: RunStore, destination: str, feature_branch: str
) -> dict[str, str]:
    """Before a run: branches of this feature in the target at tips this run key never pushed.

    Without the target's objects this cannot tell a fast-forward of the run's own work, so it
    only reports tips the run does not know; the check at push time is the exact one."""
    ours = own_tips(runs)
    tips = remote_tips(workspace, destination, feature_branch)
    return {b: sha for b, sha in tips.items() if sha not in ours.get(b, [])}


def plan_updates(
    workspace: Workspace, runs: RunStore, destination: str, branches: list[str]
) -> list[BranchUpdate]:
    """What pushing `branches` would do to each, with the foreign commit it would drop."""
    own = own_tips(runs)
    there = _fetch_tips(workspace, destination, branches)
    updates = []
    here = workspace.branch_shas(branches)
    for branch in branches:
        new = here[branch]
        if new is None:
            raise GitError(
                f"Cannot push {branch!r}: the branch does not exist in {workspace.clone_dir}. "
                "Integrate the feature before publishing it."
            )
        old = there.get(branch)
        ours = own.get(branch, [])
        update = BranchUpdate(branch=branch, old=old, new=new)
        if (
            old
            and old != new
            and old not in ours
            and not is_ancestor(workspace.clone_dir, old, new)
        ):
            update.foreign, update.foreign_subject = _newest_foreign(workspace, old, new, ours)
        updates.append(update)
    return updates


def _fetch_tips(workspace: Workspace, destination: str, branches: list[str]) -> dict[str, str]:
    wanted = set(branches)
    prefixes = {b.split("--", 1)[0] for b in branches}
    tips = {
        b: sha
        for prefix in prefixes
        for b, sha in remote_tips(workspace, destination, prefix).items()
        if b in wanted
    }
    if tips:
        specs = [f"+refs/heads/{b}:{_SEEN}/{b}" for b in tips]
        with repo_lock(workspace.clone_dir):
            run_git(
                workspace.clone_dir,
                "fetch",
                "--no-tags",
                "--quiet",
                destination,
                *specs,
                env=workspace.env,
                timeout_s=NETWORK_TIMEOUT_S,
                hint=f"Could not fetch the branches to update from {destination!r}.",
            )
    return tips


def _newest_foreign(workspace: Workspace, old: str, new: str, ours: list[str]) -> tuple[str, str]:
    """The newest commit reachable from `old` but not from `new` nor any tip this run pushed."""
    known = [f"^{sha}" for sha in ours if _exists(workspace, sha)]
    line = git_out(workspace.clone_dir, "log", "-1", "--format=%H %s", old, f"^{new}", *known, "--")
    sha, _, subject = (line or f"{old} ").partition(" ")
    return sha, subject


def _same_tree(workspace: Workspace, old: str, new: str) -> bool:
    return tree_of(workspace.clone_dir, old) == tree_of(workspace.clone_dir, new)


def _exists(workspace: Workspace, sha: str) -> bool:
    done = run_git(workspace.clone_dir, "cat-file", "-e", f"{sha}^{{commit}}", ok_codes=(0, 1, 128))
    return done.returncode == 0


# -- pushing ---------------------------------------------------------------------------------------


def push_all(
    workspace: Workspace,
    runs: RunStore,
    destination: str,
    branches: list[str],
    feature_id: str,
    force: bool,
) -> PushOutcome:
    """Move every branch of the run in one atomic push, refusing to drop foreign commits."""
    names = [b.removeprefix("refs/heads/") for b in branches]
    workspace._refuse_base(names, "push")
    updates = plan_updates(workspace, runs, destination, names)
    if _only_rebuilt(workspace, runs, updates, f"flotilla/{feature_id}"):
        return PushOutcome(unchanged=[u.branch for u in updates])
    moving = [u for u in updates if u.moves]
    outcome = PushOutcome(unchanged=[u.branch for u in updates if not u.moves])
    if not moving:
        return outcome
    foreign = [u for u in moving if u.foreign]
    if foreign and not force:
        raise ForeignCommits(refusal(foreign, destination, runs.run_key))
    ledger = read_push_ledger(runs)
    for update in moving:
        ledger.tips.setdefault(update.branch, []).append(update.new)
    runs.store.write_json(_ledger_key(runs), ledger)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", utcnow().timetuple())
    specs = []
    for update in foreign:
        ref = backup_ref(feature_id, stamp, update.branch)
        outcome.backups[update.branch] = ref
        specs.append(f"{update.old}:{ref}")
    for update in moving:
        ref = f"refs/heads/{update.branch}"
        specs += [f"--force-with-lease={ref}:{update.old or ''}", f"{update.new}:{ref}"]
    _atomic_push(workspace, destination, specs)
    outcome.pushed = [u.branch for u in moving]
    return outcome


def _only_rebuilt(
    workspace: Workspace, runs: RunStore, updates: list[BranchUpdate], feature_branch: str
) -> bool:
    """A re-run that changed nothing: every unit branch is where it was, and the feature branch,
    merged again into a new commit, has the content this run key pushed before."""
    moving = [u for u in updates if u.moves]
    if [u.branch for u in moving] != [feature_branch]:
        return False
    old, new = moving[0].old, moving[0].new
    ours = read_push_ledger(runs).tips.get(feature_branch, [])
    return bool(old) and old in ours and _same_tree(workspace, old, new)  # type: ignore[arg-type]


def backup_ref(feature_id: str, stamp: str, branch: str) -> str:
    """`refs/flotilla/backup/<feature>/<time>` for the feature branch, `…--<unit>` for a unit's."""
    unit = branch.split("--", 1)[1] if "--" in branch else ""
    return f"refs/flotilla/backup/{feature_id}/{stamp}" + (f"--{unit}" if unit else "")


def _atomic_push(workspace: Workspace, destination: str, specs: list[str]) -> None:
    leases = [s for s in specs if s.startswith("--")]
    refspecs = [s for s in specs if not s.startswith("--")]
    done = run_git(
        workspace.clone_dir,
        "push",
        "--atomic",
        "--porcelain",
        "--no-verify",
        *leases,
        destination,
        *refspecs,
        env=workspace.env,
        ok_codes=(0, 1, 128),
        timeout_s=NETWORK_TIMEOUT_S,
    )
    if done.returncode != 0:
        raise GitError(push_failure(destination, done.stdout, done.stderr))


def push_failure(destination: str, stdout: str, stderr: str) -> str:
    """One line: which branch the target refused and why; nothing moved (the push is atomic)."""
    rejected = []
    for line in stdout.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[0] == "!":
            ref = parts[1].split(":")[-1].removeprefix("refs/heads/")
            rejected.append((ref, parts[2].strip()))
    reasons = [(r, why) for r, why in rejected if "atomic push failed" not in why] or rejected
    if reasons:
        ref, why = reasons[0]
        if "checked out" in stderr or "checked out" in why:
            why = "it is checked out in that repository; check out another branch there"
        elif "stale info" in why:
            why = "it moved in the target while this run was checking it; run again to re-check"
        what = f"refused {ref!r} ({why})"
    else:
        said = " ".join(stderr.split())[:300] or "git printed nothing"
        what = f"failed: {said}"
    return (
        f"Pushing to {destination} {what}; the push is atomic, so no branch moved. Fix that, "
        "then resume the run."
    )


def refusal(foreign: list[BranchUpdate], destination: str, run_key: str) -> str:
    first = foreign[0]
    more = f" (and {len(foreign) - 1} more branch(es))" if len(foreign) > 1 else ""
    subject = f" {first.foreign_subject[:60]!r}" if first.foreign_subject else ""
    return (
        f"Branch {first.branch} in {destination} holds commit {first.foreign[:12]}{subject}, "
        f"which run {run_key} did not make{more}; Flotilla does not overwrite it. Options: "
        f"merge that work elsewhere and delete the branch, use another feature id, or run again "
        "with --force, which keeps the old tip at refs/flotilla/backup/<feature>/<time> first."
    )


def refuse_foreign_before_run(
    workspace: Workspace, runs: RunStore, destination: str, feature_branch: str, force: bool
) -> list[str]:
    """Refuse at the start, before any agent is paid, what the push would refuse at the end.

    Returns the foreign branches `--force` will overwrite (after a backup). A target that cannot
    be read now is not an error here: the push checks again, exactly."""
    set_overwrite_policy(runs, force)
    try:
        foreign = foreign_branches(workspace, runs, destination, feature_branch)
    except GitError:
        return []
    if foreign and not force:
        branch, sha = sorted(foreign.items())[0]
        update = BranchUpdate(branch=branch, old=sha, new="", foreign=sha)
        others = [
            BranchUpdate(branch=b, old=s, new="", foreign=s)
            for b, s in foreign.items()
            if b != branch
        ]
        raise ForeignCommits(refusal([update, *others], destination, runs.run_key))
    return sorted(foreign)
