"""The Plan: the request's units as a DAG, with each unit's settings resolved.

Edges point from a unit to the units that must wait for it; each edge records why (an explicit
`depends_on`, an `inputs` artifact, or a file conflict) so `flotilla plan` can explain itself.
Units are weighted by `estimate_s`, else the typical duration recorded for their resource class,
else 1; the weights give the critical path and the makespan lower bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
from pydantic import BaseModel

from flotilla.conflicts import ConflictGroup, effective_touches, serialize_conflicts
from flotilla.spec import (
    AgentSpec,
    FeatureInfo,
    FeatureRequest,
    RetryPolicy,
    StageSpec,
    UnitSpec,
    WorkflowSpec,
)

DEFAULT_RESOURCES = {"light": 10, "standard": 5, "heavy": 2}


class NamedAgent(BaseModel):
    """An agent as the request names it (a key of `agents`, a preset, or `inline`)."""

    name: str
    agent: AgentSpec


class UnitSettings(BaseModel):
    """Everything a unit needs to run, after defaults and precedence are applied."""

    agent: AgentSpec
    agent_name: str
    test: str | None
    timeout_s: float
    max_iterations: int
    retry_policy: RetryPolicy
    resources: str
    env: dict[str, str] = {}  # the request's `env:` for this unit: defaults', then the unit's
    pass_env: list[str] = []  # likewise for `pass_env:`; the agent's own are in `agent`
    best_of: int = 1  # candidates run in parallel (flotilla/candidates.py)
    candidates: list[NamedAgent] = []  # candidate k runs candidates[k-1]; empty when best_of 1
    pick: str = "first_pass"
    judge: str | None = None


@dataclass
class LowerBound:
    """`max(critical path, Σ work per class / limit, Σ work / max_concurrent)`, with its terms."""

    value: float
    critical_path: float
    per_class: dict[str, float]
    stage: float | None

    def to_json(self) -> dict:
        return {
            "value": self.value,
            "critical_path": self.critical_path,
            "per_class": self.per_class,
            "stage": self.stage,
        }


@dataclass
class Plan:
    feature: FeatureInfo
    units: dict[str, UnitSpec]
    graph: nx.DiGraph
    settings: dict[str, UnitSettings] = field(default_factory=dict)
    resources: dict[str, int] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    conflict_groups: list[ConflictGroup] = field(default_factory=list)
    max_concurrent: int | None = None
    unknown_touches: str = "trust"
    _order: tuple[tuple[int, int, int], list[str]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @classmethod
    def from_request(
        cls,
        request: FeatureRequest,
        stage: StageSpec | None = None,
        workflow: WorkflowSpec | None = None,
        durations: dict[str, float] | None = None,
    ) -> Plan:
        """Build the DAG from a request that `flotilla.validation` already accepted.

        `stage` is the work_loop stage (retry policy, `max_concurrent`); `workflow` adds its
        resource classes and `unknown_touches`; `durations` are typical seconds per resource
        class (from the store) for units without `estimate_s`.
        """
        units = {u.id: u for u in request.units}
        graph = nx.DiGraph()
        for unit in request.units:
            graph.add_node(unit.id)
        for unit in request.units:
            for dep in unit.depends_on:
                _add_edge(graph, dep, unit.id, "depends_on")
            for ref in unit.inputs:
                _add_edge(graph, ref.split("/", 1)[0], unit.id, "input")
        if stage is None and workflow is not None:
            stage = workflow.stage_for("work_loop")
        unknown = workflow.workflow.unknown_touches if workflow else "trust"
        plan = cls(
            request.feature,
            units,
            graph,
            {u.id: resolve_settings(request, u, stage) for u in request.units},
            resource_limits(request, workflow),
            dict(durations or {}),
            max_concurrent=stage.max_concurrent if stage else None,
            unknown_touches=unknown,
        )
        touches = {u.id: effective_touches(u.touches, unknown) for u in request.units}
        rank = plan.urgency_rank()
        _, _, plan.conflict_groups = serialize_conflicts(graph, touches, rank)
        return plan

    def urgency_rank(self) -> list[str]:
        """Every unit, most urgent first: priority, remaining critical path, request order."""
        remaining = self.remaining_path()
        position = {u: i for i, u in enumerate(self.units)}
        return sorted(
            self.units,
            key=lambda u: (-self.units[u].priority, -remaining[u], position[u]),
        )

    def index(self, unit_id: str) -> int:
        return list(self.units).index(unit_id)

    def order(self) -> list[str]:
        """Topological order; ties keep the request's order, so runs are deterministic.

        Cached until the graph changes size (units and edges are only ever added), because the
        scheduler asks for it once per unit it starts."""
        shape = (len(self.units), self.graph.number_of_nodes(), self.graph.number_of_edges())
        if self._order is None or self._order[0] != shape:
            position = {u: i for i, u in enumerate(self.units)}
            found = nx.lexicographical_topological_sort(self.graph, key=position.__getitem__)
            self._order = (shape, list(found))
        return list(self._order[1])

    def levels(self) -> list[list[str]]:
        position = {u: i for i, u in enumerate(self.units)}
        return [sorted(g, key=position.__getitem__) for g in nx.topological_generations(self.graph)]

    def dependencies(self, unit_id: str) -> list[str]:
        """Direct predecessors, in topological order."""
        preds = set(self.graph.predecessors(unit_id))
        return [u for u in self.order() if u in preds]

    def ancestors(self, unit_id: str) -> list[str]:
        found = nx.ancestors(self.graph, unit_id)
        return [u for u in self.order() if u in found]

    def covered(self, unit_ids: list[str]) -> set[str]:
        """Those of `unit_ids` (in topological order) that another of them depends on, directly
        or not: a unit started from that other's branch, so it holds their work already."""
        wanted, covered = set(unit_ids), set()
        for unit_id in reversed(unit_ids):
            if unit_id not in covered:  # what a covered unit covers, its coverer covers too
                covered |= nx.ancestors(self.graph, unit_id) & wanted
        return covered

    def descendants(self, unit_id: str) -> list[str]:
        found = nx.descendants(self.graph, unit_id)
        return [u for u in self.order() if u in found]

    def weight(self, unit_id: str, durations: dict[str, float] | None = None) -> float:
        """`estimate_s`, else the typical duration of the unit's class, else 1."""
        estimate = self.units[unit_id].estimate_s
        if estimate:
            return estimate
        known = self.durations if durations is None else durations
        resources = self.settings[unit_id].resources
        if known and resources in known and known[resources] > 0:
            return known[resources]
        return 1.0

    def remaining_path(self, durations: dict[str, float] | None = None) -> dict[str, float]:
        """Longest weighted path from each unit to the end of the graph, itself included."""
        remaining: dict[str, float] = {}
        for unit in reversed(self.order()):
            tail = max((remaining[s] for s in self.graph.successors(unit)), default=0.0)
            remaining[unit] = self.weight(unit, durations) + tail
        return remaining

    def critical_path(self, durations: dict[str, float] | None = None) -> tuple[list[str], float]:
        if not self.units:
            return [], 0.0
        remaining = self.remaining_path(durations)
        position = {u: i for i, u in enumerate(self.units)}
        roots = [u for u in self.units if self.graph.in_degree(u) == 0]
        current = max(roots, key=lambda u: (remaining[u], -position[u]))
        path = [current]
        while succ := list(self.graph.successors(current)):
            current = max(succ, key=lambda u: (remaining[u], -position[u]))
            path.append(current)
        return path, remaining[path[0]]

    def work_per_class(self, durations: dict[str, float] | None = None) -> dict[str, float]:
        """Σ unit weights per resource class."""
        work: dict[str, float] = {}
        for unit in self.units:
            name = self.settings[unit].resources
            work[name] = work.get(name, 0.0) + self.weight(unit, durations)
        return work

    def lower_bound(self, durations: dict[str, float] | None = None) -> LowerBound:
        """No schedule can finish sooner: the critical path, each class's work spread over its
        limit, and all work spread over the stage's `max_concurrent`."""
        _, path = self.critical_path(durations)
        work = self.work_per_class(durations)
        per_class = {
            name: total / self.resources[name]
            for name, total in work.items()
            if self.resources.get(name)
        }
        stage = sum(work.values()) / self.max_concurrent if self.max_concurrent else None
        value = max([path, *per_class.values(), stage or 0.0])
        return LowerBound(value, path, per_class, stage)

    def used_classes(self) -> dict[str, int | None]:
        """Every declared class with its limit, then classes units use without a limit."""
        used = {s.resources for s in self.settings.values()}
        found: dict[str, int | None] = dict(self.resources)
        for name in sorted(used - set(self.resources)):
            found[name] = None
        return found

    def edge_reasons(self) -> list[tuple[str, str, list[str]]]:
        return [(a, b, sorted(d["reasons"])) for a, b, d in self.graph.edges(data=True)]

    def to_json(self) -> dict:
        path, length = self.critical_path()
        return {
            "feature": self.feature.model_dump(),
            "units": [u.model_dump(mode="json") for u in self.units.values()],
            "order": self.order(),
            "levels": self.levels(),
            "edges": [{"from": a, "to": b, "reasons": r} for a, b, r in self.edge_reasons()],
            "critical_path": path,
            "critical_path_length": length,
            "lower_bound": self.lower_bound().to_json(),
            "weights": {u: self.weight(u) for u in self.units},
            "durations": self.durations,
            "conflict_groups": [g.to_json() for g in self.conflict_groups],
            "unknown_touches": self.unknown_touches,
            "resources": self.resources,
            "unit_resources": {u: s.resources for u, s in self.settings.items()},
            "max_concurrent": self.max_concurrent,
        }


