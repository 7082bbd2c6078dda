"""Checks that need a whole request or workflow, not one field: references, cycles, order.

Each check returns `(field path, message)` pairs; `flotilla.loading` turns them into problems
with file and line. Nothing here raises, so every problem is reported at once.
"""

from __future__ import annotations

import difflib
import string

import networkx as nx

from flotilla.errors import clip, clip_text
from flotilla.spec import PRESETS, AgentSpec, FeatureRequest, UnitSpec, WorkflowSpec

# What an agent's `command` template may name; tasks.agents fills exactly these.
AGENT_PLACEHOLDERS = ("unit", "feature", "prompt_file", "request_dir", "worktree")

Issue = tuple[tuple[str | int, ...], str]


def suggest(value: object, choices) -> str:
    """' (did you mean 'x'?)' when one of `choices` is close to `value`, else ''."""
    if not isinstance(value, str) or len(value) > 200:
        return ""
    close = difflib.get_close_matches(value, [str(c) for c in choices], n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def validate_request(
    request: FeatureRequest,
    invalid_units: set[str] = frozenset(),
    invalid_agents: set[str] = frozenset(),
) -> list[Issue]:
    """Whole-request checks. `invalid_*` name things that exist but failed their own field
    checks: references to them are not reported again as unknown."""
    issues: list[Issue] = []
    index: dict[str, int] = {}
    for i, unit in enumerate(request.units):
        if unit.id in index:
            issues.append(
                (
                    ("units", i, "id"),
                    f"duplicate unit id {unit.id!r} (first at units[{index[unit.id]}])",
                )
            )
        else:
            index[unit.id] = i
    for i, unit in enumerate(request.units):
        issues += _check_references(request, i, unit, index, invalid_units)
        issues += _check_agent(request, ("units", i, "agent"), unit.agent, invalid_agents)
        for k, ref in enumerate(unit.candidates or ()):
            issues += _check_agent(request, ("units", i, "candidates", k), ref, invalid_agents)
        no_candidates = not (unit.candidates or request.defaults.candidates)
        if unit.agent is None and request.defaults.agent is None and no_candidates:
            issues.append(
                (("units", i, "agent"), "no agent: set `agent` on the unit or `defaults.agent`")
            )
    issues += _check_agent(request, ("defaults", "agent"), request.defaults.agent, invalid_agents)
    for k, ref in enumerate(request.defaults.candidates):
        issues += _check_agent(request, ("defaults", "candidates", k), ref, invalid_agents)
    for name, agent in request.agents.items():
        issues += check_command(("agents", name), agent)
    if not issues and not invalid_units:
        issues += _check_cycles(request, index)
    return issues


def _check_references(
    request: FeatureRequest, i: int, unit: UnitSpec, index: dict[str, int], invalid: set[str]
) -> list[Issue]:
    issues: list[Issue] = []
    known = ", ".join(index) or "(none)"
    for j, dep in enumerate(unit.depends_on):
        if dep == unit.id:
            issues.append((("units", i, "depends_on", j), f"unit {clip(dep)} depends on itself"))
        elif dep not in index and dep not in invalid:
            issues.append(
                (
                    ("units", i, "depends_on", j),
                    f"unknown unit {clip(dep)}{suggest(dep, index)}; known units: {clip_text(known)}",
                )
            )
    for j, ref in enumerate(unit.inputs):
        producer, name = ref.split("/", 1)
        where = ("units", i, "inputs", j)
        if producer == unit.id:
            issues.append((where, f"unit {clip(unit.id)} consumes its own output {clip(ref)}"))
        elif producer in invalid:
            continue
        elif producer not in index:
            issues.append(
                (
                    where,
                    f"unknown producer unit {clip(producer)}{suggest(producer, index)}; known "
                    f"units: {clip(known)}",
                )
            )
        elif name not in request.units[index[producer]].outputs:
            declared = ", ".join(request.units[index[producer]].outputs) or "none"
            issues.append(
                (
                    where,
                    f"unit {producer!r} does not declare output {clip(name)}"
                    f"{suggest(name, request.units[index[producer]].outputs)} (its outputs: "
                    f"{declared}); add it to that unit's `outputs` or fix the name",
                )
            )
    if request.resources and unit.resources and unit.resources not in request.resources:
        issues.append(
            (
                ("units", i, "resources"),
                f"unknown resource class {clip(unit.resources)}"
                f"{suggest(unit.resources, request.resources)}; declared: "
                f"{', '.join(request.resources)}",
            )
        )
    return issues


def _check_agent(
    request: FeatureRequest, where, ref: str | AgentSpec | None, invalid: set[str] = frozenset()
) -> list[Issue]:
    if ref is None:
        return []
    if isinstance(ref, AgentSpec):
        return check_command(where, ref)
    if ref in request.agents or ref in invalid:
        return []
    if ref in PRESETS:
        return []  # a bare preset name is a valid agent with the preset's defaults
    named = ", ".join(request.agents) or "none"
    return [
        (
            where,
            f"unknown agent {clip(ref)}{suggest(ref, [*request.agents, *PRESETS])}; name one "
            f"from `agents` ({clip_text(named)}) or a preset ({', '.join(PRESETS)})",
        )
    ]


def check_command(where: tuple[str | int, ...], agent: AgentSpec) -> list[Issue]:
    """An agent's command template may use only the placeholders Flotilla fills."""
    if agent.command is None:
        return []
    allowed = ", ".join("{" + name + "}" for name in AGENT_PLACEHOLDERS)
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(agent.command) if f is not None]
    except ValueError as exc:
        return [
            (
                (*where, "command"),
                f"{clip(agent.command)} is not a valid template ({exc}); use {allowed}, and "
                "write {{ and }} for literal braces",
            )
        ]
    return [
        (
            (*where, "command"),
            f"unknown placeholder {clip('{' + field + '}')}"
            f"{suggest(field, AGENT_PLACEHOLDERS)} in {clip(agent.command)}; allowed: "
            f"{allowed}; write {{{{ and }}}} for literal braces (e.g. ${{{{HOME}}}})",
        )
        for field in fields
        if field not in AGENT_PLACEHOLDERS
    ]


