"""Makespan against its lower bound, and the fixed cost of a unit.

1. Orders (no git, no Prefect): seeded random DAGs of 200 units, sleep agents of 0.05-0.5 s,
   three resource classes with limits. Makespan / lower bound for Flotilla's order and for a
   level-by-level baseline, side by side: exactly (discrete-event simulation, 20 seeds) and in
   real time with `sleep` processes (3 seeds). See `benchmarks/policies.py`.
2. End to end: the first DAG through the real implement stage (worktrees, commits, the store,
   Prefect tasks and tag limits) with `sleep` agents.
3. Fixed cost: independent units with a no-op agent (`true`) through the implement stage at 50,
   200 and 1000 units with tag limits on (and 200 without): wall ms/unit, CPU ms/unit, mean time
   per step, and a profile; beside the same numbers from benchmarks/results/makespan-before.json.
4. Through the CLI (`flotilla run`, every stage): 1000 independent no-op units, and a chain of
   300 units each committing a file on top of its predecessor's branch.

The lower bound is `flotilla.plan.Plan.lower_bound`: max(critical path, Σ work per class / its
limit, Σ work / max_concurrent). Results: benchmarks/results/makespan.json and the generated
part of "Makespan and fixed cost" in docs/performance.md.
Run: `make bench` or `.venv/bin/python -m benchmarks.makespan [--quick] [--no-write]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

from benchmarks import pipeline
from benchmarks.docblock import run_header, save_results, write_block
from benchmarks.pipeline import make_target
from benchmarks.policies import (
    CLASSES,
    MAX_CONCURRENT,
    POLICIES,
    plan_of,
    random_units,
    run_real,
    simulate,
)
from benchmarks.scaleout import write_inputs

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "makespan.json"
# The same benchmark on 2026-11-24, before the fixed cost per unit was cut: shown beside the new.
BEFORE = ROOT / "benchmarks" / "results" / "makespan-before.json"
HEADING = "## Makespan and fixed cost"
BEGIN, END = "<!-- makespan:begin -->", "<!-- makespan:end -->"
TARGET_RATIO, TARGET_MS = 1.10, 100.0
CPU_GROWTH = 1.5  # CPU per unit may grow at most this much from 50 to 1000 units
CLI_TARGET_S = 150.0  # 1000 no-op units through `flotilla run`, merge and gate included
CHAIN_LENGTH = 300  # units in a chain through `flotilla run`, each built on the one before
E2E_REPEATS = 3  # runs of seed 0's DAG as built; the median is reported


def orders(seeds_exact: int, seeds_real: int) -> dict:
    """Makespan / lower bound per policy: simulated for many seeds, real time for a few."""
    exact: dict[str, list[float]] = {p: [] for p in (*POLICIES, "flotilla-no-estimates")}
    real: dict[str, list[float]] = {p: [] for p in POLICIES}
    bounds = []
    for seed in range(seeds_exact):
        units = random_units(seed)
        plan = plan_of(units)
        seconds = {u["id"]: u["estimate_s"] for u in units}
        bound = plan.lower_bound().value
        bounds.append(plan.lower_bound().to_json())
        for policy in POLICIES:
            exact[policy].append(simulate(plan, policy, seconds, plan) / bound)
        blind = plan_of(units, estimates=False)
        blind.max_concurrent = MAX_CONCURRENT
        exact["flotilla-no-estimates"].append(simulate(plan, "flotilla", seconds, blind) / bound)
        if seed < seeds_real:
            for policy in POLICIES:
                real[policy].append(run_real(plan, policy, seconds) / bound)
                print(f"  seed {seed} {policy}: {real[policy][-1]:.3f} x bound", flush=True)
    return {
        "units": 200,
        "limits": CLASSES,
        "max_concurrent": MAX_CONCURRENT,
        "lower_bounds": bounds[:seeds_real],
        "simulated": {p: _stats(v) for p, v in exact.items()},
        "real_time": {p: _stats(v) for p, v in real.items() if v},
    }


def _stats(values: list[float]) -> dict:
    return {
        "mean": round(mean(values), 3),
        "max": round(max(values), 3),
        "min": round(min(values), 3),
        "n": len(values),
    }


def end_to_end(root: Path, limits: bool = True, repeats: int = 1) -> dict:
    """The first random DAG through the real implement stage, with `sleep` agents: the median
    of `repeats` runs (one run's ratio moves by a fifth and more with the machine's load), with
    every run's ratio beside it."""
    runs = [_end_to_end_once(root, limits, n) for n in range(1, repeats + 1)]
    median = sorted(runs, key=lambda run: run["ratio"])[len(runs) // 2]
    return {**median, "ratios": [run["ratio"] for run in runs]}


def _end_to_end_once(root: Path, limits: bool, n: int) -> dict:
    units = random_units(0)
    plan = plan_of(units)
    spec_units = [{**u, "agent": {"command": f"sleep {u['estimate_s']:.3f}"}} for u in units]
    key = ("e2e" if limits else "e2e-untagged") + (f"-{n}" if n > 1 else "")
    ctx = pipeline.context_for(root / key, spec_units, CLASSES, MAX_CONCURRENT, key)
    run = pipeline.run_implement(ctx, MAX_CONCURRENT, limits=limits)
    bound = plan.lower_bound().value
    cpus = os.cpu_count() or 1
    cpu = sum(run["cpu_s"].values())
    print(f"  {key}: {run['wall_s'] / bound:.2f} x bound", flush=True)
    return {
        "tag_limits": limits,
        "lower_bound_s": round(bound, 3),
        "makespan_s": round(run["wall_s"], 3),
        "ratio": round(run["wall_s"] / bound, 3),
        "cpu_s": {k: round(v, 1) for k, v in run["cpu_s"].items()},
        # the CPU alone, spread perfectly over every core, against the bound: no faster than this
        "cpu_floor_ratio": round(cpu / cpus / bound, 2),
        "cpus": cpus,
        "steps_ms": run["steps_ms"],
        "failed_units": run["failed"],
    }


def pipeline_runs(
    root: Path, sizes: list[int], tagged_sizes: list[int], concurrency: int, e2e_repeats: int
) -> dict:
    """As built first (tag limits on the server, a class slot per unit), then `sizes` with no
    tag limit on the server, to show what the slots cost; the profile is of an untagged run."""
    out: dict = {"concurrency": concurrency}
    out["end_to_end"] = [end_to_end(root, repeats=e2e_repeats)]
    out["runs"] = [_noop_run(root, size, concurrency) for size in tagged_sizes]
    pipeline.drop_limits([*CLASSES, "standard"])
    out["without_tag_limits"] = [_noop_run(root, s, concurrency, limits=False) for s in sizes]
    run = _noop_run(root, 200, concurrency, profile=True, limits=False)
    out["profile"] = {
        "units": 200,
        "tag_limits": False,
        "wall_ms_per_unit": run["wall_ms_per_unit"],
        "workers_top_cumulative": run.pop("profile_workers"),
        "scheduler_top_cumulative": run.pop("profile_scheduler"),
    }
    out["end_to_end"].append(end_to_end(root, limits=False))
    return out


def _noop_run(
    root: Path, size: int, concurrency: int, profile: bool = False, limits: bool = True
) -> dict:
    units = [{"id": f"n{i:04d}", "agent": {"command": "true"}} for i in range(size)]
    key = f"noop-{size}" + ("-profile" if profile else "") + ("" if limits else "-untagged")
    ctx = pipeline.context_for(root / key, units, {"standard": 10_000}, concurrency, key)
    run = pipeline.run_implement(ctx, concurrency, profile=profile, limits=limits)
    row = {
        "units": size,
        "wall_ms_per_unit": round(1000 * run["wall_s"] / size, 1),
        "cpu_ms_per_unit": {k: round(1000 * v / size, 1) for k, v in run["cpu_s"].items()},
        "steps_ms": run["steps_ms"],
        "failed_units": run["failed"],
        **{k: v for k, v in run.items() if k.startswith("profile_")},
    }
    print(f"  {key}: {row['wall_ms_per_unit']} ms/unit wall", flush=True)
    return row


def cli_run(root: Path, units: int, concurrency: int) -> dict:
    """`flotilla run` of `units` independent no-op units on the embedded default (a temporary
    Prefect server of its own, no PREFECT_API_URL): every stage, merge and gate included."""
    spec_units = [{"id": f"n{i:04d}", "agent": {"command": "true"}} for i in range(units)]
    run = _through_cli(root, spec_units, concurrency, "cli")
    return {**run, "target_s": CLI_TARGET_S}


def chain_run(root: Path, length: int, concurrency: int) -> dict:
    """`flotilla run` of a chain: each unit depends on the one before and commits a file of its
    own, so it starts from its predecessor's branch, which holds every earlier unit's work.
    A unit deep in the chain should cost what the first one does."""
    spec_units = []
    for i in range(length):
        unit: dict = {"id": f"c{i:04d}", "agent": {"command": f"sh -c 'echo {i} > c{i:04d}.txt'"}}
        if i:
            unit["depends_on"] = [f"c{i - 1:04d}"]
        spec_units.append(unit)
    return _through_cli(root, spec_units, concurrency, "chain")


def _through_cli(root: Path, spec_units: list[dict], concurrency: int, label: str) -> dict:
    request, workflow = write_inputs(root, spec_units, max_concurrent=concurrency)
    target = make_target(root / "target")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    env["PREFECT_HOME"] = str(root / "prefect-home")
    flotilla = Path(sys.executable).with_name("flotilla")
    started = time.monotonic()
    with (root / "run.log").open("w") as log:
        done = subprocess.run(
            [str(flotilla), "run", str(request), "--repo", str(target), "--run-key", "cli"]
            + ["--workflow", str(workflow), "--store", str(root / "store")]
            + ["--workdir", str(root / "work")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=3600,
            check=False,
        )
    wall = time.monotonic() - started
    units = len(spec_units)
    print(f"  {label}-{units}: {wall:.1f} s (exit {done.returncode})", flush=True)
    return {
        "units": units,
        "concurrency": concurrency,
        "exit_code": done.returncode,
        "wall_s": round(wall, 1),
        "ms_per_unit": round(1000 * wall / units, 1),
    }


def section(result: dict) -> str:
    o, f = result["orders"], result.get("fixed_cost")
    sim, real = o["simulated"], o["real_time"]
    rows = [
        f"| {p} | {sim[p]['mean']:.3f} (max {sim[p]['max']:.3f}) | "
        + (f"{real[p]['mean']:.3f} (max {real[p]['max']:.3f})" if p in real else "-")
        + " |"
        for p in sim
    ]
    text = [
        BEGIN,
        f"Measured {result['when']} on {result['machine']}; raw numbers in "
        "`benchmarks/results/makespan.json`.",
        "",
        f"Makespan / lower bound, 200-unit random DAGs, limits {o['limits']}, "
        f"max_concurrent {o['max_concurrent']} (simulated: {sim['levels']['n']} seeds; "
        f"real time with `sleep` processes: {next(iter(real.values()))['n'] if real else 0} seeds):",
        "",
        "| Order | Simulated | Real time |",
        "|---|---|---|",
        *rows,
    ]
    if f:
        text += ["", "End to end: seed 0 through the implement stage with `sleep` agents:", ""]
        earlier = _before()
        for e in f["end_to_end"]:
            how = "as built (tag limits)" if e["tag_limits"] else "without tag limits"
            failed = f" ({len(e['failed_units'])} unit(s) failed)" if e["failed_units"] else ""
            old = earlier.get(("end_to_end", e["tag_limits"]))
            was = f" (before: {old['ratio']:.2f}×)" if old else ""
            text.append(
                f"- {how}: makespan {e['makespan_s']:.1f} s against a lower bound of "
                f"{e['lower_bound_s']:.2f} s = **{e['ratio']:.2f}×**{_spread(e)}{was}{failed}"
                f"{_floor(e)}"
            )
        before = _before()
        was = before.get("when", "before")
        text += [
            "",
            f"Fixed cost per unit, no-op agent (`true`), {f['concurrency']} units at once, beside "
            f"the same benchmark on {was} (before the fixed cost was cut):",
            "",
            "| Units | Tag limits | Wall ms/unit | CPU ms/unit: Flotilla process + git and agents "
            "+ Prefect server | Submitted → running, ms | Before: wall ms/unit | Before: CPU "
            "ms/unit |",
            "|---|---|---|---|---|---|---|",
        ]
        for tagged, rows in ((True, f["runs"]), (False, f["without_tag_limits"])):
            for row in rows:
                cpu = row["cpu_ms_per_unit"]
                old = before.get((row["units"], tagged))
                old_wall = f"{old['wall_ms_per_unit']:.0f}" if old else "-"
                old_cpu = f"{sum(old['cpu_ms_per_unit'].values()):.0f}" if old else "-"
                text.append(
                    f"| {row['units']} | {'yes' if tagged else 'no'} | "
                    f"{row['wall_ms_per_unit']:.0f} | {sum(cpu.values()):.0f} = "
                    f"{cpu['flotilla_process']:.0f} + {cpu['child_processes']:.0f} + "
                    f"{cpu['prefect_server']:.0f} | {row['steps_ms'].get('unit_queued', 0):.0f} | "
                    f"{old_wall} | {old_cpu} |"
                )
        text += ["", *_verdicts(f)]
        if (cli := result.get("cli")) is not None:
            met = "met" if cli["exit_code"] == 0 and cli["wall_s"] < cli["target_s"] else "missed"
            text.append(
                f"- {cli['units']} no-op units through `flotilla run` ({cli['concurrency']} at "
                f"once, temporary server, every stage): {cli['wall_s']:.0f} s, exit "
                f"{cli['exit_code']}, against a target of {cli['target_s']:.0f} s: {met}."
            )
        if (chain := result.get("cli_chain")) is not None:
            text.append(
                f"- A chain of {chain['units']} units through `flotilla run` (each depends on the "
                f"one before and commits a file, so it starts from its predecessor's branch): "
                f"{chain['wall_s']:.0f} s, {chain['ms_per_unit']:.0f} ms per unit, exit "
                f"{chain['exit_code']}."
            )
        at = {r["units"]: r for r in f["runs"]}.get(200)
        if at:
            steps = ", ".join(f"{k} {v:.0f}" for k, v in at["steps_ms"].items())
            text += [
                "",
                f"Mean ms per unit at 200 units with tag limits, by step (`agent` and `unit` are "
                f"task runs; worktree, commit and outputs run inside the unit's): {steps}.",
            ]
    text.append(END)
    return "\n".join(text) + "\n"


def _spread(e: dict) -> str:
    """The runs the median came from (rows of one run have none)."""
    ratios = e.get("ratios", [])
    if len(ratios) < 2:
        return ""
    return f", the median of {len(ratios)} runs ({min(ratios):.2f}–{max(ratios):.2f}×)"


def _floor(e: dict) -> str:
    """What the run's CPU alone allows on this machine's cores (rows from before it was kept
    have none)."""
    if "cpu_s" not in e:
        return ""
    cpu = e["cpu_s"]
    return (
        f"; its CPU, {sum(cpu.values()):.1f} s (Flotilla process {cpu['flotilla_process']:.1f}, "
        f"git and agents {cpu['child_processes']:.1f}, Prefect server "
        f"{cpu['prefect_server']:.1f}), allows no better than {e['cpu_floor_ratio']:.2f}× on "
        f"{e['cpus']} cores"
    )


def _before() -> dict:
    """The earlier results by (units, tag limits), plus "when" and the end-to-end ratio."""
    if not BEFORE.exists():
        return {}
    old = json.loads(BEFORE.read_text())
    f = old.get("fixed_cost", {})
    out: dict = {"when": old.get("when", "before")}
    for tagged, rows in ((True, f.get("runs", [])), (False, f.get("without_tag_limits", []))):
        for row in rows:
            out[(row["units"], tagged)] = row
    for e in f.get("end_to_end", []):
        out[("end_to_end", e["tag_limits"])] = e
    return out


def _verdicts(f: dict) -> list[str]:
    """The issue's targets against this run's numbers, one line each."""
    tagged = {r["units"]: r for r in f["runs"]}
    lines = []
    if 200 in tagged:
        wall = tagged[200]["wall_ms_per_unit"]
        met = "met" if wall < TARGET_MS else "missed"
        lines.append(
            f"- Fixed cost at 200 units with tag limits: {wall:.0f} ms/unit against a target "
            f"of {TARGET_MS:.0f}: {met}."
        )
    if 50 in tagged and 1000 in tagged:
        small = sum(tagged[50]["cpu_ms_per_unit"].values())
        large = sum(tagged[1000]["cpu_ms_per_unit"].values())
        growth = large / small
        met = "met" if growth < CPU_GROWTH else "missed"
        lines.append(
            f"- CPU per unit from 50 to 1000 units: {small:.0f} → {large:.0f} ms, "
            f"{growth:.2f}× against a limit of {CPU_GROWTH}×: {met}."
        )
    return lines


def write_doc(generated: str) -> None:
    write_block(HEADING, BEGIN, END, generated)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer seeds; no 1000-unit run")
    parser.add_argument("--no-pipeline", action="store_true", help="orders only (no Prefect)")
    parser.add_argument("--no-write", action="store_true", help="print only; write no files")
    args = parser.parse_args(argv)
    result: dict = {
        **run_header(),
    }
    print("Orders (makespan / lower bound):", flush=True)
    result["orders"] = orders(5 if args.quick else 20, 1 if args.quick else 3)
    if not args.no_pipeline:
        with (
            tempfile.TemporaryDirectory(prefix="flotilla-bench-") as tmp,
            pipeline.prefect_server(),
        ):
            print("Pipeline (end to end, fixed cost):", flush=True)
            tagged = [50, 200] if args.quick else [50, 200, 1000]
            repeats = 1 if args.quick else E2E_REPEATS
            result["fixed_cost"] = pipeline_runs(Path(tmp), [200], tagged, 8, repeats)
        if not args.quick:
            with tempfile.TemporaryDirectory(prefix="flotilla-bench-cli-") as tmp:
                print("Through the CLI:", flush=True)
                result["cli"] = cli_run(Path(tmp), 1000, 8)
            with tempfile.TemporaryDirectory(prefix="flotilla-bench-chain-") as tmp:
                result["cli_chain"] = chain_run(Path(tmp), CHAIN_LENGTH, 8)
    result["targets"] = {
        "ratio": TARGET_RATIO,
        "ms_per_unit_at_200": TARGET_MS,
        "cpu_growth_50_to_1000": CPU_GROWTH,
    }
    print(json.dumps(result, indent=2))
    if not args.no_write:
        save_results(RESULTS.stem, result)
        write_doc(section(result))
        print(f"Wrote {RESULTS.relative_to(ROOT)} and docs/performance.md.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
