"""The headline numbers of one `make bench`, side by side, from the results files it wrote.

Reads benchmarks/results/makespan.json, scaleout.json and merge.json (each written by its own
module earlier in the same `make bench`), prints one table, and writes it to the "At a glance"
block of docs/performance.md. Nothing here measures: every number comes from those files.
Run: `make bench` (last step) or `.venv/bin/python -m benchmarks.summary [--no-write]`.
"""

from __future__ import annotations

import argparse
import json
import sys

from benchmarks.docblock import RESULTS, write_block

HEADING = "## At a glance"
BEGIN, END = "<!-- summary:begin -->", "<!-- summary:end -->"


def load(name: str) -> dict:
    """A results file, or {} when that benchmark has not run here."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def rows(makespan: dict, scaleout: dict, merge: dict) -> list[tuple[str, str, str, str]]:
    """(measure, result, goal, measured when) for every headline number there is."""
    out: list[tuple[str, str, str, str]] = []
    fixed = makespan.get("fixed_cost", {})
    when = makespan.get("when", "")
    for row in fixed.get("runs", []):
        cpu = sum(row["cpu_ms_per_unit"].values())
        goal = "< 100 ms at 200" if row["units"] == 200 else ""
        out.append(
            (
                f"fixed cost, {row['units']} no-op units, tag limits on",
                f"{row['wall_ms_per_unit']:.0f} ms/unit wall, {cpu:.0f} ms/unit CPU",
                goal,
                when,
            )
        )
    by_size = {r["units"]: r for r in fixed.get("runs", [])}
    if 50 in by_size and 1000 in by_size:
        small = sum(by_size[50]["cpu_ms_per_unit"].values())
        large = sum(by_size[1000]["cpu_ms_per_unit"].values())
        out.append(("CPU per unit, 1000 units / 50 units", f"{large / small:.2f}×", "< 1.5×", when))
    if cli := makespan.get("cli"):
        out.append(
            (
                f"{cli['units']} no-op units through `flotilla run`, every stage",
                f"{cli['wall_s']:.0f} s (exit {cli['exit_code']})",
                f"< {cli['target_s']:.0f} s",
                when,
            )
        )
    if chain := makespan.get("cli_chain"):
        out.append(
            (
                f"a {chain['units']}-unit chain through `flotilla run`, a commit per unit",
                f"{chain['wall_s']:.0f} s, {chain['ms_per_unit']:.0f} ms/unit "
                f"(exit {chain['exit_code']})",
                "",
                when,
            )
        )
    for e in fixed.get("end_to_end", []):
        if e["tag_limits"]:
            floor = (
                f"; its CPU alone allows no better than {e['cpu_floor_ratio']:.2f}× on "
                f"{e['cpus']} cores"
                if "cpu_floor_ratio" in e
                else ""
            )
            ratios = e.get("ratios", [])
            spread = (
                f", the median of {len(ratios)} runs: {min(ratios):.2f}–{max(ratios):.2f}×"
                if len(ratios) > 1
                else ""
            )
            out.append(
                (
                    "seed 0's 200-unit DAG, `sleep` agents: makespan / lower bound",
                    f"{e['ratio']:.2f}× ({e['makespan_s']:.1f} s / {e['lower_bound_s']:.2f} s"
                    f"{spread}{floor})",
                    "≤ 1.5×",
                    when,
                )
            )
    simulated = makespan.get("orders", {}).get("simulated", {}).get("flotilla")
    if simulated:
        out.append(
            (
                "the scheduler's order, simulated (20 DAGs): makespan / lower bound",
                f"{simulated['mean']:.3f}× (max {simulated['max']:.3f}×)",
                "≤ 1.05×",
                when,
            )
        )
    pool = scaleout.get("scale_out", {})
    for run in pool.get("runs", []):
        out.append(
            (
                f"scale-out: {pool['units']} units of `{pool['agent']}` on {run['workers']} "
                f"worker(s) ({pool.get('database', 'sqlite')})",
                f"{run['makespan_s']:.1f} s, {run['speedup']:.2f}× of 1 worker",
                "≥ 2.5× with 3" if run["workers"] == 3 else "",
                scaleout.get("when", ""),
            )
        )
    databases = scaleout.get("databases", {})
    for db in databases.get("runs", []):
        out.append(
            (
                f"{databases['units']} no-op units through `flotilla run`, server on "
                f"{db['database']}",
                f"{db['wall_s']:.1f} s, {db['ms_per_unit']:.0f} ms/unit"
                + (f" (exit {db['exit_code']})" if db.get("exit_code") else ""),
                "",
                scaleout.get("when", ""),
            )
        )
    if "ratio_merge" in merge:
        out.append(
            (
                "merge of 100 unit branches: plumbing against checkout-and-merge",
                f"{merge['ratio_merge']:.1f}× faster",
                "≥ 5×",
                merge.get("when", "")[:16].replace("T", " "),
            )
        )
    return out


def section(table: list[tuple[str, str, str, str]]) -> str:
    lines = [
        BEGIN,
        "From the results files of the last `make bench` (`benchmarks/results/*.json`); each "
        "module's own section below has the detail.",
        "",
        "| Measure | Result | Goal | Measured |",
        "|---|---|---|---|",
        *(f"| {m} | {r} | {g or '-'} | {w} |" for m, r, g, w in table),
        END,
    ]
    return "\n".join(lines) + "\n"


def write_doc(generated: str) -> None:
    write_block(HEADING, BEGIN, END, generated)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="print only; write no files")
    args = parser.parse_args(argv)
    table = rows(load("makespan"), load("scaleout"), load("merge"))
    width = max((len(m) for m, *_ in table), default=10)
    for measure, result, goal, _ in table:
        print(f"{measure:<{width}}  {result}" + (f"  (goal {goal})" if goal else ""))
    if not args.no_write:
        write_doc(section(table))
        print("Wrote the 'At a glance' block of docs/performance.md.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
