"""Agent runners: the command line for each known coding-agent CLI, any shell command, the
environment contract, time limits and rate-limit detection.

An agent is a process run in the unit's worktree. Everything it needs arrives through
`FLOTILLA_*` variables; what it leaves behind (code, summary, outputs) is picked up by the work
loop. A rate-limit answer is reported separately from a failure, so the caller can wait instead
of spending an attempt.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import string
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, Field

from flotilla.environment import child_env
from flotilla.errors import AgentError
from flotilla.rate_limits import (  # noqa: F401 - re-exported for callers of the runner
    RATE_LIMIT_EXIT_CODE,
    detect_rate_limit,
    limit_message,
    parse_retry_after,
)
from flotilla.redaction import redact
from flotilla.settings import get_settings
from flotilla.spec import AgentSpec
from flotilla.usage import PARSERS, Usage, parse_usage_file, priced
from tasks.processes import run_process

PLACEHOLDERS = ("unit", "feature", "prompt_file", "request_dir", "worktree")
MAX_PROMPT_ARG_BYTES = 100_000  # Linux refuses a single argument over 128 KiB


class AgentInvocation(BaseModel):
    """One run of an agent: which unit, where, with which files, for how long."""

    unit_id: str
    feature_id: str
    worktree: Path
    prompt_file: Path
    inputs_dir: Path
    outputs_dir: Path
    summary_file: Path
    new_units_file: Path
    request_dir: Path
    log_file: Path
    timeout_s: float
    iteration: int = 1
    attempt: int = 1
    extra_env: dict[str, str] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)  # the unit's and defaults' `env:`
    pass_env: list[str] = Field(default_factory=list)  # the unit's and defaults' `pass_env:`
    agent_name: str = ""  # how the request names the agent, for logs
    usage_file: Path | None = None  # $FLOTILLA_USAGE_FILE: where any agent may report its usage
    candidate: int | None = None  # best-of-N: $FLOTILLA_CANDIDATE, 1..N


class CommandLine(BaseModel):
    """What to start: an argv exec'd directly (presets) or a string for `bash -c` (commands)."""

    argv: list[str] | None = None
    shell: str | None = None
    stdin: str | None = None

    def display(self) -> str:
        """The command for logs, with a prompt passed as an argument shortened."""
        if self.argv is None:
            return str(self.shell)
        short = [a if len(a) <= 80 and "\n" not in a else f"<{len(a)} chars>" for a in self.argv]
        return shlex.join(short)


class AgentOutcome(BaseModel):
    """How an agent run ended; `rate_limited` means wait `retry_after_s` and run it again."""

    exit_code: int | None
    timed_out: bool
    rate_limited: bool
    retry_after_s: float | None
    duration_s: float
    output_tail: str
    command: str = ""
    rate_limit_reason: str = ""
    usage: Usage = Field(default_factory=Usage)
    answer: str = ""  # the final text of a CLI that answers in JSON, for the summary

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.rate_limited


# --- command lines -----------------------------------------------------------------------------


def build_command(agent: AgentSpec, inv: AgentInvocation) -> CommandLine:
    """The command line for `agent` on `inv`; raises AgentError if it cannot be started."""
    if agent.command is not None:
        return CommandLine(shell=_format_template(agent.command, inv))
    assert agent.preset is not None  # AgentSpec guarantees one of the two
    program = agent.executable or agent.preset
    _require_executable(program, agent, agent_env(inv, agent))
    try:
        prompt = inv.prompt_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise AgentError(
            f"Cannot read the prompt file {inv.prompt_file} for unit {inv.unit_id!r}: {exc}."
        ) from exc
    return PRESETS[agent.preset](program, agent, prompt, inv.prompt_file)


def _model(flag: str, agent: AgentSpec) -> list[str]:
    return [flag, agent.model] if agent.model else []


