"""The implement stage for real: git worktrees, commits, the store, Prefect tasks and tag limits.

Used by `benchmarks.makespan` for the end-to-end makespan (sleep agents) and the fixed cost per
unit (no-op agents). Runs inside a temporary Prefect server (`prefect_test_harness`), like the
tests, so `make bench` needs nothing running.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from statistics import mean

import yaml

from deployments.prefect_server import start_temporary_servers_here
from flotilla.server_settings import use_server_settings

DEFAULT_WORKFLOW = Path(__file__).resolve().parents[1] / "flotilla" / "default_workflow.yaml"
STEPS = ("agent", "tests")  # the steps with task runs of their own: `<unit> · agent #1`


@contextmanager
def prefect_server() -> Iterator[None]:
    use_server_settings()
    start_temporary_servers_here()
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        prefect_test_harness(server_startup_timeout=180),
    ):
        yield


def make_target(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "README.md").write_text("bench\n")
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "B",
        "GIT_AUTHOR_EMAIL": "b@x",
        "GIT_COMMITTER_NAME": "B",
    }
    env["GIT_COMMITTER_EMAIL"] = "b@x"
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-qm", "base"]):
        subprocess.run(["git", "-C", str(path), *args], check=True, env=env)
    return path


def context_for(
    root: Path, units: list[dict], limits: dict[str, int], max_concurrent: int, key: str
):
    """A RunContext for `units` (each with its own `agent`) against a fresh target repository."""
    from flows.feature import build_context

    root.mkdir(parents=True, exist_ok=True)
    target = make_target(root / "target")
    request = root / "request.yaml"
    request.write_text(
        yaml.safe_dump(
            {
                "feature": {"id": "bench", "title": "Bench"},
                "defaults": {"timeout_s": 600, "max_iterations": 1},
                "resources": limits,
                "units": units,
            }
        )
    )
    workflow = yaml.safe_load(DEFAULT_WORKFLOW.read_text())
    stage = workflow["workflow"]["stages"][1]
    stage["max_concurrent"] = max_concurrent
    stage["retry_policy"] = {"max_attempts": 1}
    spec = root / "workflow.yaml"
    spec.write_text(yaml.safe_dump(workflow))
    return build_context(
        str(request), str(target), "main", str(spec), str(root / "store"), key, str(root / "work")
    )


def run_implement(ctx, max_concurrent: int, profile: bool = False, limits: bool = True) -> dict:
    """Run the implement stage once; wall and CPU seconds, step times, optional profile."""
    from prefect.task_runners import ThreadPoolTaskRunner

    from flotilla.results import UnitStatus
    from flows.implement import implement
    from tasks.resources import apply_run_resources
    from tasks.stage_inputs import RunRef, hand_over
    from tasks.units import workspace_for

    base = workspace_for(ctx).prepare()
    if limits:
        apply_run_resources(ctx)
    units = list(ctx.request.units)
    runner = ThreadPoolTaskRunner(max_workers=max_concurrent)
    server = _server_pid()
    cpu_before, server_before, runners_before = _cpu(), _proc_cpu(server), _runner_server_cpu()
    profiles: list[cProfile.Profile] = []
    main_thread = cProfile.Profile()
    if profile:
        threading.setprofile(_thread_profiler(profiles))
        main_thread.enable()
    started = time.monotonic()
    hand_over(ctx.run_key, "units", units)
    state = _in_flow(runner, lambda: implement.fn(RunRef.of(ctx), base))(return_state=True)
    wall = time.monotonic() - started
    if profile:
        main_thread.disable()
        threading.setprofile(None)
    cpu_after, server_after, runners_after = _cpu(), _proc_cpu(server), _runner_server_cpu()
    result = state.result(raise_on_failure=False)  # Failed when a unit failed
    failed = {
        u: r.error[:300] for u, r in result.records.items() if r.status != UnitStatus.SUCCEEDED
    }
    out = {
        "units": len(units),
        "failed": failed,
        "wall_s": wall,
        "cpu_s": {
            "flotilla_process": cpu_after[0] - cpu_before[0],
            "child_processes": cpu_after[1] - cpu_before[1] + runners_after - runners_before,
            "prefect_server": server_after - server_before,
        },
        "steps_ms": {
            **_step_times(state.state_details.flow_run_id, len(units) - len(failed)),
            **_plumbing_times(list(result.records.values())),
        },
    }
    if profile:
        out["profile_workers"] = _summarise(profiles)
        out["profile_scheduler"] = _summarise([main_thread])
    return out


def drop_limits(classes: list[str]) -> None:
    """Delete the classes' tag limits, so units run without any slot to acquire."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    from tasks.resources import tag_for

    with get_client(sync_client=True) as client:
        for name in classes:
            with suppress(ObjectNotFound):
                client.delete_concurrency_limit_by_tag(tag_for(name))


