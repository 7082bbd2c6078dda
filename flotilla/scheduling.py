"""Which ready unit starts next, and which units can no longer run.

Highest priority first, then the longest remaining critical path (so the feature finishes as
early as the graph allows), then request order for determinism.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from flotilla.plan import Plan
from flotilla.results import UnitStatus


def ready_units(plan: Plan, status: Mapping[str, UnitStatus], started: Iterable[str]) -> list[str]:
    """Units not yet started whose dependencies have all succeeded."""
    started = set(started)
    return [
        u
        for u in plan.units
        if u not in started
        and status.get(u, UnitStatus.PENDING) == UnitStatus.PENDING
        and all(_cleared(plan, d, u, status) for d in plan.graph.predecessors(u))
    ]


def by_urgency(plan: Plan, ready: list[str], remaining: Mapping[str, float]) -> list[str]:
    position = {u: i for i, u in enumerate(plan.units)}
    return sorted(
        ready, key=lambda u: (-plan.units[u].priority, -remaining.get(u, 0.0), position[u])
    )


def blocked_by_failures(plan: Plan, status: Mapping[str, UnitStatus]) -> dict[str, list[str]]:
    """Every pending unit downstream of a failed or blocked unit, with the failed roots."""
    blocked: dict[str, list[str]] = {}
    for unit in plan.order():
        if status.get(unit, UnitStatus.PENDING) != UnitStatus.PENDING:
            continue
        roots: list[str] = []
        for dep in plan.graph.predecessors(unit):
            if _only_conflict(plan, dep, unit):
                continue  # a file conflict orders two units; it does not make one need the other
            dep_status = status.get(dep)
            if dep_status == UnitStatus.FAILED:
                roots.append(dep)
            elif dep in blocked:
                roots += blocked[dep]
            elif dep_status == UnitStatus.BLOCKED:
                roots.append(dep)
        if roots:
            blocked[unit] = sorted(set(roots))
    return blocked


def _only_conflict(plan: Plan, before: str, after: str) -> bool:
    return plan.graph.edges[before, after].get("reasons", set()) == {"conflict"}


def _cleared(plan: Plan, dep: str, unit: str, status: Mapping[str, UnitStatus]) -> bool:
    """A real dependency must have succeeded; a conflict-only one must merely be over."""
    dep_status = status.get(dep, UnitStatus.PENDING)
    if _only_conflict(plan, dep, unit):
        return dep_status.is_final
    return dep_status == UnitStatus.SUCCEEDED


class ClassRoom:
    """How many more units of each resource class may start now in this run: the class's limit
    minus its units running. The scheduler asks before it submits, so no unit waits on a slot."""

    def __init__(self, limits: Mapping[str, int], running: Iterable[str]):
        self.limits = dict(limits)
        self.used: dict[str, int] = {}
        self.full: set[str] = set()  # classes the server said are full (other runs hold them)
        for resource_class in running:
            self.take(resource_class)

    def has_room(self, resource_class: str, slots: int = 1) -> bool:
        """`slots` > 1 for a best-of-N unit: one per candidate running at once."""
        if resource_class in self.full:
            return False
        limit = self.limits.get(resource_class)
        return limit is None or self.used.get(resource_class, 0) + slots <= limit

    def take(self, resource_class: str, slots: int = 1) -> None:
        self.used[resource_class] = self.used.get(resource_class, 0) + slots

    def close(self, resource_class: str) -> None:
        """The class is full across runs: start none of it until a later tick."""
        self.full.add(resource_class)
