"""Safe by default, end to end: one writer per run key, no commit discarded, atomic pushes."""

from __future__ import annotations

import time
from pathlib import Path

from tests.e2e.durability_helpers import (
    cli,
    durable_request,
    invocations,
    run_args,
    start_orchestrator,
)
from tests.e2e.helpers import git, make_target

UNITS = [{"id": "one", "env": {}}, {"id": "two", "env": {}}, {"id": "three", "depends_on": ["one"]}]


def test_two_runs_of_one_key_at_once_one_runs_and_the_other_is_refused(tmp_path: Path) -> None:
    target = make_target(tmp_path / "target")
    markers = tmp_path / "markers"
    request = durable_request(tmp_path, UNITS, markers)
    args = run_args(request, target, str(tmp_path / "store"), tmp_path / "work", "same")
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    first = start_orchestrator(args, {}, logs[0])
    time.sleep(0.3)
    second = start_orchestrator(args, {}, logs[1])
    codes = [first.wait(timeout=300), second.wait(timeout=300)]

    assert sorted(codes) == [0, 6], [log.read_text() for log in logs]
    refused = logs[codes.index(6)].read_text().strip().splitlines()
    assert len(refused) == 1, refused
    line = refused[0]
    assert line.startswith("error: Run same is already running (pid ")
    assert "flotilla pause same" in line and "started " in line and "Traceback" not in line
    assert invocations(markers) == {"one": 1, "two": 1, "three": 1}
    assert git(target, "rev-parse", "--verify", "flotilla/durable") != ""


def reviewer_commit(target: Path, branch: str) -> str:
    """A person's commit on top of `branch` in the (non-bare) target, as a reviewer makes."""
    env = ["-c", "user.name=Reviewer", "-c", "user.email=r@example.com"]
    git(target, "checkout", "-q", branch)
    (target / "REVIEW.md").write_text("Reviewed.\n")
    git(target, "add", "REVIEW.md")
    git(target, *env, "commit", "-qm", "Reviewer's fix")
    git(target, "checkout", "-q", "main")
    return git(target, "rev-parse", branch)


def test_a_reviewers_commit_is_never_overwritten_without_force(tmp_path: Path, capsys) -> None:
    target = make_target(tmp_path / "target")
    markers = tmp_path / "markers"
    request = durable_request(tmp_path, UNITS, markers)
    store, work = str(tmp_path / "store"), tmp_path / "work"
    assert cli(*run_args(request, target, store, work, "first")) == 0
    reviewed = reviewer_commit(target, "flotilla/durable")
    capsys.readouterr()

    # A new run of the feature stops before any agent runs: the branch holds foreign work.
    assert cli(*run_args(request, target, store, work, "second")) == 5
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "flotilla/durable" in err[0] and reviewed[:12] in err[0] and "--force" in err[0]
    assert invocations(markers) == {"one": 1, "two": 1, "three": 1}
    assert git(target, "rev-parse", "flotilla/durable") == reviewed

    # With --force it runs, keeps the reviewer's tip under a backup ref and says so.
    assert cli(*run_args(request, target, store, work, "second"), "--force") == 0
    out = capsys.readouterr().out
    assert "--force: flotilla/durable" in out and "kept under refs/flotilla/backup/" in out
    backups = git(target, "for-each-ref", "--format=%(objectname) %(refname)", "refs/flotilla")
    assert f"{reviewed} refs/flotilla/backup/durable/" in backups
    assert git(target, "rev-parse", "flotilla/durable") != reviewed


def test_a_rerun_of_one_key_that_changed_nothing_pushes_nothing(tmp_path: Path) -> None:
    target = make_target(tmp_path / "target")
    request = durable_request(tmp_path, UNITS, tmp_path / "markers")
    args = run_args(request, target, str(tmp_path / "store"), tmp_path / "work", "again")
    assert cli(*args) == 0
    branches = git(target, "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads")
    moves = git(target, "reflog", "show", "--format=%H", "flotilla/durable")

    assert cli(*args) == 0

    assert git(target, "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads") == (
        branches
    )
    assert git(target, "reflog", "show", "--format=%H", "flotilla/durable") == moves


def test_a_push_the_target_refuses_moves_no_branch(tmp_path: Path) -> None:
    target = make_target(tmp_path / "target")
    markers = tmp_path / "markers"
    request = durable_request(tmp_path, UNITS, markers)
    store, work = str(tmp_path / "store"), tmp_path / "work"
    assert cli(*run_args(request, target, store, work, "atomic")) == 0
    git(target, "checkout", "-q", "flotilla/durable")  # git refuses to update it by a push
    before = git(target, "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads")
    log = tmp_path / "retry.log"

    # Another run with --force must move every branch; the checked-out one cannot move.
    args = [*run_args(request, target, store, work, "forced"), "--force"]
    proc = start_orchestrator(args, {}, log)
    assert proc.wait(timeout=300) == 1, log.read_text()

    text = log.read_text()
    assert invocations(markers) == {"one": 2, "two": 2, "three": 2}
    assert git(target, "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads") == before
    assert git(target, "for-each-ref", "refs/flotilla") == ""  # not even the backups
    assert "Traceback" not in text
    problem = [line for line in text.splitlines() if line.startswith("Problem:")]
    assert len(problem) == 1 and "'flotilla/durable'" in problem[0]
    assert "checked out" in problem[0] and "no branch moved" in problem[0]
    assert "Feature branch:" not in text


def test_retry_counts_only_the_units_it_reuses(tmp_path: Path, capsys) -> None:
    target = make_target(tmp_path / "target")
    markers = tmp_path / "markers"
    request = durable_request(tmp_path, UNITS, markers)
    store = str(tmp_path / "store")
    assert cli(*run_args(request, target, store, tmp_path / "work", "count")) == 0
    capsys.readouterr()

    assert cli("retry", "count", "--store", store, "--unit", "one") == 0

    out = capsys.readouterr().out
    # `three` depends on `one`, so it runs again too: only `two` is reused
    assert "Retrying run count: running one again; reusing 1 succeeded unit(s)" in out
    assert invocations(markers) == {"one": 2, "two": 1, "three": 2}


def test_a_prompt_validate_accepts_is_accepted_by_run(tmp_path: Path, capsys) -> None:
    target = make_target(tmp_path / "target")
    markers = tmp_path / "markers"
    big = [{"id": "big", "env": {}, "prompt": "Spec. " + "x" * 190_000}]  # near the limit
    request = durable_request(tmp_path, big, markers)
    assert cli("validate", str(request)) == 0
    capsys.readouterr()

    assert cli(*run_args(request, target, str(tmp_path / "store"), tmp_path / "work", "big")) == 0

    assert invocations(markers) == {"big": 1}
    out = capsys.readouterr()
    assert len(out.out) + len(out.err) < 20_000  # the prompt is never echoed
