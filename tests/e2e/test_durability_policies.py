"""Retry policies (the most specific wins), rate limits that cost no attempt, and the
fix-forward loop, with real agent processes counted by marker files."""

from __future__ import annotations

import sys
from importlib import resources

import yaml

from flotilla.plan import resolve_settings
from flotilla.results import UnitStatus
from flotilla.spec import FeatureRequest, WorkflowSpec
from tasks.store import ArtifactStore, RunStore
from tests.e2e.durability_helpers import AGENT, cli, durable_request, invocations, run_args
from tests.e2e.helpers import make_target

FAST = {"initial_delay_s": 0, "backoff": "fixed"}


def workflow_file(tmp_path, **work_loop) -> str:
    text = resources.files("flotilla").joinpath("default_workflow.yaml").read_text()
    workflow = yaml.safe_load(text)
    workflow["workflow"]["stages"][1].update(work_loop)
    path = tmp_path / "workflow.yaml"
    path.write_text(yaml.safe_dump(workflow))
    return str(path)


def test_policy_precedence_is_unit_then_agent_then_defaults_then_stage():
    stage_policy = {"max_attempts": 2}
    request = FeatureRequest.model_validate(
        {
            "feature": {"id": "f", "title": "F"},
            "agents": {"patient": {"command": "true", "retry_policy": {"max_attempts": 3}}},
            "defaults": {"agent": "claude", "retry_policy": {"max_attempts": 4}},
            "units": [
                {"id": "own", "agent": "patient", "retry_policy": {"max_attempts": 5}},
                {"id": "agent-level", "agent": "patient"},
                {"id": "defaults-level"},
            ],
        }
    )
    workflow = WorkflowSpec.model_validate(
        yaml.safe_load(resources.files("flotilla").joinpath("default_workflow.yaml").read_text())
    )
    stage = workflow.stage_for("work_loop").model_copy(update={"retry_policy": stage_policy})
    attempts = {
        u.id: resolve_settings(request, u, stage).retry_policy.max_attempts for u in request.units
    }
    assert attempts == {"own": 5, "agent-level": 3, "defaults-level": 4}
    bare = request.model_copy(
        update={"defaults": request.defaults.model_copy(update={"retry_policy": None})}
    )
    assert resolve_settings(bare, bare.units[2], stage).retry_policy.max_attempts == 2


def test_attempts_follow_the_policies_rate_limits_are_free_and_tests_feed_back(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("FLOTILLA_RATE_LIMIT_MAX_WAIT_S", "0.2")
    target = make_target(tmp_path / "target")
    markers, never = tmp_path / "markers", str(tmp_path / "never")
    failing = {"FAIL_UNLESS": never}
    request = durable_request(
        tmp_path,
        [
            {"id": "by-stage", "env": failing},
            {"id": "by-agent", "agent": "patient"},
            {"id": "by-unit", "agent": "patient", "retry_policy": {"max_attempts": 4, **FAST}},
            {
                "id": "not-retried",
                "env": failing,
                "retry_policy": {"max_attempts": 3, "retry_on": ["tests_failed"], **FAST},
            },
            {"id": "limited", "env": {"RATE_LIMIT_FIRST": "1"}},
            {"id": "fix-forward", "env": {"PASS_ON_ITERATION": "2"}, "max_iterations": 2},
        ],
        markers,
        defaults={"retry_policy": None},
        agents={
            "patient": {
                "command": f"{sys.executable} {AGENT}",
                "env": {"MARKERS": str(markers), **failing},
                "retry_policy": {"max_attempts": 3, **FAST},
            }
        },
    )
    workflow = workflow_file(tmp_path, allow_partial=True, retry_policy={"max_attempts": 2, **FAST})
    args = run_args(request, target, str(tmp_path / "store"), tmp_path / "work", "policies")

    assert cli(*args, "--workflow", workflow) == 1

    runs = RunStore(ArtifactStore(str(tmp_path / "store")), "policies")
    ledger = runs.read_ledger()
    attempts = {u: r.attempts for u, r in ledger.items()}
    assert attempts == {
        "by-stage": 2,
        "by-agent": 3,
        "by-unit": 4,
        "not-retried": 1,
        "limited": 1,  # the rate limit cost no attempt ...
        "fix-forward": 1,
    }
    assert invocations(markers) == {
        "by-stage": 2,
        "by-agent": 3,
        "by-unit": 4,
        "not-retried": 1,
        "limited": 2,  # ... but the agent ran again
        "fix-forward": 2,  # two iterations in one attempt
    }
    assert ledger["limited"].status == ledger["fix-forward"].status == UnitStatus.SUCCEEDED
    assert ledger["not-retried"].failure_class == "agent_failed"
    # the second iteration's prompt carried the failing test output
    prompt = (markers / "fix-forward.2").read_text()
    assert (
        "The tests failed after iteration 1" in prompt and "fix-forward: not finished yet" in prompt
    )
    assert ledger["fix-forward"].iterations == 2
    pr = runs.store.read_text(runs.pr_key)  # allow_partial: the PR exists and shows iterations
    fix_forward = pr[pr.index("(`fix-forward`)") :]
    assert "iterations: 2" in fix_forward.split("###")[0]
    report = capsys.readouterr().out
    assert "## by-unit: agent exit" in report and "- Attempts: 4" in report