def _prompt_arg(prompt: str, prompt_file: Path) -> str:
    """The prompt as one argument; a pointer to the file when it is too long for argv."""
    if len(prompt.encode()) <= MAX_PROMPT_ARG_BYTES:
        return prompt
    return f"Your task is described in the file {prompt_file}. Read it and carry it out."


def _claude(program: str, agent: AgentSpec, prompt: str, prompt_file: Path) -> CommandLine:
    # https://docs.anthropic.com/en/docs/claude-code/cli-reference: `-p/--print` answers and
    # exits, piped input is the query (`cat file | claude -p`), `--permission-mode acceptEdits`
    # edits files without asking, `--model sonnet|opus|<full name>`.
    # `--output-format json` ends with one result object: total_cost_usd, usage, num_turns, result.
    argv = [program, "-p", "--output-format", "json", "--permission-mode", "acceptEdits"]
    argv += _model("--model", agent)
    return CommandLine(argv=[*argv, *agent.args], stdin=prompt)


def _codex(program: str, agent: AgentSpec, prompt: str, prompt_file: Path) -> CommandLine:
    # https://developers.openai.com/codex/noninteractive: `codex exec` runs without approvals,
    # `--sandbox workspace-write` lets it edit the workspace (the replacement for the deprecated
    # `--full-auto`, openai/codex#20133), `-m MODEL`, and a prompt of `-` is read from stdin.
    # `--json` prints JSONL events; `turn.completed` carries the turn's token usage.
    argv = [program, "exec", "--json", "--sandbox", "workspace-write", *_model("-m", agent)]
    return CommandLine(argv=[*argv, *agent.args, "-"], stdin=prompt)


def _aider(program: str, agent: AgentSpec, prompt: str, prompt_file: Path) -> CommandLine:
    # https://aider.chat/docs/scripting.html and /docs/config/options.html: `--message-file FILE`
    # sends one message and exits, `--yes-always` answers every confirmation, `--model MODEL`.
    argv = [program, "--message-file", str(prompt_file), "--yes-always", *_model("--model", agent)]
    return CommandLine(argv=[*argv, *agent.args])


def _gemini(program: str, agent: AgentSpec, prompt: str, prompt_file: Path) -> CommandLine:
    # https://geminicli.com/docs/cli/headless and the CLI reference: `-p/--prompt TEXT` runs
    # headless, `--approval-mode yolo` approves every tool call (`--yolo` is its deprecated
    # alias), `-m/--model MODEL`.
    # `--output-format json`: one object with `response` and `stats` (tokens per model).
    argv = [program, "-p", _prompt_arg(prompt, prompt_file), "--approval-mode", "yolo"]
    argv += ["--output-format", "json"]
    return CommandLine(argv=[*argv, *_model("-m", agent), *agent.args])


def _cursor(program: str, agent: AgentSpec, prompt: str, prompt_file: Path) -> CommandLine:
    # https://cursor.com/docs/cli/headless: `-p/--print` for scripts, `--force` applies changes
    # and runs actions without approval, `--model MODEL`, the prompt as the last argument.
    # `--output-format json` ends with a result object (`result`, `duration_ms`; no tokens).
    argv = [program, "-p", "--force", "--output-format", "json", *_model("--model", agent)]
    argv += agent.args
    return CommandLine(argv=[*argv, _prompt_arg(prompt, prompt_file)])


def _copilot(program: str, agent: AgentSpec, prompt: str, prompt_file: Path) -> CommandLine:
    # https://docs.github.com/en/copilot/reference/copilot-cli-reference/cli-programmatic-reference:
    # `-p PROMPT` runs non-interactively, `--allow-all-tools` runs every tool without asking,
    # `--model MODEL`.
    argv = [program, "-p", _prompt_arg(prompt, prompt_file), "--allow-all-tools"]
    return CommandLine(argv=[*argv, *_model("--model", agent), *agent.args])


