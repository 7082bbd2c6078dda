"""A run is findable in the Prefect UI: names, tags and artifacts read back through the API.

The feature flow run is named after the run key, its stage subflows `<key> · <stage>`; every
flow and task run carries `flotilla`, `feature:<id>` and `run:<key>`; a unit's task runs carry
`unit:<id>` and their names start with the unit id. Each unit's report shows its diff, and the
artifacts point at things a reader can open: a `flotilla artifacts` command, not a file:// path.
"""

from __future__ import annotations

import shlex
import sys
import time
import uuid
from pathlib import Path

import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterTags,
    TaskRunFilter,
    TaskRunFilterTags,
)
from prefect.client.schemas.objects import Artifact, FlowRun, TaskRun
from prefect.concurrency.services import (
    ConcurrencySlotAcquisitionWithLeaseService as AcquisitionQueue,
)
from prefect.events.filters import EventAnyResourceFilter, EventFilter

from flotilla.cli import main
from tasks.store import ArtifactStore, RunStore
from tests.e2e.helpers import make_target

# Appends a round to <unit>.txt each time it runs; the tokenizer's tests want two rounds.
AGENT = """
import os, pathlib
from tasks.store import ArtifactStore, RunStore
unit = os.environ["FLOTILLA_UNIT_ID"]
path = pathlib.Path(unit + ".txt")
path.write_text((path.read_text() if path.exists() else "") + "round\\n")
pathlib.Path(os.environ["FLOTILLA_SUMMARY_FILE"]).write_text("Wrote " + unit + ".txt.\\n")
"""
TWO_ROUNDS = "import sys; sys.exit(0 if open('tokenizer.txt').read().count('round') >= 2 else 1)"
STAGES = ["decompose", "implement", "merge", "finalize"]


def write_request(tmp_path: Path, feature_id: str) -> Path:
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT)
    passes = f"{sys.executable} -c pass"
    request = {
        "feature": {"id": feature_id, "title": "Findable feature"},
        "test": passes,
        "defaults": {
            "agent": {"command": f"{sys.executable} {agent}"},
            "test": passes,
            "timeout_s": 60,
            "max_iterations": 2,
            "retry_policy": {"max_attempts": 1},
        },
        "units": [
            {"id": "tokenizer", "test": f'{sys.executable} -c "{TWO_ROUNDS}"'},
            {"id": "counts", "depends_on": ["tokenizer"]},
        ],
    }
    path = tmp_path / "request.yaml"
    path.write_text(yaml.safe_dump(request, sort_keys=False))
    return path


def flow_runs_tagged(tag: str) -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]))
        )


def task_runs_tagged(tag: str, expected: int) -> list[TaskRun]:
    """The server records task runs from events, a moment after they happen: wait for them."""
    deadline = time.monotonic() + 60
    while True:
        with get_client(sync_client=True) as client:
            found = client.read_task_runs(
                task_run_filter=TaskRunFilter(tags=TaskRunFilterTags(all_=[tag])), limit=200
            )
        done = [r for r in found if r.state_type is not None and r.state.is_final()]
        if len(done) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def latest_artifact(key: str) -> str:
    return latest_artifact_of(key).data


def latest_artifact_of(key: str) -> Artifact:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    assert found, f"no artifact with key {key!r}"
    return max(found, key=lambda a: a.created)


