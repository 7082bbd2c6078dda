"""Best-of-N end to end: candidates on their own branches, told their number, one winner whose
commit becomes the unit's branch, the losers kept and listed, their spend counted."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import yaml

from flotilla.results import CandidateOutcome, FailureClass, UnitStatus
from tasks.store import ArtifactStore, RunStore
from tests.e2e.durability_helpers import cli, run_args
from tests.e2e.helpers import git, make_target

AGENT = Path(__file__).with_name("candidate_agent.py")
TEST = f"{sys.executable} -c \"import pathlib,sys; sys.exit(pathlib.Path('answer.txt').read_text().strip() != '42')\""


def best_of_request(
    tmp_path: Path, plan: dict, markers: Path, extra: dict | None = None, **unit
) -> Path:
    request = {
        "feature": {"id": "pick", "title": "Pick a winner"},
        "test": TEST,
        "agents": {
            "script": {
                "command": f"{sys.executable} {AGENT}",
                "env": {"PLAN": json.dumps(plan), "MARKERS": str(markers)},
            }
        },
        "defaults": {
            "agent": "script",
            "test": TEST,
            "timeout_s": 60,
            "max_iterations": 1,
            "retry_policy": {"max_attempts": 1},
        },
        "units": [{"id": "answer", "touches": ["answer.txt", "notes.txt"], **unit}],
        **(extra or {}),
    }
    path = tmp_path / "request.yaml"
    path.write_text(yaml.safe_dump(request, sort_keys=False))
    return path


def marks(markers: Path) -> list[str]:
    return markers.read_text().splitlines() if markers.exists() else []


def run(tmp_path: Path, request: Path, key: str) -> tuple[int, RunStore, Path]:
    target = make_target(tmp_path / "target")
    store = str(tmp_path / "store")
    code = cli(*run_args(request, target, store, tmp_path / "work", key))
    return code, RunStore(ArtifactStore(store), key), tmp_path / "work"


def clone_of(work: Path, key: str) -> Path:
    """Flotilla's own clone of the target, where every unit and candidate branch is kept."""
    return work / key / "repo.git"


def test_best_of_three_where_only_candidate_two_passes(tmp_path):
    markers = tmp_path / "markers"
    # candidate 2 takes longer, so the others' tests have failed before it passes
    plan = {"1": {"answer": "41"}, "2": {"answer": "42", "lines": 3, "sleep": 3}, "3": {}}
    request = best_of_request(tmp_path, plan, markers, best_of=3)

    code, runs, work = run(tmp_path, request, "best3")

    assert code == 0
    record = runs.read_record("answer")
    assert record.status == UnitStatus.SUCCEEDED and record.winner == 2
    assert sorted(m for m in marks(markers) if m.startswith("start")) == [
        "start 1",
        "start 2",
        "start 3",
    ]
    outcomes = {c.number: c for c in record.candidates}
    assert outcomes[2].outcome == CandidateOutcome.PASSED
    for loser in (1, 3):
        assert outcomes[loser].outcome == CandidateOutcome.FAILED
        assert outcomes[loser].failure_class == FailureClass.TESTS_FAILED
        assert outcomes[loser].branch == f"flotilla/pick--answer+{loser}"
    assert record.pick_note == "candidate 2 of 3 won: tests passed, 4 lines; 1 and 3 failed tests"
    clone = clone_of(work, "best3")
    assert git(clone, "rev-parse", "flotilla/pick--answer") == outcomes[2].commit == record.commit
    assert git(clone, "show", f"{record.commit}:answer.txt") == "42"
    for loser, answer in ((1, "41"), (3, "41")):  # the losers' work is kept on their branches
        assert git(clone, "show", f"flotilla/pick--answer+{loser}:answer.txt") == answer
    assert round(record.total_usage.cost_usd, 6) == 0.3  # every candidate's spend is the unit's
    pr = runs.store.read_text(runs.pr_key)
    assert "**Best of 3:** candidate 2 of 3 won" in pr
    for loser in (1, 3):  # pushed with the unit's branch, for a reader to compare
        target = tmp_path / "target"
        assert git(target, "rev-parse", f"flotilla/pick--answer+{loser}") == outcomes[loser].commit


def test_all_pass_then_judge_asks_the_judge(tmp_path):
    markers = tmp_path / "markers"
    plan = {str(k): {"answer": "42", "lines": k} for k in (1, 2, 3)}
    judge = tmp_path / "judge.sh"
    judge.write_text(
        '#!/bin/sh\nls "$FLOTILLA_CANDIDATES_DIR" > "$FLOTILLA_CANDIDATES_DIR/../seen"\n'
        "echo 'I pick candidate 3'\n"
    )
    judge.chmod(0o755)
    request = best_of_request(
        tmp_path, plan, markers, best_of=3, pick="all_pass_then_judge", judge=str(judge)
    )

    code, runs, work = run(tmp_path, request, "judged")

    assert code == 0
    record = runs.read_record("answer")
    assert record.winner == 3
    assert record.pick_note.startswith("candidate 3 of 3 won: tests passed, 4 lines (chosen by")
    assert all(c.outcome == CandidateOutcome.PASSED for c in record.candidates)
    seen = (work / "judged" / "units" / "answer" / "seen").read_text().split()
    assert {"1.diff", "2.diff", "3.diff", "1.tests.json", "passed.txt"} <= set(seen)
    assert git(clone_of(work, "judged"), "rev-parse", "flotilla/pick--answer") == record.commit


