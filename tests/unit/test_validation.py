"""`flotilla validate`: every problem, with file, line, field path and what is allowed."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from flotilla.cli import main

GOOD_UNITS = """\
feature: {id: text-stats, title: "Add text statistics"}
agents:
  scripted: {command: "bash agents/{unit}.sh"}
defaults: {agent: scripted}
units:
"""


def write(tmp_path: Path, text: str, name: str = "request.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def validate(path: Path, capsys) -> tuple[int, str]:
    code = main(["validate", str(path)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def assert_rejected(path: Path, capsys, *fragments: str) -> str:
    code, out = validate(path, capsys)
    assert code == 2, out
    assert "Traceback" not in out
    for fragment in fragments:
        assert fragment in out, f"{fragment!r} not in:\n{out}"
    return out


def test_a_good_request_is_accepted(tmp_path, capsys):
    path = write(
        tmp_path,
        GOOD_UNITS
        + """\
  - id: tokenizer
    outputs: [tokens-schema.json]
  - id: counts
    inputs: [tokenizer/tokens-schema.json]
""",
    )
    code, out = validate(path, capsys)
    assert code == 0, out
    assert "valid feature request 'text-stats' with 2 unit(s) in 2 level(s)" in out


def test_malformed_yaml_names_its_line(tmp_path, capsys):
    path = write(tmp_path, "feature: {id: x\n  title: [\n")
    assert_rejected(path, capsys, f"{path}:2:", "malformed YAML")


def test_missing_required_field(tmp_path, capsys):
    path = write(tmp_path, "feature: {id: x}\ndefaults: {agent: claude}\n")
    assert_rejected(path, capsys, f"{path}:1: feature.title: required field is missing")


def test_unknown_field_lists_the_allowed_ones(tmp_path, capsys):
    path = write(tmp_path, GOOD_UNITS + "  - id: a\n    promt: typo\n")
    assert_rejected(
        path,
        capsys,
        f"{path}:7: units[0] (id: a).promt: unknown field 'promt' (did you mean 'prompt'?); "
        "allowed: id, title, prompt",
    )


def test_duplicate_unit_id(tmp_path, capsys):
    path = write(tmp_path, GOOD_UNITS + "  - id: a\n  - id: a\n")
    assert_rejected(
        path, capsys, f"{path}:7: units[1] (id: a).id: duplicate unit id 'a' (first at units[0])"
    )


@pytest.mark.parametrize("bad_id", ["../x", "a b", "A;rm"])
def test_unsafe_unit_ids_are_rejected(tmp_path, capsys, bad_id):
    path = write(tmp_path, GOOD_UNITS + f"  - id: '{bad_id}'\n")
    assert_rejected(path, capsys, f"'{bad_id}' is not a safe slug", "lowercase")


def test_unknown_dependency(tmp_path, capsys):
    path = write(tmp_path, GOOD_UNITS + "  - id: a\n  - id: b\n    depends_on: [zz]\n")
    assert_rejected(
        path, capsys, "units[1] (id: b).depends_on[0]: unknown unit 'zz'; known units: a, b"
    )


def test_dependency_cycle_is_printed_as_its_path(tmp_path, capsys):
    path = write(
        tmp_path,
        GOOD_UNITS
        + "  - id: a\n    depends_on: [c]\n  - id: b\n    depends_on: [a]\n"
        + "  - id: c\n    depends_on: [b]\n",
    )
    assert_rejected(path, capsys, "dependency cycle: a -> b -> c -> a")


def test_input_must_name_a_declared_output(tmp_path, capsys):
    path = write(
        tmp_path,
        GOOD_UNITS
        + "  - id: a\n    outputs: [schema.json]\n  - id: b\n    inputs: [a/other.json]\n",
    )
    assert_rejected(
        path,
        capsys,
        "units[1] (id: b).inputs[0]: unit 'a' does not declare output 'other.json' (its outputs: "
        "schema.json)",
    )


def test_unknown_agent_name(tmp_path, capsys):
    path = write(tmp_path, GOOD_UNITS + "  - id: a\n    agent: ghost\n")
    assert_rejected(
        path, capsys, "units[0] (id: a).agent: unknown agent 'ghost'", "scripted", "claude"
    )


def test_unknown_preset(tmp_path, capsys):
    path = write(
        tmp_path,
        """\
        feature: {id: f, title: F}
        agents:
          mine: {preset: vim}
        units: [{id: a, agent: mine}]
        """,
    )
    assert_rejected(
        path,
        capsys,
        f"{path}:3: agents.mine.preset: 'vim' is not a preset; use one of claude, codex, aider",
    )


def test_every_problem_is_reported_at_once(tmp_path, capsys):
    path = write(
        tmp_path,
        GOOD_UNITS + "  - id: 'a b'\n  - id: c\n    depends_on: [nope]\n    agent: ghost\n",
    )
    out = assert_rejected(
        path, capsys, "3 problems", "'a b' is not a safe slug", "'nope'", "'ghost'"
    )
    assert out.count(str(path)) == 4


WORKFLOW = """\
workflow:
  name: Custom
  stages:
    - name: decompose
      processor: plan_decomposer
      outputs: [atomic_units]
    - name: implement
      type: parallel
      foreach: {foreach}
      processor: work_loop
      depends_on: [{depends}]
      outputs: [unit_results]
    - name: merge
      processor: pr_merger
      depends_on: [implement]
