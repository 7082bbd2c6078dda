"""An agent or a test gets a chosen environment, writes no secret, and leaves no process behind."""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

import pytest

from flotilla.spec import AgentSpec
from tasks.agents import AgentInvocation, run_agent
from tasks.checks import run_tests, test_env
from tasks.store import ArtifactStore
from tests.integration.procfs import alive

CREDENTIALS = {
    "GITHUB_TOKEN": "gh-token-of-flotilla-1111",
    "FLOTILLA_GITHUB_TOKEN": "provider-token-of-flotilla-2222",
    "AWS_ACCESS_KEY_ID": "AKIAISOLATIONTEST333",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-of-the-store-4444",
    "FLOTILLA_S3_ENDPOINT_URL": "http://127.0.0.1:9",
}
PRESET_VARIABLES = {
    "ANTHROPIC_API_KEY": "claude",
    "CLAUDE_CONFIG_DIR": "claude",
    "OPENAI_API_KEY": "codex",
    "GEMINI_API_KEY": "gemini",
    "GOOGLE_API_KEY": "gemini",
    "CURSOR_API_KEY": "cursor-agent",
    "COPILOT_MODEL": "copilot",
    "OPENCODE_CONFIG": "opencode",
}


@pytest.fixture
def inv(tmp_path: Path) -> AgentInvocation:
    worktree, run_dir = tmp_path / "worktree", tmp_path / "run"
    worktree.mkdir()
    run_dir.mkdir()
    (run_dir / "prompt.md").write_text("Do the thing.\n")
    return AgentInvocation(
        unit_id="isolated",
        feature_id="secrets",
        worktree=worktree,
        prompt_file=run_dir / "prompt.md",
        inputs_dir=run_dir / "inputs",
        outputs_dir=run_dir / "outputs",
        summary_file=run_dir / "summary.md",
        new_units_file=run_dir / "new-units.json",
        request_dir=tmp_path,
        log_file=run_dir / "agent.log",
        timeout_s=30,
    )


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        **CREDENTIALS,
        **{n: f"value-of-{n.lower()}" for n in PRESET_VARIABLES},
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SOME_UNRELATED_SETTING", "not-for-agents")


