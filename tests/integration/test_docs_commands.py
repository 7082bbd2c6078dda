"""Every command in the quickstart and the operations guide pastes and works.

Each shell block (```bash, ```console) and each inline command of docs/quickstart.md and
docs/operations.md is checked against the real tool: `make` targets by a dry run, `prefect`
commands and their options by the installed CLI's own help, `flotilla` commands by its argument
parser, environment variables against the settings that read them. The ones that need nothing
but the repository run for real, and their output must be what the page shows. Commands that
need a Prefect server are run against a real one in tests/e2e/test_deployments.py.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from flotilla.cli import build_parser, main
from flotilla.settings import FlotillaSettings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["docs/quickstart.md", "docs/operations.md"]
# Programs outside this repository and Prefect, named in the guides for the reader's own setup.
EXTERNAL = {"aws": "the AWS CLI, for a store on S3", "cp": "coreutils", "echo": "the shell"}
INLINE_PROGRAMS = ("prefect ", "flotilla ", ".venv/bin/flotilla ", "make ", "python -m ")
# Runs the command after it in a process of its own making; that command is what is checked.
LAUNCHER = ["python", "-m", "deployments.prefect_server"]

# Asks the installed Prefect CLI for the help of many commands in one process (it is slow to load).
PREFECT_HELP = """
import contextlib, io, json, sys
from prefect.cli import app
answers = []
for tokens in json.load(sys.stdin):
    out, code = io.StringIO(), 0
    sys.argv = ["prefect", *tokens, "--help"]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            app()
        except SystemExit as exit:
            code = exit.code or 0
    answers.append([code, out.getvalue()])
