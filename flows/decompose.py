"""The decompose stage: the request becomes a Plan, saved to the store.

`static` mode takes the request's units. `llm` mode asks an agent for them, round after round
with the previous round's problems, until the answer passes the same checks as a hand-written
request or `max_rounds` is spent. The accepted plan is saved (`runs/<key>/plan.json`), so a
resumed run reuses it instead of asking again.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flotilla.plan import Plan
from flotilla.runs import RunContext
from flotilla.spec import UnitSpec
from tasks.decomposers import (
    Answer,
    DecomposeFailed,
    ask,
    build_prompt,
    check_answer,
    file_tree,
    plan_for,
    planner_agent,
    static_plan,
)
from tasks.stage_inputs import RunRef
from tasks.stats import typical_durations
from tasks.units import run_store_for, workspace_for


@flow(name="decompose", persist_result=False)
def decompose(run: RunRef) -> list[UnitSpec]:
    """The run's units, planned and saved; `run` is a reference (tasks/stage_inputs.py)."""
    ctx = run.ctx
    runs = run_store_for(ctx)
    durations = typical_durations(runs.store)
    stage = ctx.stage("plan_decomposer")
    extra: dict = {"source": "static"}
    if stage is not None and stage.mode == "llm" and not ctx.request.units:
        units, extra = _saved_llm_units(ctx) or llm_units(ctx)
        plan = plan_for(ctx, units, durations)
    else:
        plan = static_plan(ctx, durations)
    runs.store.write_json(runs.plan_key, {**extra, **plan.to_json()})
    _log_plan(plan)
    return list(plan.units.values())


def llm_units(ctx: RunContext) -> tuple[list[UnitSpec], dict]:
    """Ask the planner agent until its plan is valid; every round is kept in the store."""
    logger = get_run_logger()
    stage = ctx.stage("plan_decomposer")
    _, agent_name = planner_agent(ctx)  # fails early, before any checkout, if there is none
    runs = run_store_for(ctx)
    workspace = workspace_for(ctx)
    base = workspace.branch_sha(ctx.base) or workspace.prepare()
    worktree = workspace.scratch_worktree("decompose", base)
    tree = file_tree(workspace, base)
    previous: Answer | None = None
    try:
        for round_ in range(1, stage.max_rounds + 1):
            prompt = build_prompt(ctx.request, tree, previous)
            name = f"plan-round-{round_}"
            text = ask_agent.with_options(task_run_name=name)(ctx, worktree, prompt, round_)
            answer = check_answer(ctx.request, text, round_)
            prefix = f"{runs.prefix}/decompose/round-{round_}"
            runs.store.write_text(f"{prefix}/prompt.md", prompt)
            runs.store.write_text(f"{prefix}/answer.txt", text)
            if answer.accepted:
                logger.info("Round %d: the plan of %d unit(s) is valid.", round_, len(answer.units))
                return answer.units, {"source": "llm", "agent": agent_name, "rounds": round_}
            runs.store.write_text(f"{prefix}/problems.txt", "\n".join(answer.problems) + "\n")
            logger.warning(
                "Round %d: the plan was rejected: %s", round_, "; ".join(answer.problems)
            )
            previous = answer
    finally:
        workspace.remove_worktree(worktree)
    problems = "\n".join(f"  - {p}" for p in previous.problems) if previous else ""
    raise DecomposeFailed(
        f"The decomposer agent {agent_name!r} gave no valid plan in {stage.max_rounds} round(s) "
        f"for feature {ctx.feature_id!r}. The last answer's problems:\n{problems}\nEvery "
        f"prompt and answer is in {runs.store.uri(runs.prefix + '/decompose')}. Raise "
        "`max_rounds`, improve the feature description, or list the units in the request."
    )


@task(name="plan-round", persist_result=False, cache_policy=NO_CACHE)
def ask_agent(ctx: RunContext, worktree, prompt: str, round_: int) -> str:
    return ask(ctx, workspace_for(ctx), worktree, prompt, round_)


def _saved_llm_units(ctx: RunContext) -> tuple[list[UnitSpec], dict] | None:
    """The plan this run already accepted (a resumed run does not ask the agent again)."""
    runs = run_store_for(ctx)
    try:
        saved = runs.store.read_json(runs.plan_key)
    except KeyError:
        return None
    if saved.get("source") != "llm" or not saved.get("units"):
        return None
    get_run_logger().info("Reusing the plan this run accepted in round %s.", saved.get("rounds"))
    units = [UnitSpec.model_validate(u) for u in saved["units"]]
    return units, {k: saved[k] for k in ("source", "agent", "rounds") if k in saved}


def _log_plan(plan: Plan) -> None:
    path, length = plan.critical_path()
    bound = plan.lower_bound()
    get_run_logger().info(
        "Plan: %d units in %d levels; critical path %s (%.4g); makespan lower bound %.4g; "
        "%d conflict group(s).",
        len(plan.units),
        len(plan.levels()),
        " -> ".join(path),
        length,
        bound.value,
        len(plan.conflict_groups),
    )
