"""A worker's flow runs fork from its engine server instead of importing Prefect anew, and the
command the worker started still behaves as the flow run's process: the engine gets its output
and signals, ends the way it ends, and dies with it. The engine here is a stand-in steered by
argv (tests/integration/engine_stand_in.py); tests/e2e/test_warm_engine.py runs real flow runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from deployments.warm_engine import servers_of, socket_path
from tests.integration.procfs import alive, children_of

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

ROOT = Path(__file__).resolve().parents[2]
STAND_IN = "tests.integration.engine_stand_in"
STAND_IN_FILE = ROOT / "tests" / "integration" / "engine_stand_in.py"


def wait_until(condition, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def servers_at(path: str, owner: int | None = None) -> list[psutil.Process]:
    """The engine servers listening (or about to) at `path`; not the engines they forked."""
    servers = [psutil.Process(pid) for pid in servers_of(owner or os.getpid())]
    return [server for server in servers if path in server.cmdline()]


class Worker:
    """This test process as the worker: it starts the commands, so it owns their server."""

    def __init__(self, tmp_path: Path):
        self.env = {**os.environ, "FLOTILLA_TEST_WORKER": uuid.uuid4().hex, "PYTHONPATH": str(ROOT)}
        self.path = socket_path(self.env, os.getpid())
        self.cwd = tmp_path

    def serve(self, engine: str = STAND_IN) -> subprocess.Popen:
        server = subprocess.Popen(
            [sys.executable, "-m", "deployments.warm_engine", "--serve", self.path,
             str(os.getpid()), engine],
            env=self.env, cwd="/", start_new_session=True,
        )  # fmt: skip
        assert wait_until(lambda: Path(self.path).exists() or server.poll() is not None, 60)
        return server

    def command(self, *argv: str, **env: str) -> subprocess.Popen:
        """What a process worker starts for a flow run: the `unit` deployment's command."""
        return subprocess.Popen(
            [sys.executable, "-m", "deployments.warm_engine", *argv],
            env={**self.env, **env}, cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True,
        )  # fmt: skip


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    worker = Worker(tmp_path)
    yield worker
    for server in servers_at(worker.path):
        server.kill()
    Path(worker.path).unlink(missing_ok=True)
    Path(worker.path).with_suffix(".log").unlink(missing_ok=True)


def test_a_flow_run_is_forked_from_the_server_with_the_commands_output_env_and_directory(
    worker: Worker,
) -> None:
    server = worker.serve()
    command = worker.command("report", PREFECT__FLOW_RUN_ID="run-1")
    out, err = command.communicate(timeout=30)
    assert command.returncode == 0, err
    seen = json.loads(out)
    assert seen["ppid"] == server.pid, "the engine is the server's child, not a new interpreter"
    assert seen["pid"] != command.pid
    assert seen["sid"] == seen["pid"], "the engine leads a session of its own"
    assert seen["cwd"] == str(worker.cwd)
    assert seen["run_id"] == "run-1", "per-run variables reach the engine"
    assert seen["argv"] == ["report"]
    assert err == "to stderr\n"

    again = worker.command("report", PREFECT__FLOW_RUN_ID="run-2")
    out, _ = again.communicate(timeout=30)
    assert json.loads(out)["ppid"] == server.pid, "one server serves every flow run of a worker"
    assert json.loads(out)["run_id"] == "run-2"


def test_the_command_ends_as_its_engine_did(worker: Worker) -> None:
    worker.serve()
    exited = worker.command("exit", "3")
    exited.communicate(timeout=30)
    assert exited.returncode == 3

    killed = worker.command("die", str(int(signal.SIGKILL)))
    killed.communicate(timeout=30)
    assert killed.returncode == -signal.SIGKILL


def test_a_sigterm_to_the_command_reaches_the_engine(worker: Worker) -> None:
    worker.serve()
    command = worker.command("wait")
    helper = int(command.stdout.readline().split()[2])
    command.send_signal(signal.SIGTERM)
    out, _ = command.communicate(timeout=30)
    os.kill(helper, signal.SIGKILL)  # the stand-in ends on SIGTERM without ending it
    assert out == "got SIGTERM\n"
    assert command.returncode == 7, "the engine's own answer to SIGTERM decides the exit code"


