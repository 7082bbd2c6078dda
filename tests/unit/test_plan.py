"""The Plan: edges and their reasons, conflict order, resource classes, weights, lower bound."""

from __future__ import annotations

import networkx as nx

from flotilla.loading import load_workflow
from flotilla.plan import Plan, resource_limits
from flotilla.results import UnitStatus
from flotilla.scheduling import by_urgency, ready_units
from flotilla.spec import FeatureRequest, WorkflowSpec


def request(units: list[dict], **extra) -> FeatureRequest:
    return FeatureRequest.model_validate(
        {
            "feature": {"id": "f", "title": "F"},
            "defaults": {"agent": "claude"},
            "units": units,
            **extra,
        }
    )


def workflow(**body) -> WorkflowSpec:
    base = load_workflow().model_dump(mode="json")
    base["workflow"].update(body)
    return WorkflowSpec.model_validate(base)


def test_edges_record_why_they_exist():
    plan = Plan.from_request(
        request(
            [
                {"id": "schema", "outputs": ["schema.json"], "touches": ["src/schema.py"]},
                {"id": "api", "inputs": ["schema/schema.json"], "touches": ["src/api/routes.py"]},
                {"id": "cli", "depends_on": ["api"], "touches": ["src/cli.py"]},
                {"id": "login", "touches": ["src/auth/*.py"]},
                {"id": "views", "touches": ["src/**/login.py"]},
            ]
        )
    )
    reasons = {(a, b): r for a, b, r in plan.edge_reasons()}
    assert reasons == {
        ("schema", "api"): ["input"],
        ("api", "cli"): ["depends_on"],
        ("login", "views"): ["conflict"],
    }
    [group] = plan.conflict_groups
    assert group.units == ["login", "views"]
    assert group.overlaps == [("login", "views", "src/auth/*.py", "src/**/login.py")]
    assert group.edges == [("login", "views")]
    assert nx.is_directed_acyclic_graph(plan.graph)


def test_conflicts_are_ordered_by_priority_then_remaining_path_then_request_order():
    units = [
        {"id": "first-listed", "touches": ["x.py"]},
        {"id": "long-tail", "touches": ["x.py"]},
        {"id": "tail", "depends_on": ["long-tail"]},
        {"id": "urgent", "touches": ["x.py"], "priority": 5},
        {"id": "also-first", "touches": ["y.py"]},
        {"id": "also-second", "touches": ["y.py"]},
    ]
    plan = Plan.from_request(request(units))
    conflict_edges = [(a, b) for a, b, r in plan.edge_reasons() if r == ["conflict"]]
    # urgent (priority) before long-tail (path 2) before first-listed (path 1); ties: request order
    assert sorted(conflict_edges) == sorted(
        [("urgent", "long-tail"), ("long-tail", "first-listed"), ("also-first", "also-second")]
    )
    # deterministic: the same request gives the same edges
    again = Plan.from_request(request(units))
    assert again.edge_reasons() == plan.edge_reasons()


def test_conflicts_never_reverse_an_existing_order():
    plan = Plan.from_request(
        request(
            [
                {"id": "base", "touches": ["x.py"]},
                {"id": "top", "depends_on": ["base"], "touches": ["x.py"], "priority": 9},
            ]
        )
    )
    assert plan.edge_reasons() == [("base", "top", ["depends_on"])]
    assert plan.conflict_groups[0].edges == []


def test_unknown_touches_are_trusted_by_default_and_serialized_when_asked():
    units = [{"id": "a"}, {"id": "b"}, {"id": "c", "touches": ["docs/x.md"]}]
    trusted = Plan.from_request(request(units))
    assert trusted.graph.number_of_edges() == 0
    assert trusted.levels() == [["a", "b", "c"]]

    serial = Plan.from_request(request(units), workflow=workflow(unknown_touches="serialize"))
    assert serial.unknown_touches == "serialize"
    assert serial.levels() == [["a"], ["b"], ["c"]]
    assert all(r == ["conflict"] for _, _, r in serial.edge_reasons())


def test_resource_classes_merge_defaults_workflow_and_request():
    spec = workflow(resources={"standard": 3, "gpu": 1})
    req = request([{"id": "a", "resources": "gpu"}], resources={"gpu": 2, "light": 20})
    assert resource_limits(req, spec) == {"light": 20, "standard": 3, "heavy": 2, "gpu": 2}
    plan = Plan.from_request(req, workflow=spec)
    assert plan.resources["gpu"] == 2
    assert plan.max_concurrent == 5  # the workflow's work_loop stage


