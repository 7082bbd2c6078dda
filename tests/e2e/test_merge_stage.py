"""The merge stage end to end: conflicts handed back to the agent, and a test gate that names
(and, when asked, has fixed) the unit whose merge broke the feature.

The agents are a real script (below) that reads its prompt: when the prompt carries the merge
stage's conflict section it writes a combined version of the shared file, and when it carries the
gate section it leaves out the change that broke the feature's tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from flotilla.cli import main
from flotilla.results import FeatureResult, UnitRecord
from tasks.store import ArtifactStore, RunStore
from tests.e2e.helpers import git

AGENT = """
import os, sys
from pathlib import Path

unit = os.environ["FLOTILLA_UNIT_ID"]
prompt = Path(os.environ["FLOTILLA_PROMPT_FILE"]).read_text()
conflict = "## Merge conflict" in prompt
gate = "## The feature's tests fail" in prompt
with open(os.environ["CALLS"], "a") as calls:
    calls.write(f"{unit} conflict={conflict} gate={gate}\\n")
Path("units").mkdir(exist_ok=True)
if os.environ.get("SHARED"):  # every unit rewrites the same line of app.txt
    app = Path("app.txt")
    app.write_text(app.read_text() + f"{unit}\\n" if conflict else f"{unit}\\n")
broken = os.environ.get("BREAKS") and not gate
Path("units", f"{unit}.txt").write_text("BROKEN\\n" if broken else f"{unit}\\n")
Path(os.environ["FLOTILLA_SUMMARY_FILE"]).write_text(f"Unit {unit} did its part.\\n")
if conflict and os.environ.get("FAIL_REWORK"):
    sys.exit("cannot combine the two changes")
