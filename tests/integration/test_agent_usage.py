"""Usage from every agent call: fake CLIs on PATH print their documented JSON result, and the
runner turns it into tokens, dollars, turns and wall time (estimated from the price table where
the CLI gives no cost); the final answer still reaches the summary and the log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flotilla.spec import AgentSpec
from flotilla.usage import Price, priced
from tasks.agents import AgentInvocation, run_agent, run_agent_until_done
from tests.fakes import cli_results
from tests.integration.test_agents import fakes, install_fake, inv  # noqa: F401 - fixtures

TEST_PRICES = {
    "gpt-5-codex": {"input": 1.0, "output": 10.0, "cached_input": 0.1},
    "gemini-2.5-pro": {"input": 2.0, "output": 12.0, "cached_input": 0.5},
}


@pytest.fixture
def counted(inv: AgentInvocation, monkeypatch: pytest.MonkeyPatch) -> AgentInvocation:  # noqa: F811
    """The invocation with a usage file, and a known price table."""
    monkeypatch.setenv("FLOTILLA_PRICES", json.dumps(TEST_PRICES))
    return inv.model_copy(update={"usage_file": inv.log_file.parent / "usage.json"})


def run_preset(
    preset: str, model: str | None, invocation: AgentInvocation, bin_dir: Path, monkeypatch
) -> object:
    install_fake(bin_dir, preset)
    monkeypatch.setenv("FAKE_OUTPUT", cli_results.printed(preset))
    outcome = run_agent(AgentSpec(preset=preset, model=model), invocation)
    assert outcome.ok, outcome.output_tail
    return outcome


def cost_from(prices: dict, model: str, input_tokens: int, cached: int, output: int) -> float:
    price = Price.model_validate(prices[model])
    return (
        (input_tokens - cached) * price.input + cached * price.cached_input + output * price.output
    ) / 1_000_000


def test_claude_reports_cost_tokens_and_turns_and_its_answer_becomes_the_summary(
    counted: AgentInvocation,
    fakes: Path,  # noqa: F811
    monkeypatch,
) -> None:
    outcome = run_preset("claude", "sonnet", counted, fakes, monkeypatch)
    raw = cli_results.CLAUDE["usage"]
    usage = outcome.usage
    assert usage.cost_usd == cli_results.CLAUDE["total_cost_usd"] and not usage.estimated
    assert usage.input_tokens == (
        raw["input_tokens"] + raw["cache_creation_input_tokens"] + raw["cache_read_input_tokens"]
    )
    assert usage.cached_tokens == raw["cache_read_input_tokens"]
    assert usage.output_tokens == raw["output_tokens"]
    assert usage.turns == cli_results.CLAUDE["num_turns"]
    assert usage.wall_s > 0 and usage.calls == 1
    assert counted.summary_file.read_text().strip() == cli_results.ANSWER
    assert f"the agent's answer:\n{cli_results.ANSWER}" in counted.log_file.read_text()


def test_codex_tokens_from_its_events_are_priced_as_an_estimate(
    counted: AgentInvocation,
    fakes: Path,  # noqa: F811
    monkeypatch,
) -> None:
    outcome = run_preset("codex", "gpt-5-codex", counted, fakes, monkeypatch)
    raw = cli_results.CODEX_EVENTS[-1]["usage"]
    usage = outcome.usage
    assert (usage.input_tokens, usage.cached_tokens, usage.output_tokens) == (
        raw["input_tokens"],
        raw["cached_input_tokens"],
        raw["output_tokens"],
    )
    assert usage.turns == 1 and usage.estimated
    expected = cost_from(TEST_PRICES, "gpt-5-codex", *raw.values())
    assert usage.cost_usd == pytest.approx(expected, abs=1e-6)
    assert outcome.answer == cli_results.ANSWER


def test_gemini_stats_per_model_are_summed_and_priced(
    counted: AgentInvocation,
    fakes: Path,  # noqa: F811
    monkeypatch,
) -> None:
    outcome = run_preset("gemini", "gemini-2.5-pro", counted, fakes, monkeypatch)
    stats = cli_results.GEMINI["stats"]["models"]["gemini-2.5-pro"]
    tokens = stats["tokens"]
    usage = outcome.usage
    assert usage.input_tokens == tokens["prompt"] and usage.cached_tokens == tokens["cached"]
    assert usage.output_tokens == tokens["candidates"] + tokens["thoughts"]
    assert usage.turns == stats["api"]["totalRequests"] and usage.estimated
    expected = cost_from(
        TEST_PRICES, "gemini-2.5-pro", usage.input_tokens, usage.cached_tokens, usage.output_tokens
    )
    assert usage.cost_usd == pytest.approx(expected, abs=1e-6)


def test_aider_reports_add_up_and_the_session_cost_wins(
    counted: AgentInvocation,
    fakes: Path,  # noqa: F811
    monkeypatch,
) -> None:
    usage = run_preset("aider", "sonnet", counted, fakes, monkeypatch).usage
    assert usage.turns == 2 and usage.cost_usd == 0.0186 and not usage.estimated
    assert usage.input_tokens == 2300 + 3100 + 1200 and usage.cached_tokens == 1200
    assert usage.output_tokens == 98 + 150


def test_opencode_steps_carry_tokens_and_cost(
    counted: AgentInvocation,
    fakes: Path,  # noqa: F811
    monkeypatch,
) -> None:
    usage = run_preset("opencode", "anthropic/claude-sonnet-4-5", counted, fakes, monkeypatch).usage
    part = cli_results.OPENCODE_EVENTS[-1]["part"]
    assert usage.cost_usd == part["cost"] and usage.turns == 1
    assert usage.cached_tokens == part["tokens"]["cache"]["read"]
    assert usage.output_tokens == part["tokens"]["output"] + part["tokens"]["reasoning"]


@pytest.mark.parametrize("preset", ["cursor-agent", "copilot"])
def test_a_cli_without_usage_still_has_its_wall_time(
    preset: str,
    counted: AgentInvocation,
    fakes: Path,  # noqa: F811
    monkeypatch,
) -> None:
    usage = run_preset(preset, None, counted, fakes, monkeypatch).usage
    assert usage.cost_usd is None and usage.tokens == 0
    assert usage.wall_s > 0 and not usage.known


def reporting_agent(report: str, then: str = "true") -> AgentSpec:
    """A command agent that writes `report` to $FLOTILLA_USAGE_FILE, then runs `then`."""
    return AgentSpec(
        command=f'printf "%s" "$REPORT" > "$FLOTILLA_USAGE_FILE"; {then}', env={"REPORT": report}
    )


def test_any_agent_may_write_its_usage_file(counted: AgentInvocation) -> None:
    report = {"input_tokens": 1000, "output_tokens": 200, "cost_usd": 0.05}
    agent = reporting_agent(json.dumps(report))
    usage = run_agent(agent, counted).usage
    assert (usage.input_tokens, usage.output_tokens, usage.cost_usd) == (1000, 200, 0.05)
    assert usage.source == "usage-file" and not usage.estimated


def test_a_usage_file_with_tokens_only_is_priced_by_its_model(counted: AgentInvocation) -> None:
    report = {"input_tokens": 1_000_000, "output_tokens": 100_000, "model": "gpt-5-codex"}
    agent = reporting_agent(json.dumps(report))
    usage = run_agent(agent, counted).usage
    assert usage.estimated
    assert usage.cost_usd == pytest.approx(
        cost_from(TEST_PRICES, "gpt-5-codex", 1_000_000, 0, 100_000)
    )


def test_rate_limited_calls_count_too(
    counted: AgentInvocation, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("FLOTILLA_RATE_LIMIT_DEFAULT_WAIT_S", "0")
    first = tmp_path / "limited-once"
    report = json.dumps({"input_tokens": 10, "output_tokens": 5, "cost_usd": 0.01})
    agent = reporting_agent(report, f"if [ ! -e {first} ]; then touch {first}; exit 75; fi")
    outcome = run_agent_until_done(agent, counted, sleep=lambda s: None)
    assert outcome.usage.calls == 2 and outcome.usage.cost_usd == pytest.approx(0.02)


def test_a_cost_the_cli_reported_is_never_replaced_by_an_estimate() -> None:
    from flotilla.usage import Usage

    reported = Usage(input_tokens=10, output_tokens=10, cost_usd=1.5)
    assert priced(reported, "sonnet", {"sonnet": Price(input=1, output=1)}) == reported
