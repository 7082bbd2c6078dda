"""A graph that grows: agents propose follow-up units through $FLOTILLA_NEW_UNITS_FILE; valid
ones join the plan in the same run, bad ones are reported and ignored, and a later resume or
retry of the run knows the added units from the store."""

from __future__ import annotations

import json
import sys

from flotilla.results import UnitStatus
from tasks.control import load_added
from tasks.store import ArtifactStore, RunStore
from tests.e2e.durability_helpers import AGENT, cli, durable_request, invocations, run_args
from tests.e2e.helpers import git, make_target


def test_proposed_units_join_the_run_and_the_pr_and_survive_a_retry(tmp_path):
    target = make_target(tmp_path / "target")
    markers = tmp_path / "markers"
    # the follow-up runs the counting agent too, and proposes one more unit itself
    follow_up_agent = {
        "command": f"{sys.executable} {AGENT}",
        "env": {
            "MARKERS": str(markers),
            "NEW_UNITS": json.dumps([{"id": "second-wave", "depends_on": ["follow-up"]}]),
        },
    }
    proposals = [
        {
            "id": "follow-up",
            "title": "Follow-up from seed",
            "depends_on": ["seed"],
            "agent": follow_up_agent,
        },
        {"id": "needs-ghost", "depends_on": ["ghost"]},
        {"id": "Bad Id"},
        {"id": "other"},
    ]
    request = durable_request(
        tmp_path,
        [{"id": "seed", "env": {"NEW_UNITS": json.dumps(proposals)}}, {"id": "other"}],
        markers,
    )
    store = str(tmp_path / "store")

    assert cli(*run_args(request, target, store, tmp_path / "work", "grow")) == 0

    assert invocations(markers) == {"seed": 1, "other": 1, "follow-up": 1, "second-wave": 1}
    runs = RunStore(ArtifactStore(store), "grow")
    ledger = runs.read_ledger()
    assert ledger["follow-up"].status == ledger["second-wave"].status == UnitStatus.SUCCEEDED
    tree = git(target, "ls-tree", "-r", "--name-only", "flotilla/durable").split()
    assert {"units/follow-up.txt", "units/second-wave.txt"} <= set(tree)
    pr = runs.store.read_text(runs.pr_key)
    assert "Follow-up from seed (`follow-up`)" in pr and "(`second-wave`)" in pr
    added = load_added(runs)
    assert [(a.unit.id, a.proposed_by) for a in added.units] == [
        ("follow-up", "seed"),
        ("second-wave", "follow-up"),
    ]
    reasons = {r.unit_id: " ".join(r.problems) for r in added.rejected}
    assert "unknown unit 'ghost'" in reasons["needs-ghost"]
    assert "not a safe slug" in reasons["Bad Id"]
    assert "duplicate unit id 'other'" in reasons["other"]

    # a retry of the run knows the added units from the store
    assert cli("retry", "grow", "--store", store, "--unit", "follow-up") == 0

    assert invocations(markers) == {"seed": 1, "other": 1, "follow-up": 2, "second-wave": 2}
    assert len(load_added(runs).units) == 2  # nothing was added twice
