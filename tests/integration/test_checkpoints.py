"""Checkpoints after the first of a process hold only what changed, so a long chain of units
writes little, and every checkpoint still reads back whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flotilla.errors import RunError
from flotilla.growth import AddedUnits
from flotilla.loading import load_workflow
from flotilla.results import UnitRecord, UnitStatus
from flotilla.runs import RunContext
from flotilla.spec import FeatureRequest
from tasks.checkpoints import (
    FULL_EVERY,
    CheckpointWriter,
    list_checkpoints,
    read_checkpoint,
)
from tasks.store import ArtifactStore, RunStore
from tasks.workspace import Workspace
from tests.integration.gitrepos import commit_on, git, make_repo

pytestmark = pytest.mark.usefixtures("git_without_identity")

UNITS = [f"u{i:03d}" for i in range(300)]


@pytest.fixture
def run(tmp_path: Path) -> tuple[RunContext, RunStore, Workspace]:
    target = tmp_path / "target"
    make_repo(target, {"app.py": "print('hi')\n"})
    request = FeatureRequest.model_validate(
        {"feature": {"id": "cp", "title": "Checkpoints"}, "units": [{"id": u} for u in UNITS]}
    )
    ctx = RunContext(
        run_key="cp-run",
        request=request,
        workflow=load_workflow(None),
        request_dir=str(tmp_path),
        repo=str(target),
        base="main",
        store_url=str(tmp_path / "store"),
        workdir=str(tmp_path / "work"),
    )
    workspace = Workspace(Path(ctx.workdir), ctx.repo, ctx.base)
    workspace.prepare()
    return ctx, RunStore(ArtifactStore(ctx.store_url), ctx.run_key), workspace


def finish(ctx: RunContext, workspace: Workspace, unit_id: str, parent: str) -> UnitRecord:
    """A unit of a chain that succeeded: a commit on its branch in the run's clone."""
    sha = commit_on(
        workspace.clone_dir, parent, {f"{unit_id}.py": "x\n"}, unit_id, ctx.unit_branch(unit_id)
    )
    return UnitRecord(
        unit_id=unit_id, status=UnitStatus.SUCCEEDED, branch=ctx.unit_branch(unit_id), commit=sha
    )


def test_a_chain_writes_its_changes_and_reads_back_every_checkpoint_whole(run):
    ctx, runs, workspace = run
    writer = CheckpointWriter(ctx, runs, workspace)
    records: dict[str, UnitRecord] = {}
    written = []
    tip = git(workspace.clone_dir, "rev-parse", "main")
    for unit_id in UNITS[:120]:
        records[unit_id] = finish(ctx, workspace, unit_id, tip)
        tip = records[unit_id].commit
        written.append(writer.write(f"unit {unit_id} succeeded", UNITS, records, AddedUnits()))

    files = {n: json.loads(runs.store.read_bytes(runs.checkpoint_key(n))) for n in range(1, 121)}
    whole = [n for n, f in files.items() if f.get("base") is None]
    assert whole == [1, 1 + FULL_EVERY, 1 + 2 * FULL_EVERY]
    sizes = {n: len(json.dumps(f)) for n, f in files.items()}
    assert max(sizes[n] for n in files if n not in whole) * 20 < sizes[1]
    assert list_checkpoints(runs) == written
    assert read_checkpoint(runs, 99) == written[98]
    assert read_checkpoint(runs, 99).units_done == UNITS[:99]
    assert read_checkpoint(runs, 99).branches[UNITS[98]] == records[UNITS[98]].commit


def test_a_record_changed_in_place_is_in_the_next_checkpoint(run):
    ctx, runs, workspace = run
    writer = CheckpointWriter(ctx, runs, workspace)
    base = git(workspace.clone_dir, "rev-parse", "main")
    records = {"u000": finish(ctx, workspace, "u000", base)}
    writer.write("first", UNITS, records, AddedUnits())
    records["u000"].summary = "rewritten after the checkpoint"
    writer.write("second", UNITS, records, AddedUnits())

    assert read_checkpoint(runs, 1).ledger["u000"].summary == ""
    assert read_checkpoint(runs, 2).ledger["u000"].summary == "rewritten after the checkpoint"


def test_a_branch_deleted_since_and_a_new_process_both_read_right(run):
    ctx, runs, workspace = run
    base = git(workspace.clone_dir, "rev-parse", "main")
    records = {u: finish(ctx, workspace, u, base) for u in UNITS[:2]}
    first = CheckpointWriter(ctx, runs, workspace)
    first.write("two done", UNITS, records, AddedUnits())
    git(workspace.clone_dir, "update-ref", "-d", f"refs/heads/{ctx.unit_branch('u001')}")
    first.write("one branch gone", UNITS, records, AddedUnits())
    later = CheckpointWriter(ctx, runs, workspace)  # a resumed run: a new process
    later.write("resumed", UNITS, records, AddedUnits())

    assert set(read_checkpoint(runs, 1).branches) == {"u000", "u001"}
    assert set(read_checkpoint(runs, 2).branches) == {"u000"}
    assert json.loads(runs.store.read_bytes(runs.checkpoint_key(3))).get("base") is None


def test_a_checkpoint_written_whole_before_changes_were_stored_still_reads(run):
    ctx, runs, workspace = run
    record = UnitRecord(unit_id="u000", status=UnitStatus.SUCCEEDED, commit="a" * 40)
    old = {
        "number": 1,
        "created_at": "2026-11-24T20:27:42Z",
        "reason": "unit u000 succeeded",
        "units_total": 1,
        "units_done": ["u000"],
        "ledger": {"u000": record.model_dump(mode="json")},
        "branches": {"u000": "a" * 40},
        "added": AddedUnits().model_dump(mode="json"),
    }
    runs.store.write_json(runs.checkpoint_key(1), old)

    (checkpoint,) = list_checkpoints(runs)
    assert checkpoint.units_done == ["u000"] and checkpoint.ledger["u000"] == record


def test_a_missing_base_is_named(run):
    ctx, runs, workspace = run
    writer = CheckpointWriter(ctx, runs, workspace)
    for reason in ("one", "two", "three"):
        writer.write(reason, UNITS, {}, AddedUnits())
    runs.store.delete(runs.checkpoint_key(1))

    with pytest.raises(RunError, match=r"no checkpoint 1, which checkpoint 2 builds on \(its "):
        read_checkpoint(runs, 3)
