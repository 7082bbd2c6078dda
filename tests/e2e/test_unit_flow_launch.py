"""The `unit` flow as the pool launcher starts it: with the scheduler's launch in the store.

A flow run started again after its worker died past the push (the ledger says succeeded, the
branch is on the remote) finds the work of that launch done and does not redo it; a new launch
of the same unit (`flotilla retry`) runs it again.
"""

from __future__ import annotations

from flows.unit import unit, unit_job
from tasks.launching import UnitLaunch, launch_key
from tests.e2e.helpers import git
from tests.e2e.test_unit_flow import started_run  # noqa: F401  (the fixture)


def launch(runs, store, machine) -> None:
    job = unit_job("spread", "producer", store=store, workdir=str(machine))
    record = UnitLaunch(
        unit_id="producer",
        base_commit=job.base_commit,
        dependencies=[],
        fingerprint=job.fingerprint,
    )
    runs.store.write_json(launch_key(runs, "producer"), record)


def test_a_launch_is_done_once_and_a_new_launch_runs_again(tmp_path, started_run):  # noqa: F811
    target, timeline, _request, store, runs = started_run
    launch(runs, store, tmp_path / "machine-1")

    first = unit("spread", "producer", store=store, workdir=str(tmp_path / "machine-1"))
    again = unit("spread", "producer", store=store, workdir=str(tmp_path / "machine-2"))

    assert first.status == again.status == "succeeded"
    assert again.commit == first.commit
    assert timeline.read_text().count("start producer") == 1  # the second flow run ran nothing
    assert git(target, "rev-parse", "flotilla/demo-feature--producer") == first.commit

    launch(runs, store, tmp_path / "machine-2")
    retried = unit("spread", "producer", store=store, workdir=str(tmp_path / "machine-2"))

    assert retried.status == "succeeded"
    assert timeline.read_text().count("start producer") == 2
    assert git(target, "rev-parse", "flotilla/demo-feature--producer") == retried.commit
