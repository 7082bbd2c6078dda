"""Spend under control, end to end: usage in the ledger, a run budget that pauses the run and a
resume that raises it, a unit budget that fails its unit without a retry, and the estimate
`flotilla plan` and `flotilla run --max-usd` make from recorded history."""

from __future__ import annotations

import json
import os
import signal
import sys
from importlib import resources

import pytest
import yaml

from flotilla.results import FailureClass, RunState, UnitStatus
from tasks.lifecycle import read_summary
from tasks.store import ArtifactStore, RunStore
from tests.e2e.durability_helpers import (
    AGENT,
    cli,
    durable_request,
    invocations,
    ledger_of,
    run_args,
)
from tests.e2e.helpers import make_target
from tests.fakes import cli_results

CALL = {"input_tokens": 1000, "output_tokens": 200, "cost_usd": 0.4}


def one_at_a_time(tmp_path) -> str:
    """The default workflow with one unit at a time, so the budget is crossed at a known unit."""
    text = resources.files("flotilla").joinpath("default_workflow.yaml").read_text()
    workflow = yaml.safe_load(text)
    workflow["workflow"]["stages"][1]["max_concurrent"] = 1
    path = tmp_path / "workflow.yaml"
    path.write_text(yaml.safe_dump(workflow))
    return str(path)


def paying_request(tmp_path, units: list[dict], markers, **extra):
    """Units whose agent reports $0.40 per call through $FLOTILLA_USAGE_FILE."""
    return durable_request(
        tmp_path,
        units,
        markers,
        agents={
            "paying": {
                "command": f"{sys.executable} {AGENT}",
                "env": {"MARKERS": str(markers), "USAGE_JSON": json.dumps(CALL)},
            }
        },
        defaults={"agent": "paying"},
        extra=extra,
    )


def spend_of(ledger) -> float:
    return round(sum(r.total_usage.cost_usd or 0 for r in ledger.values()), 6)


def test_a_spent_run_budget_pauses_the_run_and_resume_raises_it(tmp_path, capsys):
    target = make_target(tmp_path / "target")
    markers, store = tmp_path / "markers", str(tmp_path / "store")
    units = [{"id": f"u{n}", "touches": [f"units/u{n}.txt"]} for n in range(1, 5)]
    request = paying_request(tmp_path, units, markers, budget={"usd": 1.0})
    args = run_args(request, target, store, tmp_path / "work", "spend")

    assert cli(*args, "--workflow", one_at_a_time(tmp_path)) == 3

    out = capsys.readouterr().out
    assert (
        "paused: budget spent ($1.20 of $1.00); `flotilla resume spend --budget-usd N` to go on"
        in out
    )
    runs = RunStore(ArtifactStore(store), "spend")
    ledger = runs.read_ledger()
    assert invocations(markers) == {"u1": 1, "u2": 1, "u3": 1}  # no unit started after $1.20
    assert ledger["u4"].status == UnitStatus.PENDING
    assert spend_of(ledger) == 1.2
    usage = ledger["u1"].usage[0]
    assert usage.attempt == 1 and usage.usage.input_tokens == CALL["input_tokens"]
    assert usage.usage.output_tokens == CALL["output_tokens"] and usage.usage.wall_s > 0
    assert read_summary(runs).state == RunState.PAUSED

    assert cli("resume", "spend", "--store", store, "--budget-usd", "3") == 0

    out = capsys.readouterr().out
    assert "budget $1.00 -> $3.00; spent so far $1.20" in out
    ledger = runs.read_ledger()
    assert invocations(markers) == {"u1": 1, "u2": 1, "u3": 1, "u4": 1}
    assert all(r.status == UnitStatus.SUCCEEDED for r in ledger.values())
    assert spend_of(ledger) == 1.6  # counted once: the reused units were not charged again

    assert cli("status", "spend", "--store", store, "--json") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["usage"]["cost_usd"] == 1.6 and status["budget"]["usd"] == 3.0
    assert {u["unit"]: u["usage"]["cost_usd"] for u in status["units"]} == {
        f"u{n}": 0.4 for n in range(1, 5)
    }
    assert cli("status", "spend", "--store", store) == 0
    text = capsys.readouterr().out
    assert "COST" in text and "Spend:   $1.60" in text and "budget $3.00" in text
    assert cli("runs", "--store", store) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split()[-1] == "COST" and listing[1].split()[-1] == "$1.60"
    pr = runs.store.read_text(runs.pr_key)
    assert "**Agent spend:** $1.60" in pr and "Usage: $0.40" in pr