def test_runs_are_named_and_tagged_and_each_unit_shows_its_diff(tmp_path, capsys):
    feature = f"findable-{uuid.uuid4().hex[:8]}"
    key = f"{feature}-tonight"
    target = make_target(tmp_path / "target")
    request = write_request(tmp_path, feature)
    store = tmp_path / "store"
    args = ["run", str(request), "--repo", str(target), "--store", str(store)]
    assert main([*args, "--workdir", str(tmp_path / "work"), "--run-key", key]) == 0
    run_tags = {"flotilla", f"feature:{feature}", f"run:{key}"}

    # Flow runs: the feature run is named after the key, each stage `<key> · <stage>`.
    flow_runs = {r.name: r for r in flow_runs_tagged(f"run:{key}")}
    assert set(flow_runs) == {key, *(f"{key} · {stage}" for stage in STAGES)}
    for flow_run in flow_runs.values():
        assert run_tags <= set(flow_run.tags), flow_run.name
    assert all(r.id for r in flow_runs_tagged(f"feature:{feature}"))  # the feature's filter

    # Task runs: all tagged with the run; in the implement stage, named and tagged by unit.
    implement = flow_runs[f"{key} · implement"]
    # agent calls and test runs are task runs of their own; the plumbing is timed in the ledger
    unit_steps = ["unit", "agent #1", "tests"]
    expected = len(unit_steps) * 2 + 2  # tokenizer's agent and tests ran twice
    task_runs = task_runs_tagged(f"run:{key}", expected)
    for task_run in task_runs:
        assert run_tags <= set(task_run.tags), task_run.name
    in_implement = [r for r in task_runs if r.flow_run_id == implement.id]
    names: dict[str, list[str]] = {}
    for task_run in in_implement:
        unit, _, step = task_run.name.partition(" · ")
        assert unit in ("tokenizer", "counts"), task_run.name
        assert f"unit:{unit}" in task_run.tags, task_run.name
        names.setdefault(unit, []).append(step)
    assert sorted(names["counts"]) == sorted(unit_steps)
    assert sorted(names["tokenizer"]) == sorted([*unit_steps, "agent #2", "tests"])
    assert {r.name for r in task_runs_tagged("unit:tokenizer", 0)} >= {"tokenizer · agent #2"}
    ledger = RunStore(ArtifactStore(str(store)), key).read_ledger()
    for unit in ("tokenizer", "counts"):  # the plumbing steps, timed in the unit's record
        assert {"worktree", "commit", "outputs"} <= set(ledger[unit].steps_s), unit

    # Each unit's diff: --stat and the patch.
    diff = latest_artifact(f"{feature}-unit-tokenizer")  # the unit's report holds its diff
    assert "## Diff" in diff
    assert "tokenizer.txt | 2 ++" in diff
    assert "+++ b/tokenizer.txt" in diff and "+round\n+round" in diff
    assert "counts.txt | 1 +" in latest_artifact(f"{feature}-unit-counts")
    unit_task_runs = {r.name: r.id for r in in_implement}
    for unit in ("tokenizer", "counts"):  # each unit's report hangs off its own task run
        report_of = latest_artifact_of(f"{feature}-unit-{unit}")
        assert report_of.task_run_id == unit_task_runs[f"{unit} · unit"], unit
        assert report_of.flow_run_id == implement.id, unit

    # Links a reader can follow: commands that fetch from the store, no worker-local paths.
    report = latest_artifact(f"{feature}-unit-tokenizer")
    assert "file://" not in report
    log_command = next(
        line.split("`")[1] for line in report.splitlines() if "--get logs/attempt-1.log" in line
    )
    assert log_command.startswith(f"flotilla artifacts {key} tokenizer --get logs/")
    capsys.readouterr()
    assert main(shlex.split(log_command)[1:]) == 0
    assert capsys.readouterr().out  # the agent's log, fetched through the command
    for kind in ("report", "store"):
        text = latest_artifact(f"{feature}-{kind}")
        assert "file://" not in text and f"flotilla artifacts {key} --" in text, kind

    # All of the above is what the server records; the temporary server of a run stores no
    # event feed besides (flotilla/server_settings.py), which was a third of its CPU.
    assert stored_events_of(implement) == []


def stored_events_of(flow_run: FlowRun) -> list:
    about = EventAnyResourceFilter(id=[f"prefect.flow-run.{flow_run.id}"])
    with get_client(sync_client=True) as client:
        return client.read_events(filter=EventFilter(any_resource=about), limit=50).events


def test_unit_tags_leave_no_slot_queue_behind(tmp_path):
    """Prefect keeps a slot-acquisition queue (a thread, an HTTP client) per set of task-run
    tags; each unit's tags are its own, so its queues are stopped when the unit is done."""
    target = make_target(tmp_path / "target")
    request = write_request(tmp_path, f"queues-{uuid.uuid4().hex[:8]}")
    args = ["run", str(request), "--repo", str(target), "--store", str(tmp_path / "store")]
    assert main([*args, "--workdir", str(tmp_path / "work"), "--run-key", "queues"]) == 0

    queues = AcquisitionQueue._instances.values()  # every kind of Prefect queue service
    live = [q for q in queues if isinstance(q, AcquisitionQueue) and not q._stopped]
    per_unit = [q.concurrency_limit_names for q in live]
    assert not [names for names in per_unit if any(n.startswith("tag:unit:") for n in names)]
