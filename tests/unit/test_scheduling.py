"""Which unit starts next, which can no longer run, and how proposed units join the plan."""

from __future__ import annotations

import json

from flotilla.growth import AddedUnit, AddedUnits, review_proposals
from flotilla.plan import Plan
from flotilla.results import UnitStatus
from flotilla.scheduling import ClassRoom, blocked_by_failures, by_urgency, ready_units
from flotilla.spec import FeatureRequest

P, R, S, F, B = (
    UnitStatus.PENDING,
    UnitStatus.RUNNING,
    UnitStatus.SUCCEEDED,
    UnitStatus.FAILED,
    UnitStatus.BLOCKED,
)


def request(*units: dict) -> FeatureRequest:
    return FeatureRequest.model_validate(
        {
            "feature": {"id": "feat", "title": "Feature"},
            "defaults": {"agent": "claude"},
            "units": list(units),
        }
    )


def diamond() -> Plan:
    """a -> (b, c) -> d, plus a lone e."""
    return Plan.from_request(
        request(
            {"id": "a"},
            {"id": "b", "depends_on": ["a"]},
            {"id": "c", "depends_on": ["a"]},
            {"id": "d", "depends_on": ["b", "c"]},
            {"id": "e"},
        )
    )


def test_ready_units_wait_for_every_dependency_to_succeed():
    plan = diamond()
    assert ready_units(plan, {}, []) == ["a", "e"]
    assert ready_units(plan, {"a": S, "e": R}, ["e"]) == ["b", "c"]
    assert ready_units(plan, {"a": S, "b": S, "c": R, "e": S}, ["c"]) == []
    assert ready_units(plan, {"a": S, "b": S, "c": S, "e": S}, []) == ["d"]


def test_a_started_unit_is_never_ready_again():
    plan = diamond()
    assert ready_units(plan, {"a": P}, ["a"]) == ["e"]


def test_failure_blocks_every_transitive_dependent_and_nothing_else():
    plan = diamond()
    blocked = blocked_by_failures(plan, {"a": S, "b": F, "c": S, "e": R})
    assert blocked == {"d": ["b"]}
    blocked = blocked_by_failures(plan, {"a": F})
    assert blocked == {"b": ["a"], "c": ["a"], "d": ["a"]}


def test_urgency_is_priority_then_remaining_path_then_request_order():
    plan = Plan.from_request(
        request(
            {"id": "short"},
            {"id": "long"},
            {"id": "tail", "depends_on": ["long"]},
            {"id": "urgent", "priority": 5},
            {"id": "twin"},
        )
    )
    remaining = plan.remaining_path()
    order = by_urgency(plan, ["short", "long", "urgent", "twin"], remaining)
    assert order == ["urgent", "long", "short", "twin"]


def test_estimates_weight_the_remaining_path():
    plan = Plan.from_request(
        request({"id": "quick", "estimate_s": 1}, {"id": "slow", "estimate_s": 100})
    )
    assert by_urgency(plan, ["quick", "slow"], plan.remaining_path()) == ["slow", "quick"]


def test_valid_proposals_join_and_bad_ones_are_reported_with_reasons():
    base = request({"id": "a"}, {"id": "b", "depends_on": ["a"]})
    text = json.dumps(
        {
            "units": [
                {"id": "c", "title": "C", "depends_on": ["b"]},
                {"id": "d", "depends_on": ["c"]},  # an accepted proposal counts as existing
                {"id": "x", "depends_on": ["nowhere"]},
                {"id": "a"},
                {"id": "Not A Slug"},
                {"id": "y", "agent": "ghost"},
                {"id": "z", "extra": 1},
                7,
            ]
        }
    )

    accepted, rejected = review_proposals(text, base, base.units, "b")

    assert [u.id for u in accepted] == ["c", "d"]
    reasons = {r.unit_id: " ".join(r.problems) for r in rejected}
    assert "unknown unit 'nowhere'" in reasons["x"]
    assert "duplicate unit id 'a'" in reasons["a"]
    assert "not a safe slug" in reasons["Not A Slug"]
    assert "unknown agent 'ghost'" in reasons["y"]
    assert "unknown field 'extra'" in reasons["z"]
    assert "must be a JSON object" in reasons[""]
    assert all(r.proposed_by == "b" for r in rejected)


def test_proposals_that_are_not_json_are_rejected_whole():
    base = request({"id": "a"})
    accepted, rejected = review_proposals("not json {", base, base.units, "a")
    assert accepted == [] and "not valid JSON" in rejected[0].problems[0]
    accepted, rejected = review_proposals('{"nope": 1}', base, base.units, "a")
    assert accepted == [] and "expected a JSON list" in rejected[0].problems[0]


def test_a_plan_with_added_units_keeps_them_after_their_proposer():
    base = request({"id": "a"}, {"id": "b"})
    accepted, _ = review_proposals('[{"id": "c", "depends_on": ["a"]}]', base, base.units, "a")
    added = AddedUnits(units=[AddedUnit(unit=u, proposed_by="a") for u in accepted])
    added = AddedUnits.model_validate_json(added.model_dump_json())  # as stored
    plan = Plan.from_request(base.model_copy(update={"units": [*base.units, *added.specs()]}))
    assert plan.ancestors("c") == ["a"]
    assert ready_units(plan, {"a": S, "b": R}, ["b"]) == ["c"]


def test_a_failed_unit_does_not_block_a_unit_that_only_conflicts_with_it():
    from flotilla.plan import Plan
    from flotilla.results import UnitStatus
    from flotilla.scheduling import blocked_by_failures, ready_units
    from flotilla.spec import FeatureRequest

    request = FeatureRequest.model_validate(
        {
            "feature": {"id": "f", "title": "F"},
            "defaults": {"agent": "claude"},
            "units": [
                {"id": "first", "touches": ["app.py"], "priority": 1},
                {"id": "second", "touches": ["app.py"]},
                {"id": "needs-first", "depends_on": ["first"]},
            ],
        }
    )
    plan = Plan.from_request(request)
    assert plan.graph.edges["first", "second"]["reasons"] == {"conflict"}
    status = {
        "first": UnitStatus.FAILED,
        "second": UnitStatus.PENDING,
        "needs-first": UnitStatus.PENDING,
    }

    assert blocked_by_failures(plan, status) == {"needs-first": ["first"]}
    assert ready_units(plan, status, started=[]) == ["second"]
    # while the conflicting unit still runs, the other one waits
    assert ready_units(plan, {**status, "first": UnitStatus.RUNNING}, started=["first"]) == []


def test_class_room_counts_running_units_against_each_limit():
    room = ClassRoom({"light": 2, "heavy": 1}, running=["light", "heavy"])
    assert room.has_room("light")
    assert not room.has_room("heavy")
    room.take("light")
    assert not room.has_room("light")


def test_a_class_without_a_limit_always_has_room():
    room = ClassRoom({"light": 1}, running=["gpu", "gpu"])
    assert room.has_room("gpu")


def test_a_class_the_server_says_is_full_gets_no_unit_until_the_next_tick():
    room = ClassRoom({"standard": 2}, running=[])
    room.close("standard")
    assert not room.has_room("standard")
    assert ClassRoom({"standard": 2}, running=[]).has_room("standard")
