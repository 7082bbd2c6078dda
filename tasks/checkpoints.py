"""Checkpoints: the ledger and every unit branch's sha, saved after each unit and at each pause.

`runs/<key>/checkpoints/<n>.json` holds one numbered snapshot. Most hold only what changed since
the checkpoint before (`base`); every `FULL_EVERY`-th one of a process, and the first, holds all,
so a chain of 1,000 units does not write a thousand snapshots of a thousand units and reading one
takes at most `FULL_EVERY` files. Rolling back to N writes its ledger
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

FULL_EVERY = 50  # checkpoints a writer stores as changes before it stores a whole one again


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


class CheckpointFile(BaseModel):
    """What `checkpoints/<n>.json` holds: a whole snapshot (no `base`), or what changed since
    checkpoint `base`. Files from before changes were stored read as whole snapshots."""

    number: int
    created_at: datetime = Field(default_factory=utcnow)
    reason: str
    units_total: int
    base: int | None = None
    units: list[str] | None = Field(
        default=None,
        description="the plan's units in order; None: the ledger's keys, or the base's",
    )
    ledger: dict[str, UnitRecord] = Field(description="every record, or those that changed")
    branches: dict[str, str] = Field(description="every branch, or those that moved or appeared")
    removed_branches: list[str] = Field(default_factory=list)
    added: AddedUnits | None = Field(default=None, description="None: as in the base")

    @classmethod
    def whole(cls, checkpoint: Checkpoint) -> CheckpointFile:
        return cls(
            **_head(checkpoint),
            ledger=checkpoint.ledger,
            branches=checkpoint.branches,
            added=checkpoint.added,
        )

    def on(self, base: Checkpoint | None) -> Checkpoint:
        """The whole snapshot: this file's changes applied to its base's snapshot."""
        if self.base is None:
            units = self.units or list(self.ledger)
            ledger = {u: self.ledger[u] for u in units}
            branches = dict(self.branches)
            added = self.added or AddedUnits()
        else:
            if base is None or base.number != self.base:
                raise ValueError(f"checkpoint {self.number} is built on checkpoint {self.base}")
            units = self.units or list(base.ledger)
            ledger = {u: self.ledger.get(u) or base.ledger[u] for u in units}
            branches = {**base.branches, **self.branches}
            for unit_id in self.removed_branches:
                branches.pop(unit_id, None)
            added = self.added if self.added is not None else base.added
        return Checkpoint(
            number=self.number,
            created_at=self.created_at,
            reason=self.reason,
            units_total=self.units_total,
            units_done=_succeeded(ledger),
            ledger=ledger,
            branches=branches,
            added=added,
        )


def _succeeded(ledger: dict[str, UnitRecord]) -> list[str]:
    return [u for u, record in ledger.items() if record.status == UnitStatus.SUCCEEDED]


def checkpoint_numbers(runs: RunStore) -> list[int]:
    numbers = []
    for key in runs.store.list(f"{runs.prefix}/checkpoints"):
        name = key.rsplit("/", 1)[-1].removesuffix(".json")
        if name.isdigit():
            numbers.append(int(name))
    return sorted(numbers)


def read_checkpoint(runs: RunStore, number: int) -> Checkpoint:
    return _Reader(runs).read(number)


def list_checkpoints(runs: RunStore) -> list[Checkpoint]:
    reader = _Reader(runs)
    return [reader.read(n) for n in checkpoint_numbers(runs)]


class _Reader:
    """Reads checkpoints, building each from its base; a snapshot is built once per reader."""

    def __init__(self, runs: RunStore):
        self.runs = runs
        self.built: dict[int, Checkpoint] = {}

    def read(self, number: int) -> Checkpoint:
        files: list[CheckpointFile] = []
        wanted: int | None = number
        while wanted is not None and wanted not in self.built:
            files.append(self._file(wanted, needed_by=files[-1].number if files else None))
            wanted = files[-1].base
        snapshot = self.built.get(wanted) if wanted is not None else None
        for file in reversed(files):
            snapshot = self.built[file.number] = file.on(snapshot)
        return self.built[number]

    def _file(self, number: int, needed_by: int | None) -> CheckpointFile:
        try:
            return self.runs.store.read_model(self.runs.checkpoint_key(number), CheckpointFile)
        except KeyError:
            known = ", ".join(map(str, checkpoint_numbers(self.runs))) or "none"
            what = f"checkpoint {number}" + (
                f", which checkpoint {needed_by} builds on" if needed_by is not None else ""
            )
            raise RunError(
                f"Run {self.runs.run_key} has no {what} (its checkpoints: {known}). "
                f"`flotilla checkpoints {self.runs.run_key}` lists them."
            ) from None


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
    """Numbers and writes the checkpoints of one orchestrator process: its first whole, then
    what changed since the one before, and whole again every `FULL_EVERY`."""

    def __init__(self, ctx: RunContext, runs: RunStore, workspace: Workspace):
        self.ctx, self.runs, self.workspace = ctx, runs, workspace
        self.next = max(checkpoint_numbers(runs), default=0) + 1
        self._last: _Written | None = None

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
            units_done=_succeeded(ledger),
            ledger=ledger,
            branches=unit_branch_shas(self.workspace, self.ctx),
            added=added,
        )
        last = self._last
        if last is None or last.depth + 1 >= FULL_EVERY:
            written, file = _Written.of(checkpoint, depth=0), CheckpointFile.whole(checkpoint)
        else:
            written = _Written.of(checkpoint, depth=last.depth + 1)
            file = written.since(last, checkpoint)
        self.runs.store.write_json(self.runs.checkpoint_key(checkpoint.number), file)
        self._last = written
        self.next += 1
        return checkpoint


class _Written(BaseModel):
    """What the writer remembers of its last checkpoint: records as JSON, so that a record
    changed in place afterwards still counts as changed."""

    number: int
    depth: int = Field(description="checkpoints stored as changes since the last whole one")
    records: dict[str, str] = Field(description="unit id -> record JSON, in the plan's order")
    branches: dict[str, str]
    added: str

    @classmethod
    def of(cls, checkpoint: Checkpoint, depth: int) -> _Written:
        return cls(
            number=checkpoint.number,
            depth=depth,
            records={u: r.model_dump_json() for u, r in checkpoint.ledger.items()},
            branches=dict(checkpoint.branches),
            added=checkpoint.added.model_dump_json(),
        )

    def since(self, last: _Written, checkpoint: Checkpoint) -> CheckpointFile:
        changed = [u for u, raw in self.records.items() if last.records.get(u) != raw]
        return CheckpointFile(
            **_head(checkpoint),
            base=last.number,
            units=None if list(self.records) == list(last.records) else list(self.records),
            ledger={u: checkpoint.ledger[u] for u in changed},
            branches={u: sha for u, sha in self.branches.items() if last.branches.get(u) != sha},
            removed_branches=sorted(set(last.branches) - set(self.branches)),
            added=None if self.added == last.added else checkpoint.added,
        )


def _head(checkpoint: Checkpoint) -> dict:
    return {
        "number": checkpoint.number,
        "created_at": checkpoint.created_at,
        "reason": checkpoint.reason,
        "units_total": checkpoint.units_total,
    }


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
