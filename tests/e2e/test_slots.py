"""No leaked slots: a run killed while its unit holds a class's only slot does not wedge the class.

The orchestrator and its temporary Prefect server die together (SIGKILL to their process group),
as they do on a `kill -9`; the server's database persists in the test's own PREFECT_HOME, with
the slot still counted as taken. The next run reclaims it, and `flotilla slots` shows it all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from prefect import get_client

from flotilla.cli import main
from tasks.resources import ensure_resource_limits
from tasks.slots import RunSlots, SlotHolder, SlotRegistry, read_usage
from tests.e2e.durability_helpers import (
    REPO_ROOT,
    durable_request,
    kill_leftovers,
    marker_pid,
    run_args,
    wait_for,
)
from tests.e2e.helpers import make_target


def embedded_env(prefect_home: Path) -> dict[str, str]:
    """A `flotilla` process with its own temporary server whose database lives in prefect_home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FLOTILLA_"))}
    return {
        **env,
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    }


def flotilla(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flotilla.cli", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def solo_request(directory: Path, feature_id: str, units: list[dict], markers: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    solo = [{**u, "resources": "solo"} for u in units]
    return durable_request(
        directory, solo, markers, feature_id=feature_id, extra={"resources": {"solo": 1}}
    )


def test_a_run_killed_holding_the_only_slot_does_not_wedge_its_class(tmp_path):
    env = embedded_env(tmp_path / "prefect-home")
    markers = tmp_path / "markers"
    target = make_target(tmp_path / "target")
    store = str(tmp_path / "store")
    first = solo_request(
        tmp_path / "first",
        "first",
        [{"id": "holder", "env": {"HOLD_FILE": "/nonexistent"}}],
        markers,
    )
    log = tmp_path / "first.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flotilla.cli",
                *run_args(first, target, store, tmp_path / "w1", "first"),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    agents: list[int] = []
    try:
        wait_for(
            "the solo unit's agent to run",
            lambda: (markers / "holder.1").exists(),
            proc=proc,
            log=log,
        )
        agents.append(marker_pid(markers, "holder"))
        os.killpg(proc.pid, signal.SIGKILL)  # the orchestrator and its temporary server
        proc.wait()

        shown = flotilla(env, "slots")
        assert shown.returncode == 0, shown.stderr
        solo_line = next(line for line in shown.stdout.splitlines() if line.startswith("solo"))
        assert solo_line.split()[1:3] == ["1", "1"]  # limit 1, one slot taken
        assert "run first unit holder" in solo_line and "gone" in solo_line
        assert "Runs gone but holding slots: first." in shown.stdout

        second = solo_request(
            tmp_path / "second",
            "second",
            [{"id": "one", "env": {}}, {"id": "two", "env": {}}],
            markers,
        )
        done = flotilla(env, *run_args(second, target, store, tmp_path / "w2", "second"))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Reclaimed a resource slot" in done.stdout + done.stderr

        after = flotilla(env, "slots")
        solo_line = next(line for line in after.stdout.splitlines() if line.startswith("solo"))
        assert solo_line.split()[1:4] == ["1", "0", "-"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        kill_leftovers(agents)


def test_slots_reclaim_frees_the_lease_of_a_dead_run(tmp_path, capsys):
    klass = f"probe-{uuid.uuid4().hex[:6]}"
    ensure_resource_limits({klass: 1})
    registry = SlotRegistry()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    holder = SlotHolder(run_key="gone-run", pid=int(dead.stdout), host=os.uname().nodename)
    with get_client(sync_client=True) as client:
        assert RunSlots(client, holder, registry, None).try_acquire(klass, "u1")
        assert not RunSlots(client, holder, registry, None).try_acquire(
            klass, "u2"
        )  # full: no wait
        assert read_usage(client, klass).active == 1

        assert main(["slots", "--reclaim"]) == 0

        assert read_usage(client, klass).active == 0
    out = capsys.readouterr().out
    assert f"slot of class {klass} held by unit u1 of run gone-run" in out
    assert "released" in out
    assert not registry.path("gone-run").exists()


def test_a_finished_units_slot_passes_to_the_next_unit_of_its_class(tmp_path):
    klass, other = f"pass-{uuid.uuid4().hex[:6]}", f"other-{uuid.uuid4().hex[:6]}"
    ensure_resource_limits({klass: 1, other: 1})
    holder = SlotHolder(run_key=f"passing-{uuid.uuid4().hex[:6]}", pid=os.getpid(), host="here")
    registry = SlotRegistry(tmp_path / "slots")
    with get_client(sync_client=True) as client:
        slots = RunSlots(client, holder, registry, None)
        assert slots.try_acquire(klass, "first")
        lease = holder.slots["first"].lease_id

        slots.park("first")  # `first` finished; `second` is ready in the same class
        assert slots.try_acquire(klass, "second")
        assert holder.slots["second"].lease_id == lease  # taken over: no new lease
        assert "first" not in holder.slots
        assert registry.holders()[0].slots["second"].unit_id == "second"
        assert read_usage(client, klass).active == 1

        slots.park("second")  # a unit of another class is ready: it gets a slot of its own
        assert slots.try_acquire(other, "third")
        assert holder.slots["third"].lease_id != lease
        slots.release_parked()  # and the parked slot goes back before the loop waits
        assert read_usage(client, klass).active == 0
        slots.release_all()
        assert read_usage(client, other).active == 0
