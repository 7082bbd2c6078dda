"""Turning a feature request into a Plan.

The static decomposer takes the units the request already lists. An LLM decomposer (an agent
that answers with JSON units) plugs in here too.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from flotilla.errors import Problem, SpecError
from flotilla.plan import Plan
from flotilla.runs import RunContext


@task(name="static-plan", persist_result=False, cache_policy=NO_CACHE)
def static_plan(ctx: RunContext) -> Plan:
    stage = ctx.stage("plan_decomposer")
    if not ctx.request.units:
        raise SpecError(
            "request",
            [
                Problem(
                    "units",
                    "the request lists no units and the decompose stage is in `static` mode; "
                    "list the units or set `mode: llm` on the plan_decomposer stage",
                )
            ],
        )
    return Plan.from_request(ctx.request, ctx.stage("work_loop") or stage)