def _opencode(program: str, agent: AgentSpec, prompt: str, prompt_file: Path) -> CommandLine:
    # https://opencode.ai/docs/cli#run: `opencode run [message..]` runs without the TUI,
    # `-m/--model provider/model`; what it may do follows the user's `permission` config
    # (https://opencode.ai/docs/permissions).
    # `--format json` prints JSON events; each `step_finish` part has `tokens` and `cost`.
    argv = [program, "run", "--format", "json", *_model("--model", agent), *agent.args]
    return CommandLine(argv=[*argv, _prompt_arg(prompt, prompt_file)])


PresetBuilder = Callable[[str, AgentSpec, str, Path], CommandLine]
PRESETS: dict[str, PresetBuilder] = {
    "claude": _claude,
    "codex": _codex,
    "aider": _aider,
    "gemini": _gemini,
    "cursor-agent": _cursor,
    "copilot": _copilot,
    "opencode": _opencode,
}


def _format_template(template: str, inv: AgentInvocation) -> str:
    allowed = ", ".join("{" + name + "}" for name in PLACEHOLDERS)
    try:
        fields = [
            field for _, field, _, _ in string.Formatter().parse(template) if field is not None
        ]
    except ValueError as exc:
        raise AgentError(
            f"The agent command {template!r} is not a valid template ({exc}). "
            f"Use {allowed}, and write {{{{ and }}}} for literal braces."
        ) from exc
    for field in fields:
        if field not in PLACEHOLDERS:
            raise AgentError(
                f"The agent command {template!r} uses the unknown placeholder {{{field}}}. "
                f"Allowed placeholders: {allowed}; write {{{{ and }}}} for literal braces "
                "(e.g. ${{HOME}})."
            )
    values = {
        "unit": inv.unit_id,
        "feature": inv.feature_id,
        "prompt_file": str(inv.prompt_file),
        "request_dir": str(inv.request_dir),
        "worktree": str(inv.worktree),
    }
    return template.format(**{name: shlex.quote(value) for name, value in values.items()})


def _require_executable(program: str, agent: AgentSpec, env: dict[str, str]) -> None:
    path = env.get("PATH", os.environ.get("PATH", os.defpath))
    if shutil.which(program, path=path):
        return
    where = "on PATH" if os.sep not in program else "at that path"
    raise AgentError(
        f"The {agent.preset} agent needs the program {program!r}, which was not found {where}. "
        f"Install {agent.preset} so that {program!r} runs from a shell, or set `executable:` in "
        "the agent's definition to the program's full path."
    )


def agent_env(inv: AgentInvocation, agent: AgentSpec) -> dict[str, str]:
    """The agent's whole environment, chosen rather than inherited (`flotilla.environment`):
    the basics, what its preset's CLI reads, what the request names, and the contract."""
    contract = {
        "FLOTILLA_UNIT_ID": inv.unit_id,
        "FLOTILLA_FEATURE_ID": inv.feature_id,
        "FLOTILLA_WORKTREE": str(inv.worktree),
        "FLOTILLA_PROMPT_FILE": str(inv.prompt_file),
        "FLOTILLA_INPUTS_DIR": str(inv.inputs_dir),
        "FLOTILLA_OUTPUTS_DIR": str(inv.outputs_dir),
        "FLOTILLA_SUMMARY_FILE": str(inv.summary_file),
        "FLOTILLA_NEW_UNITS_FILE": str(inv.new_units_file),
        "FLOTILLA_REQUEST_DIR": str(inv.request_dir),
        "FLOTILLA_ITERATION": str(inv.iteration),
        "FLOTILLA_ATTEMPT": str(inv.attempt),
    }
    if inv.candidate is not None:
        contract["FLOTILLA_CANDIDATE"] = str(inv.candidate)
    return child_env(
        os.environ,
        preset=agent.preset,
        pass_env=[*inv.pass_env, *agent.pass_env],
        values={**inv.env, **agent.env, **inv.extra_env},
        contract=contract,
    )


