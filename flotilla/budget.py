"""Budget arithmetic: what a run or a unit has spent, and whether a budget allows more.

Spend is always computed from the ledger (each attempt's usage is written there once and carried
forward by a resume), so it survives a crash and is never counted twice. Pure: the caller reads
the ledger.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel

from flotilla.results import UnitRecord
from flotilla.spec import Budget
from flotilla.usage import AttemptUsage, Usage, format_tokens, format_usd


class Spend(BaseModel):
    """Dollars, tokens and agent minutes spent so far; `estimated` if any dollar was."""

    usd: float = 0.0
    tokens: int = 0
    agent_minutes: float = 0.0
    estimated: bool = False

    @classmethod
    def of_usage(cls, usage: Usage) -> Spend:
        return cls(
            usd=usage.cost_usd or 0.0,
            tokens=usage.tokens,
            agent_minutes=usage.wall_s / 60,
            estimated=usage.estimated,
        )

    @classmethod
    def of_records(cls, records: Iterable[UnitRecord]) -> Spend:
        return cls.of_usage(Usage.total(r.total_usage for r in records))


def add_attempt_usage(record: UnitRecord, attempt: int, usage: Usage) -> None:
    """Add one agent call's usage to `record`'s entry for `attempt` (made if it is not the
    last one yet)."""
    entries = list(record.usage)
    if not entries or entries[-1].attempt != attempt:
        entries.append(AttemptUsage(attempt=attempt))
    entries[-1] = entries[-1].model_copy(update={"usage": entries[-1].usage + usage})
    record.usage = entries


def spent(budget: Budget | None, spend: Spend) -> list[str]:
    """The limits `spend` has reached, as `$1.20 of $1.00`; empty while the budget allows more."""
    if budget is None:
        return []
    reached = []
    if budget.usd is not None and spend.usd >= budget.usd:
        reached.append(f"{format_usd(spend.usd, spend.estimated)} of {format_usd(budget.usd)}")
    if budget.tokens is not None and spend.tokens >= budget.tokens:
        reached.append(f"{format_tokens(spend.tokens)} of {format_tokens(budget.tokens)} tokens")
    if budget.agent_minutes is not None and spend.agent_minutes >= budget.agent_minutes:
        reached.append(f"{spend.agent_minutes:.1f} of {budget.agent_minutes:g} agent minutes")
    return reached


def minutes_left(budget: Budget | None, spend: Spend) -> float | None:
    """Agent minutes the budget still allows (None: no minute limit); caps an agent's time."""
    if budget is None or budget.agent_minutes is None:
        return None
    return max(budget.agent_minutes - spend.agent_minutes, 0.0)


def raised(
    budget: Budget | None,
    usd: float | None = None,
    tokens: int | None = None,
    minutes: float | None = None,
) -> Budget | None:
    """`budget` with the limits given replaced (what `flotilla resume --budget-usd N` does)."""
    if usd is None and tokens is None and minutes is None:
        return budget
    limits = budget.model_dump() if budget is not None else {}
    given = {"usd": usd, "tokens": tokens, "agent_minutes": minutes}
    return Budget.model_validate(limits | {k: v for k, v in given.items() if v is not None})


def describe(budget: Budget | None) -> str:
    """`$5.00, 2.0M tokens, 120 agent minutes` (or `none`)."""
    if budget is None:
        return "none"
    parts = []
    if budget.usd is not None:
        parts.append(format_usd(budget.usd))
    if budget.tokens is not None:
        parts.append(f"{format_tokens(budget.tokens)} tokens")
    if budget.agent_minutes is not None:
        parts.append(f"{budget.agent_minutes:g} agent minutes")
    text = ", ".join(parts) or "no limit"
    return text + (" (hard)" if budget.hard else "")
