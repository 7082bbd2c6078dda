"""ETAs from the plan, the ledger and typical durations per resource class."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flotilla.eta import estimate, eta_text, format_duration, run_eta_text, unit_rows
from flotilla.plan import Plan
from flotilla.results import UnitRecord, UnitStatus
from flotilla.spec import FeatureRequest

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


def plan_of(*units: dict, resources: dict | None = None) -> Plan:
    request = FeatureRequest.model_validate(
        {
            "feature": {"id": "feat", "title": "Feature"},
            "defaults": {"agent": "claude"},
            "units": list(units),
            "resources": resources or {},
        }
    )
    return Plan.from_request(request)


def running(unit: str, for_s: float, **extra) -> UnitRecord:
    return UnitRecord(
        unit_id=unit,
        status=UnitStatus.RUNNING,
        started_at=NOW - timedelta(seconds=for_s),
        step="agent (iteration 1)",
        attempts=1,
        **extra,
    )


def done(unit: str, took_s: float, status: UnitStatus = UnitStatus.SUCCEEDED) -> UnitRecord:
    return UnitRecord(unit_id=unit, status=status, duration_s=took_s, attempts=1)


CHAIN = (
    {"id": "a"},
    {"id": "b", "depends_on": ["a"]},
    {"id": "c", "depends_on": ["b"]},
    {"id": "side"},
)


def test_nothing_started_follows_the_critical_path_of_typical_durations():
    eta = estimate(plan_of(*CHAIN), {}, {"standard": 100.0}, NOW)
    assert {u: e.remaining_s for u, e in eta.units.items()} == {
        "a": 100.0,
        "b": 200.0,
        "c": 300.0,
        "side": 100.0,
    }
    assert eta.remaining_s == 300.0
    assert eta.critical_path == ["a", "b", "c"]
    assert eta.finish_at == NOW + timedelta(seconds=300)


def test_a_running_unit_counts_its_elapsed_time_and_its_dependents_wait_for_it():
    records = {"a": running("a", 40), "side": done("side", 90)}
    eta = estimate(plan_of(*CHAIN), records, {"standard": 100.0}, NOW)
    assert eta.units["a"].elapsed_s == 40 and eta.units["a"].remaining_s == 60
    assert eta.units["b"].remaining_s == 160 and eta.units["c"].remaining_s == 260
    assert eta.units["side"].remaining_s == 0
    assert eta.remaining_s == 260


def test_a_unit_running_longer_than_usual_is_overdue_not_negative():
    eta = estimate(plan_of({"id": "a"}), {"a": running("a", 250)}, {"standard": 100.0}, NOW)
    assert eta.units["a"].overdue and eta.units["a"].remaining_s == 0
    assert eta_text(eta.units["a"], UnitStatus.RUNNING) == "overdue"


def test_estimate_s_wins_over_the_class_and_each_class_has_its_own_typical_duration():
    plan = plan_of(
        {"id": "quick", "resources": "light"},
        {"id": "big", "resources": "heavy"},
        {"id": "told", "resources": "heavy", "estimate_s": 5},
    )
    eta = estimate(plan, {}, {"light": 10.0, "heavy": 600.0}, NOW)
    assert [eta.units[u].expected_s for u in ("quick", "big", "told")] == [10.0, 600.0, 5.0]


def test_without_recorded_durations_this_runs_finished_units_are_the_guide():
    plan = plan_of({"id": "a"}, {"id": "b"}, {"id": "c", "depends_on": ["b"]})
    unknown = estimate(plan, {}, {}, NOW)
    assert unknown.remaining_s is None and unknown.units["a"].remaining_s is None
    assert run_eta_text(unknown).startswith("unknown")
    learned = estimate(plan, {"a": done("a", 30)}, {}, NOW)
    assert learned.units["c"].remaining_s == 60 and learned.remaining_s == 60


def test_failed_units_and_everything_behind_them_never_finish_and_do_not_hold_the_run():
    records = {"a": done("a", 10, UnitStatus.FAILED), "side": running("side", 5)}
    eta = estimate(plan_of(*CHAIN), records, {"standard": 20.0}, NOW)
    assert eta.units["a"].never and eta.units["b"].never and eta.units["c"].never
    assert eta.remaining_s == 15
    assert eta_text(eta.units["b"], UnitStatus.PENDING) == "-"


def test_the_run_cannot_beat_its_work_spread_over_the_allowed_concurrency():
    plan = plan_of(*({"id": f"u{i}"} for i in range(4)))
    assert estimate(plan, {}, {"standard": 60.0}, NOW).remaining_s == 60
    assert estimate(plan, {}, {"standard": 60.0}, NOW, max_concurrent=2).remaining_s == 120
    # a resource class's limit (standard: 5 by default; here gpu: 3) caps it too
    gpu = plan_of(*({"id": f"u{i}", "resources": "gpu"} for i in range(6)), resources={"gpu": 3})
    assert estimate(gpu, {}, {"gpu": 60.0}, NOW).remaining_s == 120


def test_a_finished_run_has_nothing_left():
    records = {u["id"]: done(u["id"], 5) for u in CHAIN}
    eta = estimate(plan_of(*CHAIN), records, {}, NOW)
    assert eta.remaining_s == 0 and eta.critical_path == []


def test_rows_show_attempts_steps_elapsed_eta_and_the_first_line_of_the_error():
    plan = plan_of({"id": "a", "retry_policy": {"max_attempts": 3}}, {"id": "b"}, {"id": "c"})
    records = {
        "a": running("a", 75, error="previous attempt failed\nwith details"),
        "b": done("b", 42, UnitStatus.FAILED).model_copy(
            update={"error": "agent exited with code 3:\nboom", "step": "failed"}
        ),
    }
    rows = unit_rows(plan, records, estimate(plan, records, {"standard": 100.0}, NOW))
    cells = {r.unit: r.cells() for r in rows}
    assert cells["a"] == {
        "unit": "a",
        "status": "running",
        "step": "agent (iteration 1)",
        "attempt": "1/3",
        "elapsed": "1m 15s",
        "eta": "~25s",
        "last error": "previous attempt failed",
    }
    assert cells["b"]["status"] == "failed" and cells["b"]["eta"] == ""
    assert cells["b"]["last error"] == "agent exited with code 3: boom"
    assert cells["c"] == {
        "unit": "c",
        "status": "pending",
        "step": "",
        "attempt": "",
        "elapsed": "",
        "eta": "~1m 40s",
        "last error": "",
    }


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.4, "59s"), (60, "1m 00s"), (185, "3m 05s"), (7260, "2h 01m")],
)
def test_durations_read_like_a_clock(seconds, text):
    assert format_duration(seconds) == text