json.dump(answers, sys.__stdout__)
"""


@dataclass
class Command:
    doc: str
    line: int  # 0 for a command named inline, in a sentence
    text: str
    output: list[str] = field(default_factory=list)  # what a console block shows after it

    @property
    def words(self) -> list[str]:
        words = shlex.split(self.text, comments=True)
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
            words.pop(0)  # `VAR=value command ...`
        if words[: len(LAUNCHER)] == LAUNCHER:
            return words[len(LAUNCHER) :]
        return words

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def shell_blocks(doc: str) -> list[tuple[str, int, str]]:
    text = (ROOT / doc).read_text()
    found = []
    for match in re.finditer(r"^```(bash|console)\n(.*?)^```", text, re.M | re.S):
        found.append((match.group(1), text[: match.start()].count("\n") + 2, match.group(2)))
    return found


def block_commands(doc: str) -> list[Command]:
    commands: list[Command] = []
    for kind, first_line, body in shell_blocks(doc):
        lines = body.splitlines()
        index = 0
        while index < len(lines):
            line, number = lines[index], first_line + index
            index += 1
            if kind == "console" and not line.startswith("$ "):
                if commands and commands[-1].doc == doc:
                    commands[-1].output.append(line)
                continue
            text = line.removeprefix("$ ").strip()
            if not text or text.startswith("#"):
                continue
            while text.endswith("\\") and index < len(lines):
                text = text[:-1] + " " + lines[index].strip()
                index += 1
            commands.append(Command(doc, number, text))
    return commands


def inline_commands(doc: str) -> list[Command]:
    text = (ROOT / doc).read_text()
    outside_blocks = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return [
        Command(doc, 0, span)
        for span in re.findall(r"`([^`\n]+)`", outside_blocks)
        if span.startswith(INLINE_PROGRAMS)
    ]


ALL_COMMANDS = [c for doc in DOCS for c in (*block_commands(doc), *inline_commands(doc))]


def by_program(*names: str) -> list[Command]:
    return [c for c in ALL_COMMANDS if c.words and c.words[0] in names]


def test_the_guides_have_commands_and_each_one_has_a_check():
    assert len(ALL_COMMANDS) > 40
    checked = {"make", "prefect", "flotilla", ".venv/bin/flotilla", "python", "export", "git"}
    unknown = [str(c) for c in ALL_COMMANDS if c.words[0] not in checked | EXTERNAL.keys()]
    assert not unknown, "commands no test checks:\n" + "\n".join(unknown)


@pytest.mark.parametrize("doc", DOCS)
def test_every_shell_block_is_valid_shell(doc):
    for kind, line, body in shell_blocks(doc):
        script = body
        if kind == "console":
            script = "\n".join(
                c.text for c in block_commands(doc) if line <= c.line < line + body.count("\n")
            )
        done = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
        assert done.returncode == 0, f"{doc}:{line}: {done.stderr}"


def test_make_commands_name_real_targets():
    for command in by_program("make"):
        dry_run = ["make", "-n", "-o", ".venv/bin/flotilla", "-o", ".venv/.dev"]
        done = subprocess.run(
            [*dry_run, *command.words[1:]], cwd=ROOT, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{command}\n{done.stderr}"


def test_prefect_commands_and_their_options_exist_in_the_installed_cli(tmp_path):
    prefect_home = tmp_path / "prefect-home"
    commands = by_program("prefect")
    assert len(commands) >= 10
    asked = [c.words[1:] for c in commands]
    done = subprocess.run(
        [sys.executable, "-c", PREFECT_HELP],
        input=json.dumps(asked),
        capture_output=True,
        text=True,
        env={
            "COLUMNS": "200",
            "PATH": "/usr/bin:/bin",
            "PREFECT_HOME": str(prefect_home),
        },
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    for command, (code, help_text) in zip(commands, json.loads(done.stdout), strict=True):
        assert code == 0 and help_text.startswith("Usage: prefect "), f"{command}\n{help_text}"
        for option in (w.split("=", 1)[0] for w in command.words if w.startswith("--")):
            assert option in help_text, f"{command}: the CLI has no {option}"


def test_flotilla_commands_parse():
    """A command to paste parses in full; one named in a sentence names a real subcommand and
    real options (its arguments may be left to the reader)."""
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    subcommands = subparsers.choices
    for command in by_program("flotilla", ".venv/bin/flotilla"):
        words = command.words[1:]
        if command.line == 0:
            sub = subcommands.get(words[0])
            assert sub is not None, f"{command}: no subcommand {words[0]!r}"
            known = {o for a in sub._actions for o in a.option_strings}
            options = [w for w in words if w.startswith("--")]
            assert set(options) <= known, f"{command}: unknown options {set(options) - known}"
            continue
        try:
            parser.parse_args(words)
        except SystemExit:
            pytest.fail(f"{command}: `flotilla` does not accept these arguments")


def test_python_modules_and_their_options_exist(capsys):
    """Every `python -m` names a module that imports; this project's own also take the options
    shown (another package's, such as `prefect.engine`, is only named)."""
    for command in by_program("python"):
        assert command.words[1] == "-m", command
        module = importlib.import_module(command.words[2])
        if not (ROOT / command.words[2].split(".")[0]).is_dir():
            continue
        with pytest.raises(SystemExit):
            module.main(["--help"])
        help_text = capsys.readouterr().out
        for option in (w for w in command.words[3:] if w.startswith("--")):
            assert option in help_text, f"{command}: no option {option}"


def test_exported_variables_are_read_by_flotilla_prefect_or_boto():
    from prefect.settings import Settings as PrefectSettings
    from prefect.settings.legacy import _get_valid_setting_names

    prefect_names = _get_valid_setting_names(PrefectSettings)
    flotilla_names = {f"FLOTILLA_{name.upper()}" for name in FlotillaSettings.model_fields}
    for command in by_program("export"):
        for word in command.words[1:]:
            name = word.split("=", 1)[0]
            known = name in prefect_names or name in flotilla_names or name.startswith("AWS_")
            assert known, f"{command}: nothing reads {name}"


def test_git_commands_exist():
    for command in by_program("git"):
        sub = next(w for w in command.words[1:] if not w.startswith("-") and "/" not in w)
        done = subprocess.run(["git", sub, "-h"], capture_output=True, text=True)
        assert f"usage: git {sub}" in done.stdout, command


def test_the_quickstart_validate_examples_print_what_the_page_shows(tmp_path, monkeypatch, capsys):
    """The YAML blocks are the files; `flotilla validate` on them prints the shown output."""
    text = (ROOT / "docs/quickstart.md").read_text()
    for name, body in re.findall(r"^```yaml\n# ([\w.-]+\.yaml)\n(.*?)^```", text, re.M | re.S):
        (tmp_path / name).write_text(f"# {name}\n{body}")  # the block as a reader pastes it
    monkeypatch.chdir(tmp_path)
    ran = 0
    last_code = 0
    for command in block_commands("docs/quickstart.md"):
        words = command.words
        if words[:2] == [".venv/bin/flotilla", "validate"]:
            last_code = main(words[1:])
            captured = capsys.readouterr()
            shown = [line for line in command.output if line]
            assert (captured.out + captured.err).splitlines() == shown, command
            ran += 1
        elif words == ["echo", "$?"]:
            assert command.output == [str(last_code)], command
    assert ran == 2