def test_weights_come_from_estimates_then_class_durations_then_one():
    req = request(
        [
            {"id": "estimated", "estimate_s": 30},
            {"id": "heavy", "resources": "heavy"},
            {"id": "unknown", "resources": "light"},
        ]
    )
    plan = Plan.from_request(req, durations={"heavy": 120.0, "light": 0.0})
    assert [plan.weight(u) for u in plan.units] == [30, 120.0, 1.0]
    assert plan.weight("heavy", {}) == 1.0  # an explicit durations dict wins


def test_critical_path_and_lower_bound():
    units = [
        {"id": "a", "estimate_s": 10, "resources": "heavy"},
        {"id": "b", "estimate_s": 20, "depends_on": ["a"], "resources": "heavy"},
        {"id": "c", "estimate_s": 5, "resources": "heavy"},
        {"id": "d", "estimate_s": 5, "resources": "heavy"},
        {"id": "e", "estimate_s": 40, "resources": "heavy"},
    ]
    plan = Plan.from_request(request(units, resources={"heavy": 1}))
    assert plan.critical_path() == (["e"], 40)
    bound = plan.lower_bound()
    assert bound.critical_path == 40
    assert bound.per_class == {"heavy": 80.0}  # 80 s of heavy work through 1 slot
    assert bound.value == 80.0
    widened = Plan.from_request(request(units, resources={"heavy": 4}), workflow=workflow())
    bound = widened.lower_bound()
    assert bound.per_class == {"heavy": 20.0}
    assert bound.stage == 80 / 5
    assert bound.value == 40


def test_ready_units_start_by_priority_then_critical_path_then_request_order():
    plan = Plan.from_request(
        request(
            [
                {"id": "short", "estimate_s": 1},
                {"id": "long", "estimate_s": 1},
                {"id": "after-long", "depends_on": ["long"], "estimate_s": 50},
                {"id": "tie", "estimate_s": 1},
                {"id": "vip", "estimate_s": 1, "priority": 1},
            ]
        )
    )
    remaining = plan.remaining_path()
    ready = ready_units(plan, {u: UnitStatus.PENDING for u in plan.units}, started=[])
    assert by_urgency(plan, ready, remaining) == ["vip", "long", "short", "tie"]


def test_class_durations_change_which_unit_is_urgent():
    plan = Plan.from_request(
        request(
            [
                {"id": "quick-chain", "resources": "light"},
                {"id": "quick-end", "resources": "light", "depends_on": ["quick-chain"]},
                {"id": "slow", "resources": "heavy"},
            ]
        )
    )
    ready = ["quick-chain", "slow"]
    assert by_urgency(plan, ready, plan.remaining_path()) == ["quick-chain", "slow"]
    typical = {"light": 2.0, "heavy": 600.0}
    assert by_urgency(plan, ready, plan.remaining_path(typical)) == ["slow", "quick-chain"]


def test_to_json_carries_everything_flotilla_plan_prints():
    plan = Plan.from_request(
        request([{"id": "a", "touches": ["x"]}, {"id": "b", "touches": ["x/y.py"]}])
    )
    data = plan.to_json()
    assert data["edges"] == [{"from": "a", "to": "b", "reasons": ["conflict"]}]
    assert data["conflict_groups"][0]["edges"] == [{"from": "a", "to": "b"}]
    assert data["lower_bound"]["value"] == 2.0
    assert data["unit_resources"] == {"a": "standard", "b": "standard"}


def test_covered_units_are_those_another_of_them_builds_on():
    units = [
        {"id": "a"},
        {"id": "b", "depends_on": ["a"]},
        {"id": "c", "depends_on": ["b"]},
        {"id": "x"},
        {"id": "d", "depends_on": ["c", "x"]},
    ]
    plan = Plan.from_request(request(units))

    assert plan.covered(plan.ancestors("d")) == {"a", "b"}  # c holds them; x stands alone
    assert plan.covered(["a", "c"]) == {"a"}  # through b, which is not asked about
    assert plan.covered(["a", "x"]) == set()
    assert plan.covered([]) == set()
