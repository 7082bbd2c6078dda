"""`flotilla validate` and `flotilla run`."""

from __future__ import annotations

import argparse
import os

from commands.common import EXIT_OK, FORCE_HELP, command
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
    run.add_argument("--force", action="store_true", help=FORCE_HELP)


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
    from commands.common import quiet_expected_errors
    from commands.durability import report_outcome
    from flows.feature import build_context, feature
    from tasks.locking import hold_run_lock

    quiet_expected_errors()

    ctx = build_context(
        args.request, args.repo, args.base, args.workflow, args.store, args.run_key, args.workdir
    )
    with hold_run_lock(ctx.store_url, ctx.run_key, "flotilla run"):  # one writer per run key
        check_target_branches(ctx, args.force)
        print(f"Run key: {ctx.run_key}  (store: {ctx.store_url})", flush=True)
        state = feature(
            request=args.request,
            repo=ctx.repo,
            base=ctx.base,
            workflow=args.workflow,
            store=ctx.store_url,
            run_key=ctx.run_key,
            workdir=os.path.dirname(ctx.workdir),
            force=args.force,
            return_state=True,
        )
        return report_outcome(state, ctx.store_url, ctx.run_key, ctx.repo)


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
