"""Checkpoints: the ledger and every unit branch's sha, saved after each unit and at each pause.

`runs/<key>/checkpoints/<n>.json` holds one numbered snapshot. Rolling back to N writes its ledger
back and moves the unit branches of the run's clone to its shas, so `flotilla resume` runs again
what came after N. Numbers only grow: checkpoints written after a rollback get new numbers, and
the older, abandoned ones stay listed, so a rollback can be undone by rolling forward.

The target repository is not touched: unit branches reach it only when the finalize stage pushes
them, and the next finalize force-updates them there.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field

from flotilla.errors import RunError
from flotilla.growth import AddedUnits
from flotilla.results import RunState, RunSummary, UnitRecord, UnitStatus, utcnow
from flotilla.runs import RunContext
from tasks.control import save_added
from tasks.git import git_out, run_git
from tasks.store import RunStore
from tasks.workspace import Workspace


class Checkpoint(BaseModel):
    """One snapshot of a run: every plan unit's record and every unit branch's sha."""

    number: int
    created_at: datetime = Field(default_factory=utcnow)
    reason: str
    units_total: int
    units_done: list[str]
    ledger: dict[str, UnitRecord]
    branches: dict[str, str] = Field(description="unit id -> sha of its branch in the clone")
    added: AddedUnits = Field(default_factory=AddedUnits)


def checkpoint_numbers(runs: RunStore) -> list[int]:
    numbers = []
    for key in runs.store.list(f"{runs.prefix}/checkpoints"):
        name = key.rsplit("/", 1)[-1].removesuffix(".json")
        if name.isdigit():
            numbers.append(int(name))
    return sorted(numbers)


def read_checkpoint(runs: RunStore, number: int) -> Checkpoint:
    try:
        return runs.store.read_model(runs.checkpoint_key(number), Checkpoint)
    except KeyError:
        known = ", ".join(map(str, checkpoint_numbers(runs))) or "none"
        raise RunError(
            f"Run {runs.run_key} has no checkpoint {number} (its checkpoints: {known}). "
            f"`flotilla checkpoints {runs.run_key}` lists them."
        ) from None


def list_checkpoints(runs: RunStore) -> list[Checkpoint]:
    return [read_checkpoint(runs, n) for n in checkpoint_numbers(runs)]


def unit_branch_shas(workspace: Workspace, ctx: RunContext) -> dict[str, str]:
    """unit id -> sha, for every unit branch of this feature in the run's clone."""
    if not (workspace.clone_dir / "HEAD").is_file():
        return {}
    prefix = ctx.unit_branch("")
    out = git_out(
        workspace.clone_dir,
        "for-each-ref",
        "--format=%(objectname) %(refname)",
        f"refs/heads/{prefix.rsplit('/', 1)[0]}/",
    )
    shas = {}
    for line in out.splitlines():
        sha, ref = line.split(" ", 1)
        branch = ref.removeprefix("refs/heads/")
        if branch.startswith(prefix):
            shas[branch[len(prefix) :]] = sha
    return shas


class CheckpointWriter:
    """Numbers and writes the checkpoints of one orchestrator process."""

    def __init__(self, ctx: RunContext, runs: RunStore, workspace: Workspace):
        self.ctx, self.runs, self.workspace = ctx, runs, workspace
        self.next = max(checkpoint_numbers(runs), default=0) + 1

    def write(
        self, reason: str, units: list[str], records: dict[str, UnitRecord], added: AddedUnits
    ) -> Checkpoint:
        """Snapshot `records` (final ones; any other unit is saved as pending or running)."""
        ledger = {}
        for unit_id in units:
            record = records.get(unit_id)
            if record is None or not record.status.is_final:
                status = record.status if record else UnitStatus.PENDING
                record = UnitRecord(
                    unit_id=unit_id, status=status, branch=self.ctx.unit_branch(unit_id)
                )
            ledger[unit_id] = record
        checkpoint = Checkpoint(
            number=self.next,
            reason=reason,
            units_total=len(units),
            units_done=[u for u in units if ledger[u].status == UnitStatus.SUCCEEDED],
            ledger=ledger,
            branches=unit_branch_shas(self.workspace, self.ctx),
            added=added,
        )
        self.runs.store.write_json(self.runs.checkpoint_key(checkpoint.number), checkpoint)
        self.next += 1
        return checkpoint


class RollbackResult(BaseModel):
    checkpoint: Checkpoint
    rerun: list[str]
    branches_reset: bool
    note: str = ""


def rollback(ctx: RunContext, runs: RunStore, workspace: Workspace, number: int) -> RollbackResult:
    """Make the ledger, the unit branches and the added units what checkpoint `number` saw."""
    checkpoint = read_checkpoint(runs, number)
    current = runs.read_ledger()
    for unit_id in sorted(set(current) - set(checkpoint.ledger)):
        runs.store.delete(runs.ledger_key(unit_id))  # a unit added after the checkpoint
    rerun = []
    for unit_id, record in checkpoint.ledger.items():
        if not record.status.is_final:
            record = UnitRecord(unit_id=unit_id, branch=ctx.unit_branch(unit_id))
        if record.status != UnitStatus.SUCCEEDED:
            rerun.append(unit_id)
        runs.write_record(record)
    save_added(runs, checkpoint.added)
    branches_reset, note = _reset_branches(ctx, workspace, checkpoint.branches)
    for key in (runs.result_key, runs.feature_report_key):
        runs.store.delete(key)
    try:
        summary = runs.store.read_model(runs.state_key, RunSummary)
    except KeyError:
        summary = None
    if summary is not None:
        summary = summary.model_copy(
            update={
                "state": RunState.PAUSED,
                "units_done": len(checkpoint.units_done),
                "units_total": checkpoint.units_total,
                "error": f"rolled back to checkpoint {number}",
                "finished_at": utcnow(),
            }
        )
        runs.store.write_json(runs.state_key, summary)
    return RollbackResult(
        checkpoint=checkpoint, rerun=rerun, branches_reset=branches_reset, note=note
    )


def _reset_branches(
    ctx: RunContext, workspace: Workspace, branches: dict[str, str]
) -> tuple[bool, str]:
    clone: Path = workspace.clone_dir
    if not (clone / "HEAD").is_file():
        return False, (
            f"The run's clone {clone} is missing, so no branch was reset; units whose branch "
            "is missing are run again by `flotilla resume`."
        )
    now = unit_branch_shas(workspace, ctx)
    for unit_id, sha in branches.items():
        if now.get(unit_id) != sha:
            workspace.set_branch(ctx.unit_branch(unit_id), sha)
    for unit_id in sorted(set(now) - set(branches)):
        run_git(clone, "update-ref", "-d", f"refs/heads/{ctx.unit_branch(unit_id)}")
    return True, ""