def _check_cycles(request: FeatureRequest, index: dict[str, int]) -> list[Issue]:
    graph = nx.DiGraph()
    graph.add_nodes_from(index)
    for unit in request.units:
        for dep in unit.depends_on:
            graph.add_edge(dep, unit.id)
        for ref in unit.inputs:
            graph.add_edge(ref.split("/", 1)[0], unit.id)
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return []
    path = [edge[0] for edge in cycle] + [cycle[0][0]]
    first = cycle[0][1]
    return [
        (
            ("units", index[first], "depends_on"),
            f"dependency cycle: {' -> '.join(path)}; remove one of these dependencies",
        )
    ]


def validate_workflow(workflow: WorkflowSpec) -> list[Issue]:
    issues: list[Issue] = []
    stages = workflow.workflow.stages
    position = {}
    outputs_before: set[str] = set()
    for i, stage in enumerate(stages):
        where = ("workflow", "stages", i)
        if stage.name in position:
            issues.append(((*where, "name"), f"duplicate stage name {stage.name!r}"))
        later = {s.name for s in stages[i + 1 :]}
        for j, dep in enumerate(stage.depends_on):
            if dep in later:
                issues.append(
                    (
                        (*where, "depends_on", j),
                        f"stage {stage.name!r} depends on {dep!r}, which comes later; "
                        "stages run in the order listed, so move it before this one",
                    )
                )
            elif dep not in position:
                known = ", ".join(position) or "none"
                issues.append(
                    ((*where, "depends_on", j), f"unknown stage {dep!r}; earlier stages: {known}")
                )
        if stage.foreach and stage.foreach not in outputs_before:
            issues.append(
                (
                    (*where, "foreach"),
                    f"`foreach: {stage.foreach}` names no output of an earlier stage "
                    f"(earlier outputs: {', '.join(sorted(outputs_before)) or 'none'})",
                )
            )
        for j, name in enumerate(stage.inputs):
            if name not in outputs_before:
                issues.append(
                    (
                        (*where, "inputs", j),
                        f"input {name!r} is not an output of an earlier stage "
                        f"(earlier outputs: {', '.join(sorted(outputs_before)) or 'none'})",
                    )
                )
        position[stage.name] = i
        outputs_before.update(stage.outputs)
    issues += _check_processors(workflow)
    return issues


def _check_processors(workflow: WorkflowSpec) -> list[Issue]:
    issues: list[Issue] = []
    seen: dict[str, int] = {}
    for i, stage in enumerate(workflow.workflow.stages):
        if stage.processor in seen:
            issues.append(
                (
                    ("workflow", "stages", i, "processor"),
                    f"processor {stage.processor!r} is already used by stage "
                    f"{workflow.workflow.stages[seen[stage.processor]].name!r}; each runs once",
                )
            )
        seen.setdefault(stage.processor, i)
        if stage.processor == "work_loop" and stage.type != "parallel":
            issues.append(
                (("workflow", "stages", i, "type"), "the work_loop stage must be `parallel`")
            )
    order = [s.processor for s in workflow.workflow.stages]
    expected = ["plan_decomposer", "work_loop", "pr_merger", "feature_pr_creator"]
    present = [p for p in expected if p in order]
    if [p for p in order if p in expected] != present:
        issues.append(
            (("workflow", "stages"), f"processors must run in this order: {' -> '.join(expected)}")
        )
    if "work_loop" in order and "plan_decomposer" not in order:
        issues.append(
            (("workflow", "stages"), "a work_loop stage needs a plan_decomposer before it")
        )
    return issues


def validate_request_for(request: FeatureRequest, workflow: WorkflowSpec) -> list[Issue]:
    """Checks that need the request and the workflow it runs with, as `validate` and `run` do."""
    stage = workflow.stage_for("plan_decomposer")
    issues: list[Issue] = []
    if stage is not None and stage.mode == "static" and not request.units:
        issues.append(
            (
                ("units",),
                "no units, and the decompose stage is in `static` mode, which runs the units "
                "the request lists; add `units`, or use a workflow whose decompose stage has "
                "`mode: llm`",
            )
        )
    if stage is not None and isinstance(stage.agent, AgentSpec):
        issues += check_command(("workflow", "decompose", "agent"), stage.agent)
    return issues