# --- running -----------------------------------------------------------------------------------


def run_agent(
    agent: AgentSpec, inv: AgentInvocation, stop: Callable[[], bool] | None = None
) -> AgentOutcome:
    """Run the agent once in its worktree with a hard time limit; never raises on its exit."""
    if not inv.worktree.is_dir():
        raise AgentError(
            f"The worktree {inv.worktree} of unit {inv.unit_id!r} does not exist; the agent "
            "cannot start there. Create the worktree before running the agent."
        )
    command = build_command(agent, inv)
    inv.outputs_dir.mkdir(parents=True, exist_ok=True)
    inv.log_file.parent.mkdir(parents=True, exist_ok=True)
    with inv.log_file.open("a", encoding="utf-8") as log:
        log.write(
            redact(
                f"--- flotilla: agent for {inv.unit_id}, attempt {inv.attempt}, "
                f"iteration {inv.iteration}: {command.display()}\n"
            )
        )
    start = inv.log_file.stat().st_size  # the agent's own output starts here
    if inv.usage_file is not None:
        inv.usage_file.unlink(missing_ok=True)  # a report left by an earlier call is not this one's
    result = run_process(
        command.argv if command.argv is not None else str(command.shell),
        cwd=inv.worktree,
        env={**agent_env(inv, agent), **usage_env(inv)},
        stdin=command.stdin,
        timeout_s=inv.timeout_s,
        log_file=inv.log_file,
        stop=stop,
    )
    limited, retry_after, reason = False, None, ""
    if not result.timed_out:
        output = _read_from(inv.log_file, start) or result.output_tail
        limited, retry_after = detect_rate_limit(
            result.exit_code, output, max_wait_s=get_settings().rate_limit_max_wait_s
        )
        if limited:
            said = limit_message(output)
            reason = f"exit code {result.exit_code}" + (f": {said}" if said else "")
    usage, answer = read_usage(agent, inv, _read_from(inv.log_file, start, OUTPUT_PARSE_LIMIT))
    usage = usage.model_copy(update={"wall_s": round(result.duration_s, 3), "calls": 1})
    keep_answer(inv, answer)
    return AgentOutcome(
        exit_code=result.exit_code,
        timed_out=result.timed_out,
        rate_limited=limited,
        retry_after_s=retry_after,
        duration_s=result.duration_s,
        output_tail=result.output_tail,
        command=command.display(),
        rate_limit_reason=reason,
        usage=usage,
        answer=answer,
    )


# --- usage ---------------------------------------------------------------------------------------

OUTPUT_PARSE_LIMIT = 32_000_000  # a CLI's JSON result is read from this much of its output


def usage_env(inv: AgentInvocation) -> dict[str, str]:
    """`FLOTILLA_USAGE_FILE`, when the caller collects usage."""
    return {"FLOTILLA_USAGE_FILE": str(inv.usage_file)} if inv.usage_file else {}


def read_usage(agent: AgentSpec, inv: AgentInvocation, output: str) -> tuple[Usage, str]:
    """What one call spent and its final answer: the preset's JSON result, else (or overridden
    by) what the agent wrote to $FLOTILLA_USAGE_FILE; tokens without a cost are priced from the
    price table (marked estimated)."""
    parser = PARSERS.get(agent.preset or "")
    parsed = parser(output) if parser else None
    usage = parsed.usage if parsed else Usage(source="command")
    answer = parsed.text if parsed else ""
    if inv.usage_file is not None and inv.usage_file.is_file():
        reported = parse_usage_file(inv.usage_file.read_text(errors="replace"))
        if reported is not None:
            usage = reported.model_copy(update={"turns": reported.turns or usage.turns})
    model = usage.model or agent.model or ""
    usage = priced(usage.model_copy(update={"model": model}), model, get_settings().price_table())
    return usage, answer


