"""`flotilla run --pool`: every unit a flow run of the `unit` deployment, run by process
workers that share nothing but the Prefect API (on PostgreSQL), the store and a bare git remote.
Each worker is a "machine" of its own: its own HOME, PREFECT_HOME and FLOTILLA_WORKDIR.

A laptop trial: the store is a local directory and the remote a local bare repository. The
orchestrator is killed with `kill -9` mid-run; `flotilla resume` finishes the run, and no unit's
agent ever starts twice: the finished unit is reused, and the one still in flight on a worker
(held until the resumed orchestrator runs) is adopted, not started again. `flotilla retry
--unit` then runs one unit and the unit after it again, on the pool.

Then workers die: with the store on S3 (moto) and three workers, the worker running a unit is
killed with `kill -9` along with everything it started. Its flow run stops sending heartbeats;
the zombie automation marks it Crashed; the orchestrator starts the unit again, another worker
runs it, and the run completes without redoing any finished unit.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from deployments.local import (
    bare_remote,
    deploy,
    flotilla,
    machine_env,
    postgres_database,
    prefect_server,
    start_worker,
    stop_all,
    unit_flow_runs,
)
from deployments.setup import load_automation
from flotilla.cli import main
from flotilla.results import UnitStatus
from tasks.launching import ZOMBIE_AUTOMATION
from tasks.store import ArtifactStore, RunStore
from tests.e2e.helpers import git, make_target, timeline_of, write_request
from tests.e2e.pool_helpers import kill_machine, tails, wait_until

DEFAULT_WORKFLOW = Path(__file__).parents[2] / "flotilla" / "default_workflow.yaml"
RUN_KEY = "pooled"
HEARTBEAT_S = 30  # Prefect's shortest flow-run heartbeat period
ZOMBIE_AFTER_S = 50  # a flow run silent this long is marked Crashed by the automation


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Prefect server on PostgreSQL with `make deploy` done."""
    base = tmp_path_factory.mktemp("pool-server")
    with (
        postgres_database() as database_url,
        prefect_server(base / "prefect-home", database_url) as server,
    ):
        deploy(server, ZOMBIE_AFTER_S)
        yield server


def units() -> list[dict]:
    """A DAG with an artifact: schema -> parser -> cli; docs holds until the test releases it."""
    return [
        {"id": "schema", "outputs": ["schema.json"]},
        {"id": "docs", "env": {"WAIT_FOR": "release", "WAIT_S": "280"}, "timeout_s": 300},
        {"id": "parser", "inputs": ["schema/schema.json"]},
        {"id": "cli", "depends_on": ["parser"]},
    ]


@pytest.mark.parametrize("where", ["--pool", "work_pool"])
def test_a_pool_without_the_unit_deployment_is_refused_before_the_run_starts(
    tmp_path, capsys, where
):
    request = write_request(tmp_path, [{"id": "only"}], timeline=tmp_path / "timeline.txt")
    args = ["run", str(request), "--repo", str(make_target(tmp_path / "target"))]
    args += ["--store", str(tmp_path / "store"), "--workdir", str(tmp_path / "work")]
    if where == "--pool":
        args += ["--pool", "nowhere"]
    else:
        workflow = yaml.safe_load(DEFAULT_WORKFLOW.read_text())
        loop = next(s for s in workflow["workflow"]["stages"] if s["processor"] == "work_loop")
        loop["work_pool"] = "nowhere"
        (tmp_path / "workflow.yaml").write_text(yaml.safe_dump(workflow))
        args += ["--workflow", str(tmp_path / "workflow.yaml")]

    assert main(args) == 1

    error = capsys.readouterr().err
    assert "no deployment of the `unit` flow on the work pool 'nowhere'" in error
    assert "Run `make deploy`" in error
    assert not (tmp_path / "store").exists() and not (tmp_path / "work").exists()


def test_the_launcher_looks_for_the_automation_the_file_defines():
    assert load_automation().name == ZOMBIE_AUTOMATION


def starts_in(timeline: Path) -> Counter:
    """unit -> how many times its agent started."""
    lines = [line.split() for line in timeline.read_text().splitlines()]
    return Counter(unit for kind, unit, _ in lines if kind == "start")


