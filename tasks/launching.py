"""Where a unit's work loop runs: in the orchestrator's process, or on a Prefect work pool.

The implement stage hands each ready unit to a launcher and waits on what it gets back, a
`concurrent.futures.Future` that resolves to the unit's final Prefect state; the unit's verdict
itself is in the ledger. Two launchers:

- `InProcessLauncher` submits the `run_unit` task to the stage's task runner (one machine).
- `PoolLauncher` creates a flow run of the `unit` deployment on a work pool
  (`run_deployment(..., timeout=0)`) and returns at once. One poller thread reads the states of
  every unit flow run in flight with one API call per tick; nothing waits per unit. When a run
  completes, the unit's branch is fetched from the target's remote, where the worker pushed it.
  A run that crashed (its worker died: the zombie automation marks it Crashed when heartbeats
  stop) is started again on whichever worker is free; a resumed orchestrator adopts the unit
  flow runs still in flight instead of starting them twice. A unit whose flow runs never get
  past their start (a worker without Flotilla's `python`) fails saying so.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from logging import Logger, LoggerAdapter
from typing import Protocol
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.states import State
from prefect.utilities.annotations import quote
from pydantic import BaseModel, Field

from flotilla.errors import GitError, RunError
from flotilla.results import UnitStatus, utcnow
from flotilla.runs import RunContext
from tasks.naming import run_tags, stage_run_name, unit_tag, unit_task_name
from tasks.recovery import restore_unit_branches
from tasks.store import RunStore
from tasks.units import UnitJob, run_unit
from tasks.workspace import Workspace

UNIT_FLOW = "unit"
POLL_S = 1.0
PAGE = 200
LOST_RUN_RELAUNCHES = 3  # a unit whose flow runs keep crashing is a problem, not bad luck
UNCLAIMED_WARNING_S = 60.0
IN_FLIGHT = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]
ZOMBIE_AUTOMATION = "flotilla-crash-zombie-flow-runs"  # deployments/zombie-automation.yaml


class UnitLaunch(BaseModel):
    """What the scheduler decided for one unit on the pool, read back by the `unit` flow: its
    start (base and dependencies, in merge order) and its fingerprint, exactly as computed."""

    unit_id: str
    base_commit: str
    dependencies: list[str]
    fingerprint: str
    launched_at: datetime = Field(
        default_factory=utcnow,
        description="When the scheduler chose to run the unit; a success recorded after it is "
        "this launch's work (a flow run started again after a crash does not redo it).",
    )


def launch_key(runs: RunStore, unit_id: str) -> str:
    return f"{runs.unit_prefix(unit_id)}/launch.json"


class Launcher(Protocol):
    """Starts units; each handle resolves to the unit's final Prefect state."""

    def launch(self, job: UnitJob, tags: list[str]) -> cf.Future: ...

    def close(self) -> None: ...


def launcher_for(
    ctx: RunContext, runs: RunStore, workspace: Workspace, log: Logger | LoggerAdapter
) -> Launcher:
    """The work_loop stage's `work_pool` (or `flotilla run --pool`) picks the pool launcher."""
    stage = ctx.stage("work_loop")
    if stage is not None and stage.work_pool:
        return PoolLauncher(ctx, stage.work_pool, runs, workspace, log)
    return InProcessLauncher()


class InProcessLauncher:
    """The `run_unit` task on the implement flow's task runner."""

    def __init__(self) -> None:
        self._futures: dict[cf.Future, object] = {}  # the Prefect futures, until they resolve

    def launch(self, job: UnitJob, tags: list[str]) -> cf.Future:
        future = run_unit.with_options(
            task_run_name=unit_task_name(job.unit.id, "unit"), tags=tags
        ).submit(quote(job))
        handle = future.wrapped_future
        self._futures[handle] = future
        handle.add_done_callback(lambda done: self._futures.pop(done, None))
        return handle

    def close(self) -> None:
        pass


@dataclass
class PoolUnit:
    """One unit on the pool: its job, the handle the scheduler waits on, its launches."""

    job: UnitJob
    handle: cf.Future
    launches: int = 1
    since: float = 0.0
    warned: bool = False


