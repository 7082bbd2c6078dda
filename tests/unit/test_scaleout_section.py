"""The scale-out benchmark's block of docs/performance.md, rendered from a results dict."""

from __future__ import annotations

from benchmarks.scaleout import BEGIN, END, section


def pool_row(workers: int, makespan: float, speedup: float) -> dict:
    return {
        "workers": workers,
        "slots": workers,
        "lower_bound_s": 60 / workers,
        "makespan_s": makespan,
        "cli_wall_s": makespan + 10,
        "speedup": speedup,
        "speedup_cli": speedup,
        "exit_code": 0,
        "mean_s": {"scheduled_to_pending": 5.0, "pending_to_running": 3.2, "running_to_end": 4.1},
        "worker_cpu_s_per_flow_run": 3.5,
    }


RESULT = {
    "when": "2026-11-29 06:00 UTC",
    "machine": "Linux, 2 CPUs",
    "cpus": 2,
    "scale_out": {
        "units": 30,
        "agent": "sleep 2",
        "worker_limit": 1,
        "database": "sqlite",
        "import_s": 1.8,
        "runs": [pool_row(1, 240.0, 1.0), pool_row(2, 130.0, 1.85), pool_row(3, 100.0, 2.4)],
    },
    "databases": {
        "units": 200,
        "concurrency": 8,
        "agent": "true",
        "runs": [
            {"database": "sqlite", "wall_s": 300.0, "ms_per_unit": 1500, "implement_s": 280.0}
            | {"implement_ms_per_unit": 1400, "server_cpu_s": 90.0, "exit_code": 0}
            | {"database_locked_errors": 12, "api_unreachable_s": 0},
            {"database": "postgres", "wall_s": 250.0, "ms_per_unit": 1250, "implement_s": 230.0}
            | {"implement_ms_per_unit": 1150, "server_cpu_s": 80.0, "exit_code": 0},
        ],
    },
}


def test_the_section_has_a_row_per_worker_count_and_per_database() -> None:
    text = section(RESULT)
    assert text.startswith(BEGIN) and text.rstrip().endswith(END)
    assert "| 1 | 1 | 60 | 240.0 | 1.00× | 250.0 | 1.00× |" in text
    assert "| 3 | 3 | 20 | 100.0 | 2.40× | 110.0 | 2.40× |" in text
    assert "| 2 | 5.0 | 3.2 | 4.1 | 3.5 | 0 | 0 |" in text
    assert "| sqlite | 300.0 | 1500 | 280.0 | 1400 | 90.0 | 12 | 0 | 0 |" in text
    assert "| postgres | 250.0 | 1250 | 230.0 | 1150 | 80.0 | 0 | 0 | 0 |" in text


def test_a_missed_target_is_said_with_the_cpu_each_flow_run_costs() -> None:
    text = section(RESULT)
    assert "at least 2.5× with 3 workers: **missed** (2.40×)" in text
    assert "30 flow runs need at least 52 s of CPU" in text  # 30 × 3.5 s / 2 cores


def test_where_the_cpu_went_has_a_row_per_worker_count_when_measured() -> None:
    assert "Cores busy" not in section(RESULT)  # results from before it was measured
    cpu = {"workers": 90.0, "prefect_server": 30.0, "postgres": 4.0, "orchestrator": 6.0}
    runs = [{**row, "cpu_s": cpu} for row in RESULT["scale_out"]["runs"]]
    text = section({**RESULT, "scale_out": {**RESULT["scale_out"], "runs": runs}})
    assert "| 3 | 90.0 | 30.0 | 4.0 | 6.0 | 130.0 | 1.18 |" in text  # 130 s in 110 s of wall


def test_a_result_without_the_database_part_renders_the_scale_out_only() -> None:
    text = section({k: v for k, v in RESULT.items() if k != "databases"})
    assert "Prefect database" not in text and "| 3 | 3 | 20 |" in text