def test_a_unit_over_its_own_budget_fails_with_class_budget_and_is_not_retried(tmp_path, capsys):
    target = make_target(tmp_path / "target")
    markers, store = tmp_path / "markers", str(tmp_path / "store")
    never = str(tmp_path / "never")
    units = [
        {"id": "capped", "budget": {"usd": 0.5}},
        {"id": "free"},
    ]
    request = paying_request(tmp_path, units, markers)
    spec = yaml.safe_load(request.read_text())
    spec["agents"]["paying"]["env"]["FAIL_UNLESS"] = never  # every call fails, but costs
    spec["units"][1]["agent"] = {
        "command": f"{sys.executable} {AGENT}",
        "env": {"MARKERS": str(markers)},
    }
    spec["defaults"]["retry_policy"] = {"max_attempts": 5, "initial_delay_s": 0, "backoff": "fixed"}
    request.write_text(yaml.safe_dump(spec))
    args = run_args(request, target, store, tmp_path / "work", "capped")

    assert cli(*args) == 1

    ledger = RunStore(ArtifactStore(store), "capped").read_ledger()
    capped = ledger["capped"]
    assert capped.status == UnitStatus.FAILED and capped.failure_class == FailureClass.BUDGET
    assert "unit budget spent ($0.80 of $0.50)" in capped.error
    assert invocations(markers)["capped"] == 2  # $0.40, $0.80: the third attempt never ran
    assert capped.attempts == 3 and [a.attempt for a in capped.usage] == [1, 2, 3]
    assert ledger["free"].status == UnitStatus.SUCCEEDED


def test_plan_estimates_from_history_and_max_usd_refuses_to_start(tmp_path, capsys):
    target = make_target(tmp_path / "target")
    markers, store = tmp_path / "markers", str(tmp_path / "store")
    task = "Write the unit's file."  # the same size everywhere: the estimate scales by it
    units = [{"id": "first", "prompt": task}, {"id": "second", "prompt": task}]
    request = paying_request(tmp_path, units, markers)
    assert cli(*run_args(request, target, store, tmp_path / "work", "history")) == 0
    capsys.readouterr()

    spec = yaml.safe_load(request.read_text())
    spec["units"] = [{"id": f"next-{n}", "prompt": task} for n in range(5)]
    spec["units"].append({"id": "other", "prompt": task, "agent": "claude"})
    bigger = tmp_path / "bigger.yaml"
    bigger.write_text(yaml.safe_dump(spec))

    assert cli("plan", str(bigger), "--store", store) == 0
    out = capsys.readouterr().out
    assert "Estimated cost:     $2.00" in out  # five units like the two recorded at $0.40
    assert "No history for agent claude" in out
    assert cli("plan", str(bigger), "--store", store, "--format", "json") == 0
    estimate = json.loads(capsys.readouterr().out)["estimate"]
    assert estimate["cost"]["low"] <= estimate["cost"]["mid"] <= estimate["cost"]["high"]
    assert estimate["no_history"] == ["claude"]

    args = run_args(bigger, target, store, tmp_path / "work", "too-dear")
    assert cli(*args, "--max-usd", "0.5") == 2
    err = capsys.readouterr().err
    assert "Not started: even the low end of the estimate" in err and "--max-usd $0.50" in err
    assert not ArtifactStore(store).list("runs/too-dear")


def test_a_hard_run_budget_stops_units_in_flight_and_keeps_their_partial_work(tmp_path, capsys):
    from tasks.git import run_git
    from tasks.lifecycle import load_context
    from tasks.units import workspace_for

    target = make_target(tmp_path / "target")
    markers, store = tmp_path / "markers", str(tmp_path / "store")
    once = tmp_path / "slow-started"  # `dear` finishes (and spends) only once `slow` is at work
    slow = (
        f"if [ ! -e {once} ]; then echo half > partial.txt; touch {once}; sleep 120; fi; "
        "echo whole > slow.txt"
    )
    units = [{"id": "dear"}, {"id": "slow", "agent": {"command": slow}}]
    request = paying_request(tmp_path, units, markers, budget={"usd": 0.3, "hard": True})
    spec = yaml.safe_load(request.read_text())
    spec["agents"]["paying"]["env"]["HOLD_FILE"] = str(once)
    request.write_text(yaml.safe_dump(spec))
    args = run_args(request, target, store, tmp_path / "work", "hard")

    assert cli(*args) == 3

    assert "paused: budget spent ($0.40 of $0.30)" in capsys.readouterr().out
    ledger = RunStore(ArtifactStore(store), "hard").read_ledger()
    stopped = ledger["slow"]
    assert stopped.status == UnitStatus.FAILED and stopped.failure_class == FailureClass.BUDGET
    assert "agent stopped, partial work kept on flotilla/durable--slow" in stopped.error
    workspace = workspace_for(load_context("hard", store))
    tip = run_git(workspace.clone_dir, "show", "--name-only", "--format=%s", stopped.branch)
    assert "partial.txt" in tip.stdout and "stopped by the run's budget" in tip.stdout

    assert cli("resume", "hard", "--store", store, "--budget-usd", "5") == 0
    ledger = RunStore(ArtifactStore(store), "hard").read_ledger()
    assert ledger["slow"].status == UnitStatus.SUCCEEDED
    assert invocations(markers) == {"dear": 1}