def resource_limits(
    request: FeatureRequest, workflow: WorkflowSpec | None = None
) -> dict[str, int]:
    """Resource classes and limits: built-in defaults, then the workflow's, then the request's."""
    from_workflow = workflow.workflow.resources if workflow else {}
    return {**DEFAULT_RESOURCES, **from_workflow, **request.resources}


def _add_edge(graph: nx.DiGraph, before: str, after: str, reason: str) -> None:
    if graph.has_edge(before, after):
        graph.edges[before, after]["reasons"].add(reason)
    else:
        graph.add_edge(before, after, reasons={reason})


def resolve_settings(
    request: FeatureRequest, unit: UnitSpec, stage: StageSpec | None
) -> UnitSettings:
    """Apply precedence: unit, then its agent, then request defaults, then the stage."""
    defaults = request.defaults
    refs = unit.candidates if unit.candidates is not None else defaults.candidates
    ref = unit.agent if unit.agent is not None else defaults.agent
    if ref is None and refs:
        ref = refs[0]
    agent, name = _named_agent(request, ref)
    best_of = (
        unit.best_of
        or len(unit.candidates or ())
        or (defaults.best_of if defaults.best_of > 1 else len(refs))
        or 1
    )
    pool = [NamedAgent(name=n, agent=a) for a, n in (_named_agent(request, r) for r in refs)]
    pool = pool or [NamedAgent(name=name, agent=agent)]
    policy = (
        unit.retry_policy
        or agent.retry_policy
        or request.defaults.retry_policy
        or (stage.retry_policy if stage else None)
        or RetryPolicy()
    )
    return UnitSettings(
        agent=agent,
        agent_name=name,
        test=unit.test if unit.test is not None else request.defaults.test,
        timeout_s=unit.timeout_s or agent.timeout_s or request.defaults.timeout_s,
        max_iterations=unit.max_iterations or request.defaults.max_iterations,
        retry_policy=policy,
        resources=unit.resources or request.defaults.resources,
        env={**request.defaults.env, **unit.env},
        pass_env=[*request.defaults.pass_env, *unit.pass_env],
        best_of=best_of,
        candidates=[pool[k % len(pool)] for k in range(best_of)] if best_of > 1 else [],
        pick=unit.pick or defaults.pick,
        judge=unit.judge if unit.judge is not None else defaults.judge,
    )


def _named_agent(request: FeatureRequest, ref) -> tuple[AgentSpec, str]:
    if isinstance(ref, AgentSpec):
        return ref, "inline"
    if ref in request.agents:
        return request.agents[ref], ref
    return AgentSpec(preset=ref), str(ref)
