"""Commands start through one long-lived reaper server per Flotilla process, which forks a runner
for each: the runner still ends what the command leaves, and nothing of Flotilla's own
environment shows through the runner or the server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flotilla.environment import basic_env
from tasks import spawner
from tasks.processes import run_process
from tests.integration.procfs import alive, children_of

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

ROOT = Path(__file__).resolve().parents[2]


def environ_of(pid: int) -> str:
    return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")


def wait_until(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_every_command_of_a_process_is_forked_by_the_same_server(tmp_path: Path) -> None:
    script = 'echo "runner=$PPID"; ps -o ppid= -p $PPID'
    first = run_process(script, cwd=tmp_path)
    second = run_process(script, cwd=tmp_path)
    assert first.exit_code == second.exit_code == 0
    servers = {int(r.output_tail.split()[-1]) for r in (first, second)}
    runners = {r.output_tail.split()[0] for r in (first, second)}
    assert servers == {spawner._server.process.pid}
    assert len(runners) == 2  # a runner of its own per command, in a session of its own


def test_neither_the_runner_nor_the_server_shows_flotillas_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOTILLA_GITHUB_TOKEN", "token-the-agent-must-not-see-5555")
    monkeypatch.setattr(spawner, "_server", None)  # a server started with the token set
    result = run_process(
        "cat /proc/$PPID/environ /proc/$(ps -o ppid= -p $PPID | tr -d ' ')/environ; echo done",
        cwd=tmp_path,
        env={**basic_env(os.environ), "FOR_THE_AGENT": "yes"},
    )
    assert result.exit_code == 0 and "done" in result.output_tail
    assert "token-the-agent-must-not-see" not in result.output_tail
    assert "token-the-agent-must-not-see" not in environ_of(spawner._server.process.pid)


def test_the_command_gets_exactly_its_environment_and_its_path(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "only-on-the-units-path"
    tool.write_text("#!/bin/sh\necho found-on-path\n")
    tool.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "ONLY_THIS": "1"}
    result = run_process(["only-on-the-units-path"], cwd=tmp_path, env=env)
    assert (result.exit_code, result.output_tail) == (0, "found-on-path\n")
    listed = run_process(["env"], cwd=tmp_path, env=env).output_tail.split()
    assert sorted(listed) == sorted(f"{k}={v}" for k, v in env.items())


def test_stdin_exit_codes_and_signals_come_through_the_runner(tmp_path: Path) -> None:
    echoed = run_process(["cat"], cwd=tmp_path, stdin="to the agent\n")
    assert (echoed.exit_code, echoed.output_tail) == (0, "to the agent\n")
    assert run_process("exit 7", cwd=tmp_path).exit_code == 7
    assert run_process("kill -TERM $$", cwd=tmp_path).exit_code == -signal.SIGTERM
    assert run_process("yes | head -1", cwd=tmp_path).output_tail == "y\n"  # SIGPIPE as usual
    missing = run_process(["/no/such/program"], cwd=tmp_path)
    assert missing.exit_code == 127 and "cannot run" in missing.output_tail


def test_a_missing_working_directory_is_an_error_like_popens(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="cannot start 'true' in .*gone"):
        run_process(["true"], cwd=tmp_path / "gone")


def test_a_time_limit_ends_the_command_and_what_it_detached(tmp_path: Path) -> None:
    pid_file = tmp_path / "detached.pid"
    started = time.monotonic()
    result = run_process(
        f"setsid sleep 300 & echo $! > {pid_file}; sleep 300", cwd=tmp_path, timeout_s=1.0
    )
    assert result.timed_out and result.exit_code is None
    assert time.monotonic() - started < 15
    assert wait_until(lambda: not alive(int(pid_file.read_text())), 5)


def test_a_killed_server_is_replaced_by_the_next_command(tmp_path: Path) -> None:
    run_process(["true"], cwd=tmp_path)
    old = spawner._server.process
    old.kill()
    old.wait()
    assert run_process(["echo", "again"], cwd=tmp_path).output_tail == "again\n"
    assert spawner._server.process.pid != old.pid


def test_the_server_ends_with_its_flotilla_process_even_after_kill_9(tmp_path: Path) -> None:
    flotilla = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                from pathlib import Path
                from tasks import spawner
                from tasks.processes import run_process
                run_process(["true"], cwd=Path({str(tmp_path)!r}))
                print(spawner._server.process.pid, flush=True)
                run_process(["sleep", "300"], cwd=Path({str(tmp_path)!r}))
                """
            ),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert flotilla.stdout is not None
    server = int(flotilla.stdout.readline())

    def sleeps_runner() -> list[int]:  # the runner of `true` may not have exited quite yet
        return [r for r in runners_of(server) if children_of(r)]

    assert wait_until(sleeps_runner, 10)
    (runner,) = sleeps_runner()
    flotilla.kill()
    flotilla.wait()
    assert wait_until(lambda: not alive(server), 10)
    # its runner carries on, as a one-shot runner did, until `flotilla resume` ends it
    assert alive(runner)
    os.killpg(runner, signal.SIGKILL)


def runners_of(server: int) -> list[int]:
    """The server's live children (a runner that ended may wait a moment to be reaped)."""
    return [pid for pid in children_of(server) if alive(pid)]


def test_a_server_that_cannot_start_is_an_error_that_says_where_to_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "reaper.py"
    broken.write_text("raise SystemExit(3)\n")
    monkeypatch.setattr(spawner, "REAPER", broken)
    monkeypatch.setattr(spawner, "_server", None)
    with pytest.raises(OSError, match=r"runner server .* ended before it could start"):
        run_process(["true"], cwd=tmp_path)


def test_the_command_holds_nothing_of_its_runner_but_its_stdin_and_output(tmp_path: Path) -> None:
    listed = run_process("for f in /proc/$$/fd/*; do readlink $f; done", cwd=tmp_path)
    kinds = [line.split(":")[0] for line in listed.output_tail.splitlines()]
    assert "socket" not in kinds  # an agent cannot answer for its runner
    assert kinds[:3] == ["/dev/null", "pipe", "pipe"]
