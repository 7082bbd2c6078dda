"""`flotilla status`, `runs`, `artifacts`: what a run did, read from the store alone.

Nothing here talks to Prefect: the ledger, `state.json` and the artifacts in the store are the
record, so these commands work on any machine that can read the store, even after the Prefect
server's history is gone.
"""

from __future__ import annotations

import argparse
import functools
import json
import socket
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from commands.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_PAUSED, command
from flotilla.errors import FlotillaError, RunError
from flotilla.eta import RunEta, UnitRow, estimate, format_duration, run_eta_text, unit_rows
from flotilla.plan import Plan
from flotilla.results import RunState, RunSummary, UnitStatus, utcnow
from flotilla.runs import RunContext
from flotilla.spec import UnitSpec
from flotilla.usage import Usage

COLUMNS = ("unit", "status", "step", "attempt", "elapsed", "eta", "cost", "last error")
EXIT_FOR_STATE = {RunState.SUCCEEDED: EXIT_OK, RunState.PAUSED: EXIT_PAUSED}


def register(sub) -> None:
    status = command(sub, "status", cmd_status, "Show a run's units, with ETAs, from the store.")
    status.add_argument("run_key", metavar="RUN_KEY", help="the run (see `flotilla runs`)")
    _store_option(status)
    status.add_argument("--watch", action="store_true", help="refresh until the run ends")
    status.add_argument(
        "--interval", type=float, default=2.0, metavar="S", help="seconds between refreshes"
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")

    runs = command(sub, "runs", cmd_runs, "List the runs in the store.")
    _store_option(runs)
    runs.add_argument("--json", action="store_true", help="print JSON instead of a table")

    artifacts = command(
        sub, "artifacts", cmd_artifacts, "List or fetch what a run or one unit stored."
    )
    artifacts.add_argument("run_key", metavar="RUN_KEY", help="the run (see `flotilla runs`)")
    artifacts.add_argument("unit", metavar="UNIT", nargs="?", help="only this unit's artifacts")
    _store_option(artifacts)
    artifacts.add_argument("--get", metavar="NAME", help="fetch this artifact (a listed name)")
    artifacts.add_argument("--to", metavar="PATH", help="where --get writes (default: stdout)")


def _store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="URL",
        help="artifact store (default: $FLOTILLA_STORE or .flotilla/store)",
    )


def _open_store(url: str | None):
    from flotilla.settings import get_settings
    from tasks.store import ArtifactStore

    return ArtifactStore(url or get_settings().store)


def _reads_store(handler: Callable[[argparse.Namespace], int]):
    """Turn a store that cannot be read (S3 down, bad credentials) into a sentence."""

    @functools.wraps(handler)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (FlotillaError, KeyboardInterrupt, BrokenPipeError):
            raise
        except Exception as exc:
            from flotilla.settings import get_settings

            url = args.store or get_settings().store
            raise RunError(
                f"Could not read the store {url} ({type(exc).__name__}: {exc}). Check that it is "
                "reachable and that the credentials allow reading it; for MinIO or moto set "
                "FLOTILLA_S3_ENDPOINT_URL."
            ) from exc

    return wrapper


# -- status -----------------------------------------------------------------------------------


class RunView:
    """A run as the store has it: context, summary, plan, ledger, and the ETA computed now."""

    def __init__(self, store, run_key: str):
        from tasks.stats import typical_durations
        from tasks.store import RunStore

        self.runs = runs = RunStore(store, run_key)
        try:
            self.ctx = store.read_model(runs.context_key, RunContext)
        except KeyError:
            raise RunError(
                f"There is no run {run_key!r} in the store {store.url}. `flotilla runs --store "
                f"{store.url}` lists the runs there; pass the store the run used with --store."
            ) from None
        self.summary = _read_summary(store, runs)
        self.records = runs.read_ledger()
        self.plan = _plan_of(store, runs, self.ctx)
        stage = self.ctx.stage("work_loop")
        self.eta: RunEta = estimate(
            self.plan,
            self.records,
            typical_durations(store),
            utcnow(),
            stage.max_concurrent if stage else None,
        )
        self.live = self.summary is None or (
            self.summary.state == RunState.RUNNING and not _gone(self.summary)
        )
        self.rows: list[UnitRow] = unit_rows(self.plan, self.records, self.eta, self.live)
        self.spend = SpendView(runs, self.ctx, self.records)

    @property
    def state(self) -> str:
        return _state_text(self.summary) if self.summary else "unknown"

    def to_json(self) -> dict[str, Any]:
        summary = self.summary
        return {
            "run_key": self.ctx.run_key,
            "feature_id": self.ctx.feature_id,
            "title": self.ctx.request.feature.title,
            "state": summary.state.value if summary else None,
            "started_at": (summary.started_at if summary else self.ctx.created_at).isoformat(),
            "finished_at": summary.finished_at.isoformat()
            if summary and summary.finished_at
            else None,
            "units_total": len(self.rows),
            "units_succeeded": sum(r.status == UnitStatus.SUCCEEDED for r in self.rows),
            "eta_s": self.eta.remaining_s if self.live else None,
            "eta_at": self.eta.finish_at.isoformat() if self.live and self.eta.finish_at else None,
            "critical_path": self.eta.critical_path,
            "error": summary.error if summary else "",
            **self.spend.to_json(),
            "units": [r.model_dump() | self.spend.unit_json(r.unit) for r in self.rows],
        }

    def render(self) -> str:
        ctx, summary = self.ctx, self.summary
        started = summary.started_at if summary else ctx.created_at
        ended = summary.finished_at if summary and summary.finished_at else utcnow()
        succeeded = sum(r.status == UnitStatus.SUCCEEDED for r in self.rows)
        lines = [
            f"Run {ctx.run_key}: {ctx.request.feature.title} ({ctx.feature_id})",
            f"State:   {self.state}, started {started:%Y-%m-%d %H:%M:%S} UTC, "
            f"{format_duration((ended - started).total_seconds())}",
            f"Units:   {succeeded} of {len(self.rows)} succeeded",
        ]
        if self.live and any(not UnitStatus(r.status).is_final for r in self.rows):
            lines.append(f"ETA:     {run_eta_text(self.eta)} for the units")
            if len(self.eta.critical_path) > 1:
                lines.append(f"Critical path: {' -> '.join(self.eta.critical_path)}")
        lines.append(f"Spend:   {self.spend.line()}")
        if summary and summary.error:
            lines.append(f"Problem: {summary.error}")
        cells = [r.cells() | {"cost": self.spend.unit_cost(r.unit)} for r in self.rows]
        lines += ["", *table(cells, COLUMNS)]
        return "\n".join(lines)


