"""Spend where people read it: the PR description, the unit report, the run summary line."""

from __future__ import annotations

from flotilla.results import UnitRecord, UnitStatus
from flotilla.usage import AttemptUsage, Usage
from tasks.publishing import render_pr
from tasks.reporting import usage_lines, with_cost
from tests.unit.test_pr_render import draft

CLAUDE_CALL = Usage(
    input_tokens=6500, cached_tokens=5000, output_tokens=800, cost_usd=0.4, turns=4, wall_s=62
)
CODEX_CALL = Usage(input_tokens=24763, output_tokens=122, cost_usd=0.0047, estimated=True, wall_s=9)


def paid(record: UnitRecord, *calls: Usage) -> UnitRecord:
    usage = [AttemptUsage(attempt=n, usage=u) for n, u in enumerate(calls, 1)]
    return record.model_copy(update={"usage": usage})


def test_the_pr_description_totals_the_spend_and_shows_each_units() -> None:
    base = draft()
    units = [paid(base.units[0], CLAUDE_CALL, CLAUDE_CALL), paid(base.units[1], CODEX_CALL)]
    text = render_pr(base.model_copy(update={"units": [*units, base.units[2]]}))
    assert "- **Agent spend:** ~$0.80 · 37.8k in (10.0k cached) / 1.7k out · 8 turns" in text
    assert "Usage: $0.80 · 13.0k in (10.0k cached) / 1.6k out · 8 turns · 124s agent time" in text
    assert "Usage: ~$0.0047 · 24.8k in / 122 out · 9s agent time" in text


def test_a_unit_report_lists_its_attempts_and_the_table_a_cost_column() -> None:
    record = paid(UnitRecord(unit_id="api", status=UnitStatus.SUCCEEDED), CODEX_CALL, CLAUDE_CALL)
    lines = usage_lines(record)
    assert (
        lines[0]
        == "**Usage:** ~$0.40 · 31.3k in (5.0k cached) / 922 out · 4 turns · 71s agent time"
    )
    assert "- attempt 1: ~$0.0047 · 24.8k in / 122 out · 9s agent time" in lines
    cells = with_cost({"unit": "api", "last error": ""}, record)
    assert list(cells) == ["unit", "cost", "last error"] and cells["cost"] == "~$0.40"
    assert with_cost({"unit": "x", "last error": ""}, None)["cost"] == ""


def test_the_run_summary_line_shows_a_cost_only_when_one_is_known() -> None:
    assert "$0.40" in paid(UnitRecord(unit_id="a"), CLAUDE_CALL).line()
    assert "$" not in paid(UnitRecord(unit_id="a"), Usage(wall_s=3)).line()