def test_without_a_judge_the_smallest_diff_wins(tmp_path):
    markers = tmp_path / "markers"
    plan = {"1": {"answer": "42", "lines": 9}, "2": {"answer": "42", "lines": 2}, "3": {}}
    request = best_of_request(tmp_path, plan, markers, best_of=3, pick="all_pass_then_judge")

    code, runs, _ = run(tmp_path, request, "smallest")

    assert code == 0
    record = runs.read_record("answer")
    assert record.winner == 2
    assert record.pick_note == (
        "candidate 2 of 3 won: tests passed, 3 lines (smallest diff); 1 passed, not chosen; "
        "3 failed tests"
    )


def test_first_pass_stops_the_slow_candidates(tmp_path):
    markers = tmp_path / "markers"
    plan = {"1": {"answer": "42", "sleep": 60}, "2": {"answer": "42"}, "3": {"sleep": 60}}
    request = best_of_request(tmp_path, plan, markers, best_of=3)

    code, runs, _ = run(tmp_path, request, "fast")

    assert code == 0
    record = runs.read_record("answer")
    assert record.winner == 2
    outcomes = {c.number: c.outcome for c in record.candidates}
    assert outcomes == {
        1: CandidateOutcome.STOPPED,
        2: CandidateOutcome.PASSED,
        3: CandidateOutcome.STOPPED,
    }
    assert "end 1" not in marks(markers) and "end 3" not in marks(markers)  # killed mid-sleep
    assert record.pick_note.endswith("1 and 3 stopped")


def test_resume_after_a_kill_keeps_the_finished_candidates(tmp_path):
    from tasks.recovery import process_alive
    from tests.e2e.durability_helpers import (
        kill_leftovers,
        start_orchestrator,
        wait_for,
        wait_for_pid,
    )

    markers, hold, pid_file = tmp_path / "markers", tmp_path / "hold", tmp_path / "agent.pid"
    hold.touch()
    plan = {
        "1": {"answer": "41"},
        "2": {"answer": "42", "lines": 5},
        "3": {"answer": "42", "hold": str(hold), "pid_file": str(pid_file)},
    }
    request = best_of_request(tmp_path, plan, markers, best_of=3, pick="all_pass_then_judge")
    target = make_target(tmp_path / "target")
    store, log = str(tmp_path / "store"), tmp_path / "orchestrator.log"
    runs = RunStore(ArtifactStore(store), "killed")

    def finished(number: int) -> bool:
        record = runs.read_record("answer")
        found = {c.number: c.outcome for c in record.candidates} if record else {}
        return found.get(number) in (CandidateOutcome.PASSED, CandidateOutcome.FAILED)

    args = run_args(request, target, store, tmp_path / "work", "killed")
    proc = start_orchestrator(args, {}, log)
    pids = [proc.pid]
    try:
        pids.append(wait_for_pid("candidate 3 to start", pid_file, proc=proc, log=log))
        wait_for("candidates 1 and 2", lambda: finished(1) and finished(2), proc=proc, log=log)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        kill_leftovers(pids)
        for pid in pids:  # the agent too, even if it leads no process group of its own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    wait_for("the cut-off agent to be gone", lambda: not process_alive(pids[-1]))
    hold.unlink()

    assert cli("resume", "killed", "--store", store) == 0

    record = runs.read_record("answer")
    assert marks(markers).count("start 1") == 1 and marks(markers).count("start 2") == 1
    assert marks(markers).count("start 3") == 2  # cut off by the kill, so run again
    assert marks(markers).count("end 3") == 1
    assert record.winner == 3  # passed with the smaller diff (1 line against 6)
    assert {c.number: c.outcome for c in record.candidates} == {
        1: CandidateOutcome.FAILED,
        2: CandidateOutcome.PASSED,
        3: CandidateOutcome.PASSED,
    }


def test_each_candidate_takes_a_slot_of_its_class(tmp_path):
    """best_of 3 in a class of 2: two candidates at a time, and a unit of the same class never
    runs beside two candidates."""
    markers = tmp_path / "markers"
    plan = {k: {"answer": "42", "sleep": 1} for k in ("0", "1", "2", "3")}
    other = {"id": "other", "touches": ["other.txt"], "test": "true"}
    extra = {"resources": {"standard": 2}}
    request = best_of_request(tmp_path, plan, markers, extra, best_of=3, pick="all_pass_then_judge")
    spec = yaml.safe_load(request.read_text())
    spec["units"].append(other)
    request.write_text(yaml.safe_dump(spec, sort_keys=False))

    code, runs, _ = run(tmp_path, request, "slots")

    assert code == 0
    running, most = set(), 0
    for kind, number in (line.split() for line in marks(markers)):
        (running.add if kind == "start" else running.discard)(number)
        most = max(most, len(running))
    assert most == 2
    assert {c.number for c in runs.read_record("answer").candidates} == {1, 2, 3}
    assert marks(markers).count("start 0") == 1  # the other unit ran too


def test_a_judge_from_agents_reads_the_candidates_and_names_the_winner(tmp_path):
    markers = tmp_path / "markers"
    plan = {str(k): {"answer": "42", "lines": 4 - k} for k in (1, 2, 3)}
    request = best_of_request(
        tmp_path, plan, markers, best_of=3, pick="all_pass_then_judge", judge="referee"
    )
    spec = yaml.safe_load(request.read_text())
    referee = (
        'test -f 1.diff && test -f 3.tests.json && grep -q "Choose the best" "$FLOTILLA_PROMPT_FILE"'
        ' && echo "The first is the most complete. 1"'
    )
    spec["agents"]["referee"] = {"command": referee}
    request.write_text(yaml.safe_dump(spec, sort_keys=False))

    code, runs, _ = run(tmp_path, request, "referee")

    assert code == 0
    record = runs.read_record("answer")
    assert record.winner == 1  # the largest diff: the judge, not the smallest diff, chose
    assert "(chosen by the judge)" in record.pick_note