@pytest.mark.slow
def test_units_run_on_pool_workers_a_killed_orchestrator_resumes_and_retry_works(server, tmp_path):
    timeline = tmp_path / "timeline.txt"
    timeline.touch()
    request = write_request(tmp_path, units(), timeline=timeline)
    remote = bare_remote(make_target(tmp_path / "target"), tmp_path / "remote.git")
    store = str(tmp_path / "store")
    workers = [start_worker(server, tmp_path / f"machine-{n}") for n in (1, 2)]
    orchestrator_env = machine_env(server, tmp_path / "orchestrator")
    logs = [tmp_path / "orchestrator" / "run.log", *(w for w in tmp_path.glob("*/worker.log"))]
    workdir = str(tmp_path / "orchestrator" / "work")
    runs = RunStore(ArtifactStore(store), RUN_KEY)
    try:
        run = flotilla(
            orchestrator_env,
            "run",
            str(request),
            "--repo",
            str(remote),
            "--run-key",
            RUN_KEY,
            "--pool",
            "flotilla",
            "--store",
            store,
            "--workdir",
            workdir,
            log=logs[0],
        )

        def schema_done_docs_running() -> bool:
            record = runs.read_record("schema")
            return bool(record and record.status == UnitStatus.SUCCEEDED) and (
                "start docs " in timeline.read_text()
            )

        wait_until("schema done and docs running", schema_done_docs_running, 240, logs)
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=10)

        resume_log = tmp_path / "orchestrator" / "resume.log"
        logs.append(resume_log)
        resumed = flotilla(orchestrator_env, "resume", RUN_KEY, "--store", store, log=resume_log)
        # docs' flow run outlived its orchestrator; the resumed one adopts it and starts parser
        wait_until("parser started", lambda: "start parser " in timeline.read_text(), 240, logs)
        with timeline.open("a") as log:
            log.write(f"start release {time.time():.6f}\n")
        assert resumed.wait(timeout=300) == 0, tails(logs)  # the workers' logs too
        after_resume = starts_in(timeline)

        retry_log = tmp_path / "orchestrator" / "retry.log"
        logs.append(retry_log)
        retried = flotilla(
            orchestrator_env, "retry", RUN_KEY, "--unit", "parser", "--store", store, log=retry_log
        )
        assert retried.wait(timeout=300) == 0, retry_log.read_text()
    finally:
        stop_all(workers)

    ledger = runs.read_ledger()
    assert {u: r.status for u, r in ledger.items()} == dict.fromkeys(
        ["schema", "docs", "parser", "cli"], UnitStatus.SUCCEEDED
    )
    # every unit's agent ran exactly once, on a worker: none redone after the kill
    assert after_resume == Counter({"schema": 1, "docs": 1, "parser": 1, "cli": 1, "release": 1})
    # `flotilla retry --unit parser` ran parser and the unit after it again, on the pool
    assert starts_in(timeline) == after_resume + Counter({"parser": 1, "cli": 1})
    flow_runs = unit_flow_runs(server, RUN_KEY)
    per_unit = Counter(r["parameters"]["unit_id"] for r in flow_runs)
    assert per_unit == Counter({"schema": 1, "docs": 1, "parser": 2, "cli": 2})
    assert {r["state_type"] for r in flow_runs} == {"COMPLETED"}
    worked = {p.parent.parent.parent.name for p in tmp_path.glob(f"machine-*/work/{RUN_KEY}/units")}
    assert worked == {"machine-1", "machine-2"}  # both workers took units
    assert not (tmp_path / "orchestrator" / "work" / RUN_KEY / "units").exists()
    # the worker pushed each unit branch; the orchestrator merged them into the feature branch
    for unit_id, record in ledger.items():
        assert git(remote, "rev-parse", f"flotilla/demo-feature--{unit_id}") == record.commit
    assert "schema/schema.json" in git(remote, "show", "flotilla/demo-feature:units/parser.txt")
    for unit_id in ledger:
        text = git(remote, "show", f"flotilla/demo-feature:units/{unit_id}.txt")
        assert text.startswith(unit_id)
    spans = timeline_of(timeline)
    assert spans["schema"][1] <= spans["parser"][0] <= spans["parser"][1] <= spans["cli"][0]


