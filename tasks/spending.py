"""The run's budget and spend in the store: the budget in force, its raise by `flotilla resume`,
and the spend so far (summed from the ledger, where each attempt's usage is written once).

The request's `budget:` is the run's first budget; `flotilla resume KEY --budget-usd N` writes
`runs/<key>/control/budget.json`, which then wins, so the raise survives later resumes too.
"""

from __future__ import annotations

from flotilla.budget import Spend, spent
from flotilla.runs import RunContext
from flotilla.spec import Budget
from flotilla.usage import Usage
from tasks.store import RunStore


def budget_key(runs: RunStore) -> str:
    return f"{runs.prefix}/control/budget.json"


def run_budget(runs: RunStore, ctx: RunContext) -> Budget | None:
    """The run's budget now: the last raise, else the request's."""
    try:
        return runs.store.read_model(budget_key(runs), Budget)
    except KeyError:
        return ctx.request.budget


def save_run_budget(runs: RunStore, budget: Budget | None) -> None:
    if budget is None:
        runs.store.delete(budget_key(runs))
    else:
        runs.store.write_json(budget_key(runs), budget)


def run_spend(runs: RunStore) -> Spend:
    """What every agent of the run has spent so far: the units' (from the ledger) and the
    planner's."""
    units = Usage.total(r.total_usage for r in runs.read_ledger().values())
    return Spend.of_usage(units + other_usage(runs))


def other_key(runs: RunStore, name: str) -> str:
    """Spend of agents that are not a unit's (the llm decomposer's planner)."""
    return f"{runs.prefix}/spend/{name}.json"


def add_other_usage(runs: RunStore, name: str, usage: Usage) -> None:
    key = other_key(runs, name)
    try:
        before = runs.store.read_model(key, Usage)
    except KeyError:
        before = Usage()
    runs.store.write_json(key, before + usage)


def other_usage(runs: RunStore) -> Usage:
    total = Usage()
    for key in runs.store.list(f"{runs.prefix}/spend"):
        try:
            total = total + runs.store.read_model(key, Usage)
        except (KeyError, ValueError):
            continue
    return total


def run_budget_spent(runs: RunStore, ctx: RunContext) -> tuple[Budget | None, list[str]]:
    """The budget and the limits it has reached (empty while it allows more)."""
    budget = run_budget(runs, ctx)
    if budget is None:
        return None, []
    return budget, spent(budget, run_spend(runs))


def budget_pause_message(run_key: str, reached: list[str]) -> str:
    """The line a run paused by its budget ends with; it names the way on."""
    first = reached[0] if reached else ""
    flag = "--budget-usd N"
    if "tokens" in first:
        flag = "--budget-tokens N"
    elif "agent minutes" in first:
        flag = "--budget-minutes N"
    return (
        f"paused: budget spent ({'; '.join(reached)}); `flotilla resume {run_key} {flag}` to go on"
    )


def stop_key(runs: RunStore) -> str:
    """Written when a hard run budget is spent: the units in flight stop their agents."""
    return f"{runs.prefix}/control/budget-stop.json"


def request_stop(runs: RunStore, note: str) -> None:
    runs.store.write_json(stop_key(runs), {"reason": note})


def clear_stop(runs: RunStore) -> None:
    runs.store.delete(stop_key(runs))


def stop_requested(runs: RunStore) -> bool:
    return runs.store.exists(stop_key(runs))
