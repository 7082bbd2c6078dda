"""`flotilla validate` and `flotilla run`."""

from __future__ import annotations

import argparse
import os
import sys

from commands.common import EXIT_BAD_INPUT, EXIT_OK, FORCE_HELP, command
from flotilla.errors import ApiUnreachable
from flotilla.results import FeatureResult


def register(sub) -> None:
    validate = command(sub, "validate", cmd_validate, "Check a request or workflow file.")
    validate.add_argument("file", metavar="FILE", help="feature request or workflow spec (YAML)")
    validate.add_argument(
        "--workflow", metavar="FILE", help="for a request: the workflow it runs with (built-in)"
    )

    run = command(sub, "run", cmd_run, "Run a feature request end to end.")
    run.add_argument("request", metavar="REQUEST", help="feature request file (YAML)")
    run.add_argument("--repo", help="target repository (path or URL); overrides repo.url")
    run.add_argument("--base", help="base branch; overrides repo.base (default: main)")
    run.add_argument("--workflow", metavar="FILE", help="workflow spec (default: built-in)")
    run.add_argument("--store", metavar="URL", help="artifact store (default: .flotilla/store)")
    run.add_argument("--run-key", metavar="KEY", help="run key (default: <feature>-<time>)")
    run.add_argument("--workdir", metavar="DIR", help="clones and worktrees (.flotilla/work)")
    run.add_argument(
        "--max-usd",
        type=positive_number,
        metavar="N",
        help="refuse to start when even the low end of the cost estimate is above N dollars",
    )
    run.add_argument(
        "--pool",
        metavar="NAME",
        help="run each unit as a flow run of the `unit` deployment on this Prefect work pool",
    )
    run.add_argument("--force", action="store_true", help=FORCE_HELP)


def positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give e.g. 5 or 2.50") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def cmd_validate(args: argparse.Namespace) -> int:
    from flotilla.loading import check_request_for, load_any, load_workflow
    from flotilla.plan import Plan
    from flotilla.spec import FeatureRequest

    spec = load_any(args.file)
    if isinstance(spec, FeatureRequest):
        check_request_for(spec, load_workflow(args.workflow), args.file)  # as `run` does
        plan = Plan.from_request(spec)
        print(
            f"{args.file}: valid feature request '{spec.feature.id}' with {len(plan.units)} "
            f"unit(s) in {len(plan.levels())} level(s)."
        )
    else:
        stages = " -> ".join(s.name for s in spec.workflow.stages)
        print(f"{args.file}: valid workflow '{spec.workflow.name}': {stages}.")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from prefect import tags

    from commands.common import quiet_expected_errors
    from commands.durability import report_outcome
    from flows.feature import build_context, feature
    from tasks.locking import hold_run_lock
    from tasks.naming import run_tags

    quiet_expected_errors()
    # every input, the target repository and its base branch are checked before Prefect starts
    ctx = build_context(
        args.request,
        args.repo,
        args.base,
        args.workflow,
        args.store,
        args.run_key,
        args.workdir,
        args.pool,
    )
    if args.max_usd is not None and (refusal := over_max_usd(ctx, args.max_usd, args.request)):
        print(refusal, file=sys.stderr)
        return EXIT_BAD_INPUT
    stage = ctx.stage("work_loop")
    if stage is not None and stage.work_pool:  # --pool or the workflow's `work_pool`
        from tasks.launching import check_pool

        check_pool(stage.work_pool, ctx.store_url)  # a pool that cannot work changes nothing
    with hold_run_lock(ctx.store_url, ctx.run_key, "flotilla run"):  # one writer per run key
        check_target_branches(ctx, args.force)
        print(f"Run key: {ctx.run_key}  (store: {ctx.store_url})", flush=True)
        with tags(*run_tags(ctx)):
            state, guard = guarded(
                feature.with_options(flow_run_name=ctx.run_key),
                ctx.run_key,
                ctx.store_url,
                ctx.workdir,
                request=args.request,
                repo=ctx.repo,
                base=ctx.base,
                workflow=args.workflow,
                store=ctx.store_url,
                run_key=ctx.run_key,
                workdir=os.path.dirname(ctx.workdir),
                pool=args.pool,
                force=args.force,
            )
        return report_outcome(state, ctx.store_url, ctx.run_key, ctx.repo, guard)