def _in_flow(runner, body):
    """A flow without parameters around `body`. The implement flow itself takes the whole run
    context as parameters, which Prefect refuses above 512 KB (about 1000 small units)."""
    from prefect import flow

    @flow(name="bench-implement", task_runner=runner, persist_result=False)
    def bench_implement():
        return body()

    return bench_implement


def _cpu() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def _server_pid() -> int | None:
    """The Prefect server the harness started (a child process running uvicorn)."""
    mine = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == mine and b"uvicorn" in cmdline:
            return int(entry.name)
    return None


def _proc_cpu(pid: int | None, reaped: bool = False) -> float:
    """CPU seconds of process `pid`, with those of the children it reaped when `reaped`."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(f) for f in fields[11 : 15 if reaped else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def _runner_server_cpu() -> float:
    """The reaper server and the runners it forked (tasks/spawner.py): not our children's
    CPU in getrusage until the server exits, so read from /proc while it runs."""
    from tasks import spawner

    live = spawner._server
    return _proc_cpu(live.process.pid, reaped=True) if live else 0.0


def _step_times(flow_run_id, units: int) -> dict[str, float]:
    """Mean milliseconds per unit: each step task, the whole unit task, and the rest of it.

    The server records task runs from events, a moment after they happen: wait for all units.
    """
    deadline = time.monotonic() + 120
    while True:
        runs = _task_runs(flow_run_id)
        finished = [r for r in runs if _step(r.name) == "unit" and r.end_time]
        if len(finished) >= units or time.monotonic() > deadline:
            break
        time.sleep(1)
    spans: dict[str, list[float]] = {}
    queued: list[float] = []
    for run in runs:
        if not (run.start_time and run.end_time):
            continue
        name = _step(run.name)
        spans.setdefault(name, []).append((run.end_time - run.start_time).total_seconds())
        if name == "unit" and run.expected_start_time:
            queued.append((run.start_time - run.expected_start_time).total_seconds())
    times = {name: 1000 * mean(values) for name, values in spans.items()}
    in_steps = sum(v for k, v in times.items() if k != "unit")
    times["unit_outside_steps"] = times.get("unit", 0.0) - in_steps
    times["unit_queued"] = 1000 * mean(queued) if queued else 0.0
    return {k: round(v, 1) for k, v in sorted(times.items())}


def _plumbing_times(records: list) -> dict[str, float]:
    """Mean milliseconds per unit of the steps that run inside the unit's task (the ledger's
    `steps_s`), for the units that ran them."""
    spans: dict[str, list[float]] = {}
    for record in records:
        for step, seconds in record.steps_s.items():
            spans.setdefault(step, []).append(seconds)
    return {step: round(1000 * mean(v), 1) for step, v in sorted(spans.items())}


def _task_runs(flow_run_id) -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    runs: list = []
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}),
                limit=200,
                offset=len(runs),
            )
            runs += page
            if len(page) < 200:
                return runs


def _step(name: str) -> str:
    step = name.partition(" · ")[2]
    if step == "unit":
        return "unit"
    return next((s for s in STEPS if step.startswith(s)), "other")


def _thread_profiler(profiles: list[cProfile.Profile]):
    """Start a profiler in every thread started from now on (the task runner's workers)."""

    def start(*_args) -> None:
        sys.setprofile(None)
        profiler = cProfile.Profile()
        profiles.append(profiler)
        profiler.enable()

    return start


def _summarise(profiles: list[cProfile.Profile], top: int = 30) -> list[str]:
    """Functions with the most cumulative time, summed over the worker threads."""
    stream = io.StringIO()
    stats = None
    for profiler in profiles:
        profiler.disable()
        stats = pstats.Stats(profiler, stream=stream) if stats is None else stats
        if stats is not None and profiler is not profiles[0]:
            stats.add(profiler)
    if stats is None:
        return []
    stats.sort_stats("cumulative").print_stats(top)
    lines = [line.rstrip() for line in stream.getvalue().splitlines()]
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    return [line for line in lines[start:] if line.strip()]
