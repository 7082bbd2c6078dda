"""Failure isolation, the failure report, partial retry, pause and resume, checkpoints, rollback.

Real git repositories, real agent processes (tests/e2e/durable_agents.py, which counts its
invocations with marker files), the session's Prefect harness, and the CLI as a user types it.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid

import yaml
from prefect import get_client

from flotilla.results import FeatureResult, RunState, RunSummary, UnitStatus
from tasks.checkpoints import list_checkpoints
from tasks.store import ArtifactStore, RunStore
from tests.e2e.durability_helpers import cli, durable_request, invocations, run_args
from tests.e2e.helpers import git, make_target


def store_of(tmp_path) -> str:
    return str(tmp_path / "store")


def runs_of(tmp_path, key: str) -> RunStore:
    return RunStore(ArtifactStore(store_of(tmp_path)), key)


def test_a_failure_is_isolated_reported_and_retried_alone(tmp_path, capsys):
    target = make_target(tmp_path / "target")
    markers, fixed = tmp_path / "markers", tmp_path / "fixed"
    request = durable_request(
        tmp_path,
        [
            {"id": "flaky", "env": {"FAIL_UNLESS": str(fixed)}},
            {"id": "after-flaky", "depends_on": ["flaky"]},
            {"id": "solid"},
        ],
        markers,
    )
    store, work = store_of(tmp_path), tmp_path / "work"

    assert cli(*run_args(request, target, store, work, "iso")) == 1

    out = capsys.readouterr().out
    runs = runs_of(tmp_path, "iso")
    ledger = runs.read_ledger()
    assert ledger["solid"].status == UnitStatus.SUCCEEDED  # independent work ran to the end
    assert ledger["flaky"].status == UnitStatus.FAILED
    assert ledger["flaky"].failure_class == "agent_failed"
    assert ledger["after-flaky"].status == UnitStatus.BLOCKED
    assert ledger["after-flaky"].blocked_by == ["flaky"]
    assert invocations(markers) == {"flaky": 1, "solid": 1}  # blocked: never started
    assert git(target, "branch", "--list", "flotilla/*") == ""  # no partial merge
    # one report: attempts, failure class, the agent's last words, where the full log is
    report = runs.store.read_text(runs.feature_report_key)
    assert "## flaky: agent exit" in report and "- Attempts: 1" in report
    assert "cannot do this yet" in report
    assert f"Full log: {runs.store.uri(runs.log_key('flaky', 1))}" in report
    assert "- after-flaky: waits for flaky" in report
    assert report.rstrip() in out  # the CLI prints it at the end
    assert runs.store.read_model(runs.state_key, RunSummary).state == RunState.FAILED
    record = ledger["solid"]
    assert record.started_at and record.finished_at and record.commit and record.attempts == 1
    assert record.branch == "flotilla/durable--solid" and record.step == "done"

    fixed.touch()
    assert cli("retry", "iso", "--store", store) == 0

    assert invocations(markers) == {"flaky": 2, "solid": 1, "after-flaky": 1}
    tree = git(target, "ls-tree", "-r", "--name-only", "flotilla/durable")
    assert {"units/flaky.txt", "units/after-flaky.txt", "units/solid.txt"} <= set(tree.split())
    assert "Retrying run iso: running flaky again" in capsys.readouterr().out

    # a named unit runs again even though it succeeded, and so do the units after it
    assert cli("retry", "iso", "--store", store, "--unit", "flaky") == 0
    assert invocations(markers) == {"flaky": 3, "solid": 1, "after-flaky": 2}
    summary = runs.store.read_model(runs.state_key, RunSummary)
    assert summary.state == RunState.SUCCEEDED and summary.resumes == 2


def test_allow_partial_merges_what_succeeded_and_the_pr_names_the_missing(tmp_path, capsys):
    target = make_target(tmp_path / "target")
    markers = tmp_path / "markers"
    workflow = yaml.safe_load(_default_workflow())
    workflow["workflow"]["stages"][1]["allow_partial"] = True
    workflow["workflow"]["stages"][1]["retry_policy"] = {"max_attempts": 1}
    workflow_file = tmp_path / "workflow.yaml"
    workflow_file.write_text(yaml.safe_dump(workflow))
    request = durable_request(
        tmp_path,
        [{"id": "broken", "env": {"FAIL_UNLESS": str(tmp_path / "never")}}, {"id": "fine"}],
        markers,
    )
    args = run_args(request, target, store_of(tmp_path), tmp_path / "work", "partial")

    assert cli(*args, "--workflow", str(workflow_file)) == 1

    runs = runs_of(tmp_path, "partial")
    pr = runs.store.read_text(runs.pr_key)
    assert "These units are missing: `broken`" in pr
    assert "units/fine.txt" in git(target, "ls-tree", "-r", "--name-only", "flotilla/durable")
    result = runs.store.read_model(runs.result_key, FeatureResult)
    assert result.status == "failed" and "partial feature" in result.error
    assert "## broken: agent exit" in capsys.readouterr().out


def _default_workflow() -> str:
    from importlib import resources

    return resources.files("flotilla").joinpath("default_workflow.yaml").read_text()


def test_pause_lets_units_in_flight_finish_then_resume_carries_on(tmp_path, capsys):
    target = make_target(tmp_path / "target")
    markers = tmp_path / "markers"
    store = store_of(tmp_path)
    pause_file = tmp_path / "store" / "runs" / "pausing" / "control" / "pause.json"
    request = durable_request(
        tmp_path,
        [
            # `first` runs `flotilla pause` from its own process, like a second terminal
            {"id": "first", "env": {"PAUSE_RUN": f"{store}|pausing"}},
            # `sibling` is in flight when the pause arrives: it waits for the request
            {"id": "sibling", "env": {"HOLD_FILE": str(pause_file)}},
            {"id": "second", "depends_on": ["first"]},
            {"id": "third", "depends_on": ["first"]},
        ],
        markers,
    )

    assert cli(*run_args(request, target, store, tmp_path / "work", "pausing")) == 3

    out = capsys.readouterr().out
    assert "Paused. Carry on with: flotilla resume pausing" in out
    runs = runs_of(tmp_path, "pausing")
    ledger = runs.read_ledger()
    assert ledger["first"].status == ledger["sibling"].status == UnitStatus.SUCCEEDED
    assert ledger["second"].status == ledger["third"].status == UnitStatus.PENDING
    assert invocations(markers) == {"first": 1, "sibling": 1}
    summary = runs.store.read_model(runs.state_key, RunSummary)
    assert summary.state == RunState.PAUSED
    checkpoints = list_checkpoints(runs)
    assert checkpoints[-1].reason == "pause"
    assert sorted(checkpoints[-1].units_done) == ["first", "sibling"]
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(summary.flow_run_id).state
    assert state.is_cancelled() and state.name == "Paused"

    assert cli("resume", "pausing", "--store", store) == 0

    assert invocations(markers) == {"first": 1, "sibling": 1, "second": 1, "third": 1}
    assert runs.store.read_model(runs.state_key, RunSummary).state == RunState.SUCCEEDED


def test_rollback_to_a_checkpoint_makes_resume_redo_what_came_after(tmp_path, capsys):
    target = make_target(tmp_path / "target")
    markers = tmp_path / "markers"
    store = store_of(tmp_path)
    request = durable_request(
        tmp_path,
        [
            {"id": "one"},
            {"id": "two", "depends_on": ["one"]},
            {"id": "three", "depends_on": ["two"]},
        ],
        markers,
    )
    assert cli(*run_args(request, target, store, tmp_path / "work", "chain")) == 0
    first_tip = git(target, "rev-parse", "flotilla/durable^{tree}")
    capsys.readouterr()

    assert cli("checkpoints", "chain", "--store", store) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[3] for line in listing[1:]] == ["1/3", "2/3", "3/3"]
    assert listing[1].split()[0] == "1" and "unit one succeeded" in listing[1]

    assert cli("rollback", "chain", "--store", store, "--to", "1") == 0

    assert "runs again: two, three" in capsys.readouterr().out
    runs = runs_of(tmp_path, "chain")
    ledger = runs.read_ledger()
    assert ledger["one"].status == UnitStatus.SUCCEEDED
    assert ledger["two"].status == ledger["three"].status == UnitStatus.PENDING
    clone = tmp_path / "work" / "chain" / "repo.git"
    assert git(clone, "branch", "--list", "flotilla/durable--*").split() == [
        "flotilla/durable--one"
    ]

    assert cli("resume", "chain", "--store", store) == 0

    assert invocations(markers) == {"one": 1, "two": 2, "three": 2}
    assert git(target, "rev-parse", "flotilla/durable^{tree}") == first_tip
    assert len(list_checkpoints(runs)) == 5  # numbers only grow: 4 and 5 came after the rollback

    # Back to checkpoint 4 (one and two done), then lose the clone and Prefect's record of the
    # run: the ledger still knows, and the pushed unit branches come back from the target.
    assert cli("rollback", "chain", "--store", store, "--to", "4") == 0
    shutil.rmtree(clone)
    summary = runs.store.read_model(runs.state_key, RunSummary)
    gone = _dead_pid()
    lost = {"state": RunState.RUNNING, "pid": gone, "flow_run_id": str(uuid.uuid4())}
    runs.store.write_json(runs.state_key, summary.model_copy(update=lost))

    assert cli("resume", "chain", "--store", store) == 0

    assert invocations(markers) == {"one": 1, "two": 2, "three": 3}
    assert git(target, "rev-parse", "flotilla/durable^{tree}") == first_tip


def _dead_pid() -> int:
    """The pid of a process that has exited (and been waited for)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