@pytest.mark.slow
def test_a_worker_killed_mid_unit_has_its_unit_run_again_on_another(
    server, tmp_path, moto_s3, s3_store_url
):
    timeline = tmp_path / "timeline.txt"
    timeline.touch()
    request = write_request(
        tmp_path,
        [
            {"id": "quick", "outputs": ["notes.md"]},
            # held on its first start: its worker is killed while it waits
            {"id": "victim", "env": {"WAIT_FOR": "release", "WAIT_S": "600"}, "timeout_s": 900},
            {"id": "other"},
            {"id": "after", "depends_on": ["victim"], "inputs": ["quick/notes.md"]},
        ],
        timeline=timeline,
    )
    remote = bare_remote(make_target(tmp_path / "target"), tmp_path / "remote.git")
    machine_vars = {**moto_s3.env, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S)}
    machines = [tmp_path / f"machine-{n}" for n in (1, 2, 3)]
    workers = {m.name: start_worker(server, m, machine_vars) for m in machines}
    log = tmp_path / "orchestrator" / "run.log"
    logs = [log, *(m / "worker.log" for m in machines)]
    runs = RunStore(ArtifactStore(s3_store_url, endpoint_url=moto_s3.endpoint_url), "crashy")
    try:
        run = flotilla(
            machine_env(server, tmp_path / "orchestrator", moto_s3.env),
            "run",
            str(request),
            "--repo",
            str(remote),
            "--store",
            s3_store_url,
            "--workdir",
            str(tmp_path / "orchestrator" / "work"),
            "--run-key",
            "crashy",
            "--pool",
            "flotilla",
            log=log,
        )

        def machine_of_victim() -> str | None:
            if "start victim " not in timeline.read_text():
                return None
            return next(m.name for m in machines if (m / "work/crashy/units/victim").is_dir())

        wait_until("the victim's agent started", lambda: machine_of_victim() is not None, 240, logs)
        doomed = machine_of_victim()
        kill_machine(workers.pop(doomed))
        with timeline.open("a") as out:  # the next start of the victim's agent goes straight on
            out.write(f"start release {time.time():.6f}\n")
        assert run.wait(timeout=600) == 0, log.read_text()
    finally:
        stop_all(list(workers.values()))

    ledger = runs.read_ledger()
    assert {u: r.status for u, r in ledger.items()} == dict.fromkeys(
        ["quick", "victim", "other", "after"], UnitStatus.SUCCEEDED
    )
    flow_runs = unit_flow_runs(server, "crashy")
    victim_runs = [r for r in flow_runs if r["parameters"]["unit_id"] == "victim"]
    assert [r["state_type"] for r in victim_runs] == ["CRASHED", "COMPLETED"]
    assert "No heartbeat" in victim_runs[0]["state"]["message"]
    assert {r["state_type"] for r in flow_runs if r not in victim_runs} == {"COMPLETED"}
    # run again on another machine; no finished unit was redone
    rerun_on = {m.name for m in machines if (m / "work/crashy/units/victim").is_dir()} - {doomed}
    assert len(rerun_on) == 1
    starts = starts_in(timeline)
    assert starts == Counter({"quick": 1, "victim": 2, "other": 1, "after": 1, "release": 1})
    assert "Unit victim: its flow run" in log.read_text()
    assert "ended Crashed (No heartbeat for 50 s" in log.read_text()
    after = git(remote, "show", "flotilla/demo-feature:units/after.txt")
    assert after.startswith("after") and "quick/notes.md" in after
    assert git(remote, "show", "flotilla/demo-feature:units/victim.txt").startswith("victim")


def test_a_worker_that_cannot_start_units_fails_them_with_what_to_fix(server, tmp_path):
    """A worker whose PATH has no `python` (not started with `make worker`): each unit flow run
    crashes before its first line; after the relaunches the unit fails, saying what to fix."""
    request = write_request(tmp_path, [{"id": "only"}], timeline=tmp_path / "timeline.txt")
    remote = bare_remote(make_target(tmp_path / "target"), tmp_path / "remote.git")
    nothing_on_path = tmp_path / "empty-bin"
    nothing_on_path.mkdir()
    worker = start_worker(server, tmp_path / "machine-1", {"PATH": str(nothing_on_path)})
    log = tmp_path / "orchestrator" / "run.log"
    store = str(tmp_path / "store")
    try:
        run = flotilla(
            machine_env(server, tmp_path / "orchestrator"),
            *("run", str(request), "--repo", str(remote), "--run-key", "no-python"),
            *("--pool", "flotilla", "--store", store),
            *("--workdir", str(tmp_path / "orchestrator" / "work")),
            log=log,
        )
        assert run.wait(timeout=300) == 1, log.read_text()
    finally:
        stop_all([worker])

    record = RunStore(ArtifactStore(store), "no-python").read_ledger()["only"]
    assert record.status == UnitStatus.FAILED
    assert "its flow run never started on a worker" in record.error
    assert "start workers with `make worker`, or with Flotilla's .venv active" in record.error
    launches = unit_flow_runs(server, "no-python")
    assert [r["state_type"] for r in launches] == ["CRASHED"] * 4  # the first and 3 relaunches
