"""The decompose stage: the request becomes a Plan, saved to the store."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flotilla.runs import RunContext
from flotilla.spec import UnitSpec
from tasks.decomposers import static_plan
from tasks.units import run_store_for


@flow(name="decompose", persist_result=False)
def decompose(ctx: RunContext) -> list[UnitSpec]:
    plan = static_plan(ctx)
    runs = run_store_for(ctx)
    runs.store.write_json(runs.plan_key, plan.to_json())
    path, length = plan.critical_path()
    get_run_logger().info(
        "Plan: %d units in %d levels; critical path %s (%.0f).",
        len(plan.units),
        len(plan.levels()),
        " -> ".join(path),
        length,
    )
    return list(plan.units.values())
