"""Turning a feature request into a Plan: the units it lists, or units an agent proposes.

The static decomposer takes the units the request already lists. The llm decomposer runs an
agent (any preset or command) in a checkout of the base with a prompt holding the feature, the
repository's file tree and the unit schema; it reads JSON units from the file named by
`$FLOTILLA_PLAN_FILE` or from the agent's output, and checks them exactly like a hand-written
request. `flows/decompose.py` decides how often to ask; this module does each step.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from flotilla.errors import FlotillaError, Problem, SpecError
from flotilla.loading import parse_request_text
from flotilla.plan import Plan
from flotilla.runs import RunContext
from flotilla.spec import AgentSpec, FeatureRequest, UnitSpec
from tasks.agents import AgentGaveUp, AgentInvocation, run_agent_until_done
from tasks.git import git_out
from tasks.spending import add_other_usage
from tasks.store import ArtifactStore, RunStore
from tasks.workspace import Workspace

PLANNER_ID = "plan"
MAX_TREE_PATHS = 3000
ANSWER_EXCERPT = 4000


class DecomposeFailed(FlotillaError):
    """The decomposer agent gave no acceptable plan within the stage's `max_rounds`."""


@dataclass
class Answer:
    """One round: what the agent said, and what was wrong with it (empty when accepted)."""

    round: int
    text: str
    problems: list[str] = field(default_factory=list)
    units: list[UnitSpec] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return not self.problems


def static_plan(ctx: RunContext, durations: dict[str, float] | None = None) -> Plan:
    if not ctx.request.units:
        raise SpecError(
            "request",
            [
                Problem(
                    "units",
                    "the request lists no units and the decompose stage is in `static` mode; "
                    "list the units or set `mode: llm` (and `agent:`) on the plan_decomposer "
                    "stage",
                )
            ],
        )
    return plan_for(ctx, ctx.request.units, durations)


def plan_for(
    ctx: RunContext, units: list[UnitSpec], durations: dict[str, float] | None = None
) -> Plan:
    request = ctx.request.model_copy(update={"units": units})
    return Plan.from_request(
        request, ctx.stage("work_loop"), workflow=ctx.workflow, durations=durations
    )


# --- the llm decomposer --------------------------------------------------------------------------


def planner_agent(ctx: RunContext) -> tuple[AgentSpec, str]:
    """The stage's `agent`, else the request's `defaults.agent`, as (spec, display name)."""
    stage = ctx.stage("plan_decomposer")
    ref = stage.agent if stage and stage.agent is not None else ctx.request.defaults.agent
    if ref is None:
        raise SpecError(
            "workflow",
            [
                Problem(
                    "workflow.stages.plan_decomposer.agent",
                    "the plan_decomposer stage is in `llm` mode but names no agent; set `agent:` "
                    "on the stage (a preset, a name from the request's `agents`, or an inline "
                    "agent) or `defaults.agent` in the request",
                )
            ],
        )
    if isinstance(ref, AgentSpec):
        return ref, "inline"
    if ref in ctx.request.agents:
        return ctx.request.agents[ref], ref
    return AgentSpec(preset=ref), ref


def file_tree(workspace: Workspace, commit: str) -> list[str]:
    out = git_out(workspace.clone_dir, "ls-tree", "-r", "--name-only", "-z", commit)
    return [p for p in out.split("\0") if p]


def build_prompt(request: FeatureRequest, tree: list[str], previous: Answer | None = None) -> str:
    feature = request.feature
    shown = tree[:MAX_TREE_PATHS]
    more = f"\n… and {len(tree) - len(shown)} more paths" if len(tree) > len(shown) else ""
    schema = json.dumps(UnitSpec.model_json_schema(), indent=1)
    lines = [
        f"# Plan the feature: {feature.title}",
        "",
        feature.description or "(no description)",
        "",
        "Split this feature into atomic units of work. Each unit is done by one coding agent in "
        "its own git worktree, in parallel with the others, and becomes one commit. Keep units "
        "small and independent; use `depends_on` only where a unit needs another's code, "
        "`inputs`/`outputs` for artifacts passed between units, and `touches` (path globs) for "
        "the files each unit will change, so units that change the same files are not run at "
        "the same time. Dependencies must not form a cycle.",
        "",
        'Answer with JSON only: an object `{"units": [...]}` whose units follow the schema '
        "below. Write it to the file named by $FLOTILLA_PLAN_FILE, or print it as your answer.",
        "",
        "## Files in the repository",
        "",
        "\n".join(shown) + more,
        "",
        "## Unit schema (JSON Schema)",
        "",
        "```json",
        schema,
        "```",
    ]
    if request.resources:
        classes = ", ".join(f"{k} (at most {v} at once)" for k, v in request.resources.items())
        lines += ["", f"Resource classes for `resources`: {classes}."]
    if request.agents:
        lines += ["", f"Named agents for `agent`: {', '.join(request.agents)}."]
    if previous is not None:
        excerpt = previous.text.strip()[:ANSWER_EXCERPT]
        lines += [
            "",
            f"## Your previous answer (round {previous.round}) was rejected",
            "",
            "\n".join(f"- {p}" for p in previous.problems),
            "",
            "It was:",
            "",
            "```",
            excerpt,
            "```",
            "",
            "Answer again with the whole corrected plan.",
        ]
    return "\n".join(lines) + "\n"


