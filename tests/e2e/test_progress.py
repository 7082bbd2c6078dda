"""Live progress in the Prefect UI: the artifacts a run creates, read back through the API."""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from pathlib import Path

import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.objects import Artifact

from flotilla.cli import main
from tests.e2e.helpers import make_target

# A real agent process: waits for $GATE (if set), fails with $FAIL, else writes a file, its
# outputs and a summary.
AGENT = """
import os, sys, time, pathlib
gate = os.environ.get("GATE")
while gate and not os.path.exists(gate):
    time.sleep(0.05)
if os.environ.get("FAIL"):
    print("boom: the agent gave up")
    sys.exit(3)
unit = os.environ["FLOTILLA_UNIT_ID"]
pathlib.Path(unit + ".txt").write_text(unit + "\\n")
for name in filter(None, os.environ.get("OUTPUTS", "").split(",")):
    (pathlib.Path(os.environ["FLOTILLA_OUTPUTS_DIR"]) / name).write_text("notes\\n")
pathlib.Path(os.environ["FLOTILLA_SUMMARY_FILE"]).write_text("Wrote " + unit + ".txt.\\n")
"""

DEADLINE_S = 90.0


def write_request(tmp_path: Path, feature_id: str, units: list[dict]) -> Path:
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT)
    request = {
        "feature": {"id": feature_id, "title": "Progress feature"},
        "test": f"{sys.executable} -c pass",
        "defaults": {
            "agent": {"command": f"{sys.executable} {agent}"},
            "test": f"{sys.executable} -c pass",
            "timeout_s": 60,
            "max_iterations": 1,
            "retry_policy": {"max_attempts": 1},
        },
        "units": units,
    }
    path = tmp_path / "request.yaml"
    path.write_text(yaml.safe_dump(request, sort_keys=False))
    return path


def artifacts(key: str) -> list[Artifact]:
    """Every version of the artifact `key`, oldest first."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    return sorted(found, key=lambda a: a.created)


def latest(key: str) -> Artifact:
    versions = artifacts(key)
    assert versions, f"no artifact with key {key!r}"
    return versions[-1]


def table_rows(key: str) -> dict[str, dict[str, str]]:
    return {row["unit"]: row for row in json.loads(latest(key).data)}


def wait_for(condition, what: str, runner: threading.Thread):
    """Poll `condition` until it holds; give up when the run ended or after DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline and runner.is_alive():
        try:
            value = condition()
        except AssertionError:
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def test_a_run_shows_live_progress_a_unit_table_and_reports(tmp_path):
    feature = f"progress-{uuid.uuid4().hex[:8]}"
    target = make_target(tmp_path / "target")
    gate = tmp_path / "gate"
    agent = f"{sys.executable} {tmp_path / 'agent.py'}"
    request = write_request(
        tmp_path,
        feature,
        [
            {
                "id": "slow",
                "outputs": ["notes.txt"],
                "agent": {"command": agent, "env": {"GATE": str(gate), "OUTPUTS": "notes.txt"}},
            },
            {"id": "broken", "agent": {"command": agent, "env": {"FAIL": "1"}}},
            {"id": "after-broken", "depends_on": ["broken"]},
        ],
    )
    store = tmp_path / "store"
    outcome: list[int | BaseException] = []
    args = ["run", str(request), "--repo", str(target), "--store", str(store)]
    args += ["--workdir", str(tmp_path / "work"), "--run-key", "live"]

    def run() -> None:
        try:
            outcome.append(main(args))
        except BaseException as exc:  # reported by the assertion below
            outcome.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        # While `slow` waits for the gate, the table shows it at work and the others finished.
        rows = wait_for(
            lambda: (
                (r := table_rows(f"{feature}-units"))
                and r["slow"]["status"] == "running"
                and r["slow"]["step"].startswith("agent")
                and r["after-broken"]["status"] == "blocked"
                and r
            ),
            "the unit table to show `slow` in its agent step",
            runner,
        )
        assert rows["slow"]["attempt"] == "1/1"
        assert rows["broken"]["status"] == "failed"
        assert "agent exited with code 3" in rows["broken"]["last error"]
        progress = latest(f"{feature}-progress")
        assert 0 < progress.data < 100
        assert "2 of 3 units finished (1 failed, 1 blocked)" in progress.description
    finally:
        gate.write_text("go")
        runner.join(timeout=DEADLINE_S)
    assert outcome == [1]  # a unit failed, so the feature did

    # One version per run, updated in place, ending with every unit finished.
    (progress,) = artifacts(f"{feature}-progress")
    assert progress.type == "progress" and progress.data == 100.0
    assert progress.description.endswith(
        "3 of 3 units finished (1 succeeded, 1 failed, 1 blocked); the run failed."
    )
    (table,) = artifacts(f"{feature}-units")
    rows = {row["unit"]: row for row in json.loads(table.data)}
    assert [rows[u]["status"] for u in ("slow", "broken", "after-broken")] == [
        "succeeded",
        "failed",
        "blocked",
    ]
    assert rows["after-broken"]["last error"] == "blocked by failed unit(s): broken"
    columns = ["unit", "status", "step", "attempt", "elapsed", "eta", "cost", "last error"]
    assert list(rows["slow"]) == columns

    # A markdown report per unit that ran, on success and on failure.
    slow = latest(f"{feature}-unit-slow").data
    assert "# Unit `slow`" in slow and "| succeeded | 1 |" in slow
    assert "Wrote slow.txt." in slow and "- `slow.txt`" in slow
    assert f"`{sys.executable} -c pass`: passed (exit 0)" in slow
    assert "attempt-1.log" in slow
    broken = latest(f"{feature}-unit-broken").data
    assert "| failed | 1 |" in broken and "## Last error" in broken and "boom" in broken
    assert not artifacts(f"{feature}-unit-after-broken")  # it never ran

    # How to fetch the unit's outputs from the store: a command, not a worker-local path.
    fetch = f"flotilla artifacts live slow --get outputs/notes.txt --store {store}"
    assert f"- output `notes.txt`: `{fetch}`" in slow
    assert main(fetch.split()[1:]) == 0

    # The final report: the failure report kept in the store, then every unit.
    report = latest(f"{feature}-report").data
    failure = (store / "runs" / "live" / "feature" / "report.md").read_text()
    assert report.startswith(failure.rstrip()) and "1 unit(s) failed: broken" in report
    assert "| `broken` | failed | 1 |" in report and "| `slow` | succeeded | 1 |" in report
    assert f"flotilla artifacts live --store {store}" in latest(f"{feature}-store").data


def test_each_run_of_a_feature_adds_a_version_under_the_same_keys(tmp_path):
    feature = f"history-{uuid.uuid4().hex[:8]}"
    target = make_target(tmp_path / "target")
    request = write_request(tmp_path, feature, [{"id": "only"}])
    for key in ("first", "second"):
        args = ["run", str(request), "--repo", str(target), "--store", str(tmp_path / "store")]
        # the second run overwrites the first one's branches: another run's work needs --force
        force = ["--force"] if key == "second" else []
        assert main([*args, "--workdir", str(tmp_path / "work"), "--run-key", key, *force]) == 0

    for kind in ("progress", "units", "unit-only", "report", "pr"):
        versions = artifacts(f"{feature}-{kind}")
        assert len(versions) == 2, kind
    assert [a.data for a in artifacts(f"{feature}-progress")] == [100.0, 100.0]
    descriptions = [a.description for a in artifacts(f"{feature}-progress")]
    assert "Run first:" in descriptions[0] and "Run second:" in descriptions[1]
    assert "`second` · succeeded" in latest(f"{feature}-report").data