def guarded(flow, run_key: str, store_url: str, workdir: str, /, **parameters):
    """Run the feature flow under a RunGuard: SIGTERM/SIGINT and a Prefect API that stays away
    stop it cleanly (tasks/stopping.py); a temporary server that will not start is one line."""
    from tasks.stopping import RunGuard

    guard = RunGuard(run_key, store_url, workdir).install()
    try:
        state = flow(**parameters, return_state=True)
        guard.settle()
    except RuntimeError as exc:
        if "ephemeral Prefect API server" not in str(exc):
            raise
        from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

        raise ApiUnreachable(
            "The temporary Prefect server did not start within "
            f"{PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()} s "
            "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS; the machine may be busy): raise "
            "it, or start a server (`make server`) and set PREFECT_API_URL, then try again."
        ) from None
    finally:
        guard.uninstall()
    return state, guard


def over_max_usd(ctx, max_usd: float, request_path: str) -> str:
    """Why the run must not start under `--max-usd` (empty when it may); reads the store only."""
    from commands.planning import estimate_plan
    from flotilla.plan import Plan
    from flotilla.usage import format_usd
    from tasks.stats import typical_durations
    from tasks.store import ArtifactStore

    if not ctx.request.units:
        return ""  # planned by an agent at the start: nothing to estimate yet
    store = ArtifactStore(ctx.store_url)
    plan = Plan.from_request(ctx.request, workflow=ctx.workflow, durations=typical_durations(store))
    estimate = estimate_plan(plan, ctx.request, store)
    if estimate.cost is None or estimate.cost.low <= max_usd:
        return ""
    cost = estimate.cost
    return (
        f"Not started: even the low end of the estimate ({format_usd(cost.low)}; expected "
        f"{format_usd(cost.mid)}, up to {format_usd(cost.high)}) is above --max-usd "
        f"{format_usd(max_usd)}; nothing was written. `flotilla plan {request_path} --store "
        f"{ctx.store_url}` shows the estimate; raise --max-usd or set a `budget:` instead."
    )


def check_target_branches(ctx, force: bool) -> None:
    """Refuse now a run whose push would have to drop commits it did not make (see pushing)."""
    from tasks.publishing import push_env
    from tasks.pushing import refuse_foreign_before_run
    from tasks.store import ArtifactStore, RunStore
    from tasks.units import workspace_for

    workspace = workspace_for(ctx)
    remote = ctx.request.publish.remote or ctx.repo
    workspace.env = {**workspace.env, **push_env(ctx.request.publish, remote)}
    runs = RunStore(ArtifactStore(ctx.store_url), ctx.run_key)
    overwritten = refuse_foreign_before_run(workspace, runs, remote, ctx.feature_branch, force)
    if overwritten:
        print(
            f"--force: {', '.join(overwritten)} in {remote} hold commits of someone else; they "
            "are kept under refs/flotilla/backup/ before the push overwrites them.",
            flush=True,
        )


def _read_result(store_url: str, run_key: str) -> FeatureResult | None:
    from tasks.store import ArtifactStore, RunStore

    runs = RunStore(ArtifactStore(store_url), run_key)
    try:
        return runs.store.read_model(runs.result_key, FeatureResult)
    except KeyError:
        return None


def print_summary(result: FeatureResult, repo: str) -> None:
    print()
    print(f"Feature:        {result.title} ({result.feature_id}) - {result.status.value}")
    if result.feature_branch:
        print(f"Feature branch: {result.feature_branch} (in {repo})")
    if result.pr_path:
        print(f"PR description: {result.pr_path}")
    if result.pr_url:
        print(f"Pull request:   {result.pr_url}")
    if result.gate:
        print(f"Test gate:      {result.gate.one_line()}")
    if result.error:
        print(f"Problem:        {result.error}")
    print("Units:")
    for record in result.units:
        print(f"  {record.line()}")
