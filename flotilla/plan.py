"""The Plan: the request's units as a DAG, with each unit's settings resolved.

Edges point from a unit to the units that must wait for it; each edge records why (an explicit
`depends_on`, an `inputs` artifact, or a file conflict) so `flotilla plan` can explain itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
from pydantic import BaseModel

from flotilla.spec import (
    AgentSpec,
    FeatureInfo,
    FeatureRequest,
    RetryPolicy,
    StageSpec,
    UnitSpec,
)

DEFAULT_RESOURCES = {"light": 10, "standard": 5, "heavy": 2}


class UnitSettings(BaseModel):
    """Everything a unit needs to run, after defaults and precedence are applied."""

    agent: AgentSpec
    agent_name: str
    test: str | None
    timeout_s: float
    max_iterations: int
    retry_policy: RetryPolicy
    resources: str


@dataclass
class Plan:
    feature: FeatureInfo
    units: dict[str, UnitSpec]
    graph: nx.DiGraph
    settings: dict[str, UnitSettings] = field(default_factory=dict)
    resources: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_request(cls, request: FeatureRequest, stage: StageSpec | None = None) -> Plan:
        """Build the DAG from a request that `flotilla.validation` already accepted."""
        units = {u.id: u for u in request.units}
        graph = nx.DiGraph()
        for unit in request.units:
            graph.add_node(unit.id)
        for unit in request.units:
            for dep in unit.depends_on:
                _add_edge(graph, dep, unit.id, "depends_on")
            for ref in unit.inputs:
                _add_edge(graph, ref.split("/", 1)[0], unit.id, "input")
        resources = {**DEFAULT_RESOURCES, **request.resources}
        settings = {u.id: resolve_settings(request, u, stage) for u in request.units}
        return cls(request.feature, units, graph, settings, resources)

    def index(self, unit_id: str) -> int:
        return list(self.units).index(unit_id)

    def order(self) -> list[str]:
        """Topological order; ties keep the request's order, so runs are deterministic."""
        position = {u: i for i, u in enumerate(self.units)}
        return list(nx.lexicographical_topological_sort(self.graph, key=position.__getitem__))

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

    def descendants(self, unit_id: str) -> list[str]:
        found = nx.descendants(self.graph, unit_id)
        return [u for u in self.order() if u in found]

    def weight(self, unit_id: str, durations: dict[str, float] | None = None) -> float:
        estimate = self.units[unit_id].estimate_s
        if estimate:
            return estimate
        if durations and self.settings[unit_id].resources in durations:
            return durations[self.settings[unit_id].resources]
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
            "resources": self.resources,
        }


def _add_edge(graph: nx.DiGraph, before: str, after: str, reason: str) -> None:
    if graph.has_edge(before, after):
        graph.edges[before, after]["reasons"].add(reason)
    else:
        graph.add_edge(before, after, reasons={reason})


def resolve_settings(
    request: FeatureRequest, unit: UnitSpec, stage: StageSpec | None
) -> UnitSettings:
    """Apply precedence: unit, then its agent, then request defaults, then the stage."""
    ref = unit.agent if unit.agent is not None else request.defaults.agent
    if isinstance(ref, AgentSpec):
        agent, name = ref, "inline"
    elif ref in request.agents:
        agent, name = request.agents[ref], ref
    else:
        agent, name = AgentSpec(preset=ref), str(ref)
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
    )
