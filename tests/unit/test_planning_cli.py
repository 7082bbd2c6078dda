"""`flotilla plan`: text, JSON and mermaid; runs nothing; explains llm-mode requests."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import yaml

from flotilla.cli import main
from flotilla.plan import Plan
from flotilla.spec import FeatureRequest
from tasks.stats import record_duration
from tasks.store import ArtifactStore

REQUEST = """\
feature: {id: auth, title: "Login"}
agents:
  scripted: {command: "bash agents/{unit}.sh"}
defaults: {agent: scripted}
resources: {heavy: 1, light: 10}
units:
  - id: schema
    outputs: [schema.json]
    touches: [src/models.py]
    estimate_s: 60
  - id: login
    inputs: [schema/schema.json]
    touches: ["src/auth/*.py"]
    resources: heavy
  - id: views
    depends_on: [schema]
    touches: ["src/**/login.py"]
    resources: heavy
  - id: docs
    touches: [docs/]
    resources: light
"""


def write(tmp_path: Path, text: str, name: str = "request.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def plan(tmp_path: Path, capsys, *args: str) -> tuple[int, str, str]:
    code = main(["plan", *args, "--store", str(tmp_path / "store")])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_text_shows_levels_critical_path_bound_conflicts_and_classes(tmp_path, capsys):
    store = ArtifactStore(str(tmp_path / "store"))
    record_duration(store, "heavy", 300.0)  # recorded durations weight units without estimates
    code, out, _ = plan(tmp_path, capsys, str(write(tmp_path, REQUEST)))
    assert code == 0, out
    assert "4 unit(s), 3 edge(s), 3 level(s)" in out
    assert "1. schema [standard, 60], docs [light, 1]" in out
    assert "2. login [heavy, 300]" in out
    assert "3. views [heavy, 300]" in out
    assert "Critical path: schema -> login -> views  (660)" in out
    assert "Makespan lower bound: 660 = max of" in out
    assert "class heavy: 600 / 1" in out
    assert "1. login, views" in out
    assert "login ~ views: src/auth/*.py ~ src/**/login.py" in out
    assert "edges added: login -> views" in out
    assert "login -> views (conflict)" in out
    assert "schema -> login (input)" in out
    assert "heavy           1   2 unit(s)" in out
    assert "light          10   1 unit(s)" in out
    assert not (tmp_path / "work").exists()  # nothing ran


def test_json_is_the_plan_with_its_conflicts(tmp_path, capsys):
    code, out, _ = plan(tmp_path, capsys, str(write(tmp_path, REQUEST)), "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["source"] == "request"
    assert data["levels"] == [["schema", "docs"], ["login"], ["views"]]
    assert data["critical_path"] == ["schema", "login", "views"]
    assert data["lower_bound"]["value"] == 62.0
    assert data["conflict_groups"] == [
        {
            "units": ["login", "views"],
            "overlaps": [
                {"units": ["login", "views"], "globs": ["src/auth/*.py", "src/**/login.py"]}
            ],
            "edges": [{"from": "login", "to": "views"}],
        }
    ]
    assert data["resources"] == {"light": 10, "standard": 5, "heavy": 1}


def test_mermaid_draws_conflict_edges_dashed(tmp_path, capsys):
    code, out, _ = plan(tmp_path, capsys, str(write(tmp_path, REQUEST)), "--format", "mermaid")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "flowchart TD"
    assert '  u1["login<br/>heavy · 1"]' in lines
    assert "  u0 --> u1" in lines
    assert "  u1 -. conflict .-> u2" in lines
    assert "  class u0,u1,u2 critical" in lines


def test_the_workflow_adds_resources_and_serializes_unknown_touches(tmp_path, capsys):
    request = write(
        tmp_path,
        """\
        feature: {id: f, title: F}
        defaults: {agent: claude}
        units: [{id: a}, {id: b}]
        """,
    )
    workflow = yaml.safe_load(
        (Path(__file__).parents[2] / "flotilla" / "default_workflow.yaml").read_text()
    )
    workflow["workflow"]["unknown_touches"] = "serialize"
    workflow["workflow"]["resources"] = {"gpu": 3}
    spec = write(tmp_path, yaml.safe_dump(workflow), "workflow.yaml")
    code, out, _ = plan(tmp_path, capsys, str(request), "--workflow", str(spec))
    assert code == 0, out
    assert "a -> b (conflict)" in out
    assert "gpu             3   0 unit(s)" in out


def test_an_llm_request_without_a_run_says_how_to_get_a_plan(tmp_path, capsys):
    request = write(tmp_path, "feature: {id: f, title: F}\ndefaults: {agent: claude}\n")
    workflow = yaml.safe_load(
        (Path(__file__).parents[2] / "flotilla" / "default_workflow.yaml").read_text()
    )
    workflow["workflow"]["stages"][0].update({"mode": "llm", "agent": "claude"})
    spec = write(tmp_path, yaml.safe_dump(workflow), "workflow.yaml")
    code, _, err = plan(tmp_path, capsys, str(request), "--workflow", str(spec))
    assert code == 1
    assert "`llm` mode" in err and "--run-key KEY" in err

    code, _, err = plan(tmp_path, capsys, str(request))  # static mode: nothing to plan
    assert code == 1
    assert "set `mode: llm`" in err


def test_run_key_shows_the_plan_a_run_accepted(tmp_path, capsys):
    request = write(tmp_path, "feature: {id: f, title: F}\ndefaults: {agent: claude}\n")
    accepted = FeatureRequest.model_validate(
        {
            "feature": {"id": "f", "title": "F"},
            "defaults": {"agent": "claude"},
            "units": [{"id": "one"}, {"id": "two", "depends_on": ["one"]}],
        }
    )
    store = ArtifactStore(str(tmp_path / "store"))
    store.write_json(
        "runs/r1/plan.json", {"source": "llm", **Plan.from_request(accepted).to_json()}
    )

    code, out, _ = plan(tmp_path, capsys, str(request), "--run-key", "r1")
    assert code == 0, out
    assert "from the run r1 (llm decomposer)" in out
    assert "Critical path: one -> two" in out

    code, _, err = plan(tmp_path, capsys, str(request), "--run-key", "missing")
    assert code == 1
    assert "No plan is saved for run 'missing'" in err
