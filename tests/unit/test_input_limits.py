"""Hostile or broken input is refused quickly, in one message, and nothing echoes megabytes."""

from __future__ import annotations

import subprocess
import tracemalloc
from pathlib import Path

import pytest

from flotilla.cli import main
from flotilla.validation import AGENT_PLACEHOLDERS
from tasks.agents import PLACEHOLDERS

HEAD = "feature: {id: f, title: F}\ndefaults: {agent: claude}\n"
LAUGHS = "\n".join(
    f"{b}: &{b} [{','.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)
BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + LAUGHS + "\n"


def validate(path: Path, capsys) -> tuple[int, str]:
    code = main(["validate", str(path)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def run(path: Path, tmp_path: Path, capsys) -> tuple[int, str]:
    target = tmp_path / "target"
    if not target.exists():
        subprocess.run(["git", "init", "-q", "-b", "main", str(target)], check=True)
    code = main(
        [
            "run",
            str(path),
            "--repo",
            str(target),
            "--store",
            str(tmp_path / "store"),
            "--workdir",
            str(tmp_path / "work"),
        ]
    )
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def refused_within_bounds(path: Path, capsys) -> str:
    tracemalloc.start()
    try:
        code, out = validate(path, capsys)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 2, out
    assert peak < 8 * 2**20, f"validate used {peak / 2**20:.0f} MB on {path.name}"
    assert "Traceback" not in out and len(out) < 2000
    return out


def test_a_billion_laughs_bomb_is_refused_in_a_few_megabytes(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert len(BOMB) < 400
    out = refused_within_bounds(path, capsys)
    assert "YAML aliases expand this file" in out


def test_a_bomb_inside_depends_on_is_refused_too(tmp_path, capsys):
    path = tmp_path / "request.yaml"
    text = HEAD + "x-" + BOMB.replace("\n", "\nx-").rstrip("x-")
    text += "units:\n  - {id: a, prompt: p, depends_on: *i}\n"
    path.write_text(text)
    out = refused_within_bounds(path, capsys)
    assert "YAML aliases expand this file" in out


def test_an_alias_of_its_own_ancestor_is_refused(tmp_path, capsys):
    path = tmp_path / "request.yaml"
    path.write_text(HEAD + "units: &u [*u]\n")
    assert "expands forever" in refused_within_bounds(path, capsys)


def test_a_few_honest_aliases_are_fine(tmp_path, capsys):
    path = tmp_path / "request.yaml"
    path.write_text(
        HEAD + "units:\n  - {id: a, prompt: p, touches: &t [src/*.py]}\n"
        "  - {id: b, prompt: p, touches: *t}\n"
    )
    code, out = validate(path, capsys)
    assert code == 0, out


def test_non_utf8_is_refused_naming_the_byte_offset(tmp_path, capsys):
    path = tmp_path / "request.yaml"
    path.write_bytes(HEAD.encode() + b"units:\n  - {id: a, prompt: caf\xe9}\n")
    out = refused_within_bounds(path, capsys)
    offset = len(HEAD) + len("units:\n  - {id: a, prompt: caf")
    assert f"{path}:4: not UTF-8 text: byte 0xe9 at offset {offset}" in out


def test_a_binary_file_is_refused_naming_the_byte_offset(tmp_path, capsys):
    path = tmp_path / "request.yaml"
    path.write_bytes(b"feature: x\n\x00\x01\x02")
    out = refused_within_bounds(path, capsys)
    assert f"{path}: binary file (a NUL byte at offset 11)" in out


def test_a_file_over_the_size_limit_is_refused_by_validate_and_run(tmp_path, capsys):
    path = tmp_path / "request.yaml"
    prompt = "x" * (5 * 2**20)  # a 5 MB prompt
    path.write_text(HEAD + f"units:\n  - {{id: a, prompt: {prompt}}}\n")
    for code, out in (validate(path, capsys), run(path, tmp_path, capsys)):
        assert code == 2 and len(out) < 2000, out[:2000]
        assert "larger than 1,000,000 bytes (FLOTILLA_MAX_INPUT_BYTES)" in out
    assert not (tmp_path / "store").exists()


def test_a_huge_offending_value_is_echoed_cut_to_80_characters(tmp_path, capsys):
    path = tmp_path / "request.yaml"
    ghost = "g" * 100_000
    path.write_text(HEAD + f"units:\n  - {{id: a, prompt: p, agent: {ghost}}}\n")
    code, out = validate(path, capsys)
    assert code == 2 and len(out) < 2000
    assert "unknown agent 'gggg" in out and "g" * 100 not in out


def test_messages_name_the_unit_the_value_and_a_close_match(tmp_path, capsys):
    path = tmp_path / "request.yaml"
    path.write_text(
        "feature: {id: f, title: F}\n"
        "agents:\n  gpt: {preset: chatgpt-pro}\n  cmd: {command: 'run {unti}'}\n"
        "defaults: {agent: cmd}\n"
        "units:\n  - {id: a, prompt: p}\n  - {id: b, prompt: p}\n"
        "  - {id: lonely, prompt: p, depends_on: [lonely, aa], agent: cmds}\n"
    )
    code, out = validate(path, capsys)
    assert code == 2
    assert "agents.gpt.preset: 'chatgpt-pro' is not a preset; use one of claude, codex" in out
    assert "units[2] (id: lonely).depends_on[0]: unit 'lonely' depends on itself" in out
    assert "units[2] (id: lonely).agent: unknown agent 'cmds' (did you mean 'cmd'?)" in out
    assert "agents.cmd.command: unknown placeholder '{unti}' (did you mean 'unit'?)" in out


def test_a_processor_typo_gets_a_suggestion(tmp_path, capsys):
    path = tmp_path / "workflow.yaml"
    path.write_text("workflow:\n  name: w\n  stages:\n    - {name: d, processor: plan_decomposr}\n")
    code, out = validate(path, capsys)
    assert code == 2
    assert (
        "workflow.stages[0].processor: 'plan_decomposr' is not a processor (did you mean "
        "'plan_decomposer'?); use one of plan_decomposer, work_loop" in out
    )


def test_unknown_placeholders_fail_validate_not_only_the_run(tmp_path, capsys):
    path = tmp_path / "request.yaml"
    path.write_text(
        "feature: {id: f, title: F}\nunits:\n"
        "  - {id: a, prompt: p, agent: {command: 'tool --in {prompt} {worktree}'}}\n"
    )
    code, out = validate(path, capsys)
    assert code == 2
    assert "units[0] (id: a).agent.command: unknown placeholder '{prompt}'" in out
    assert "{prompt_file}" in out  # the allowed ones are listed
    assert PLACEHOLDERS == AGENT_PLACEHOLDERS  # validate checks what the runner fills


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_static_request_without_units_fails_validate_and_run_alike(tmp_path, capsys, command):
    path = tmp_path / "request.yaml"
    path.write_text(HEAD)
    code, out = validate(path, capsys) if command == "validate" else run(path, tmp_path, capsys)
    assert code == 2, out
    assert "units: no units, and the decompose stage is in `static` mode" in out
    assert "resume" not in out and not (tmp_path / "store").exists()
