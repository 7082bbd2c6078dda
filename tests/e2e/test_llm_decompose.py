"""The llm decomposer: an agent plans the units; bad answers are sent back with their problems.

The fake planner answers with malformed JSON first, then with a dependency cycle, then with a
valid plan (written to $FLOTILLA_PLAN_FILE); the run then implements that plan.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from flotilla.cli import main
from flotilla.spec import FeatureRequest
from tests.e2e.helpers import AGENT, git, make_target, timeline_of

PLANNER = """\
import os, shutil, sys
from pathlib import Path

round_ = int(os.environ["FLOTILLA_ATTEMPT"])
shutil.copy(os.environ["FLOTILLA_PROMPT_FILE"], Path(os.environ["PROMPTS"]) / f"{round_}.md")
if round_ == 1 or os.environ.get("ALWAYS_BAD"):
    print('Here is the plan: {"units": [{"id": "alpha", "title": "Alpha"')
elif round_ == 2:
    print("I fixed it:\\n```json")
    print('{"units": [{"id": "alpha", "depends_on": ["beta"]}, {"id": "beta", "depends_on": ["alpha"]}]}')
    print("```")
else:
    plan = {"units": [
        {"id": "alpha", "title": "Alpha", "prompt": "Write alpha.", "touches": ["units/alpha.txt"]},
        {"id": "beta", "title": "Beta", "depends_on": ["alpha"], "touches": ["units/beta.txt"]},
    ]}
    Path(os.environ["FLOTILLA_PLAN_FILE"]).write_text(__import__("json").dumps(plan))
    print("Plan written.")
"""


def write_files(tmp_path: Path, *, max_rounds: int = 3, always_bad: bool = False):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    planner = tmp_path / "planner.py"
    planner.write_text(PLANNER)
    timeline = tmp_path / "timeline.txt"
    request = tmp_path / "request.yaml"
    request.write_text(
        yaml.safe_dump(
            {
                "feature": {
                    "id": "planned",
                    "title": "Planned by an agent",
                    "description": "Add alpha, then beta on top of it.",
                },
                "test": "true",
                "defaults": {
                    "agent": {
                        "command": f"{sys.executable} {AGENT}",
                        "env": {"TIMELINE": str(timeline)},
                    },
                    "timeout_s": 60,
                    "max_iterations": 1,
                },
            }
        )
    )
    workflow = yaml.safe_load(
        (Path(__file__).parents[2] / "flotilla" / "default_workflow.yaml").read_text()
    )
    env = {"PROMPTS": str(prompts), **({"ALWAYS_BAD": "1"} if always_bad else {})}
    workflow["workflow"]["stages"][0].update(
        {
            "mode": "llm",
            "max_rounds": max_rounds,
            "agent": {"command": f"{sys.executable} {planner}", "env": env},
        }
    )
    spec = tmp_path / "workflow.yaml"
    spec.write_text(yaml.safe_dump(workflow))
    return request, spec, prompts, timeline


def run(tmp_path: Path, request: Path, spec: Path, target: Path, key: str) -> int:
    return main(
        [
            "run",
            str(request),
            "--repo",
            str(target),
            "--workflow",
            str(spec),
            "--store",
            str(tmp_path / "store"),
            "--workdir",
            str(tmp_path / "work"),
            "--run-key",
            key,
        ]
    )


def test_bad_answers_are_sent_back_until_the_plan_is_valid_then_it_runs(tmp_path, capsys):
    target = make_target(tmp_path / "target")
    request, spec, prompts, timeline = write_files(tmp_path)

    assert run(tmp_path, request, spec, target, "llm") == 0

    # the prompt: the feature, the repository's files and the unit schema
    first = (prompts / "1.md").read_text()
    assert "Planned by an agent" in first and "Add alpha, then beta" in first
    assert "tests/test_base.py" in first and "pytest.ini" in first
    assert '"depends_on"' in first and '"touches"' in first
    # each later round carries the previous round's problems
    second, third = (prompts / "2.md").read_text(), (prompts / "3.md").read_text()
    assert "round 1) was rejected" in second and "malformed" in second
    assert "round 2) was rejected" in third and "dependency cycle" in third

    store = tmp_path / "store" / "runs" / "llm"
    saved = json.loads((store / "plan.json").read_text())
    assert saved["source"] == "llm" and saved["rounds"] == 3
    assert [u["id"] for u in saved["units"]] == ["alpha", "beta"]
    assert saved["levels"] == [["alpha"], ["beta"]]
    assert "malformed" in (store / "decompose" / "round-1" / "problems.txt").read_text()
    assert (store / "decompose" / "round-3" / "answer.txt").exists()

    # the accepted plan ran: beta after alpha, both merged into the feature branch
    spans = timeline_of(timeline)
    assert spans["beta"][0] >= spans["alpha"][1]
    files = git(target, "ls-tree", "-r", "--name-only", "flotilla/planned").splitlines()
    assert "units/alpha.txt" in files and "units/beta.txt" in files
    capsys.readouterr()

    # and `flotilla plan` shows the plan the run accepted
    code = main(
        [
            "plan",
            str(request),
            "--workflow",
            str(spec),
            "--store",
            str(tmp_path / "store"),
            "--run-key",
            "llm",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "from the run llm (llm decomposer)" in out
    assert "Critical path: alpha -> beta" in out


def test_no_valid_plan_within_max_rounds_fails_the_run(tmp_path, capsys):
    target = make_target(tmp_path / "target")
    request, spec, prompts, timeline = write_files(tmp_path, max_rounds=2, always_bad=True)

    assert run(tmp_path, request, spec, target, "bad-plan") == 1

    err = capsys.readouterr().err
    assert "gave no valid plan in 2 round(s)" in err
    assert sorted(p.name for p in prompts.iterdir()) == ["1.md", "2.md"]
    assert not timeline.exists()  # no unit ran
    assert not (tmp_path / "store" / "runs" / "bad-plan" / "plan.json").exists()


def test_answers_are_read_from_prose_fences_or_bare_lists():
    from tasks.decomposers import check_answer, extract_units

    fenced = 'Sure!\n```json\n{"units": [{"id": "a"}]}\n```\nDone.'
    assert extract_units(fenced) == [{"id": "a"}]
    assert extract_units('[{"id": "a"}, {"id": "b"}]') == [{"id": "a"}, {"id": "b"}]
    request = FeatureRequest.model_validate(
        {"feature": {"id": "f", "title": "F"}, "defaults": {"agent": "claude"}}
    )
    bad = check_answer(request, '{"units": [{"id": "a", "agent": "nobody"}]}', 1)
    assert not bad.accepted
    assert bad.problems[0].startswith("units[0] (id: a).agent: unknown agent 'nobody'")
    assert (
        check_answer(request, "no json here", 2)
        .problems[0]
        .startswith("the answer holds no JSON plan")
    )
    assert "at least one unit" in check_answer(request, '{"units": []}', 3).problems[0]
    good = check_answer(request, '{"units": [{"id": "a"}, {"id": "b", "depends_on": ["a"]}]}', 4)
    assert good.accepted and [u.id for u in good.units] == ["a", "b"]
