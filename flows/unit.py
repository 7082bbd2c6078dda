"""The `unit` flow: one unit of a feature run as its own flow run, for scale-out.

Workers on many machines can share one feature: each unit becomes a flow run of the `unit`
deployment, picked up by whichever worker of the `flotilla` pool is free. A unit flow run needs
only the run key and the unit id; everything else crosses machines through shared places:

- the run's context and plan come from the store (`runs/<key>/run.json`, `plan.json`), and,
  when `flotilla run --pool` launched it, the start the scheduler chose
  (`units/<unit>/launch.json`: base, dependencies, fingerprint);
- the branches of the units it depends on come from the target's remote, where their own unit
  flow runs pushed them; this one pushes its branch there when it succeeds;
- inputs and outputs (artifacts) go through the store, as in a single-machine run.

The work loop is the same `run_unit` task the implement stage runs, with the same resource tag,
so Prefect's tag concurrency limits hold across every machine. A flow run started again after
its worker died finds a unit that already succeeded and pushed, and does not redo it.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from pathlib import Path

import networkx as nx
from prefect import flow, get_run_logger, tags
from prefect.utilities.annotations import quote

from flotilla.errors import GitError, RunError
from flotilla.plan import Plan
from flotilla.results import UnitRecord, UnitStatus
from flotilla.runs import RunContext, unit_fingerprint
from flotilla.settings import get_settings
from flotilla.spec import UnitSpec
from tasks.control import load_added
from tasks.launching import UnitLaunch, launch_key
from tasks.naming import label_flow_run, run_tags, stage_run_name, unit_tag, unit_task_name
from tasks.stage_inputs import RunRef
from tasks.store import ArtifactStore, RunStore
from tasks.tag_limits import only_limited_tags
from tasks.units import UnitJob, run_store_for, run_unit, workspace_for


@flow(name="unit", persist_result=False, log_prints=True)
def unit(
    run_key: str,
    unit_id: str,
    store: str | None = None,
    base_commit: str | None = None,
    workdir: str | None = None,
) -> UnitRecord:
    """Run `unit_id` of run `run_key`; its dependencies must have succeeded already."""
    only_limited_tags()  # no slot round trip for the unit's tags, which have no limits
    job = unit_job(run_key, unit_id, store=store, base_commit=base_commit, workdir=workdir)
    logger = get_run_logger()
    workspace = workspace_for(job.ctx)
    if (done := already_done(job, workspace, launched_at(job))) is not None:
        logger.info("Unit %s already succeeded at %s; not running it again.", unit_id, done.commit)
        return done
    logger.info(
        "Unit %s of run %s from %s, on %s",
        unit_id,
        run_key,
        job.base_commit[:12],
        ", ".join(job.dep_branches) or "no dependencies",
    )
    label_flow_run(stage_run_name(run_key, unit_id), [*run_tags(job.ctx), unit_tag(unit_id)])
    with tags(*run_tags(job.ctx)):  # the orchestrator holds the unit's class slot
        record = run_unit.with_options(
            task_run_name=unit_task_name(unit_id, "unit"), tags=[unit_tag(unit_id)]
        )(quote(job))
    losers = [c.branch for c in record.candidates if c.commit and c.number != record.winner]
    workspace.push([record.branch, *losers])  # best-of: the other candidates' work too
    logger.info("Unit %s succeeded; pushed %s to %s.", unit_id, record.branch, job.ctx.repo)
    return record


def launched_at(job: UnitJob) -> datetime | None:
    launch = _launch(run_store_for(job.ctx), job.unit.id)
    return launch.launched_at if launch is not None else None


def already_done(job: UnitJob, workspace, since: datetime | None) -> UnitRecord | None:
    """The unit's success with this very fingerprint since the scheduler launched it, when its
    branch is on the remote: a flow run started again after its worker died past the push
    finds its work done. (A unit launched again on purpose, `flotilla retry`, runs again.)"""
    runs = run_store_for(job.ctx)
    previous = runs.read_record(job.unit.id)
    if (
        since is None
        or previous is None
        or previous.status != UnitStatus.SUCCEEDED
        or previous.fingerprint != job.fingerprint
        or previous.finished_at is None
        or previous.finished_at < since
    ):
        return None
    with contextlib.suppress(GitError):
        workspace.fetch([previous.branch])
    return previous if workspace.branch_sha(previous.branch) == previous.commit else None


def unit_job(
    run_key: str,
    unit_id: str,
    *,
    store: str | None = None,
    base_commit: str | None = None,
    workdir: str | None = None,
) -> UnitJob:
    """Rebuild the unit's job from the store, and make its dependencies' branches local.

    A unit the scheduler launched on a pool finds its start and fingerprint in the store
    (`units/<unit>/launch.json`); one started by hand has them worked out from the plan."""
    runs = RunStore(ArtifactStore(store or get_settings().store), run_key)
    ctx = _context(runs, workdir)
    units = _planned_units(runs, ctx)
    plan = Plan.from_request(
        ctx.request.model_copy(update={"units": units}), ctx.stage("work_loop"), ctx.workflow
    )
    if unit_id not in plan.units:
        raise RunError(
            f"Run {run_key} has no unit {unit_id!r} (its units: {', '.join(plan.units)}). "
            "Check the unit id against `flotilla plan` or runs/<key>/plan.json."
        )
    ledger = runs.read_ledger()
    launch = _launch(runs, unit_id)
    if launch is not None:
        deps = launch.dependencies
        base_commit = base_commit or launch.base_commit
    else:
        deps = _dependencies(plan, unit_id, ledger)
    unfinished = [d for d in deps if d not in ledger or ledger[d].status != UnitStatus.SUCCEEDED]
    if unfinished:
        states = ", ".join(
            f"{d} ({ledger[d].status.value if d in ledger else 'not started'})" for d in unfinished
        )
        raise RunError(
            f"Unit {unit_id!r} of run {run_key} depends on units that have not succeeded: "
            f"{states}. Run them first; a unit starts only from its dependencies' commits."
        )
    workspace = workspace_for(ctx)
    tip = workspace.prepare()
    base = base_commit or next((r.base_commit for r in ledger.values() if r.base_commit), tip)
    unit_of = {ctx.unit_branch(d): d for d in deps}
    expected = {branch: ledger[d].commit for branch, d in unit_of.items()}
    missing = workspace.branches_not_at(expected)
    workspace.fetch(missing)
    if still := workspace.branches_not_at({b: expected[b] for b in missing}):
        branch, d = still[0], unit_of[still[0]]
        raise RunError(
            f"The branch {branch} in {ctx.repo} is not at unit {d!r}'s commit "
            f"{expected[branch][:12]} from the ledger. Run unit {d!r} again, or push its "
            "branch to the target."
        )
    settings = plan.settings[unit_id]
    fingerprint = unit_fingerprint(
        plan.units[unit_id], settings.model_dump_json(), base, {d: ledger[d].commit for d in deps}
    )
    return UnitJob(
        run=RunRef(run_key=ctx.run_key, store_url=ctx.store_url, workdir=ctx.workdir),
        unit=plan.units[unit_id],
        settings=settings,
        base_commit=base,
        dep_branches=[ctx.unit_branch(d) for d in deps],
        covered_branches=[ctx.unit_branch(d) for d in plan.covered(deps)],
        fingerprint=launch.fingerprint if launch is not None else fingerprint,
    )


def _launch(runs: RunStore, unit_id: str) -> UnitLaunch | None:
    try:
        return runs.store.read_model(launch_key(runs, unit_id), UnitLaunch)
    except KeyError:
        return None


def _dependencies(plan: Plan, unit_id: str, ledger: dict[str, UnitRecord]) -> list[str]:
    """The ancestors to start from: as the scheduler does, a unit ordered after another only
    for a file conflict starts without it when it failed (it left no work to build on)."""
    needs = nx.DiGraph()
    needs.add_nodes_from(plan.graph)
    needs.add_edges_from(
        (a, b) for a, b, why in plan.graph.edges(data="reasons") if why - {"conflict"}
    )
    hard = nx.ancestors(needs, unit_id)
    return [
        d
        for d in plan.ancestors(unit_id)
        if d in hard or d not in ledger or ledger[d].status != UnitStatus.FAILED
    ]


def _context(runs: RunStore, workdir: str | None) -> RunContext:
    """The run's context, with this machine's work directory in place of the starter's."""
    try:
        ctx = runs.store.read_model(runs.context_key, RunContext)
    except KeyError:
        raise RunError(
            f"Run {runs.run_key} has no context at {runs.store.uri(runs.context_key)}. Start the "
            "run with `flotilla run` or the feature flow first, and pass the same store."
        ) from None
    root = Path(workdir or get_settings().workdir).resolve()
    return ctx.model_copy(update={"workdir": str(root / runs.run_key)})


def _planned_units(runs: RunStore, ctx: RunContext) -> list[UnitSpec]:
    """The units of the saved plan (a decomposer may have made them), else the request's, and
    the units agents proposed mid-run."""
    try:
        data = runs.store.read_json(runs.plan_key)
        units = [UnitSpec.model_validate(u) for u in data.get("units", [])]
    except KeyError:
        units = []
    units = units or list(ctx.request.units)
    known = {u.id for u in units}
    return units + [u for u in load_added(runs).specs() if u.id not in known]