class SpendView:
    """What a run's agents spent, per unit and in all, and the run's budget, from the store."""

    def __init__(self, runs, ctx: RunContext, records: dict):
        from tasks.spending import other_usage, run_budget

        self.records = records
        self.total = Usage.total(r.total_usage for r in records.values()) + other_usage(runs)
        self.budget = run_budget(runs, ctx)

    def unit_cost(self, unit_id: str) -> str:
        record = self.records.get(unit_id)
        return record.total_usage.cost_text() if record is not None and record.usage else ""

    def line(self) -> str:
        from flotilla.budget import describe

        budget = f"; budget {describe(self.budget)}" if self.budget else ""
        return self.total.one_line() + budget

    def to_json(self) -> dict[str, Any]:
        return {
            "usage": self.total.model_dump(mode="json") | {"tokens": self.total.tokens},
            "budget": self.budget.model_dump(mode="json") if self.budget else None,
        }

    def unit_json(self, unit_id: str) -> dict[str, Any]:
        record = self.records.get(unit_id)
        if record is None:
            return {"usage": None, "usage_by_attempt": []}
        total = record.total_usage
        return {
            "usage": total.model_dump(mode="json") | {"tokens": total.tokens},
            "usage_by_attempt": [a.model_dump(mode="json") for a in record.usage],
        }


def _read_summary(store, runs) -> RunSummary | None:
    try:
        return store.read_model(runs.state_key, RunSummary)
    except KeyError:
        return None


def _plan_of(store, runs, ctx: RunContext) -> Plan:
    """The plan the run executes: the decomposed units (plan.json, else the request's), plus
    the units that joined mid-run, laid out as the implement stage lays them out."""
    from tasks.control import load_added

    units = list(ctx.request.units)
    try:
        saved = store.read_json(runs.plan_key)
        units = [UnitSpec.model_validate(u) for u in saved.get("units", [])] or units
    except KeyError:
        pass
    known = {u.id for u in units}
    units += [u for u in load_added(runs).specs() if u.id not in known]
    request = ctx.request.model_copy(update={"units": units})
    return Plan.from_request(request, ctx.stage("work_loop"), ctx.workflow)


def _state_text(summary: RunSummary) -> str:
    """The state, and a warning when a 'running' run's process on this host is gone."""
    if _gone(summary):
        return f"running (but its process {summary.pid} is gone: it crashed or was killed)"
    return summary.state.value


def _gone(summary: RunSummary) -> bool:
    """A run that says `running` whose process, on this very host, no longer exists."""
    from tasks.recovery import process_alive

    if summary.state != RunState.RUNNING or summary.host != socket.gethostname():
        return False
    return bool(summary.pid) and not process_alive(summary.pid)


@_reads_store
def cmd_status(args: argparse.Namespace) -> int:
    store = _open_store(args.store)
    while True:
        view = RunView(store, args.run_key)
        if args.json:
            print(json.dumps(view.to_json(), indent=2), flush=True)
        else:
            if args.watch and sys.stdout.isatty():
                print("\033[H\033[J", end="")
            print(view.render(), flush=True)
        if not args.watch:
            return EXIT_OK
        summary = view.summary
        if summary is not None and summary.state != RunState.RUNNING:
            return EXIT_FOR_STATE.get(summary.state, EXIT_FAILED)
        if summary is not None and _gone(summary):
            return EXIT_FAILED
        time.sleep(max(args.interval, 0.2))
        if not args.json and not sys.stdout.isatty():
            print()


