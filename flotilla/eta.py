"""How long a run still needs: an ETA per unit and for the run, and the unit table rows.

Pure: the caller passes the plan, the ledger, the typical duration per resource class (recorded
in the store by `tasks/stats.py`) and the time. A pending unit starts when its last dependency
finishes, so the run's ETA follows the remaining critical path; it also cannot beat its remaining
work spread over the units allowed to run at once (in the stage, and per resource class). Only the units are estimated: merging, the
test gate and publishing come after.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from statistics import median

from pydantic import BaseModel, Field

from flotilla.plan import Plan
from flotilla.results import UnitRecord, UnitStatus

ERROR_WIDTH = 160


class UnitEta(BaseModel):
    """One unit's timing: how long it usually takes, how long it ran, how long it still needs."""

    unit_id: str
    status: UnitStatus = UnitStatus.PENDING
    expected_s: float | None = Field(None, description="Typical duration; None when unknown.")
    elapsed_s: float = Field(0.0, description="Time spent so far (running) or in all (finished).")
    remaining_s: float | None = Field(
        None, description="Seconds until the unit finishes (0 when it has); None when unknown."
    )
    never: bool = Field(False, description="It failed, or waits on a failure: it will not finish.")
    overdue: bool = Field(False, description="Running for longer than it usually takes.")


class RunEta(BaseModel):
    """The estimate for a whole run at one moment."""

    now: datetime
    units: dict[str, UnitEta]
    remaining_s: float | None = Field(None, description="Until the last unit finishes.")
    critical_path: list[str] = Field(
        default_factory=list, description="The chain of unfinished units that decides the ETA."
    )

    @property
    def finish_at(self) -> datetime | None:
        return None if self.remaining_s is None else self.now + timedelta(seconds=self.remaining_s)


class UnitRow(BaseModel):
    """One line of the unit table, shared by the Prefect table artifact and `flotilla status`."""

    unit: str
    status: str
    step: str = ""
    attempt: int = 0
    max_attempts: int = 1
    elapsed_s: float = 0.0
    eta_s: float | None = None
    eta: str = ""
    error: str = ""

    def cells(self) -> dict[str, str]:
        """The row as text, column name to cell."""
        return {
            "unit": self.unit,
            "status": self.status,
            "step": self.step,
            "attempt": f"{self.attempt}/{self.max_attempts}" if self.attempt else "",
            "elapsed": format_duration(self.elapsed_s) if self.elapsed_s else "",
            "eta": self.eta,
            "last error": self.error,
        }