def test_the_engines_signals_reach_its_main_thread(worker: Worker) -> None:
    """The engine's watcher thread blocks every signal: were the kernel to give it the SIGTERM
    the command passes on, the engine's main thread would sleep on, the signal unhandled."""
    worker.serve()
    command = worker.command("wait")
    engine, helper = map(int, command.stdout.readline().split()[1:])
    try:
        blocked = {
            int(tid): _blocked_signals(engine, int(tid))
            for tid in os.listdir(f"/proc/{engine}/task")
        }
    finally:
        command.kill()
        os.kill(helper, signal.SIGKILL)
    assert signal.SIGTERM not in blocked.pop(engine), "the main thread takes the signals"
    assert blocked, "the engine watches its command from a thread of its own"
    for tid, mask in blocked.items():
        assert {signal.SIGTERM, signal.SIGINT, signal.SIGHUP} <= mask, f"thread {tid} takes signals"


def _blocked_signals(pid: int, tid: int) -> set[int]:
    status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    mask = int(
        next(line.split()[1] for line in status.splitlines() if line.startswith("SigBlk:")), 16
    )
    return {number for number in range(1, 65) if mask >> (number - 1) & 1}


def test_killing_the_command_kills_its_engine_and_what_the_engine_started(worker: Worker) -> None:
    worker.serve()
    command = worker.command("wait")
    engine, helper = map(int, command.stdout.readline().split()[1:])
    assert alive(engine) and alive(helper)
    command.kill()
    command.wait(timeout=10)
    assert wait_until(lambda: not alive(engine), 10), "the engine outlived the killed command"
    assert wait_until(lambda: not alive(helper), 10), "a process of the engine's outlived it"


def test_the_warm_engine_can_be_turned_off(worker: Worker) -> None:
    command = worker.command(FLOTILLA_WARM_ENGINE="0")
    _, err = command.communicate(timeout=120)
    assert "Invalid flow run id" in err
    off = socket_path({**worker.env, "FLOTILLA_WARM_ENGINE": "0"}, os.getpid())
    assert not Path(off).exists() and not servers_at(off)


def test_a_command_that_dies_before_its_answer_leaves_the_server_serving(worker: Worker) -> None:
    server = worker.serve()
    body = json.dumps({"argv": ["exit", "0"], "env": worker.env, "cwd": str(worker.cwd)}).encode()
    with open(os.devnull, "rb") as null, socket.socket(socket.AF_UNIX) as hasty:
        hasty.connect(worker.path)
        socket.send_fds(hasty, [struct.pack("!Q", len(body))], [null.fileno()] * 3)
        hasty.sendall(body)
    # the server takes connections in order: once it has served this one, it forked the hasty one's
    command = worker.command("report")
    out, _ = command.communicate(timeout=30)
    assert json.loads(out)["ppid"] == server.pid, "the server still serves"
    # the engine the hasty one asked for ends (by itself, or on seeing the command gone)
    assert wait_until(lambda: not [p for p in children_of(server.pid) if alive(p)], 30)


def test_without_a_server_the_command_starts_one_and_waits_for_it(worker: Worker) -> None:
    command = worker.command()
    _, err = command.communicate(timeout=120)
    assert command.returncode == 1
    assert "Invalid flow run id" in err, "prefect.engine ran, and found no flow run id"
    [server] = servers_at(worker.path)
    assert server.ppid() != command.pid, "the server is not the command's child"
    assert server.cpu_times().children_user > 0, "the engine was forked from the server"