# -- runs -------------------------------------------------------------------------------------


@_reads_store
def cmd_runs(args: argparse.Namespace) -> int:
    from tasks.spending import other_usage
    from tasks.store import RunStore, list_runs

    store = _open_store(args.store)
    rows = []
    for key in list_runs(store):
        runs = RunStore(store, key)
        summary = _read_summary(store, runs)
        if summary is None:
            rows.append({"key": key, "feature": "", "state": "unknown", "units": "", "_at": None})
            continue
        done, total = summary.units_done, summary.units_total
        ledger = runs.read_ledger()
        if summary.state == RunState.RUNNING:  # the summary is written at start and end only
            done = sum(r.status == UnitStatus.SUCCEEDED for r in ledger.values())
            total = max(total, len(ledger))
        usage = Usage.total(r.total_usage for r in ledger.values()) + other_usage(runs)
        end = summary.finished_at or utcnow()
        rows.append(
            {
                "key": key,
                "feature": summary.feature_id,
                "state": _state_text(summary),
                "units": f"{done}/{total}",
                "started": f"{summary.started_at:%Y-%m-%d %H:%M:%S}",
                "duration": format_duration((end - summary.started_at).total_seconds()),
                "cost": usage.cost_text(),
                "_at": summary.started_at,
                "_json": summary.model_dump(mode="json")
                | {"units_done": done, "cost_usd": usage.cost_usd, "tokens": usage.tokens},
            }
        )
    rows.sort(key=lambda r: (r["_at"] is not None, r["_at"] or datetime.min, r["key"]))
    if args.json:
        print(json.dumps([r.get("_json") or {"run_key": r["key"]} for r in rows], indent=2))
    elif not rows:
        print(f"No runs in {store.url}.")
    else:
        columns = ("key", "feature", "state", "units", "started", "duration", "cost")
        print("\n".join(table(rows, columns)))
    return EXIT_OK


# -- artifacts --------------------------------------------------------------------------------


@_reads_store
def cmd_artifacts(args: argparse.Namespace) -> int:
    from tasks.store import RunStore

    if args.to and not args.get:
        print("--to needs --get NAME: say which artifact to fetch.", file=sys.stderr)
        return EXIT_BAD_INPUT
    store = _open_store(args.store)
    runs = RunStore(store, args.run_key)
    if not store.list(runs.prefix):
        raise RunError(
            f"There is no run {args.run_key!r} in the store {store.url}. `flotilla runs "
            f"--store {store.url}` lists the runs there."
        )
    base = runs.unit_prefix(args.unit) if args.unit else runs.prefix
    names = [key[len(base) + 1 :] for key in store.list(base)]
    if args.unit and not names:
        units = sorted({k.split("/")[3] for k in store.list(f"{runs.prefix}/units")})
        raise RunError(
            f"Run {args.run_key!r} stored nothing for unit {args.unit!r}. Units with "
            f"artifacts: {', '.join(units) or 'none'}."
        )
    if not args.get:
        print(f"{store.uri(base)}/")
        for name in names:
            print(f"  {name}")
        return EXIT_OK
    return _fetch(store, base, names, args)


def _fetch(store, base: str, names: list[str], args: argparse.Namespace) -> int:
    name = args.get.strip("/")
    if name not in names and args.unit and f"outputs/{name}" in names:
        name = f"outputs/{name}"  # a unit's output by its bare name
    inside = [n for n in names if n.startswith(f"{name}/")]
    where = f"{args.run_key} {args.unit}" if args.unit else args.run_key
    if name not in names and not inside:
        raise RunError(
            f"There is no artifact {args.get!r} in {store.uri(base)}. `flotilla artifacts "
            f"{where}` lists the names you can --get."
        )
    if name not in names:  # a folder
        if not args.to:
            raise RunError(
                f"{args.get!r} is a folder of {len(inside)} artifact(s); add --to DIR to fetch it."
            )
        keys = store.download_dir(f"{base}/{name}", Path(args.to))
        print(f"Fetched {len(keys)} file(s) from {store.uri(f'{base}/{name}')} to {args.to}")
        return EXIT_OK
    key = f"{base}/{name}"
    if not args.to:
        sys.stdout.buffer.write(store.read_bytes(key))
        sys.stdout.flush()
        return EXIT_OK
    target = Path(args.to)
    if target.is_dir():
        target = target / Path(name).name
    store.download_file(key, target)
    print(f"Fetched {store.uri(key)} to {target}")
    return EXIT_OK


# -- text tables ------------------------------------------------------------------------------


def table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> list[str]:
    """Left-aligned columns as wide as their widest cell; the last column is not padded."""
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        padded = [v.ljust(w) for v, w in zip(values[:-1], widths[:-1], strict=True)]
        return "  ".join([*padded, values[-1]]).rstrip()

    return [line([c.upper() for c in columns]), *(line(r) for r in cells)]