"""


def test_a_good_workflow_is_accepted(tmp_path, capsys):
    path = write(tmp_path, WORKFLOW.format(foreach="atomic_units", depends="decompose"), "wf.yaml")
    code, out = validate(path, capsys)
    assert code == 0, out
    assert "valid workflow 'Custom': decompose -> implement -> merge" in out


def test_stage_depending_on_a_later_stage(tmp_path, capsys):
    path = write(tmp_path, WORKFLOW.format(foreach="atomic_units", depends="merge"), "wf.yaml")
    assert_rejected(
        path,
        capsys,
        f"{path}:11: workflow.stages[1].depends_on[0]: stage 'implement' depends on 'merge', which comes later",
    )


def test_stage_depending_on_an_unknown_stage(tmp_path, capsys):
    path = write(tmp_path, WORKFLOW.format(foreach="atomic_units", depends="plan"), "wf.yaml")
    assert_rejected(path, capsys, "unknown stage 'plan'; earlier stages: decompose")


def test_foreach_over_an_undeclared_output(tmp_path, capsys):
    path = write(tmp_path, WORKFLOW.format(foreach="tasks", depends="decompose"), "wf.yaml")
    assert_rejected(
        path,
        capsys,
        f"{path}:9: workflow.stages[1].foreach: `foreach: tasks` names no output of an earlier "
        "stage (earlier outputs: atomic_units)",
    )


def test_a_missing_file_is_reported_plainly(tmp_path, capsys):
    assert_rejected(tmp_path / "nope.yaml", capsys, "nope.yaml", "file not found")


def test_a_bad_request_changes_nothing(tmp_path, capsys):
    target = tmp_path / "target"
    subprocess.run(["git", "init", "-q", "-b", "main", str(target)], check=True)
    (target / "f.txt").write_text("x\n")
    git = ["git", "-C", str(target), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    before = subprocess.run([*git, "for-each-ref"], capture_output=True, text=True).stdout
    path = write(tmp_path, GOOD_UNITS + "  - id: a\n    depends_on: [a]\n")
    store, workdir = tmp_path / "store", tmp_path / "work"
    code = main(
        ["run", str(path), "--repo", str(target), "--store", str(store), "--workdir", str(workdir)]
    )
    out = capsys.readouterr().err
    assert code == 2
    assert "units[0] (id: a).depends_on[0]: unit 'a' depends on itself" in out
    assert not store.exists() and not workdir.exists()
    assert subprocess.run([*git, "for-each-ref"], capture_output=True, text=True).stdout == before


def test_unknown_field_inside_a_named_agent_lists_the_allowed_ones(tmp_path, capsys):
    path = write(
        tmp_path,
        """\
        feature: {id: f, title: F}
        agents:
          mine: {command: x, nope: 1}
        units: [{id: a, agent: mine}]
        """,
    )
    assert_rejected(
        path, capsys, f"{path}:3: agents.mine.nope: unknown field 'nope'; allowed: preset, command"
    )
