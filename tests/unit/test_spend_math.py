"""Budget arithmetic, the price table and the estimate: pure functions over plain data."""

from __future__ import annotations

import pytest

from flotilla.budget import Spend, describe, minutes_left, raised, spent
from flotilla.estimate import UsageSample, estimate_run, estimate_unit
from flotilla.plan import Plan
from flotilla.results import UnitRecord
from flotilla.settings import FlotillaSettings
from flotilla.spec import Budget, FeatureRequest
from flotilla.usage import (
    AttemptUsage,
    Price,
    Usage,
    parse_aider,
    parse_claude,
    price_for,
    priced,
)


def record(unit_id: str, *costs: float, wall_s: float = 60.0) -> UnitRecord:
    return UnitRecord(
        unit_id=unit_id,
        usage=[
            AttemptUsage(
                attempt=n,
                usage=Usage(input_tokens=100, output_tokens=10, cost_usd=c, wall_s=wall_s),
            )
            for n, c in enumerate(costs, 1)
        ],
    )


def test_spend_adds_every_attempt_of_every_unit_once() -> None:
    spend = Spend.of_records([record("a", 0.4, 0.4), record("b", 0.4)])
    assert spend.usd == pytest.approx(1.2) and spend.tokens == 3 * 110
    assert spend.agent_minutes == pytest.approx(3.0)


def test_a_budget_is_spent_when_any_limit_is_reached() -> None:
    spend = Spend(usd=1.2, tokens=5_000, agent_minutes=3)
    assert spent(Budget(usd=1.0), spend) == ["$1.20 of $1.00"]
    assert spent(Budget(usd=2.0, tokens=4_000), spend) == ["5.0k of 4.0k tokens"]
    assert spent(Budget(agent_minutes=3), spend) == ["3.0 of 3 agent minutes"]
    assert spent(Budget(usd=2.0, tokens=10_000, agent_minutes=10), spend) == []
    assert spent(None, spend) == []


def test_an_estimated_spend_says_so() -> None:
    assert spent(Budget(usd=1.0), Spend(usd=1.5, estimated=True)) == ["~$1.50 of $1.00"]


def test_raising_keeps_the_limits_not_named() -> None:
    budget = Budget(usd=1.0, tokens=1000, hard=True)
    assert raised(budget, usd=3.0) == Budget(usd=3.0, tokens=1000, hard=True)
    assert raised(None, minutes=30) == Budget(agent_minutes=30)
    assert raised(budget) is budget
    assert describe(raised(budget, usd=3.0)) == "$3.00, 1.0k tokens (hard)"


def test_minutes_left_caps_the_agent_time() -> None:
    assert minutes_left(Budget(agent_minutes=10), Spend(agent_minutes=4)) == 6
    assert minutes_left(Budget(agent_minutes=10), Spend(agent_minutes=40)) == 0
    assert minutes_left(Budget(usd=1), Spend()) is None


def test_prices_match_model_names_with_dates_and_providers() -> None:
    prices = {"claude-sonnet-4": Price(input=3, output=15), "sonnet": Price(input=1, output=1)}
    assert price_for("claude-sonnet-4-5-20250929", prices) is prices["claude-sonnet-4"]
    assert price_for("anthropic/claude-sonnet-4", prices) is prices["claude-sonnet-4"]
    assert price_for("sonnet", prices) is prices["sonnet"]
    assert price_for("llama-3", prices) is None


def test_tokens_without_a_cost_are_priced_and_marked_estimated() -> None:
    usage = Usage(input_tokens=2_000_000, cached_tokens=1_000_000, output_tokens=100_000)
    price = Price(input=3, output=15, cached_input=0.3)
    cost = priced(usage, "m", {"m": price})
    assert cost.estimated
    assert cost.cost_usd == pytest.approx(1 * 3 + 1 * 0.3 + 0.1 * 15)
    assert priced(usage, "unknown", {"m": price}).cost_usd is None


def test_the_price_table_is_editable_in_settings(monkeypatch) -> None:
    monkeypatch.setenv("FLOTILLA_PRICES", '{"house-model": {"input": 1, "output": 2}}')
    table = FlotillaSettings().price_table()
    assert table["house-model"] == Price(input=1, output=2) and "claude-sonnet-4" in table


def test_output_without_a_result_reports_nothing() -> None:
    assert not parse_claude("Error: not logged in\n").usage.known
    assert not parse_aider("Applied edit to hello.py\n").usage.known


def test_a_unit_estimate_scales_its_history_by_prompt_size() -> None:
    samples = [UsageSample(prompt_chars=100, cost_usd=c, duration_s=60) for c in (1, 2, 3)]
    same = estimate_unit("u", "claude", "standard", 100, samples)
    double = estimate_unit("u", "claude", "standard", 200, samples)
    huge = estimate_unit("u", "claude", "standard", 100_000, samples)
    assert same.cost.mid == 2 and same.cost.low < 2 < same.cost.high
    assert double.cost.mid == 4 and huge.cost.mid == 4  # scaling stops at 2x


def test_a_unit_estimate_prefers_history_from_its_own_class() -> None:
    samples = [
        UsageSample(resources="heavy", prompt_chars=10, cost_usd=5.0),
        UsageSample(resources="light", prompt_chars=10, cost_usd=0.1),
    ]
    assert estimate_unit("u", "a", "heavy", 10, samples).cost.mid == 5.0
    assert estimate_unit("u", "a", "standard", 10, samples).cost.mid == pytest.approx(2.55)


def test_the_run_estimate_sums_units_and_names_agents_without_history() -> None:
    request = FeatureRequest.model_validate(
        {
            "feature": {"id": "f", "title": "F"},
            "agents": {"cheap": {"command": "true"}},
            "defaults": {"agent": "cheap"},
            "units": [
                {"id": "a"},
                {"id": "b", "depends_on": ["a"]},
                {"id": "c", "agent": "codex"},
            ],
        }
    )
    plan = Plan.from_request(request)
    history = {"cheap": [UsageSample(cost_usd=0.5, duration_s=100) for _ in range(3)]}
    estimate = estimate_run(plan, history, {"a": 10, "b": 10, "c": 10})
    assert estimate.cost.mid == pytest.approx(1.0) and estimate.no_history == ["codex"]
    assert estimate.duration.mid == pytest.approx(200)  # a then b, one after the other
    assert "No history for agent codex: its units are not in the estimate." in estimate.lines()


def test_the_pause_line_names_the_flag_for_the_limit_that_was_reached() -> None:
    from tasks.spending import budget_pause_message

    assert budget_pause_message("k", ["$1.20 of $1.00"]) == (
        "paused: budget spent ($1.20 of $1.00); `flotilla resume k --budget-usd N` to go on"
    )
    assert "--budget-tokens N" in budget_pause_message("k", ["5.0k of 4.0k tokens"])
    assert "--budget-minutes N" in budget_pause_message("k", ["3.0 of 3 agent minutes"])