def ask(
    ctx: RunContext,
    workspace: Workspace,
    worktree: Path,
    prompt: str,
    round_: int,
) -> str:
    """Run the planner agent once and return its answer (the plan file, else its output)."""
    agent, name = planner_agent(ctx)
    local = Path(ctx.workdir) / "decompose" / f"round-{round_}"
    local.mkdir(parents=True, exist_ok=True)
    prompt_file, plan_file, log_file = local / "prompt.md", local / "plan.json", local / "agent.log"
    prompt_file.write_text(prompt)
    plan_file.unlink(missing_ok=True)
    invocation = AgentInvocation(
        unit_id=PLANNER_ID,
        feature_id=ctx.feature_id,
        worktree=worktree,
        prompt_file=prompt_file,
        inputs_dir=local / "inputs",
        outputs_dir=local / "outputs",
        summary_file=local / "summary.md",
        new_units_file=local / "new-units.json",
        request_dir=Path(ctx.request_dir),
        log_file=log_file,
        timeout_s=agent.timeout_s or ctx.request.defaults.timeout_s,
        attempt=round_,
        extra_env={**workspace.env, "FLOTILLA_PLAN_FILE": str(plan_file)},
        env=ctx.request.defaults.env,
        pass_env=ctx.request.defaults.pass_env,
        agent_name=name,
        usage_file=local / "usage.json",
    )
    start = log_file.stat().st_size if log_file.exists() else 0
    runs = RunStore(ArtifactStore(ctx.store_url), ctx.run_key)
    answer = ""
    try:
        outcome = run_agent_until_done(agent, invocation)  # rate limits are waited out
        add_other_usage(runs, "decompose", outcome.usage)  # the run's budget counts it too
        failure, answer = "", outcome.answer  # a CLI answering in JSON: its final text
    except AgentGaveUp as exc:
        add_other_usage(runs, "decompose", exc.usage)
        if exc.failure in ("error", "rate_limited"):
            raise DecomposeFailed(f"The decomposer agent {name!r} gave up: {exc}") from exc
        failure = f"({exc.args[0].splitlines()[0]})\n"  # timed out or failed: a rejected round
    if plan_file.is_file() and plan_file.read_text().strip():
        return plan_file.read_text()
    if answer.strip():
        return answer
    output = log_file.read_bytes()[start:].decode(errors="replace")
    text = "\n".join(line for line in output.splitlines() if not line.startswith("--- flotilla:"))
    return failure + text


def check_answer(request: FeatureRequest, text: str, round_: int) -> Answer:
    """Read units from an answer and validate them like a hand-written request."""
    answer = Answer(round=round_, text=text)
    try:
        raw_units = extract_units(text)
    except ValueError as exc:
        answer.problems = [str(exc)]
        return answer
    if not raw_units:
        answer.problems = ["the plan has no units; a feature needs at least one unit"]
        return answer
    data = request.model_dump(mode="json", exclude_defaults=True)
    data["units"] = raw_units
    try:
        checked = parse_request_text(json.dumps(data), f"the plan of round {round_}")
    except SpecError as exc:
        answer.problems = [_describe(p, raw_units) for p in exc.problems]
        return answer
    answer.units = list(checked.units)
    return answer


def _describe(problem: Problem, units: list) -> str:
    """`units[2].depends_on[0]: ...` with the unit's id, which the agent knows it by."""
    where = problem.location
    found = re.match(r"units\[(\d+)\]", where)
    if found and "(id: " not in where and int(found.group(1)) < len(units):
        unit = units[int(found.group(1))]
        if isinstance(unit, dict) and isinstance(unit.get("id"), str):
            where = f"{where} (unit {unit['id']!r})"
    return f"{where}: {problem.message}" if where else problem.message


def _is_unit(value: object) -> bool:
    return isinstance(value, dict) and "id" in value


def extract_units(text: str) -> list:
    """The units of a JSON plan found in `text`: `{"units": [...]}` or a bare list of units.

    Agents wrap JSON in prose or code fences; the last JSON value that looks like a plan wins.
    """
    decoder = json.JSONDecoder()
    found: list = []
    first_error: json.JSONDecodeError | None = None
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError as exc:
            first_error = first_error or exc
            continue
        if isinstance(value, dict) and isinstance(value.get("units"), list):
            found.append(value["units"])
        elif isinstance(value, list) and value and all(_is_unit(v) for v in value):
            found.append(value)
    if found:
        return found[-1]
    if first_error is not None:
        raise ValueError(
            f"the answer holds no valid JSON plan; the JSON found is malformed ({first_error.msg} "
            f"at line {first_error.lineno}, column {first_error.colno}). Answer with one JSON "
            'object {"units": [...]} and nothing else.'
        )
    raise ValueError(
        'the answer holds no JSON plan; answer with one JSON object {"units": [...]} (or write '
        "it to $FLOTILLA_PLAN_FILE)."
    )