def test_spend_survives_a_retry_and_is_counted_once(tmp_path, capsys):
    target = make_target(tmp_path / "target")
    markers, store = tmp_path / "markers", str(tmp_path / "store")
    ready = tmp_path / "ready"
    request = paying_request(tmp_path, [{"id": "flaky"}], markers)
    spec = yaml.safe_load(request.read_text())
    spec["agents"]["paying"]["env"]["FAIL_UNLESS"] = str(ready)
    request.write_text(yaml.safe_dump(spec))
    assert cli(*run_args(request, target, store, tmp_path / "work", "again")) == 1
    ready.touch()

    assert cli("retry", "again", "--store", store) == 0

    flaky = RunStore(ArtifactStore(store), "again").read_ledger()["flaky"]
    assert flaky.status == UnitStatus.SUCCEEDED
    assert [a.usage.cost_usd for a in flaky.usage] == [0.4, 0.4]  # the failed run's, then this
    assert flaky.total_usage.cost_usd == 0.8


def test_a_planner_on_the_claude_preset_counts_and_its_json_answer_is_the_plan(
    tmp_path, capsys, monkeypatch
):
    """The llm decomposer runs a fake `claude` on PATH that prints claude's documented result
    object; the plan is read from its `result`, and its cost joins the run's spend."""
    plan = {"units": [{"id": "alpha", "prompt": "Write alpha."}, {"id": "beta"}]}
    result = dict(cli_results.CLAUDE, result=f"```json\n{json.dumps(plan)}\n```")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    claude = bin_dir / "claude"
    claude.write_text(f"#!/bin/sh\ncat > /dev/null\nprintf '%s\\n' '{json.dumps(result)}'\n")
    claude.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    target = make_target(tmp_path / "target")
    markers, store = tmp_path / "markers", str(tmp_path / "store")
    request = paying_request(tmp_path, [], markers)
    text = resources.files("flotilla").joinpath("default_workflow.yaml").read_text()
    workflow = yaml.safe_load(text)
    workflow["workflow"]["stages"][0].update({"mode": "llm", "agent": "claude"})
    workflow_file = tmp_path / "workflow.yaml"
    workflow_file.write_text(yaml.safe_dump(workflow))

    args = run_args(request, target, store, tmp_path / "work", "planned")
    assert cli(*args, "--workflow", str(workflow_file)) == 0

    assert invocations(markers) == {"alpha": 1, "beta": 1}
    capsys.readouterr()
    assert cli("status", "planned", "--store", store, "--json") == 0
    usage = json.loads(capsys.readouterr().out)["usage"]
    assert usage["cost_usd"] == pytest.approx(
        cli_results.CLAUDE["total_cost_usd"] + 2 * CALL["cost_usd"]
    )
    assert usage["turns"] == cli_results.CLAUDE["num_turns"]


def test_spend_survives_a_crash_of_the_orchestrator(tmp_path):
    """kill -9 while a unit's second round runs: after `flotilla resume` the ledger still has the
    first round's spend, then the new rounds' - and the finished unit is not charged again."""
    from tests.e2e.durability_helpers import (
        kill_leftovers,
        start_orchestrator,
        wait_for,
        wait_for_pid,
    )

    target = make_target(tmp_path / "target")
    markers, store = tmp_path / "markers", str(tmp_path / "store")
    released, pid_file = tmp_path / "released", tmp_path / "agent.pid"
    twice = (
        f'printf \'%s\' "$REPORT" > "$FLOTILLA_USAGE_FILE"; '
        f"if [ -e {released} ]; then touch done.txt; "
        f'elif [ "$FLOTILLA_ITERATION" = 2 ]; then echo $$ > {pid_file}; sleep 300; fi'
    )
    units = [
        {"id": "paid"},
        {
            "id": "twice",
            "agent": {"command": twice, "env": {"REPORT": json.dumps({"cost_usd": 0.25})}},
            "test": "test -e done.txt",
            "max_iterations": 2,
        },
    ]
    request = paying_request(tmp_path, units, markers)
    log = tmp_path / "orchestrator.log"
    proc = start_orchestrator(run_args(request, target, store, tmp_path / "work", "crash"), {}, log)
    pids = [proc.pid]
    try:
        pids.append(wait_for_pid("the second round of `twice`", pid_file, proc=proc, log=log))
        wait_for(
            "`paid` to finish",
            lambda: ledger_of(store, "crash")["paid"].status == UnitStatus.SUCCEEDED,
            proc=proc,
            log=log,
        )
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        kill_leftovers(pids)
    before = ledger_of(store, "crash")["twice"]
    assert before.status == UnitStatus.RUNNING and before.total_usage.cost_usd == 0.25
    released.touch()

    assert cli("resume", "crash", "--store", store) == 0

    ledger = ledger_of(store, "crash")
    assert [a.usage.cost_usd for a in ledger["twice"].usage] == [0.25, 0.25]
    assert spend_of(ledger) == 0.9  # paid once ($0.40), and twice both rounds ($0.25 each)
    assert invocations(markers) == {"paid": 1}