class PoolLauncher:
    """Units as flow runs of the `unit` deployment on `pool`, watched by one poller thread."""

    def __init__(
        self,
        ctx: RunContext,
        pool: str,
        runs: RunStore,
        workspace: Workspace,
        log: Logger | LoggerAdapter,
    ):
        self.ctx, self.pool, self.runs, self.workspace, self.log = ctx, pool, runs, workspace, log
        self.deployment_id = check_pool(pool, ctx.store_url)
        self._warn_without_zombie_automation()
        # Units finished by workers while no orchestrator watched: their branches are on the
        # remote only, and the scheduler reuses a unit only when its branch is here.
        records = [r for r in runs.read_ledger().values() if r.status == UnitStatus.SUCCEEDED]
        restore_unit_branches(workspace, records)
        self.adoptable = self._in_flight()
        self.units: dict[UUID, PoolUnit] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._poll_forever, name=f"flotilla-pool-{pool}", daemon=True
        )
        self._thread.start()

    def _warn_without_zombie_automation(self) -> None:
        with get_client(sync_client=True) as client:
            if client.read_automations_by_name(ZOMBIE_AUTOMATION):
                return
        self.log.warning(
            "The Prefect server has no automation %r: a unit whose worker dies stays Running "
            "and is never started again. Create it with `python -m deployments.setup "
            "--automation` (part of `make deploy`).",
            ZOMBIE_AUTOMATION,
        )

    # -- starting --------------------------------------------------------------------------

    def launch(self, job: UnitJob, tags: list[str]) -> cf.Future:
        """Start (or adopt) the unit's flow run and return at once; `tags` are the task's
        resource tags, which the unit flow puts on its own `run_unit` task."""
        handle: cf.Future = cf.Future()
        handle.set_running_or_notify_cancel()
        flow_run_id = self.adoptable.pop(job.unit.id, None)
        if flow_run_id is not None:
            self.log.info(
                "Unit %s: adopting its flow run %s, still in flight.", job.unit.id, flow_run_id
            )
        else:
            flow_run_id = self._start(job, self._launch_of(job))
        with self._lock:
            self.units[flow_run_id] = PoolUnit(job, handle, since=time.monotonic())
        return handle

    def _launch_of(self, job: UnitJob) -> UnitLaunch:
        prefix = f"flotilla/{self.ctx.feature_id}--"
        return UnitLaunch(
            unit_id=job.unit.id,
            base_commit=job.base_commit,
            dependencies=[b.removeprefix(prefix) for b in job.dep_branches],
            fingerprint=job.fingerprint,
        )

    def _start(self, job: UnitJob, launch: UnitLaunch) -> UUID:
        self.runs.store.write_json(launch_key(self.runs, job.unit.id), launch)
        flow_run = run_deployment(
            self.deployment_id,
            parameters={
                "run_key": self.ctx.run_key,
                "unit_id": job.unit.id,
                "store": self.ctx.store_url,
                "base_commit": job.base_commit,
            },
            flow_run_name=stage_run_name(self.ctx.run_key, job.unit.id),
            timeout=0,
            as_subflow=False,
            tags=self.run_tags(job.unit.id),
        )
        return flow_run.id

    def _launched(self, job: UnitJob) -> UnitLaunch:
        """The launch as first written (its time marks what counts as this launch's work)."""
        try:
            return self.runs.store.read_model(launch_key(self.runs, job.unit.id), UnitLaunch)
        except KeyError:
            return self._launch_of(job)

    def run_tags(self, unit_id: str) -> list[str]:
        return [*run_tags(self.ctx), unit_tag(unit_id)]

    def _in_flight(self) -> dict[str, UUID]:
        """unit id -> a unit flow run of this run that is still scheduled, pending or running."""
        with get_client(sync_client=True) as client:
            found = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=[f"run:{self.ctx.run_key}"]),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=IN_FLIGHT)),
                ),
                deployment_filter=DeploymentFilter(
                    id=DeploymentFilterId(any_=[self.deployment_id])
                ),
            )
        return {str(r.parameters.get("unit_id")): r.id for r in found}

    # -- watching --------------------------------------------------------------------------

    def _poll_forever(self) -> None:
        with get_client(sync_client=True) as client:
            while not self._stop.wait(POLL_S):
                try:
                    self.poll(client)
                except Exception as exc:  # the API may be away for a while; keep watching
                    self.log.warning("Could not read the unit flow runs' states: %s", exc)

    def poll(self, client) -> None:
        with self._lock:
            waiting = dict(self.units)
        if not waiting:
            return
        ids = list(waiting)
        found = []
        for at in range(0, len(ids), PAGE):  # the API answers at most 200 runs per call
            chunk = ids[at : at + PAGE]
            found += client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=chunk)), limit=len(chunk)
            )
        for flow_run in found:
            state = flow_run.state
            if state is not None and state.is_final():
                self._settle(flow_run, waiting[flow_run.id])
            else:
                self._warn_if_unclaimed(flow_run, waiting[flow_run.id])

    def _settle(self, flow_run: FlowRun, unit: PoolUnit) -> None:
        state: State = flow_run.state
        unit_id = unit.job.unit.id
        with self._lock:
            self.units.pop(flow_run.id, None)
        if state.is_crashed() and unit.launches <= LOST_RUN_RELAUNCHES:
            self.log.warning(
                "Unit %s: its flow run %s ended Crashed (%s). Starting it again on another "
                "worker (launch %d of at most %d).",
                unit_id,
                flow_run.id,
                state.message or "no message",
                unit.launches + 1,
                LOST_RUN_RELAUNCHES + 1,
            )
            try:
                again = self._start(unit.job, self._launched(unit.job))
            except Exception as exc:
                unit.handle.set_exception(exc)
                return
            with self._lock:
                self.units[again] = PoolUnit(
                    unit.job, unit.handle, unit.launches + 1, since=time.monotonic()
                )
            return
        if state.is_completed():
            self._fetch_branch(unit_id)
        elif state.is_crashed() and flow_run.run_count == 0:  # it never entered Running
            state = state.model_copy(update={"message": never_started(state)})
        unit.handle.set_result(state)

    def _fetch_branch(self, unit_id: str) -> None:
        """The worker pushed the unit's branch to the remote; the merge needs it here."""
        record = self.runs.read_record(unit_id)
        if record is None or record.status != UnitStatus.SUCCEEDED:
            return
        with contextlib.suppress(GitError):
            self.workspace.fetch([record.branch])
        if self.workspace.branch_sha(record.branch) != record.commit:
            self.log.warning(
                "Unit %s succeeded, but %s in %s is not at its commit %s.",
                unit_id,
                record.branch,
                self.ctx.repo,
                record.commit[:12],
            )

    def _warn_if_unclaimed(self, flow_run: FlowRun, unit: PoolUnit) -> None:
        scheduled = flow_run.state is not None and flow_run.state.is_scheduled()
        if scheduled and not unit.warned and time.monotonic() - unit.since > UNCLAIMED_WARNING_S:
            unit.warned = True
            self.log.warning(
                "Unit %s has waited %.0f s for a worker of the work pool %r. Start one on any "
                "machine with `make worker` (prefect worker start --pool %s).",
                unit.job.unit.id,
                UNCLAIMED_WARNING_S,
                self.pool,
                self.pool,
            )

    def close(self) -> None:
        """Stop watching; unit flow runs still in flight go on, and a resume adopts them."""
        self._stop.set()
        self._thread.join(timeout=10)


