"""The pure side of best-of-N: branch names, slots, the pick and how it reads."""

from __future__ import annotations

import pytest

from flotilla.candidates import (
    candidate_branch,
    first_passed,
    pick_note,
    read_judge_answer,
    slot_keys,
    smallest_diff,
    width,
)
from flotilla.plan import resolve_settings
from flotilla.results import CandidateOutcome, CandidateResult, FailureClass, TestReport
from flotilla.spec import FeatureRequest
from flotilla.validation import validate_request

PASSED, FAILED, STOPPED = CandidateOutcome.PASSED, CandidateOutcome.FAILED, CandidateOutcome.STOPPED


def result(number: int, outcome: CandidateOutcome, lines: int = 0, **extra) -> CandidateResult:
    tests = TestReport(command="pytest", exit_code=0 if outcome == PASSED else 1)
    return CandidateResult(number=number, outcome=outcome, diff_lines=lines, tests=tests, **extra)


def failed_tests(number: int) -> CandidateResult:
    return result(number, FAILED, failure_class=FailureClass.TESTS_FAILED)


def test_candidate_branches_are_legal_git_names_next_to_the_units():
    assert candidate_branch("flotilla/feat--api", 2) == "flotilla/feat--api+2"
    assert "~" not in candidate_branch("flotilla/feat--api", 2)


def test_each_candidate_running_at_once_takes_a_class_slot_up_to_the_limit():
    assert width(3, 5) == 3 and width(3, 2) == 2 and width(3, None) == 3 and width(1, 5) == 1
    assert slot_keys("api", 1) == ["api"]
    assert slot_keys("api", 3) == ["api+1", "api+2", "api+3"]


def test_first_pass_takes_the_first_to_pass_in_finishing_order():
    order = [failed_tests(3), result(2, PASSED, 40), result(1, PASSED, 5)]
    assert first_passed(order) == 2
    assert first_passed([failed_tests(1)]) is None


def test_without_a_judge_the_smallest_passing_diff_wins_and_ties_go_to_the_lower_number():
    results = [result(1, PASSED, 30), failed_tests(2), result(3, PASSED, 12), result(4, PASSED, 12)]
    assert smallest_diff(results) == 3
    assert smallest_diff([failed_tests(1), result(2, STOPPED)]) is None


def test_the_judge_answer_is_the_last_number_it_printed_and_must_name_a_passing_candidate():
    assert read_judge_answer("thinking...\n\nI pick candidate 3\n", [1, 3]) == 3
    assert read_judge_answer("2", [2]) == 2
    with pytest.raises(ValueError, match="not one of 1, 3"):
        read_judge_answer("2\n", [1, 3])
    with pytest.raises(ValueError, match="no candidate number"):
        read_judge_answer("the first one\n", [1, 3])
    with pytest.raises(ValueError, match=r"\(nothing\)"):
        read_judge_answer("", [1])


def test_the_note_says_who_won_why_and_what_became_of_the_others():
    results = [failed_tests(1), result(2, PASSED, 40), failed_tests(3)]
    assert pick_note(results, 2) == (
        "candidate 2 of 3 won: tests passed, 40 lines; 1 and 3 failed tests"
    )
    results = [result(1, PASSED, 9), result(2, PASSED, 1), result(3, STOPPED)]
    assert pick_note(results, 2, "smallest diff") == (
        "candidate 2 of 3 won: tests passed, 1 line (smallest diff); 1 passed, not chosen; "
        "3 stopped"
    )
    results = [failed_tests(1), result(2, FAILED, failure_class=FailureClass.TIMED_OUT)]
    assert (
        pick_note(results, None) == "no candidate of 2 passed: 1 failed tests; 2 failed (timed_out)"
    )


def request(**unit) -> FeatureRequest:
    return FeatureRequest.model_validate(
        {
            "feature": {"id": "f", "title": "F"},
            "agents": {"fast": {"preset": "claude", "model": "haiku"}, "deep": {"preset": "codex"}},
            "defaults": {"agent": "fast"},
            "units": [{"id": "u", **unit}],
        }
    )


def test_candidates_mix_agents_in_turn_and_without_best_of_run_one_each():
    req = request(candidates=["fast", "deep"])
    settings = resolve_settings(req, req.units[0], None)
    assert settings.best_of == 2 and [c.name for c in settings.candidates] == ["fast", "deep"]
    req = request(best_of=3, candidates=["fast", "deep"], pick="all_pass_then_judge")
    settings = resolve_settings(req, req.units[0], None)
    assert [c.name for c in settings.candidates] == ["fast", "deep", "fast"]
    assert settings.pick == "all_pass_then_judge" and settings.candidates[0].agent.model == "haiku"


def test_best_of_alone_repeats_the_units_agent_and_a_plain_unit_has_no_candidates():
    req = request(best_of=2)
    assert [c.name for c in resolve_settings(req, req.units[0], None).candidates] == ["fast"] * 2
    req = request()
    settings = resolve_settings(req, req.units[0], None)
    assert settings.best_of == 1 and settings.candidates == []


def test_an_unknown_candidate_agent_is_reported_where_it_is():
    issues = validate_request(request(candidates=["fast", "nobody"]))
    assert any("nobody" in str(issue) and "candidates" in str(issue) for issue in issues)


def test_the_estimate_pays_for_every_candidate():
    from flotilla.estimate import UsageSample, estimate_run
    from flotilla.plan import Plan

    req = FeatureRequest.model_validate(
        {
            "feature": {"id": "f", "title": "F"},
            "agents": {"cheap": {"command": "true"}},
            "defaults": {"agent": "cheap"},
            "units": [{"id": "one"}, {"id": "three", "best_of": 3}],
        }
    )
    history = {"cheap": [UsageSample(cost_usd=0.5, duration_s=100) for _ in range(3)]}
    estimate = estimate_run(Plan.from_request(req), history, {"one": 10, "three": 10})
    assert {u.unit_id: u.cost.mid for u in estimate.units} == {"one": 0.5, "three": 1.5}
