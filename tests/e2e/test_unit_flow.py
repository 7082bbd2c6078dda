"""The `unit` flow: units of one run on separate "machines" (work dirs), exchanging through git
and the store, and a feature run afterwards that reuses them instead of running them again."""

from __future__ import annotations

import pytest

from flotilla.errors import RunError
from flotilla.plan import Plan
from flows.feature import build_context, feature
from flows.unit import unit
from tasks.store import ArtifactStore, RunStore
from tests.e2e.helpers import git, make_target, timeline_of, write_request


@pytest.fixture
def started_run(tmp_path):
    """A run as a scale-out starter leaves it: context and plan in the store, no unit run."""
    target = make_target(tmp_path / "target")
    timeline = tmp_path / "timeline.txt"
    request = write_request(
        tmp_path,
        [
            {"id": "producer", "outputs": ["schema.json"]},
            {"id": "consumer", "inputs": ["producer/schema.json"]},
        ],
        timeline=timeline,
    )
    store = str(tmp_path / "store")
    ctx = build_context(
        str(request), repo=str(target), store=store, run_key="spread", workdir=str(tmp_path)
    )
    runs = RunStore(ArtifactStore(store), ctx.run_key)
    runs.store.write_json(runs.context_key, ctx)
    plan = Plan.from_request(ctx.request, ctx.stage("work_loop"))
    runs.store.write_json(runs.plan_key, plan.to_json())
    return target, timeline, request, store, runs


def test_units_run_as_their_own_flow_runs_on_separate_machines(tmp_path, started_run):
    target, timeline, request, store, runs = started_run

    with pytest.raises(RunError, match=r"producer \(not started\)\. Run them first"):
        unit("spread", "consumer", store=store, workdir=str(tmp_path / "machine-2"))
    with pytest.raises(RunError, match=r"has no unit 'nope' \(its units: producer, consumer\)"):
        unit("spread", "nope", store=store, workdir=str(tmp_path / "machine-1"))

    first = unit("spread", "producer", store=store, workdir=str(tmp_path / "machine-1"))
    second = unit("spread", "consumer", store=store, workdir=str(tmp_path / "machine-2"))

    assert first.status == "succeeded" and second.status == "succeeded"
    # each branch reached the target's remote; the consumer started from the producer's commit
    assert git(target, "rev-parse", "flotilla/demo-feature--producer") == first.commit
    assert git(target, "rev-parse", "flotilla/demo-feature--consumer") == second.commit
    assert git(target, "merge-base", "--is-ancestor", first.commit, second.commit) == ""
    # and received the producer's output through the store
    consumer_file = git(target, "show", "flotilla/demo-feature--consumer:units/consumer.txt")
    assert "producer/schema.json" in consumer_file
    assert not (tmp_path / "machine-1" / "spread" / "worktrees" / "consumer").exists()
    assert runs.read_ledger()["consumer"].status == "succeeded"

    # a feature run with the same run key finds both units done and only merges and publishes
    result = feature(
        str(request), repo=str(target), store=store, run_key="spread", workdir=str(tmp_path)
    )

    assert result.ok, result.error
    assert set(timeline_of(timeline)) == {"producer", "consumer"}
    assert timeline.read_text().count("start ") == 2  # no unit ran twice
    assert git(target, "show", "flotilla/demo-feature:units/producer.txt").startswith("producer")


def test_a_unit_refuses_a_dependency_branch_moved_away_from_its_ledger_commit(
    tmp_path, started_run
):
    target, _, _, store, _ = started_run
    first = unit("spread", "producer", store=store, workdir=str(tmp_path / "machine-1"))
    # someone force-pushes the producer's branch back to the base after it succeeded
    git(target, "branch", "--force", "flotilla/demo-feature--producer", "main")

    with pytest.raises(
        RunError,
        match=rf"flotilla/demo-feature--producer in .* is not at unit 'producer''s commit "
        rf"{first.commit[:12]} from the ledger\. Run unit 'producer' again",
    ):
        unit("spread", "consumer", store=store, workdir=str(tmp_path / "machine-2"))