def format_duration(seconds: float) -> str:
    """`42s`, `3m 05s`, `2h 07m`: short enough for a table cell."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def expected_duration(
    plan: Plan, unit_id: str, typical: dict[str, float], fallback: float | None = None
) -> float | None:
    """The unit's `estimate_s`, else its resource class's typical duration, else `fallback`."""
    unit = plan.units.get(unit_id)
    if unit is not None and unit.estimate_s:
        return unit.estimate_s
    settings = plan.settings.get(unit_id)
    if settings is not None and settings.resources in typical:
        return typical[settings.resources]
    return fallback


def estimate(
    plan: Plan,
    records: dict[str, UnitRecord],
    typical: dict[str, float],
    now: datetime,
    max_concurrent: int | None = None,
) -> RunEta:
    """ETAs for every unit of `plan` and for the run, as of `now`.

    Units without an estimate and with no recorded duration for their class fall back to the
    median duration of the units that already succeeded in this run; before any has, they are
    unknown, and so is the run's ETA.
    """
    done = [
        r.duration_s for r in records.values() if r.status == UnitStatus.SUCCEEDED and r.duration_s
    ]
    fallback = median(done) if done else None
    units: dict[str, UnitEta] = {}
    for unit_id in plan.order():
        record = records.get(unit_id)
        expected = expected_duration(plan, unit_id, typical, fallback)
        units[unit_id] = _unit_eta(plan, unit_id, record, expected, units, now)

    live = [u for u in units.values() if not u.never]
    if any(u.remaining_s is None for u in live):
        return RunEta(now=now, units=units)
    finish = max((u.remaining_s or 0.0 for u in live), default=0.0)
    if max_concurrent:
        finish = max(finish, sum(_work_left(u) for u in live) / max_concurrent)
    for name, limit in plan.resources.items():
        in_class = [u for u in live if _resources(plan, u.unit_id) == name]
        if limit > 0 and in_class:
            finish = max(finish, sum(_work_left(u) for u in in_class) / limit)
    return RunEta(now=now, units=units, remaining_s=finish, critical_path=_critical(plan, units))


def _unit_eta(
    plan: Plan,
    unit_id: str,
    record: UnitRecord | None,
    expected: float | None,
    earlier: dict[str, UnitEta],
    now: datetime,
) -> UnitEta:
    status = record.status if record else UnitStatus.PENDING
    eta = UnitEta(unit_id=unit_id, status=status, expected_s=expected)
    if status in (UnitStatus.SUCCEEDED, UnitStatus.SKIPPED):
        eta.elapsed_s, eta.remaining_s = record.duration_s, 0.0
    elif status in (UnitStatus.FAILED, UnitStatus.BLOCKED):
        eta.elapsed_s, eta.never = record.duration_s, True
    elif status == UnitStatus.RUNNING:
        started = record.started_at
        eta.elapsed_s = max((now - started).total_seconds(), 0.0) if started else 0.0
        if expected is not None:
            eta.remaining_s = max(expected - eta.elapsed_s, 0.0)
            eta.overdue = eta.elapsed_s > expected
    else:
        deps = [earlier[d] for d in plan.graph.predecessors(unit_id) if d in earlier]
        if any(d.never for d in deps):
            eta.never = True
        elif expected is not None and all(d.remaining_s is not None for d in deps):
            eta.remaining_s = max((d.remaining_s or 0.0 for d in deps), default=0.0) + expected
    return eta


def _resources(plan: Plan, unit_id: str) -> str | None:
    settings = plan.settings.get(unit_id)
    return settings.resources if settings else None


def _work_left(unit: UnitEta) -> float:
    """Seconds of agent time the unit still needs (not counting waits for dependencies)."""
    if not unit.remaining_s:
        return 0.0
    return unit.remaining_s if unit.status == UnitStatus.RUNNING else unit.expected_s or 0.0


def _critical(plan: Plan, units: dict[str, UnitEta]) -> list[str]:
    """Walk back from the last unit to finish through the dependency that finishes last."""
    open_units = [u for u, e in units.items() if not e.never and e.remaining_s]
    if not open_units:
        return []
    current = max(open_units, key=lambda u: units[u].remaining_s or 0.0)
    path = [current]
    while preds := [
        p for p in plan.graph.predecessors(current) if p in units and units[p].remaining_s
    ]:
        current = max(preds, key=lambda u: units[u].remaining_s or 0.0)
        path.append(current)
    return path[::-1]


def eta_text(eta: UnitEta | None, status: UnitStatus) -> str:
    if status.is_final:
        return ""
    if eta is None or eta.never:
        return "-"
    if eta.overdue:
        return "overdue"
    if eta.remaining_s is None:
        return "?"
    return f"~{format_duration(eta.remaining_s)}"


def unit_rows(
    plan: Plan, records: dict[str, UnitRecord], eta: RunEta, live: bool = True
) -> list[UnitRow]:
    """The unit table in plan order; ledger entries the plan does not know come last.
    A run that is over (`live=False`) shows no ETAs: its unfinished units will not run."""
    order = plan.order() + sorted(set(records) - set(plan.units))
    rows = []
    for unit_id in order:
        record = records.get(unit_id) or UnitRecord(unit_id=unit_id)
        unit_eta = eta.units.get(unit_id)
        settings = plan.settings.get(unit_id)
        rows.append(
            UnitRow(
                unit=unit_id,
                status=record.status.value,
                step=record.step if record.status == UnitStatus.RUNNING else "",
                attempt=record.attempts,
                max_attempts=settings.retry_policy.max_attempts if settings else record.attempts,
                elapsed_s=round(unit_eta.elapsed_s if unit_eta else record.duration_s, 1),
                eta_s=unit_eta.remaining_s if unit_eta and live else None,
                eta=eta_text(unit_eta, record.status) if live else "",
                error=error_headline(record.error),
            )
        )
    return rows


def run_eta_text(eta: RunEta) -> str:
    """`~4m 10s (about 14:32 UTC)`, or why there is no estimate."""
    if eta.remaining_s is None:
        return "unknown (no durations recorded yet)"
    if eta.remaining_s == 0:
        return "nothing left to run"
    at = eta.finish_at
    clock = f" (about {at:%H:%M} UTC)" if at else ""
    return f"~{format_duration(eta.remaining_s)}{clock}"


def error_headline(text: str) -> str:
    """The error's first line; when it ends in a colon ("agent exited with code 3:"), the
    first line of what follows too, so the cell says why."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[0] if lines else ""
    if line.endswith(":") and len(lines) > 1:
        line = f"{line} {lines[1]}"
    return line if len(line) <= ERROR_WIDTH else line[: ERROR_WIDTH - 1] + "…"