def keep_answer(inv: AgentInvocation, answer: str) -> None:
    """A JSON-speaking CLI's final text goes to the log, and to the summary if the agent wrote
    none itself, as its plain-text output would have."""
    if not answer.strip():
        return
    with inv.log_file.open("a", encoding="utf-8") as log:
        log.write(f"--- flotilla: the agent's answer:\n{answer.rstrip()}\n")
    if not inv.summary_file.exists():
        inv.summary_file.parent.mkdir(parents=True, exist_ok=True)
        inv.summary_file.write_text(answer.strip()[:4000] + "\n", encoding="utf-8")


def _read_from(path: Path, offset: int, limit: int = 64_000) -> str:
    """The last `limit` bytes written to `path` after `offset` (this run's own output)."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(offset, size - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


class AgentGaveUp(AgentError):
    """The agent did not finish its job: it failed, timed out, or stayed rate-limited too long.

    `failure` is the failure class a retry policy matches against (`agent_failed`, `timed_out`,
    `rate_limited`, or `error` when it could not even start).
    """

    def __init__(self, failure: str, message: str, usage: Usage | None = None):
        super().__init__(message)
        self.failure = failure
        self.usage = usage or Usage()  # what the calls that gave up still spent


def run_agent_until_done(
    agent: AgentSpec,
    inv: AgentInvocation,
    *,
    on_wait: Callable[[float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    stop: Callable[[], bool] | None = None,
) -> AgentOutcome:
    """Run the agent; wait out rate limits (they cost no attempt); raise AgentGaveUp otherwise.

    `on_wait(seconds)` is told before every wait, so callers can show it (e.g. in the ledger).
    """
    settings = get_settings()
    waited = 0.0
    spent = Usage()  # every call counts, the rate-limited ones too
    while True:
        try:
            outcome = run_agent(agent, inv, stop)
        except AgentError as exc:
            raise AgentGaveUp("error", str(exc), spent) from None
        spent = spent + outcome.usage
        if outcome.ok:
            return outcome.model_copy(update={"usage": spent})
        if outcome.rate_limited:
            wait = min(
                outcome.retry_after_s or settings.rate_limit_default_wait_s,
                settings.rate_limit_max_wait_s,
            )
            if waited + wait > settings.rate_limit_total_wait_s:
                raise AgentGaveUp(
                    "rate_limited",
                    f"agent was rate-limited for more than {settings.rate_limit_total_wait_s:.0f}s",
                    spent,
                )
            _log_wait(agent, inv, outcome, wait)
            if on_wait:
                on_wait(wait)
            sleep(wait)
            waited += wait
            continue
        if outcome.timed_out:
            raise AgentGaveUp("timed_out", f"agent timed out after {inv.timeout_s:g} s", spent)
        tail = "\n".join(outcome.output_tail.splitlines()[-5:])
        raise AgentGaveUp(
            "agent_failed", f"agent exited with code {outcome.exit_code}:\n{tail}", spent
        )


def _log_wait(agent: AgentSpec, inv: AgentInvocation, outcome: AgentOutcome, wait: float) -> None:
    """A rate-limit wait, at WARNING, in the unit's log and in the Prefect (or Python) log."""
    kind = agent.preset or "command"
    name = f"{inv.agent_name!r} ({kind})" if inv.agent_name else kind
    message = redact(
        f"agent {name} of unit {inv.unit_id} is rate-limited "
        f"({outcome.rate_limit_reason or 'a limit message'}); waiting {_seconds(wait)} before "
        f"running it again (attempt {inv.attempt} is not spent)"
    )
    with inv.log_file.open("a", encoding="utf-8") as log:
        log.write(f"--- flotilla: WARNING: {message}\n")
    _logger().warning(message)


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a flow or task run (so the UI shows it), else Python's."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("flotilla.agents")


def _seconds(wait: float) -> str:
    return f"{wait:.1f}s" if wait < 10 else f"{wait:.0f}s"
