"""`flotilla validate` and `flotilla run`."""

from __future__ import annotations

import argparse
import os

from commands.common import EXIT_OK, command
from flotilla.results import FeatureResult


def register(sub) -> None:
    validate = command(sub, "validate", cmd_validate, "Check a request or workflow file.")
    validate.add_argument("file", metavar="FILE", help="feature request or workflow spec (YAML)")

    run = command(sub, "run", cmd_run, "Run a feature request end to end.")
    run.add_argument("request", metavar="REQUEST", help="feature request file (YAML)")
    run.add_argument("--repo", help="target repository (path or URL); overrides repo.url")
    run.add_argument("--base", help="base branch; overrides repo.base (default: main)")
    run.add_argument("--workflow", metavar="FILE", help="workflow spec (default: built-in)")
    run.add_argument("--store", metavar="URL", help="artifact store (default: .flotilla/store)")
    run.add_argument("--run-key", metavar="KEY", help="run key (default: <feature>-<time>)")
    run.add_argument("--workdir", metavar="DIR", help="clones and worktrees (.flotilla/work)")
    run.add_argument(
        "--pool",
        metavar="NAME",
        help="run each unit as a flow run of the `unit` deployment on this Prefect work pool",
    )


def cmd_validate(args: argparse.Namespace) -> int:
    from flotilla.loading import load_any
    from flotilla.plan import Plan
    from flotilla.spec import FeatureRequest

    spec = load_any(args.file)
    if isinstance(spec, FeatureRequest):
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
    from flows.feature import build_context, feature

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
    stage = ctx.stage("work_loop")
    if stage is not None and stage.work_pool:  # --pool or the workflow's `work_pool`
        from tasks.launching import check_pool

        check_pool(stage.work_pool, ctx.store_url)  # a pool that cannot work changes nothing
    print(f"Run key: {ctx.run_key}  (store: {ctx.store_url})", flush=True)
    state = feature(
        request=args.request,
        repo=ctx.repo,
        base=ctx.base,
        workflow=args.workflow,
        store=ctx.store_url,
        run_key=ctx.run_key,
        workdir=os.path.dirname(ctx.workdir),
        pool=args.pool,
        return_state=True,
    )
    from commands.durability import report_outcome

    return report_outcome(state, ctx.store_url, ctx.run_key, ctx.repo)


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