def test_while_a_server_is_still_starting_other_commands_run_cold(worker: Worker) -> None:
    """One slow to import (a busy machine) must not have every new unit start another."""
    slow = subprocess.Popen(["sleep", "60"])  # stands for the server that is still importing
    try:
        Path(worker.path).parent.mkdir(mode=0o700, exist_ok=True)
        Path(f"{worker.path}.starting").write_text(str(slow.pid))
        command = worker.command()
        _, err = command.communicate(timeout=45)
        assert "Invalid flow run id" in err, "the engine ran cold"
        assert not servers_at(worker.path), "no second server was started"
    finally:
        slow.kill()
        slow.wait()
        Path(f"{worker.path}.starting").unlink(missing_ok=True)


def test_a_server_that_cannot_start_leaves_the_command_to_run_cold_at_once(
    worker: Worker, tmp_path: Path
) -> None:
    broken = tmp_path / "broken" / "flows"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("")
    (broken / "unit.py").write_text("raise ImportError('broken on purpose')\n")
    worker.env["PYTHONPATH"] = f"{broken.parent}{os.pathsep}{ROOT}"
    worker.path = socket_path(worker.env, os.getpid())
    command = worker.command()
    _, err = command.communicate(timeout=45)  # the command waits up to 60 s for a slow server
    assert "Invalid flow run id" in err, "the engine ran cold"
    assert "broken on purpose" in Path(worker.path).with_suffix(".log").read_text()
    assert not servers_at(worker.path)


def test_a_changed_source_retires_the_server_and_the_command_runs_cold(worker: Worker) -> None:
    old = worker.serve()
    before = STAND_IN_FILE.stat()
    try:
        os.utime(STAND_IN_FILE, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
        command = worker.command("report")
        _, err = command.communicate(timeout=120)
    finally:
        os.utime(STAND_IN_FILE, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert "Invalid flow run id" in err, "a stale server must not run the flow"
    old.wait(timeout=10)
    assert wait_until(lambda: any(s.pid != old.pid for s in servers_at(worker.path)), 60)


def test_the_server_ends_when_its_worker_does(tmp_path: Path) -> None:
    """The worker here is a Python process that starts one command, then waits."""
    env = {**os.environ, "FLOTILLA_TEST_WORKER": uuid.uuid4().hex}
    starts_one = (
        "import subprocess, sys, time; "
        "subprocess.run([sys.executable, '-m', 'deployments.warm_engine'], capture_output=True); "
        "time.sleep(600)"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", starts_one], env=env, cwd=tmp_path, start_new_session=True
    )
    path = socket_path(env, owner.pid)
    try:
        assert wait_until(lambda: Path(path).exists(), 60)
        [server] = servers_at(path, owner.pid)
    finally:
        owner.kill()
        owner.wait()
    server.wait(timeout=10)
    assert not Path(path).exists()


def test_a_socket_folder_others_can_reach_is_not_used(worker: Worker, tmp_path: Path) -> None:
    """The command sends its environment to the server: not through a folder anyone can enter."""
    worker.env["TMPDIR"] = str(tmp_path)
    worker.path = socket_path(worker.env, os.getpid())
    folder = Path(worker.path).parent
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    command = worker.command()
    _, err = command.communicate(timeout=120)
    assert f"flotilla: {folder} is not a directory private to this user" in err
    assert "Invalid flow run id" in err, "the engine ran cold"
    assert list(folder.iterdir()) == [] and not servers_at(worker.path)


def test_only_per_run_variables_leave_the_server_unchanged() -> None:
    env = {"PATH": "/usr/bin", "PREFECT_API_URL": "http://127.0.0.1:1/api"}
    same = socket_path(env, 42)
    assert socket_path({**env, "PREFECT__FLOW_RUN_ID": "f00d"}, 42) == same
    assert socket_path({**env, "PREFECT_API_URL": "http://127.0.0.1:2/api"}, 42) != same
    assert socket_path(env, 43) != same, "each worker process has its own server"


def test_a_server_answers_only_where_none_answers_already(worker: Worker) -> None:
    first = worker.serve()
    second = worker.serve()
    assert second.wait(timeout=60) == 0
    command = worker.command("report")
    out, _ = command.communicate(timeout=30)
    assert json.loads(out)["ppid"] == first.pid
