"""Seeded random DAGs and the orders that run them, without git or Prefect.

Three ways to start units, each honouring the stage's `max_concurrent` and a limit per resource
class:

- `flotilla`: what the implement stage does: ready units, most urgent first
  (`flotilla.scheduling.by_urgency`), each started only when its class has a free slot
  (`flotilla.scheduling.ClassRoom`), up to `max_concurrent`;
- `submit-then-wait`: what it did before the scheduler counted class slots itself: the same order
  submitted up to `max_concurrent`, and a submitted unit then waits for a slot of its class
  (Prefect's tag limit, modelled here as a first-come queue with no polling delay), holding a
  stage slot while it waits;
- `levels`: the phase-by-phase baseline: the graph's levels run one after the other, each a batch
  that must finish before the next starts (request order inside a level).

The same policy code drives a discrete-event simulation (exact, instant) and a real-time run of
sleep processes.
"""

from __future__ import annotations

import concurrent.futures as cf
import random
import subprocess
import time
from dataclasses import dataclass, field

from flotilla.plan import Plan
from flotilla.results import UnitStatus
from flotilla.scheduling import by_urgency, ready_units
from flotilla.spec import FeatureRequest

CLASSES = {"light": 6, "standard": 3, "heavy": 2}
SHARES = {"light": 0.5, "standard": 0.3, "heavy": 0.2}
MAX_CONCURRENT = 16  # more than 6 + 3 + 2: the classes are what limits
POLICIES = ("flotilla", "submit-then-wait", "levels")


def random_units(seed: int, count: int = 200, low: float = 0.05, high: float = 0.5) -> list[dict]:
    """Units with 0-3 dependencies among the 40 before them, a class and a sleep of low..high s."""
    rng = random.Random(seed)
    names = list(SHARES)
    units = []
    for i in range(count):
        window = list(range(max(0, i - 40), i))
        deps = rng.sample(window, k=min(len(window), rng.choice([0, 0, 1, 1, 2, 3])))
        units.append(
            {
                "id": f"u{i:04d}",
                "depends_on": [f"u{d:04d}" for d in sorted(deps)],
                "resources": rng.choices(names, weights=list(SHARES.values()))[0],
                "estimate_s": round(rng.uniform(low, high), 3),
            }
        )
    return units


def plan_of(units: list[dict], *, estimates: bool = True) -> Plan:
    kept = [u if estimates else {k: v for k, v in u.items() if k != "estimate_s"} for u in units]
    request = FeatureRequest.model_validate(
        {
            "feature": {"id": "bench", "title": "Bench"},
            "defaults": {"agent": "claude"},
            "resources": CLASSES,
            "units": kept,
        }
    )
    plan = Plan.from_request(request)
    plan.max_concurrent = MAX_CONCURRENT
    return plan


@dataclass
class State:
    """What has started and finished; the policy decides what starts next."""

    plan: Plan
    policy: str
    remaining: dict[str, float]
    done: set[str] = field(default_factory=set)
    running: set[str] = field(default_factory=set)
    submitted: list[str] = field(default_factory=list)  # `flotilla`: holding a stage slot
    level: int = 0

    def __post_init__(self) -> None:
        self.levels = self.plan.levels()
        self.klass = {u: s.resources for u, s in self.plan.settings.items()}

    def busy(self, klass: str) -> int:
        return sum(1 for u in self.running if self.klass[u] == klass)

    def free(self, unit: str) -> bool:
        return self.busy(self.klass[unit]) < self.plan.resources[self.klass[unit]]

    def to_start(self) -> list[str]:
        starts: list[str] = []
        if self.policy == "levels":
            while self.level < len(self.levels) and set(self.levels[self.level]) <= self.done:
                self.level += 1
            if self.level < len(self.levels):
                for unit in self.levels[self.level]:
                    if unit in self.done or unit in self.running:
                        continue
                    if len(self.running) < MAX_CONCURRENT and self.free(unit):
                        self._start(unit, starts)
            return starts
        status = {u: UnitStatus.SUCCEEDED for u in self.done}
        status.update({u: UnitStatus.RUNNING for u in self.running})
        taken = set(self.submitted) | self.running | self.done
        ready = by_urgency(self.plan, ready_units(self.plan, status, taken), self.remaining)
        if self.policy == "submit-then-wait":
            for unit in ready:
                if len(self.submitted) >= MAX_CONCURRENT:
                    break
                self.submitted.append(unit)
            for unit in list(self.submitted):  # first come, first served per class
                if unit not in self.running and self.free(unit):
                    self._start(unit, starts)
        else:
            for unit in ready:
                if len(self.running) < MAX_CONCURRENT and self.free(unit):
                    self._start(unit, starts)
        return starts

    def _start(self, unit: str, starts: list[str]) -> None:
        self.running.add(unit)
        starts.append(unit)

    def finish(self, unit: str) -> None:
        self.running.discard(unit)
        if unit in self.submitted:
            self.submitted.remove(unit)
        self.done.add(unit)


def simulate(plan: Plan, policy: str, seconds: dict[str, float], ranking: Plan) -> float:
    """Exact makespan of `policy` when unit u takes seconds[u]; `ranking` gives the urgency."""
    state = State(plan, policy, ranking.remaining_path())
    now, ends = 0.0, {}
    while len(state.done) < len(plan.units):
        for unit in state.to_start():
            ends[unit] = now + seconds[unit]
        unit = min(state.running, key=lambda u: (ends[u], u))
        now = ends.pop(unit)
        state.finish(unit)
    return now


def run_real(plan: Plan, policy: str, seconds: dict[str, float]) -> float:
    """Real-time makespan: each unit is a `sleep` process, started when the policy says."""
    state = State(plan, policy, plan.remaining_path())
    started = time.monotonic()
    with cf.ThreadPoolExecutor(max_workers=MAX_CONCURRENT) as pool:
        futures: dict[cf.Future, str] = {}
        while len(state.done) < len(plan.units):
            for unit in state.to_start():
                command = ["sleep", f"{seconds[unit]:.3f}"]
                futures[pool.submit(subprocess.run, command, check=True)] = unit
            finished, _ = cf.wait(list(futures), return_when=cf.FIRST_COMPLETED)
            for future in finished:
                future.result()
                state.finish(futures.pop(future))
    return time.monotonic() - started