"""


def make_target(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "app.txt").write_text("base\n")
    (path / "units").mkdir()
    (path / "units" / "README").write_text("one file per unit\n")
    env = ["-c", "user.name=Base", "-c", "user.email=base@example.com"]
    git(path, "init", "-q", "-b", "main")
    git(path, "add", ".")
    git(path, *env, "commit", "-qm", "Initial commit")
    return path


def write_files(
    tmp_path: Path,
    units: list[dict],
    *,
    strategy: str = "merge",
    on_conflict: str = "reimplement",
    on_gate_failure: str = "fail",
) -> tuple[Path, Path]:
    """A request for `units` (see `units_with`), and a workflow with the merge options."""
    counter = tmp_path / "gate-runs.txt"
    request = {
        "feature": {"id": "merge-demo", "title": "Merge demo", "description": "For tests."},
        # The feature's test gate: count the run, then reject any unit that left the marker.
        "test": f"echo run >> {counter} && ! grep -rq BROKEN units",
        "defaults": {
            "test": "test -d units",
            "timeout_s": 60,
            "max_iterations": 1,
        },
        "units": units,
    }
    stages = [
        {"name": "decompose", "processor": "plan_decomposer", "outputs": ["atomic_units"]},
        {
            "name": "implement",
            "type": "parallel",
            "foreach": "atomic_units",
            "processor": "work_loop",
            "max_concurrent": 4,
            "retry_policy": {"max_attempts": 2, "initial_delay_s": 0},
        },
        {
            "name": "merge",
            "processor": "pr_merger",
            "merge_strategy": strategy,
            "on_conflict": on_conflict,
            "on_gate_failure": on_gate_failure,
        },
        {"name": "finalize", "processor": "feature_pr_creator"},
    ]
    (tmp_path / "request.yaml").write_text(yaml.safe_dump(request, sort_keys=False))
    workflow = {"workflow": {"name": "Merge tests", "stages": stages}}
    (tmp_path / "workflow.yaml").write_text(yaml.safe_dump(workflow, sort_keys=False))
    return tmp_path / "request.yaml", tmp_path / "workflow.yaml"


def run(tmp_path: Path, target: Path) -> tuple[int, FeatureResult, RunStore]:
    code = main(
        [
            "run",
            str(tmp_path / "request.yaml"),
            "--repo",
            str(target),
            "--workflow",
            str(tmp_path / "workflow.yaml"),
            "--store",
            str(tmp_path / "store"),
            "--workdir",
            str(tmp_path / "work"),
            "--run-key",
            "merge-test",
        ]
    )
    runs = RunStore(ArtifactStore(str(tmp_path / "store")), "merge-test")
    return code, runs.store.read_model(runs.result_key, FeatureResult), runs


def calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls.txt").read_text().splitlines()


def gate_runs(tmp_path: Path) -> int:
    return len((tmp_path / "gate-runs.txt").read_text().splitlines())


SHARED = [
    {"id": "first", "env": {"SHARED": "1"}},
    {"id": "second", "env": {"SHARED": "1"}},
]


def units_with(tmp_path: Path, units: list[dict]) -> list[dict]:
    """Units whose agent is the script above, with per-unit variables."""
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    agent = f"{sys.executable} {script}"
    calls_file = str(tmp_path / "calls.txt")
    out = []
    for unit in units:
        unit = dict(unit)
        env = unit.pop("env", {})
        unit["agent"] = {"command": agent, "env": {"CALLS": calls_file, **env}}
        out.append(unit)
    return out


def test_a_conflict_is_reimplemented_on_top_of_the_feature_branch(tmp_path):
    target = make_target(tmp_path / "target")
    write_files(tmp_path, units_with(tmp_path, SHARED), strategy="sequential_rebase")

    code, result, runs = run(tmp_path, target)

    assert code == 0, result.error
    # Both units changed line 1 of app.txt; the second was re-done with the first's work in place.
    assert git(target, "show", "flotilla/merge-demo:app.txt") == "first\nsecond"
    assert calls(tmp_path).count("second conflict=True gate=False") == 1
    second = next(m for m in result.merges if m.unit_id == "second")
    assert second.reimplemented and second.conflicts == ["app.txt"]
    assert not next(m for m in result.merges if m.unit_id == "first").reimplemented
    # The ledger and the result tell the same story: new commit, built on the first unit's merge.
    record = runs.read_record("second")
    assert record is not None and record.status == "succeeded"
    assert [(n.reason, n.ok, n.paths) for n in record.reworks] == [("conflict", True, ["app.txt"])]
    assert record.start_commit == result.merges[0].commit
    assert record.commit == git(target, "rev-parse", "flotilla/merge-demo--second")
    assert next(u for u in result.units if u.unit_id == "second").commit == record.commit
    assert "Flotilla-Rework: conflict" in git(target, "log", "-1", "--format=%B", record.commit)
    # The prompt named the path, both sides and the original task.
    prompt = (
        tmp_path / "work" / "merge-test" / "units" / "second" / "rework-1-attempt-2" / "prompt.md"
    ).read_text()
    assert "# second" in prompt and "in app.txt" in prompt and "work of first" in prompt
    assert "-base\n+first" in prompt and "-base\n+second" in prompt
    # The PR says which unit was re-done for a conflict.
    pr = runs.store.read_text(runs.pr_key)
    assert any("conflict" in line.lower() and "second" in line for line in pr.splitlines())
    assert git(target, "rev-parse", "main") == git(target, "rev-list", "--max-parents=0", "main")


def test_on_conflict_fail_stops_naming_the_units_and_paths(tmp_path):
    target = make_target(tmp_path / "target")
    write_files(tmp_path, units_with(tmp_path, SHARED), on_conflict="fail")

    code, result, runs = run(tmp_path, target)

    assert code == 1
    assert result.error.startswith(
        "merging unit 'second' conflicts with unit(s) first in app.txt (on_conflict: fail); "
        "`flotilla retry` would meet the same conflict"
    )
    assert result.feature_branch == ""  # never published, so never named
    report = runs.store.read_text(f"{runs.prefix}/feature/failures.md")
    assert "No unit failed, so `flotilla retry" in report and "runs the failed" not in report
    assert all("conflict=True" not in line for line in calls(tmp_path))
    assert git(target, "branch", "--list", "flotilla/merge-demo") == ""  # nothing published
    record = runs.read_record("second")
    assert record is not None and record.reworks == []


def test_a_rework_that_fails_leaves_the_unit_as_it_was(tmp_path):
    target = make_target(tmp_path / "target")
    units = [SHARED[0], {"id": "second", "env": {"SHARED": "1", "FAIL_REWORK": "1"}}]
    write_files(tmp_path, units_with(tmp_path, units))

    code, result, runs = run(tmp_path, target)

    assert code == 1
    assert result.error.startswith(
        "merging unit 'second' conflicts with unit(s) first in app.txt; Re-running unit "
        "'second' for a conflict failed after 2 attempt(s): agent exited with code 1"
    )
    assert calls(tmp_path).count("second conflict=True gate=False") == 2  # max_attempts: 2
    record = runs.read_record("second")
    assert record is not None and record.status == "succeeded"
    assert [(n.reason, n.ok, n.attempts) for n in record.reworks] == [("conflict", False, 2)]
    clone = tmp_path / "work" / "merge-test" / "repo.git"
    assert git(clone, "rev-parse", "flotilla/merge-demo--second") == record.commit
    assert git(clone, "show", f"{record.commit}:app.txt") == "second"


EIGHT = [f"u{i}" for i in range(1, 9)]


def gate_units(tmp_path: Path, ids: list[str], culprit: str) -> list[dict]:
    units = [{"id": u, "env": {"BREAKS": "1"} if u == culprit else {}} for u in ids]
    return units_with(tmp_path, units)


def test_a_failing_gate_names_the_culprit_among_8_units(tmp_path):
    target = make_target(tmp_path / "target")
    write_files(tmp_path, gate_units(tmp_path, EIGHT, "u6"), strategy="squash")

    code, result, runs = run(tmp_path, target)

    assert code == 1
    assert "the feature's test gate failed" in result.error
    assert "names unit 'u6'" in result.error
    assert "pass with the units merged before it (u1, u2, u3, u4, u5)" in result.error
    assert gate_runs(tmp_path) <= 4  # the gate itself plus ceil(log2 8) = 3 bisection runs
    found = runs.store.read_json(f"{runs.prefix}/feature/bisect.json")
    assert found["culprit"] == "u6" and len(found["probes"]) + 1 == gate_runs(tmp_path)
    assert all("gate=True" not in line for line in calls(tmp_path))


def test_on_gate_failure_fix_has_the_culprit_fix_its_work(tmp_path):
    target = make_target(tmp_path / "target")
    four = EIGHT[:4]
    write_files(tmp_path, gate_units(tmp_path, four, "u3"), on_gate_failure="fix")

    code, result, runs = run(tmp_path, target)

    assert code == 0, result.error
    assert result.gate is not None and result.gate.ok
    assert calls(tmp_path).count("u3 conflict=False gate=True") == 1
    assert [m.unit_id for m in result.merges if m.fixed_for_gate] == ["u3"]
    assert [m.unit_id for m in result.merges] == four
    assert git(target, "show", "flotilla/merge-demo:units/u3.txt") == "u3"
    record = UnitRecord.model_validate(runs.store.read_json(runs.ledger_key("u3")))
    assert [(n.reason, n.ok) for n in record.reworks] == [("gate", True)]
    # The fix sits on top of the units before it: u1 and u2's merges are its ancestors.
    assert record.start_commit == result.merges[1].commit
    first_parent = git(target, "rev-list", "--first-parent", "flotilla/merge-demo").split()
    assert result.merges[1].commit in first_parent
