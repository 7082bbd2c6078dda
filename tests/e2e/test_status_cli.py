"""`flotilla status`, `runs` and `artifacts` after a real run: they read the store and nothing else."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from flotilla.cli import main
from flotilla.results import RunState, RunSummary, UnitStatus, utcnow
from tasks.store import ArtifactStore, RunStore
from tests.e2e.helpers import make_target, write_request

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """One finished run, `done`: `left` publishes an output that `right` consumes."""
    tmp = tmp_path_factory.mktemp("status")
    target = make_target(tmp / "target")
    request = write_request(
        tmp,
        [
            {"id": "left", "outputs": ["left.json"]},
            {"id": "right", "inputs": ["left/left.json"]},
        ],
        timeline=tmp / "timeline.txt",
        feature_id="status-feature",
    )
    args = ["run", str(request), "--repo", str(target), "--store", str(tmp / "store")]
    assert main([*args, "--workdir", str(tmp / "work"), "--run-key", "done"]) == 0
    return tmp / "store"


def flotilla(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def without_prefect(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """The CLI in a fresh process whose Prefect API is a closed port and whose home is empty."""
    env = {
        **os.environ,
        "PREFECT_API_URL": f"http://127.0.0.1:{closed_port()}/api",
        "PREFECT_HOME": str(tmp_path / "empty-prefect-home"),
    }
    code = "import sys; from flotilla.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_status_shows_the_unit_table_from_the_ledger(store, capsys):
    code, out, _ = flotilla(capsys, "status", "done", "--store", str(store))
    assert code == 0
    assert out.startswith("Run done: Demo feature (status-feature)\nState:   succeeded, started ")
    assert "Units:   2 of 2 succeeded" in out
    header, *rows = out.split("\n\n", 1)[1].splitlines()
    assert header.split() == [
        "UNIT",
        "STATUS",
        "STEP",
        "ATTEMPT",
        "ELAPSED",
        "ETA",
        "COST",
        "LAST",
        "ERROR",
    ]
    assert [r.split()[:3] for r in rows] == [
        ["left", "succeeded", "1/3"],
        ["right", "succeeded", "1/3"],
    ]


def test_status_json_carries_the_same_rows(store, capsys):
    code, out, _ = flotilla(capsys, "status", "done", "--store", str(store), "--json")
    data = json.loads(out)
    assert code == 0 and data["state"] == "succeeded" and data["units_succeeded"] == 2
    assert [u["unit"] for u in data["units"]] == ["left", "right"]
    assert data["units"][0]["attempt"] == 1 and data["units"][0]["max_attempts"] == 3
    assert data["eta_s"] is None  # the run is over


def test_status_runs_and_artifacts_need_no_prefect_server(store, tmp_path, capsys):
    main(["status", "done", "--store", str(store)])
    expected = capsys.readouterr().out
    status = without_prefect(tmp_path, "status", "done", "--store", str(store))
    assert status.returncode == 0, status.stderr
    # Same table; only the run's age on the state line may have moved on.
    assert status.stdout.splitlines()[2:] == expected.splitlines()[2:]
    runs = without_prefect(tmp_path, "runs", "--store", str(store))
    assert runs.returncode == 0 and "done" in runs.stdout, runs.stderr
    fetched = without_prefect(
        tmp_path, "artifacts", "done", "left", "--store", str(store), "--get", "left.json"
    )
    assert fetched.returncode == 0 and json.loads(fetched.stdout) == {"from": "left"}


def test_runs_lists_key_feature_state_units_start_and_duration(store, capsys):
    code, out, _ = flotilla(capsys, "runs", "--store", str(store))
    header, row = out.splitlines()
    assert code == 0
    assert header.split() == ["KEY", "FEATURE", "STATE", "UNITS", "STARTED", "DURATION", "COST"]
    key, feature, state, units, day, clock, duration, cost = row.split()
    assert (key, feature, state, units) == ("done", "status-feature", "succeeded", "2/2")
    assert duration.endswith("s") and cost == "-"  # its script agents reported no usage
    code, out, _ = flotilla(capsys, "runs", "--store", str(store), "--json")
    assert json.loads(out)[0]["run_key"] == "done"


def test_artifacts_lists_and_fetches_from_the_store(store, tmp_path, capsys):
    code, out, _ = flotilla(capsys, "artifacts", "done", "--store", str(store))
    names = [line.strip() for line in out.splitlines()[1:]]
    assert code == 0 and out.startswith(f"{store}/runs/done/")
    assert {"feature/pr.md", "feature/report.md", "plan.json", "ledger/left.json"} <= set(names)
    assert "units/left/outputs/left.json" in names

    code, out, _ = flotilla(capsys, "artifacts", "done", "left", "--store", str(store))
    names = [line.strip() for line in out.splitlines()[1:]]
    assert {"outputs/left.json", "summary.md", "logs/attempt-1.log"} <= set(names)

    target = tmp_path / "fetched.json"
    args = ["artifacts", "done", "left", "--store", str(store)]
    code, out, _ = flotilla(capsys, *args, "--get", "outputs/left.json", "--to", str(target))
    assert code == 0 and json.loads(target.read_text()) == {"from": "left"}
    code, out, _ = flotilla(capsys, *args, "--get", "logs", "--to", str(tmp_path / "logs"))
    assert code == 0 and (tmp_path / "logs" / "attempt-1.log").is_file()
    code, out, _ = flotilla(
        capsys, "artifacts", "done", "--store", str(store), "--get", "feature/pr.md"
    )
    assert code == 0 and out.startswith("# Demo feature")


def test_mistakes_get_sentences_that_say_what_to_do(store, capsys):
    code, _, err = flotilla(capsys, "status", "nope", "--store", str(store))
    assert code == 1 and "There is no run 'nope'" in err and "flotilla runs --store" in err
    code, _, err = flotilla(capsys, "artifacts", "done", "ghost", "--store", str(store))
    assert code == 1 and "Units with artifacts: left, right." in err
    code, _, err = flotilla(
        capsys, "artifacts", "done", "left", "--store", str(store), "--get", "x"
    )
    assert code == 1 and "There is no artifact 'x'" in err and "flotilla artifacts done left" in err
    code, _, err = flotilla(capsys, "artifacts", "done", "--store", str(store), "--to", "x")
    assert code == 2 and "--to needs --get" in err


def test_a_running_run_gets_etas_and_a_crashed_one_says_so(store, tmp_path, capsys):
    """The ledger of a run caught mid-way: `left` done, `right` at work."""
    copy = ArtifactStore(str(tmp_path / "copy"))
    source = ArtifactStore(str(store))
    for key in source.list():
        copy.write_bytes(key, source.read_bytes(key))
    runs = RunStore(copy, "done")
    right = runs.read_record("right")
    right.status, right.step, right.finished_at = UnitStatus.RUNNING, "agent (iteration 1)", None
    right.started_at = utcnow() - timedelta(seconds=1)
    runs.write_record(right)
    copy.write_json("stats/durations/standard.json", [600.0])  # units usually take ten minutes

    def mark_running(pid: int) -> None:
        summary = runs.store.read_model(runs.state_key, RunSummary)
        update = {"state": RunState.RUNNING, "finished_at": None, "pid": pid}
        runs.store.write_json(
            runs.state_key, summary.model_copy(update={**update, "host": socket.gethostname()})
        )

    mark_running(os.getpid())  # a process that is alive
    code, out, _ = flotilla(capsys, "status", "done", "--store", copy.url)
    assert code == 0 and "State:   running, started" in out
    assert "ETA:     ~9m 5" in out  # 600 s minus the second `right` has run
    row = next(line for line in out.splitlines() if line.startswith("right"))
    assert "running" in row and "agent (iteration 1)" in row and "~9m 5" in row
    code, out, _ = flotilla(capsys, "runs", "--store", copy.url)
    assert "running" in out and "1/2" in out  # counted from the ledger while running

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], stdout=-1)
    mark_running(int(dead.stdout))
    code, out, _ = flotilla(capsys, "status", "done", "--store", copy.url)
    assert "State:   running (but its process" in out and "is gone" in out
    assert "ETA:" not in out  # nothing is running it any more
    # --watch stops at once: nothing will update a run whose process is gone.
    code, out, _ = flotilla(capsys, "status", "done", "--store", copy.url, "--watch")
    assert code == 1 and out.count("Run done:") == 1
