"""Picking up after an orchestrator that died: is it really gone, and what did it leave behind?

A `kill -9` leaves three things: a RUNNING flow run in Prefect, agent and test processes that
keep working in the run's worktrees (they run in sessions of their own, so they outlive their
parent), and possibly git lock files. `flotilla resume` deals with each before it starts again,
so an orphaned agent can never write into the fresh worktree of the unit's next attempt.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Iterable
from pathlib import Path

from flotilla.errors import GitError, RunError
from flotilla.results import RunState, RunSummary, UnitRecord, UnitStatus
from tasks.liveness import process_alive
from tasks.workspace import Workspace


def check_not_running(summary: RunSummary, force: bool = False) -> bool:
    """Raise if the run's orchestrator still runs; True if it was left RUNNING (a crash)."""
    if summary.state != RunState.RUNNING:
        return False
    here = socket.gethostname()
    if summary.host == here and summary.pid and summary.pid != os.getpid():
        if process_alive(summary.pid) and not force:
            raise RunError(
                f"Run {summary.run_key} is still running (pid {summary.pid} on {here}). Pause it "
                f"with `flotilla pause {summary.run_key}` and wait for it to exit, or stop that "
                "process, before resuming it."
            )
    elif summary.host != here and not force:
        raise RunError(
            f"Run {summary.run_key} is marked running on another machine ({summary.host}, pid "
            f"{summary.pid}); this machine cannot tell whether it is still alive. If it is not, "
            "resume with --force (its clone and worktrees are on that machine's disk, so units "
            "whose branches are not here are run again)."
        )
    return True


def kill_orphans(workdir: Path) -> list[int]:
    """Kill the process groups of agents and test commands left running in the run's worktrees.

    They are recognised by their working directory (inside `<workdir>/worktrees`), by having no
    controlling terminal, and by leading a session of their own, as Flotilla starts them; a
    person's shell in a worktree has a terminal and is left alone.
    """
    worktrees = (Path(workdir) / "worktrees").resolve()
    proc = Path("/proc")
    if not proc.is_dir() or not worktrees.is_dir():
        return []
    uid = os.getuid()
    groups: set[int] = set()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            cwd = Path(os.readlink(entry / "cwd"))
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if cwd != worktrees and worktrees not in cwd.parents:
            continue
        pgid, sid, tty = int(fields[2]), int(fields[3]), int(fields[4])
        if tty == 0 and pgid == sid and pgid != os.getpgid(0):
            groups.add(pgid)
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    return sorted(groups)


def clear_stale_locks(clone_dir: Path) -> list[Path]:
    """Remove git lock files a killed git process left in the clone (nobody else uses it)."""
    clone_dir = Path(clone_dir)
    if not clone_dir.is_dir():
        return []
    found = [*clone_dir.glob("*.lock")]
    for sub in ("refs", "worktrees", "logs"):
        found += (clone_dir / sub).rglob("*.lock")
    found = [p for p in found if p.is_file() and p.name != "flotilla.lock"]
    for path in found:
        path.unlink(missing_ok=True)
    return found


def mark_flow_run_crashed(flow_run_id: str, message: str) -> list[str]:
    """Set the flow run, its subflow runs and their task runs to Crashed where still unfinished;
    return what was changed.

    A run whose Prefect history is gone (another server, a wiped database) is not an error: the
    ledger in the store is the source of truth, Prefect only shows it.
    """
    if not flow_run_id:
        return []
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )
    from prefect.states import Crashed

    changed: list[str] = []
    try:
        with get_client(sync_client=True) as client:
            parent = client.read_flow_run(flow_run_id)
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent.id])
                )
            )
            flow_runs = [*children, parent]
            tasks = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in flow_runs]))
            )
            for task_run in tasks:
                if task_run.state is not None and not task_run.state.is_final():
                    client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
            for run in flow_runs:
                if run.state is not None and not run.state.is_final():
                    client.set_flow_run_state(run.id, Crashed(message=message), force=True)
                    changed.append(f"marked flow run {run.name!r} ({run.id}) Crashed")
    except Exception as exc:  # the API may be down or the run unknown: the ledger still holds
        return [f"could not update flow run {flow_run_id} in Prefect ({type(exc).__name__}: {exc})"]
    return changed


def recover(summary: RunSummary, workdir: Path, clone_dir: Path, force: bool = False) -> list[str]:
    """Make a run that was left RUNNING safe to resume; return what was done, for the log.

    Raises RunError while its orchestrator is still alive (unless `force`).
    """
    if not check_not_running(summary, force):
        return []
    done = [f"run {summary.run_key} was left running by pid {summary.pid} on {summary.host}"]
    message = (
        f"The orchestrator of run {summary.run_key} (pid {summary.pid} on {summary.host}) "
        "stopped without finishing; `flotilla resume` carries the run on in a new flow run."
    )
    done += mark_flow_run_crashed(summary.flow_run_id, message)
    if summary.host == socket.gethostname():
        killed = kill_orphans(workdir)
        if killed:
            done.append(f"killed orphaned agent/test process groups {killed}")
        locks = clear_stale_locks(clone_dir)
        if locks:
            done.append(f"removed stale git locks: {', '.join(str(p) for p in locks)}")
    return done


def restore_unit_branches(
    workspace: Workspace, records: list[UnitRecord]
) -> tuple[list[str], list[str]]:
    """Fetch the branches of succeeded units that the clone lacks (a new clone) from the target,
    where an earlier finalize pushed them; return (restored, still missing) unit ids.

    A few git processes however many units the run has: one fetch for every lacking branch,
    and one at a time only when the target lacks some of them."""
    succeeded = {r.branch: r for r in records if r.status == UnitStatus.SUCCEEDED and r.branch}
    lacking = [succeeded[b] for b in workspace.branches_not_at(_commits(succeeded.values()))]
    if not lacking:
        return [], []
    try:
        workspace.fetch([r.branch for r in lacking])
    except GitError:  # the target lacks some: fetch the others one by one
        for record in lacking:
            with contextlib.suppress(GitError):
                workspace.fetch([record.branch])
    still = set(workspace.branches_not_at(_commits(lacking)))
    restored = [r.unit_id for r in lacking if r.branch not in still]
    missing = [r.unit_id for r in lacking if r.branch in still]
    return restored, missing


def _commits(records: Iterable[UnitRecord]) -> dict[str, str]:
    return {r.branch: r.commit for r in records}
