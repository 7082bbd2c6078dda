"""What Flotilla logs to Prefect about agents: rate-limit waits, and never a secret."""

from __future__ import annotations

import logging
from pathlib import Path
from uuid import UUID

import pytest
from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogHandler

import flows  # noqa: F401 - importing the flows package installs the redacting log filter
from flotilla.spec import AgentSpec
from tasks.agents import AgentInvocation, run_agent_until_done

LIMITED_ONCE = """\
if [ ! -e "$FLOTILLA_OUTPUTS_DIR/limited-once" ]; then
  touch "$FLOTILLA_OUTPUTS_DIR/limited-once"
  echo "Error: usage limit reached for this account"
  exit 75
fi
echo done
"""


def flow_run_logs(flow_run_id: UUID) -> list[tuple[int, str]]:
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [(log.level, log.message) for log in logs]


def invocation(tmp_path: Path) -> AgentInvocation:
    (tmp_path / "wt").mkdir()
    (tmp_path / "prompt.md").write_text("Work.\n")
    return AgentInvocation(
        unit_id="waits",
        feature_id="logs",
        worktree=tmp_path / "wt",
        prompt_file=tmp_path / "prompt.md",
        inputs_dir=tmp_path / "inputs",
        outputs_dir=tmp_path / "outputs",
        summary_file=tmp_path / "summary.md",
        new_units_file=tmp_path / "new-units.json",
        request_dir=tmp_path,
        log_file=tmp_path / "agent.log",
        timeout_s=30,
        agent_name="limited",
    )


def test_a_rate_limit_wait_is_logged_with_the_agent_the_reason_and_the_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOTILLA_RATE_LIMIT_DEFAULT_WAIT_S", "0.2")
    (tmp_path / "agent.sh").write_text(LIMITED_ONCE)
    inv = invocation(tmp_path)
    agent = AgentSpec(command="bash {request_dir}/agent.sh")

    @flow(name="rate-limited-agent")
    def run_it() -> str:
        return run_agent_until_done(agent, inv).output_tail

    state = run_it(return_state=True)
    assert state.is_completed() and "done" in state.result()
    expected = (
        "agent 'limited' (command) of unit waits is rate-limited (exit code 75: Error: usage "
        "limit reached for this account); waiting 0.2s before running it again (attempt 1 is "
        "not spent)"
    )
    assert f"--- flotilla: WARNING: {expected}\n" in inv.log_file.read_text()
    logs = flow_run_logs(state.state_details.flow_run_id)
    assert (logging.WARNING, expected) in logs


def test_prefect_logs_hold_no_secret(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    secret = "provider-token-in-a-log-5150"
    monkeypatch.setenv("FLOTILLA_GITHUB_TOKEN", secret)

    @flow(name="logs-a-secret")
    def chatty() -> None:
        get_run_logger().info("pushing with %s and ghp_%s", secret, "Q" * 36)
        logging.getLogger("flotilla.publishing").warning("token was %s", secret)

    state = chatty(return_state=True)
    logs = flow_run_logs(state.state_details.flow_run_id)
    messages = [message for _, message in logs]
    assert "pushing with *** and ***" in messages
    assert not [m for m in messages if secret in m or "ghp_QQQQ" in m]
    assert secret not in caplog.text