def never_started(state: State) -> str:
    """What to do about a unit flow run whose worker could not start it: most often the worker's
    `python`, which the `unit` deployment's command (`python -m deployments.warm_engine`) runs."""
    return (
        f"its flow run never started on a worker ({state.message or state.name}). A worker starts "
        "each unit with `python -m deployments.warm_engine`, using the `python` on its PATH: start "
        "workers with `make worker`, or with Flotilla's .venv active; the worker's log says more"
    )


def check_pool(pool: str, store_url: str) -> UUID:
    """Before a run starts: the pool has the `unit` deployment (its id is returned) and workers
    can reach the store."""
    if store_url.startswith("memory://"):
        raise RunError(
            f"The store {store_url} lives in this process's memory, which workers of the pool "
            f"{pool!r} cannot read. Pass --store with a directory the workers share or s3://..."
        )
    return find_unit_deployment(pool)


def find_unit_deployment(pool: str) -> UUID:
    """The deployment of the `unit` flow on `pool`; a RunError saying how to make one."""
    with get_client(sync_client=True) as client:
        found = client.read_deployments(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[UNIT_FLOW])),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
        )
    if not found:
        raise RunError(
            f"The Prefect server has no deployment of the `{UNIT_FLOW}` flow on the work pool "
            f"{pool!r}, so --pool {pool} cannot start units. Run `make deploy` (or "
            f"`prefect deploy --name unit --pool {pool}`) against this server first."
        )
    return found[0].id
