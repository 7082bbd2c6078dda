"""Agent runners against real processes: fake CLIs on PATH record exactly how they were started."""

from __future__ import annotations

import json
import os
import shlex
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from flotilla.errors import AgentError
from flotilla.spec import AgentSpec
from tasks.agents import (
    MAX_PROMPT_ARG_BYTES,
    AgentInvocation,
    build_command,
    detect_rate_limit,
    run_agent,
)
from tests.integration.procfs import alive

RECORDER = Path(__file__).resolve().parents[1] / "fakes" / "recorder.py"
PROMPT = "Add a greeting to hello.py.\nKeep 'quotes', \"doubles\" and $DOLLARS as they are.\n"


def install_fake(bin_dir: Path, name: str) -> Path:
    """An executable called `name` that runs the recorder (see tests/fakes/recorder.py)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text(
        f"#!/bin/sh\nFAKE_PROG={shlex.quote(name)} exec "
        f'{shlex.quote(sys.executable)} {shlex.quote(str(RECORDER))} "$@"\n'
    )
    path.chmod(0o755)
    return path


@pytest.fixture
def inv(tmp_path: Path) -> AgentInvocation:
    """An invocation whose paths contain spaces, so quoting mistakes show."""
    worktree = tmp_path / "work tree"
    worktree.mkdir()
    run_dir = tmp_path / "run dir"
    run_dir.mkdir()
    prompt = run_dir / "prompt.md"
    prompt.write_text(PROMPT)
    request_dir = tmp_path / "request dir"
    request_dir.mkdir()
    return AgentInvocation(
        unit_id="add-greeting",
        feature_id="greetings",
        worktree=worktree,
        prompt_file=prompt,
        inputs_dir=run_dir / "inputs",
        outputs_dir=run_dir / "outputs",
        summary_file=run_dir / "summary.md",
        new_units_file=run_dir / "new-units.json",
        request_dir=request_dir,
        log_file=run_dir / "agent.log",
        timeout_s=20,
        iteration=2,
        attempt=3,
        pass_env=["FAKE_*"],  # the fake CLIs' settings; nothing is inherited unnamed
    )


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A bin dir first on PATH; records land in tmp_path/records."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_RECORD_DIR", str(tmp_path / "records"))
    monkeypatch.delenv("FAKE_EXIT", raising=False)
    monkeypatch.delenv("FAKE_OUTPUT", raising=False)
    return bin_dir


def record_of(tmp_path: Path, program: str) -> dict:
    return json.loads((tmp_path / "records" / f"{program}.json").read_text())


PRESET_CASES = [
    (
        "claude",
        "sonnet",
        ["--max-turns", "30"],
        [
            "-p",
            "--output-format",
            "json",
            "--permission-mode",
            "acceptEdits",
            "--model",
            "sonnet",
            "--max-turns",
            "30",
        ],
        True,
    ),
    (
        "codex",
        "gpt-5-codex",
        ["--ephemeral"],
        ["exec", "--json", "--sandbox", "workspace-write", "-m", "gpt-5-codex", "--ephemeral", "-"],
        True,
    ),
    (
        "aider",
        "sonnet",
        ["--no-auto-commits"],
        [
            "--message-file",
            "{prompt_file}",
            "--yes-always",
            "--model",
            "sonnet",
            "--no-auto-commits",
        ],
        False,
    ),
    (
        "gemini",
        "gemini-2.5-pro",
        ["--debug"],
        [
            "-p",
            PROMPT,
            "--approval-mode",
            "yolo",
            "--output-format",
            "json",
            "-m",
            "gemini-2.5-pro",
            "--debug",
        ],
        False,
    ),
    (
        "cursor-agent",
        "gpt-5",
        ["--output-format", "text"],
        [
            "-p",
            "--force",
            "--output-format",
            "json",
            "--model",
            "gpt-5",
            "--output-format",
            "text",
            PROMPT,
        ],
        False,
    ),
    (
        "copilot",
        "claude-sonnet-4.5",
        ["--no-ask-user"],
        ["-p", PROMPT, "--allow-all-tools", "--model", "claude-sonnet-4.5", "--no-ask-user"],
        False,
    ),
    (
        "opencode",
        "anthropic/claude-sonnet-4-5",
        ["--agent", "build"],
        [
            "run",
            "--format",
            "json",
            "--model",
            "anthropic/claude-sonnet-4-5",
            "--agent",
            "build",
            PROMPT,
        ],
        False,
    ),
]


@pytest.mark.parametrize(("preset", "model", "args", "expected", "on_stdin"), PRESET_CASES)
def test_preset_runs_its_cli_with_the_documented_command_line(
    preset: str,
    model: str,
    args: list[str],
    expected: list[str],
    on_stdin: bool,
    inv: AgentInvocation,
    fakes: Path,
    tmp_path: Path,
) -> None:
    install_fake(fakes, preset)
    agent = AgentSpec(preset=preset, model=model, args=args)
    outcome = run_agent(agent, inv)
    assert outcome.ok, outcome.output_tail
    record = record_of(tmp_path, preset)
    want = [str(inv.prompt_file) if a == "{prompt_file}" else a for a in expected]
    assert record["argv"] == want
    assert record["stdin"] == (PROMPT if on_stdin else "")
    assert Path(record["cwd"]) == inv.worktree
    assert record["env"]["FLOTILLA_UNIT_ID"] == "add-greeting"
    assert outcome.command.startswith(preset + " ")


@pytest.mark.parametrize("preset", [case[0] for case in PRESET_CASES])
def test_preset_without_model_or_args_has_no_model_flag(
    preset: str, inv: AgentInvocation, fakes: Path
) -> None:
    install_fake(fakes, preset)
    command = build_command(AgentSpec(preset=preset), inv)
    assert command.argv is not None and command.argv[0] == preset
    assert not {"--model", "-m"} & set(command.argv)


def test_executable_overrides_the_program(
    inv: AgentInvocation, fakes: Path, tmp_path: Path
) -> None:
    fake = install_fake(tmp_path / "elsewhere", "claude-nightly")
    outcome = run_agent(AgentSpec(preset="claude", executable=str(fake)), inv)
    assert outcome.ok
    record = record_of(tmp_path, "claude-nightly")
    assert record["argv"] == ["-p", "--output-format", "json", "--permission-mode", "acceptEdits"]
    assert record["stdin"] == PROMPT


def test_a_prompt_too_long_for_argv_is_passed_by_file(inv: AgentInvocation, fakes: Path) -> None:
    install_fake(fakes, "gemini")
    inv.prompt_file.write_text("x" * (MAX_PROMPT_ARG_BYTES + 1))
    command = build_command(AgentSpec(preset="gemini"), inv)
    assert command.argv is not None
    assert str(inv.prompt_file) in command.argv[2] and len(command.argv[2]) < 200


def test_missing_executable_says_what_and_how_to_fix(
    inv: AgentInvocation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(AgentError) as info:
        run_agent(AgentSpec(preset="codex"), inv)
    message = str(info.value)
    assert "'codex'" in message and "not found on PATH" in message
    assert "executable:" in message and "Install codex" in message


def test_command_agent_gets_quoted_placeholders_and_the_env_contract(
    inv: AgentInvocation, tmp_path: Path
) -> None:
    script = inv.request_dir / "agent.sh"
    script.write_text(
        "set -eu\n"
        'out="$FLOTILLA_OUTPUTS_DIR"\n'
        'printf "%s\\n" "$@" > "$out/args.txt"\n'
        'pwd > "$out/cwd.txt"\n'
        'env | grep "^FLOTILLA_" | sort > "$out/env.txt"\n'
        'echo "$AGENT_ENV_VAR $EXTRA_ENV_VAR" > "$out/extra.txt"\n'
        'cat > "$out/stdin.txt"\n'
        'echo "Added a greeting." > "$FLOTILLA_SUMMARY_FILE"\n'
        "echo hello > hello.txt\n"
    )
    agent = AgentSpec(
        command="bash {request_dir}/agent.sh {unit} {feature} {prompt_file} {worktree}",
        env={"AGENT_ENV_VAR": "from-agent"},
    )
    inv = inv.model_copy(
        update={
            "extra_env": {"EXTRA_ENV_VAR": "from-caller"},
            "env": {"FLOTILLA_UNIT_ID": "cannot-override"},
        }
    )
    outcome = run_agent(agent, inv)
    assert outcome.ok, outcome.output_tail
    out = inv.outputs_dir
    assert (out / "args.txt").read_text().splitlines() == [
        "add-greeting",
        "greetings",
        str(inv.prompt_file),
        str(inv.worktree),
    ]
    assert Path((out / "cwd.txt").read_text().strip()) == inv.worktree
    assert (out / "stdin.txt").read_text() == ""  # the prompt is not piped to commands
    assert (out / "extra.txt").read_text().strip() == "from-agent from-caller"
    env = dict(line.split("=", 1) for line in (out / "env.txt").read_text().splitlines())
    expected = {
        "FLOTILLA_ATTEMPT": "3",
        "FLOTILLA_FEATURE_ID": "greetings",
        "FLOTILLA_INPUTS_DIR": str(inv.inputs_dir),
        "FLOTILLA_ITERATION": "2",
        "FLOTILLA_NEW_UNITS_FILE": str(inv.new_units_file),
        "FLOTILLA_OUTPUTS_DIR": str(inv.outputs_dir),
        "FLOTILLA_PROMPT_FILE": str(inv.prompt_file),
        "FLOTILLA_REQUEST_DIR": str(inv.request_dir),
        "FLOTILLA_SUMMARY_FILE": str(inv.summary_file),
        "FLOTILLA_UNIT_ID": "add-greeting",  # the request's env cannot override the contract
        "FLOTILLA_WORKTREE": str(inv.worktree),
    }
    assert {k: v for k, v in env.items() if k in expected} == expected
    assert inv.summary_file.read_text() == "Added a greeting.\n"
    assert (inv.worktree / "hello.txt").read_text() == "hello\n"
    assert "agent.sh" in inv.log_file.read_text()


def test_unknown_placeholder_names_it_and_the_allowed_ones(inv: AgentInvocation) -> None:
    with pytest.raises(AgentError) as info:
        build_command(AgentSpec(command="run-agent --branch {branch} {unit}"), inv)
    message = str(info.value)
    assert "{branch}" in message
    for name in ("{unit}", "{feature}", "{prompt_file}", "{request_dir}", "{worktree}"):
        assert name in message


def test_literal_braces_are_written_doubled(inv: AgentInvocation) -> None:
    command = build_command(AgentSpec(command='echo "${{HOME}}" {unit}'), inv)
    assert command.shell == 'echo "${HOME}" add-greeting'


def test_timeout_kills_the_agent_and_its_background_children(inv: AgentInvocation) -> None:
    pid_file = inv.outputs_dir / "child.pid"
    agent = AgentSpec(command='sleep 30 & echo $! > "$FLOTILLA_OUTPUTS_DIR/child.pid"; sleep 30')
    inv = inv.model_copy(update={"timeout_s": 1.0})
    outcome = run_agent(agent, inv)
    assert outcome.timed_out and outcome.exit_code is None
    assert not outcome.rate_limited and not outcome.ok
    child = int(pid_file.read_text())
    assert not alive(child)


def test_exit_75_is_a_rate_limit_with_the_named_delay(inv: AgentInvocation) -> None:
    agent = AgentSpec(command='echo "Too many requests; retry after 20 seconds."; exit 75')
    outcome = run_agent(agent, inv)
    assert outcome.rate_limited and not outcome.ok
    assert outcome.retry_after_s == 20.0
    assert outcome.exit_code == 75


def test_a_preset_limit_message_is_a_rate_limit(
    inv: AgentInvocation, fakes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_fake(fakes, "claude")
    monkeypatch.setenv("FAKE_EXIT", "1")
    monkeypatch.setenv("FAKE_OUTPUT", "5-hour limit reached ∙ resets 3pm")
    outcome = run_agent(AgentSpec(preset="claude"), inv)
    assert outcome.rate_limited
    assert outcome.retry_after_s is not None and 1.0 <= outcome.retry_after_s <= 3600.0


def test_an_ordinary_failure_is_not_a_rate_limit(inv: AgentInvocation) -> None:
    # The command itself names a rate limiter: only the agent's output is read, not the log header.
    command = "echo 'SyntaxError in rate_limiter.py line 429'; exit 1 # add a rate limit"
    outcome = run_agent(AgentSpec(command=command), inv)
    assert outcome.exit_code == 1 and not outcome.rate_limited and not outcome.ok
    assert "add a rate limit" in inv.log_file.read_text()


LISBON_1230 = datetime(2026, 1, 24, 12, 30, tzinfo=ZoneInfo("Europe/Lisbon"))
UTC_2PM = datetime(2026, 7, 5, 14, 30, tzinfo=UTC)

RATE_LIMIT_SAMPLES = [
    # (exit code, output, now, expected seconds or None)
    (1, "You've hit your limit · resets 1pm (Europe/Lisbon)", LISBON_1230, 1800.0),
    (1, "You've hit your session limit · resets 12:50pm (Europe/Lisbon)", LISBON_1230, 1200.0),
    (1, "5-hour limit reached ∙ resets 3pm", UTC_2PM, 1800.0),
    (1, f"Claude AI usage limit reached|{int(UTC_2PM.timestamp()) + 900}", UTC_2PM, 900.0),
    (
        1,
        "■ You've hit your usage limit. Upgrade to Pro (https://openai.com/chatgpt/pricing) or "
        "try again in 1 hour 5 minutes.",
        UTC_2PM,
        3600.0,  # 3900 s, capped
    ),
    (
        1,
        "You've hit your usage limit. Upgrade to Plus to continue using Codex "
        "(https://chatgpt.com/explore/plus), or try again at Jul 5th, 2026 2:50 PM.",
        UTC_2PM,
        1200.0,
    ),
    (
        1,
        '[API Error: {"error":{"code":429,"message":"You exceeded your current quota. '
        'Please retry in 37.5s.","status":"RESOURCE_EXHAUSTED"}}]',
        UTC_2PM,
        37.5,
    ),
    (1, '{"error": {"code": 429, "details": [{"retryDelay": "20s"}]}}', UTC_2PM, 20.0),
    (
        1,
        "Error: Rate limit reached for gpt-4o in organization org-abc on tokens per min (TPM): "
        "Limit 30000, Used 29500, Requested 1200. Please try again in 6m0s.",
        UTC_2PM,
        360.0,
    ),
    (
        1,
        'Error: 429 {"type":"error","error":{"type":"rate_limit_error","message":"This request '
        "would exceed your account's rate limit. Please try again later.\"}}",
        UTC_2PM,
        None,
    ),
    (1, "HTTP 429 Too Many Requests\nRetry-After: 20", UTC_2PM, 20.0),
    (1, "Quota exceeded for quota metric 'Requests'. Try again in 20s", UTC_2PM, 20.0),
    (1, "openai.RateLimitError: Error code: 429", UTC_2PM, None),
    (1, '{"error":{"type":"usage_limit_reached","resets_in_seconds":1500}}', UTC_2PM, 1500.0),
    (75, "", UTC_2PM, None),
    (75, "upstream busy, resets in 2h 30m", UTC_2PM, 3600.0),
]


@pytest.mark.parametrize(("exit_code", "output", "now", "seconds"), RATE_LIMIT_SAMPLES)
def test_rate_limit_samples(
    exit_code: int, output: str, now: datetime, seconds: float | None
) -> None:
    assert detect_rate_limit(exit_code, output, now=now) == (True, seconds)


def test_long_delays_are_parsed_in_full_before_the_cap() -> None:
    text = "You've hit your usage limit. Try again in 5 days 22 hours 11\nminutes."
    expected = 5 * 86400 + 22 * 3600 + 11 * 60
    assert detect_rate_limit(1, text, max_wait_s=1e9) == (True, float(expected))


@pytest.mark.parametrize(
    ("exit_code", "output"),
    [
        (0, "Implemented a rate limit of 429 requests; usage limit reached in tests."),
        (None, "rate limit"),
        (1, "AssertionError: expected 3, got 4"),
        (1, "SyntaxError in parser.py line 429"),
        (1, "FAILED tests/test_rate_limiter.py::test_usage_limiter - assert 3 == 4"),
        (1, "rate limit exceeded\n" + "\n".join(f"step {i}" for i in range(60)) + "\nfailed"),
    ],
)
def test_not_rate_limits(exit_code: int | None, output: str) -> None:
    assert detect_rate_limit(exit_code, output) == (False, None)


def test_a_reset_time_already_past_today_means_tomorrow() -> None:
    now = datetime(2026, 1, 24, 16, 0, tzinfo=UTC)
    limited, seconds = detect_rate_limit(1, "limit reached ∙ resets 3pm", now=now, max_wait_s=1e9)
    assert limited and seconds == timedelta(hours=23).total_seconds()
