"""The makespan benchmark's block of docs/performance.md and its rows in "At a glance",
rendered from a results dict."""

from __future__ import annotations

import copy

from benchmarks.makespan import section
from benchmarks.summary import rows

ORDER = {"mean": 1.01, "max": 1.08, "min": 1.0, "n": 20}
END_TO_END = {
    "tag_limits": True,
    "lower_bound_s": 5.89,
    "makespan_s": 20.8,
    "ratio": 3.54,
    "cpu_s": {"flotilla_process": 12.1, "child_processes": 9.0, "prefect_server": 11.4},
    "cpu_floor_ratio": 2.76,
    "cpus": 2,
    "steps_ms": {},
    "failed_units": {},
}
RESULT = {
    "when": "2026-12-07 13:29 UTC",
    "machine": "Linux, 2 CPUs",
    "orders": {
        "limits": {"light": 6, "standard": 3, "heavy": 2},
        "max_concurrent": 16,
        "simulated": {"flotilla": ORDER, "levels": ORDER},
        "real_time": {"flotilla": ORDER, "levels": ORDER},
    },
    "fixed_cost": {
        "concurrency": 8,
        "end_to_end": [END_TO_END],
        "runs": [],
        "without_tag_limits": [],
    },
}


def test_the_end_to_end_line_says_how_close_the_cpu_alone_allows() -> None:
    text = section(RESULT)

    line = next(t for t in text.splitlines() if t.startswith("- as built (tag limits)"))
    assert "makespan 20.8 s against a lower bound of 5.89 s = **3.54×**" in line
    assert (
        "its CPU, 32.5 s (Flotilla process 12.1, git and agents 9.0, Prefect server 11.4)" in line
    )
    assert line.endswith("allows no better than 2.76× on 2 cores")


def test_an_end_to_end_row_from_before_cpu_was_kept_renders_without_it() -> None:
    older = copy.deepcopy(RESULT)
    for key in ("cpu_s", "cpu_floor_ratio", "cpus"):
        del older["fixed_cost"]["end_to_end"][0][key]

    line = next(t for t in section(older).splitlines() if t.startswith("- as built"))
    assert line.endswith("= **3.54×** (before: 33.99×)")  # benchmarks/results/makespan-before.json
    assert "CPU" not in line


def test_the_summary_row_of_the_dag_names_the_cpu_floor() -> None:
    (dag,) = [r for r in rows(RESULT, {}, {}) if r[0].startswith("seed 0's 200-unit DAG")]

    assert dag[1] == "3.54× (20.8 s / 5.89 s; its CPU alone allows no better than 2.76× on 2 cores)"
    assert dag[2] == "≤ 1.5×"


def test_the_chain_through_the_cli_has_a_line_and_a_summary_row() -> None:
    result = {
        **RESULT,
        "cli_chain": {
            "units": 300,
            "concurrency": 8,
            "exit_code": 0,
            "wall_s": 80.7,
            "ms_per_unit": 269.0,
        },
    }

    line = next(t for t in section(result).splitlines() if t.startswith("- A chain of 300"))
    assert line.endswith("starts from its predecessor's branch): 81 s, 269 ms per unit, exit 0.")
    (row,) = [r for r in rows(result, {}, {}) if "chain" in r[0]]
    assert row[:3] == (
        "a 300-unit chain through `flotilla run`, a commit per unit",
        "81 s, 269 ms/unit (exit 0)",
        "",
    )


def test_repeated_end_to_end_runs_report_their_median_and_range() -> None:
    result = copy.deepcopy(RESULT)
    result["fixed_cost"]["end_to_end"][0]["ratios"] = [3.9, 3.54, 2.8]

    line = next(t for t in section(result).splitlines() if t.startswith("- as built"))
    assert "= **3.54×**, the median of 3 runs (2.80–3.90×) (before: 33.99×);" in line
    (dag,) = [r for r in rows(result, {}, {}) if r[0].startswith("seed 0's 200-unit DAG")]
    assert dag[1].startswith("3.54× (20.8 s / 5.89 s, the median of 3 runs: 2.80–3.90×; its CPU")
