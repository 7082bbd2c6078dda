"""The cost and duration a run should take, with a range, from what earlier runs recorded.

For each unit: the samples recorded for its agent and model (units of the same resource class
first), each scaled by the unit's prompt size over the sample's (within 0.5x..2x), give a low
(20th percentile), expected (median) and high (80th percentile) cost and duration; with fewer
than three samples the range is widened to half and twice the median. The run's cost is the sum
over units; its duration the longest path through the plan, or the work spread over the
stage's `max_concurrent` when that is longer. Units whose agent has no history add nothing and
are named. Pure: the caller reads the samples from the store.
"""

from __future__ import annotations

from statistics import median

from pydantic import BaseModel

from flotilla.plan import Plan
from flotilla.spec import FeatureRequest, UnitSpec
from flotilla.usage import format_usd

MIN_SAMPLES_FOR_RANGE = 3
SCALE_BOUNDS = (0.5, 2.0)


class UsageSample(BaseModel):
    """One succeeded unit's spend, as `tasks.stats` records it per agent and model."""

    resources: str = "standard"
    prompt_chars: int = 0
    cost_usd: float | None = None
    tokens: int = 0
    agent_s: float = 0.0
    duration_s: float = 0.0


class Span(BaseModel):
    """Low, expected and high values of one quantity."""

    low: float
    mid: float
    high: float

    def __add__(self, other: Span) -> Span:
        return Span(low=self.low + other.low, mid=self.mid + other.mid, high=self.high + other.high)


class UnitEstimate(BaseModel):
    unit_id: str
    agent: str
    samples: int = 0
    cost: Span | None = None
    duration: Span | None = None


class RunEstimate(BaseModel):
    units: list[UnitEstimate]
    cost: Span | None = None  # over the units with history
    duration: Span | None = None
    no_history: list[str] = []  # agents (name@model) nothing was recorded for

    def lines(self) -> list[str]:
        """The estimate as `flotilla plan` prints it."""
        out = []
        if self.cost is not None:
            c = self.cost
            out.append(
                f"Estimated cost:     {format_usd(c.mid)} (range {format_usd(c.low)} - "
                f"{format_usd(c.high)})"
            )
        if self.duration is not None:
            d = self.duration
            out.append(
                f"Estimated duration: {_minutes(d.mid)} (range {_minutes(d.low)} - "
                f"{_minutes(d.high)})"
            )
        counted = [u for u in self.units if u.cost is not None]
        if counted and self.no_history:
            out.append(f"From {len(counted)} of {len(self.units)} unit(s); the others unknown")
        out += [
            f"No history for agent {agent}: its units are not in the estimate."
            for agent in self.no_history
        ]
        return out


def prompt_size(request: FeatureRequest, unit: UnitSpec) -> int:
    """The size of a unit's task in characters: what scales an estimate from its history."""
    feature = request.feature
    return len(unit.prompt or unit.display_title) + len(feature.title) + len(feature.description)


def agent_label(agent_name: str, model: str | None) -> str:
    return f"{agent_name}@{model}" if model else agent_name


def estimate_run(
    plan: Plan, samples: dict[str, list[UsageSample]], prompt_chars: dict[str, int]
) -> RunEstimate:
    """`samples` by agent label (see `agent_label`); `prompt_chars` by unit id."""
    units = []
    for unit_id in plan.units:
        settings = plan.settings[unit_id]
        label = agent_label(settings.agent_name, settings.agent.model)
        unit = estimate_unit(
            unit_id,
            label,
            settings.resources,
            prompt_chars.get(unit_id, 0),
            samples.get(label, []),
        )
        if unit.cost is not None and settings.best_of > 1:  # every candidate is paid for
            n = settings.best_of
            unit.cost = Span(low=unit.cost.low * n, mid=unit.cost.mid * n, high=unit.cost.high * n)
        units.append(unit)
    costs = [u.cost for u in units if u.cost is not None]
    missing = sorted({u.agent for u in units if not u.samples})
    return RunEstimate(
        units=units,
        cost=_sum(costs) if costs else None,
        duration=_run_duration(plan, units) if any(u.duration for u in units) else None,
        no_history=missing,
    )


def estimate_unit(
    unit_id: str, agent: str, resources: str, prompt_chars: int, samples: list[UsageSample]
) -> UnitEstimate:
    if not samples:
        return UnitEstimate(unit_id=unit_id, agent=agent)
    same_class = [s for s in samples if s.resources == resources]
    chosen = same_class or samples
    costs = [s.cost_usd * _scale(prompt_chars, s) for s in chosen if s.cost_usd is not None]
    durations = [s.duration_s * _scale(prompt_chars, s) for s in chosen if s.duration_s > 0]
    return UnitEstimate(
        unit_id=unit_id,
        agent=agent,
        samples=len(chosen),
        cost=_span(costs) if costs else None,
        duration=_span(durations) if durations else None,
    )


def _scale(prompt_chars: int, sample: UsageSample) -> float:
    if prompt_chars <= 0 or sample.prompt_chars <= 0:
        return 1.0
    low, high = SCALE_BOUNDS
    return min(max(prompt_chars / sample.prompt_chars, low), high)


def _span(values: list[float]) -> Span:
    mid = median(values)
    if len(values) < MIN_SAMPLES_FOR_RANGE:
        return Span(low=min(min(values), mid * 0.5), mid=mid, high=max(max(values), mid * 2))
    return Span(low=_quantile(values, 0.2), mid=mid, high=_quantile(values, 0.8))


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def _sum(spans: list[Span]) -> Span:
    total = Span(low=0, mid=0, high=0)
    for span in spans:
        total = total + span
    return total


def _run_duration(plan: Plan, units: list[UnitEstimate]) -> Span:
    """Longest path through the plan (or the work over `max_concurrent`), at each end of the
    range; a unit with no recorded duration weighs what the plan gives it."""
    by_id = {u.unit_id: u for u in units}

    def length(pick: str) -> float:
        weight = {}
        for unit_id in plan.units:
            span = by_id[unit_id].duration
            weight[unit_id] = getattr(span, pick) if span is not None else plan.weight(unit_id)
        remaining: dict[str, float] = {}
        for unit_id in reversed(plan.order()):
            tail = max((remaining[s] for s in plan.graph.successors(unit_id)), default=0.0)
            remaining[unit_id] = weight[unit_id] + tail
        path = max(remaining.values(), default=0.0)
        spread = sum(weight.values()) / plan.max_concurrent if plan.max_concurrent else 0.0
        return max(path, spread)

    return Span(low=length("low"), mid=length("mid"), high=length("high"))


def _minutes(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
