"""What a stage subflow or a unit task works on, passed by reference: a run key, never the world.

Prefect keeps every flow run's parameters in its database (at most 512 KB each) and walks every
task's parameters looking for futures. A feature of 1,000 units, or one unit with a 5 MB prompt,
passed as parameters would not fit, and walking it in every task costs time that grows with the
square of the units. So stage subflows and unit tasks receive a `RunRef` (run key, store URL) and
small ids, and read the run's context and what earlier stages produced from this process's
memory, where the feature flow handed it over, or once from the store when another process runs
them (a resumed run, a worker of a work pool).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel

from flotilla.results import UnitRecord
from flotilla.runs import RunContext
from flotilla.spec import UnitSpec
from tasks.store import ArtifactStore, RunStore

T = TypeVar("T")

_lock = threading.Lock()
_contexts: dict[tuple[str, str], RunContext] = {}
_handed: dict[tuple[str, str], Any] = {}


class RunRef(BaseModel):
    """A run by reference: enough to find everything else in the store."""

    run_key: str
    store_url: str
    workdir: str | None = None  # this machine's work directory, when not the starter's

    @classmethod
    def of(cls, ctx: RunContext) -> RunRef:
        remember(ctx)
        return cls(run_key=ctx.run_key, store_url=ctx.store_url)

    @property
    def ctx(self) -> RunContext:
        return context_of(self.run_key, self.store_url, self.workdir)

    @property
    def runs(self) -> RunStore:
        return RunStore(ArtifactStore(self.store_url), self.run_key)


def remember(ctx: RunContext) -> None:
    """Keep `ctx` for this process, so nothing reads it back from the store."""
    with _lock:
        _contexts[(ctx.run_key, ctx.store_url)] = ctx


def context_of(run_key: str, store_url: str, workdir: str | None = None) -> RunContext:
    """The run's context: from memory, else read once from the store (`runs/<key>/run.json`).
    With `workdir`, the same context with this machine's work directory for the run."""
    key = (run_key, store_url)
    with _lock:
        ctx = _contexts.get(key)
    if ctx is None:
        from tasks.lifecycle import load_context

        ctx = load_context(run_key, store_url)
        with _lock:
            ctx = _contexts.setdefault(key, ctx)
    if workdir is None or workdir == ctx.workdir:
        return ctx
    local = (run_key, f"{store_url}\0{workdir}")
    with _lock:
        if local not in _contexts:
            _contexts[local] = ctx.model_copy(update={"workdir": workdir})
        return _contexts[local]


def hand_over(run_key: str, name: str, value: object) -> None:
    """Give the next stage of this run `value` under `name`, in memory."""
    with _lock:
        _handed[(run_key, name)] = value


def handed(run_key: str, name: str, otherwise: Callable[[], T]) -> T:
    """What the feature flow handed over as `name`, or `otherwise()` (read from the store) when
    this process did not start the stage (a resume, a deployment run of the stage)."""
    with _lock:
        if (run_key, name) in _handed:
            return _handed[(run_key, name)]
    return otherwise()


def forget(run_key: str) -> None:
    """Drop what this process holds for the run (its end): a long-lived worker stays small."""
    with _lock:
        for key in [k for k in _contexts if k[0] == run_key]:
            del _contexts[key]
        for key in [k for k in _handed if k[0] == run_key]:
            del _handed[key]


def planned_units(ctx: RunContext) -> list[UnitSpec]:
    """The units of the saved plan (`runs/<key>/plan.json`), else the request's."""
    runs = RunStore(ArtifactStore(ctx.store_url), ctx.run_key)
    try:
        data = runs.store.read_json(runs.plan_key)
    except KeyError:
        return list(ctx.request.units)
    return [UnitSpec.model_validate(u) for u in data.get("units", [])] or list(ctx.request.units)


def ledger_records(ctx: RunContext, units: list[UnitSpec]) -> dict[str, UnitRecord]:
    """The ledger's record of every planned unit: what the implement stage left."""
    ledger = RunStore(ArtifactStore(ctx.store_url), ctx.run_key).read_ledger()
    return {u.id: ledger[u.id] for u in units if u.id in ledger}
