"""Requests, runs and ledger polling shared by the durability, crash and growing-graph tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from flotilla.cli import main
from tasks.liveness import process_alive
from tasks.store import ArtifactStore, RunStore

AGENT = Path(__file__).with_name("durable_agents.py")
REPO_ROOT = Path(__file__).parents[2]


def durable_request(
    directory: Path,
    units: list[dict],
    markers: Path,
    *,
    feature_id: str = "durable",
    defaults: dict | None = None,
    agents: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """A request whose units run the counting agent; per-unit `env` tunes it.

    Units without their own agent use the named agent `durable` (so units proposed mid-run do
    too). Attempts are not retried unless a test says so.
    """
    python = sys.executable
    test = "cat checks/*.sh | sh"  # every unit's check; cheaper than a test framework
    spec_units = []
    for unit in units:
        unit = dict(unit)
        env = unit.pop("env", None)
        if env is not None:
            unit["agent"] = {
                "command": f"{python} {AGENT}",
                "env": {"MARKERS": str(markers), **env},
            }
        spec_units.append(unit)
    request = {
        "feature": {"id": feature_id, "title": "Durable feature", "description": "For tests."},
        "test": test,
        "agents": {
            "durable": {"command": f"{python} {AGENT}", "env": {"MARKERS": str(markers)}},
            **(agents or {}),
        },
        "defaults": {
            "agent": "durable",
            "test": test,
            "timeout_s": 120,
            "max_iterations": 1,
            "retry_policy": {"max_attempts": 1},
            **(defaults or {}),
        },
        "units": spec_units,
        **(extra or {}),
    }
    path = directory / "request.yaml"
    path.write_text(yaml.safe_dump(request, sort_keys=False))
    return path


def invocations(markers: Path) -> dict[str, int]:
    """unit -> how many times its agent was started."""
    counts: dict[str, int] = {}
    for marker in markers.glob("*.*"):
        unit = marker.name.rsplit(".", 1)[0]
        counts[unit] = counts.get(unit, 0) + 1
    return counts


def marker_pid(markers: Path, unit: str, n: int = 1) -> int:
    first = (markers / f"{unit}.{n}").read_text().splitlines()[0]
    return int(first.split()[1])


def cli(*args: str) -> int:
    return main(list(args))


def run_args(request: Path, target: Path, store: str, work: Path, key: str) -> list[str]:
    return [
        "run",
        str(request),
        "--repo",
        str(target),
        "--store",
        store,
        "--workdir",
        str(work),
        "--run-key",
        key,
    ]


def start_orchestrator(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`flotilla <args>` as its own process, talking to the test session's Prefect API."""
    from prefect.settings import PREFECT_API_URL

    child_env = {
        **os.environ,
        **env,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    handle = log.open("w")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "flotilla.cli", *args],
            cwd=REPO_ROOT,
            env=child_env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    finally:
        handle.close()


def wait_for(
    what: str, check: Callable[[], bool], timeout_s: float = 240.0, proc=None, log=None
) -> None:
    """Poll `check` until true; fail with `what` (and the child's log) after a generous limit."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"the orchestrator exited ({proc.returncode}) before {what}:\n"
                + (log.read_text() if log else "")
            )
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out waiting for {what}:\n" + (log.read_text() if log else "")
            )
        time.sleep(0.1)


def wait_for_pid(what: str, pid_file: Path, proc=None, log=None) -> int:
    """The pid an agent writes to `pid_file` once it has started: written, not just created."""
    wait_for(what, lambda: pid_file.exists() and pid_file.read_text().strip(), proc=proc, log=log)
    return int(pid_file.read_text())


def ledger_of(store: str, key: str) -> dict:
    return RunStore(ArtifactStore(store), key).read_ledger()


def kill_leftovers(pids: list[int]) -> None:
    """Never leave a process behind, whatever the test's outcome: an agent's whole group, its
    runner included (an agent is not a group leader; its runner is)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            group = os.getpgid(pid)
            if process_alive(pid) and group != os.getpgid(0):
                os.killpg(group, signal.SIGKILL)