def env_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@pytest.mark.parametrize(
    "preset", ["claude", "codex", "aider", "gemini", "cursor-agent", "copilot", "opencode"]
)
def test_a_preset_gets_what_its_cli_reads_and_none_of_flotillas_credentials(
    preset: str, inv: AgentInvocation, tmp_path: Path, credentials: None, monkeypatch
) -> None:
    bin_dir, record = tmp_path / "bin", tmp_path / "env.txt"
    bin_dir.mkdir()
    fake = bin_dir / preset
    fake.write_text(f"#!/bin/sh\ncat > /dev/null\nenv > {shlex.quote(str(record))}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert run_agent(AgentSpec(preset=preset), inv).ok
    env = env_lines(record.read_text())
    for name, owner in PRESET_VARIABLES.items():
        if owner == preset:
            assert env[name] == f"value-of-{name.lower()}"
    unrelated = {n for n, owner in PRESET_VARIABLES.items() if owner != preset}
    if preset in ("aider", "opencode"):  # multi-provider CLIs read several vendors' keys
        unrelated -= {"ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY"}
    assert not unrelated & env.keys()
    leaked = set(CREDENTIALS) & env.keys()
    assert leaked == ({"GITHUB_TOKEN"} if preset == "copilot" else set())
    assert "SOME_UNRELATED_SETTING" not in env
    assert env["FLOTILLA_UNIT_ID"] == "isolated" and env["PATH"].startswith(str(bin_dir))


def test_a_command_agent_gets_the_basics_the_contract_and_what_the_request_names(
    inv: AgentInvocation, credentials: None, monkeypatch
) -> None:
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    agent = AgentSpec(command='env > "$FLOTILLA_OUTPUTS_DIR/env.txt"', env={"FROM_AGENT": "1"})
    agent = agent.model_copy(update={"pass_env": ["AWS_SECRET_ACCESS_KEY"]})
    inv = inv.model_copy(update={"pass_env": ["SOME_*"], "env": {"FROM_UNIT": "2"}})
    assert run_agent(agent, inv).ok
    env = env_lines((inv.outputs_dir / "env.txt").read_text())
    assert env["FROM_AGENT"] == "1" and env["FROM_UNIT"] == "2"
    assert env["SOME_UNRELATED_SETTING"] == "not-for-agents"  # named by the unit's pass_env
    assert env["AWS_SECRET_ACCESS_KEY"] == CREDENTIALS["AWS_SECRET_ACCESS_KEY"]  # named
    assert env["LC_ALL"] == "C.UTF-8" and env["HTTPS_PROXY"] == "http://proxy.internal:3128"
    assert not {"GITHUB_TOKEN", "FLOTILLA_GITHUB_TOKEN", "AWS_ACCESS_KEY_ID"} & env.keys()
    assert not {"FLOTILLA_S3_ENDPOINT_URL", "ANTHROPIC_API_KEY"} & env.keys()
    # The agent saw the secret it was given, but its log says ***.
    assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in inv.log_file.read_text()


def test_a_test_command_gets_the_basics_and_what_is_named_and_its_output_is_redacted(
    tmp_path: Path, credentials: None, monkeypatch
) -> None:
    log = tmp_path / "tests.log"
    report = run_tests(
        "env; echo token=$PASSED_TOKEN",
        cwd=tmp_path,
        timeout_s=30,
        env=test_env(["PASSED_*"], {"PLAIN": "yes"}),
        log_file=log,
    )
    monkeypatch.setenv("PASSED_TOKEN", "unused")  # set after: only what was named then counts
    env = env_lines(report.output_tail)
    assert env["PLAIN"] == "yes" and "PATH" in env and "HOME" in env
    assert not set(CREDENTIALS) & env.keys()
    assert not {"SOME_UNRELATED_SETTING", "ANTHROPIC_API_KEY"} & env.keys()


def test_output_is_redacted_before_it_is_logged(tmp_path: Path, credentials: None) -> None:
    log = tmp_path / "tests.log"
    secret = CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
    report = run_tests(
        f"echo 'the key is {secret}'; echo 'a token ghp_{'Z' * 36}'",
        cwd=tmp_path,
        timeout_s=30,
        log_file=log,
    )
    for text in (report.output_tail, log.read_text()):
        assert secret not in text and "ghp_ZZZZ" not in text
        assert "the key is ***" in text and "a token ***" in text


def test_the_store_writes_secrets_as_stars(tmp_path: Path, credentials: None) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    secret = CREDENTIALS["FLOTILLA_GITHUB_TOKEN"]
    store.write_json("runs/k/ledger/u.json", {"error": f"push failed with {secret}"})
    log = tmp_path / "attempt.log"
    log.write_text(f"token: {secret}\n")
    store.upload_file("runs/k/units/u/logs/attempt-1.log", log)
    assert secret not in store.read_text("runs/k/ledger/u.json")
    assert store.read_text("runs/k/units/u/logs/attempt-1.log") == "token: ***\n"


# --- nothing outlives its unit ------------------------------------------------------------------

DETACHING_AGENT = """\
out="$FLOTILLA_OUTPUTS_DIR"
setsid sh -c 'echo $$ > "$0/setsid.pid"; exec sleep 300' "$out" > /dev/null 2>&1 < /dev/null &
sh -c 'sh -c "echo \\$\\$ > \\"$0/double.pid\\"; exec sleep 300" "$0" > /dev/null 2>&1 < /dev/null &' "$out"
while [ ! -s "$out/setsid.pid" ] || [ ! -s "$out/double.pid" ]; do sleep 0.05; done
{tail}
"""


def pids_of(outputs: Path) -> list[int]:
    return [int((outputs / name).read_text()) for name in ("setsid.pid", "double.pid")]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize(
    ("tail", "timeout_s"), [("exit 0", 30.0), ("sleep 300", 2.0)], ids=["exits", "times-out"]
)
def test_processes_that_left_the_group_end_with_the_agent(
    inv: AgentInvocation, tmp_path: Path, tail: str, timeout_s: float
) -> None:
    script = tmp_path / "detach.sh"
    script.write_text(DETACHING_AGENT.format(tail=tail))
    inv = inv.model_copy(update={"timeout_s": timeout_s})
    outcome = run_agent(AgentSpec(command=f"bash {shlex.quote(str(script))}"), inv)
    assert outcome.timed_out == (tail != "exit 0")
    pids = pids_of(inv.outputs_dir)
    assert all(pid != os.getpid() for pid in pids)
    deadline = time.monotonic() + 2
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in pids if alive(pid)] == []


def test_an_agent_keeps_its_exit_code_and_death_by_signal(inv: AgentInvocation) -> None:
    assert run_agent(AgentSpec(command="exit 3"), inv).exit_code == 3
    assert run_agent(AgentSpec(command="kill -9 $$"), inv).exit_code == -9
    missing = run_agent(AgentSpec(command="exec /no/such/program"), inv)
    assert missing.exit_code == 127
