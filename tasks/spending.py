"""The run's budget and spend in the store: the budget in force, its raise by `flotilla resume`,
and the spend so far (summed from the ledger, where each attempt's usage is written once).

The request's `budget:` is the run's first budget; `flotilla resume KEY --budget-usd N` writes
`runs/<key>/control/budget.json`, which then wins, so the raise survives later resumes too.
"""

from __future__ import annotations

from collections.abc import Callable

from flotilla.budget import Spend, minutes_left, spent
from flotilla.runs import RunContext
from flotilla.spec import Budget, UnitSpec
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


class UnitBudget:
    """One unit's budget (its own, else `defaults.budget`) and the run's, as the work loop asks."""

    def __init__(self, runs: RunStore, ctx: RunContext, unit: UnitSpec):
        self.runs, self.ctx = runs, ctx
        self.own = unit.budget or ctx.request.defaults.budget

    def refusal(self, usage: Usage, attempt: int, iteration: int) -> str:
        """Why the next agent call must not start ("" when it may): the unit's budget is spent;
        or the run's, for a new attempt (or any call, with `hard: true`). The scheduler checked
        the run's before submitting, but a unit may have waited for its class's slot since."""
        reached = spent(self.own, Spend.of_usage(usage))
        if reached:
            return f"unit budget spent ({'; '.join(reached)}); not retried"
        budget, reached = run_budget_spent(self.runs, self.ctx)
        if not reached or (iteration > 1 and not (budget is not None and budget.hard)):
            return ""
        if iteration > 1:
            what = "stopped, partial work kept on the branch"
        else:
            what = "not started" if attempt == 1 else "no new attempt"
        return f"run budget spent ({'; '.join(reached)}); {what}"

    def stop_check(self) -> Callable[[], bool] | None:
        """For a hard run budget: the check that stops the unit's agent once it is spent."""
        budget = run_budget(self.runs, self.ctx)
        if budget is None or not budget.hard:
            return None
        return lambda: stop_requested(self.runs)

    def stopped(self) -> bool:
        """True when a hard run budget stopped the units in flight."""
        return self.stop_check() is not None and stop_requested(self.runs)

    def agent_timeout(self, usage: Usage, limit: float) -> float:
        """`limit`, cut to the agent minutes the unit's budget has left."""
        left = minutes_left(self.own, Spend.of_usage(usage))
        return limit if left is None else max(min(limit, left * 60), 1.0)
