"""`flotilla resume`, `retry`, `pause`, `checkpoints`, `rollback`: a run after its first start.

Each needs only the run key and the store: the run's context, ledger, checkpoints and control
requests all live under `runs/<key>/` there.
"""

from __future__ import annotations

import argparse
import sys

from commands.common import (
    EXIT_API_UNREACHABLE,
    EXIT_FAILED,
    EXIT_FOREIGN_COMMITS,
    EXIT_OK,
    EXIT_PAUSED,
    FORCE_HELP,
    command,
)
from commands.run import positive_number
from flotilla.results import FeatureStatus, RunState, UnitStatus


def register(sub) -> None:
    resume = command(sub, "resume", cmd_resume, "Carry on a run that crashed, paused or failed.")
    _run_args(resume)
    resume.add_argument(
        "--force",
        action="store_true",
        help="resume even if the run is marked running on another machine; also " + FORCE_HELP,
    )
    resume.add_argument(
        "--budget-usd",
        type=positive_number,
        metavar="N",
        help="raise the run's budget to N dollars",
    )
    resume.add_argument(
        "--budget-tokens", type=_positive_int, metavar="N", help="raise the run's token budget"
    )
    resume.add_argument(
        "--budget-minutes", type=positive_number, metavar="N", help="raise the run's agent minutes"
    )

    retry = command(
        sub,
        "retry",
        cmd_retry,
        "Run the failed units of a run again (and those they blocked), then merge and finalize.",
    )
    _run_args(retry)
    retry.add_argument(
        "--unit",
        metavar="ID",
        action="append",
        default=[],
        help="run this unit again even if it succeeded, with the units after it (repeatable)",
    )
    retry.add_argument("--force", action="store_true", help=FORCE_HELP)

    pause = command(
        sub, "pause", cmd_pause, "Ask a running run to start no new unit and stop (exit 3)."
    )
    _run_args(pause)
    pause.add_argument("--reason", default="", help="a note kept with the pause request")

    checkpoints = command(sub, "checkpoints", cmd_checkpoints, "List a run's checkpoints.")
    _run_args(checkpoints)

    rollback = command(
        sub, "rollback", cmd_rollback, "Reset a run's ledger and unit branches to a checkpoint."
    )
    _run_args(rollback)
    rollback.add_argument(
        "--to", metavar="N", type=int, required=True, help="checkpoint number to go back to"
    )


def _run_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_key", metavar="RUN_KEY", help="the run key printed at its start")
    parser.add_argument("--store", metavar="URL", help="artifact store (default: .flotilla/store)")


def _positive_int(text: str) -> int:
    value = positive_number(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number of tokens")
    return int(value)


def cmd_resume(args: argparse.Namespace) -> int:
    if args.budget_usd or args.budget_tokens or args.budget_minutes:
        _raise_budget(args)
    return _carry_on(args.run_key, args.store, [], args.force, "Resuming")


def _raise_budget(args: argparse.Namespace) -> None:
    """Write the raised run budget before the run carries on; it stays for later resumes."""
    from flotilla.budget import Spend, describe, raised
    from flotilla.usage import format_tokens, format_usd
    from tasks.lifecycle import load_context
    from tasks.spending import run_budget, run_spend, save_run_budget

    ctx = load_context(args.run_key, args.store)
    runs = _runs(ctx.store_url, ctx.run_key)
    before = run_budget(runs, ctx)
    after = raised(before, args.budget_usd, args.budget_tokens, args.budget_minutes)
    save_run_budget(runs, after)
    spend: Spend = run_spend(runs)
    print(
        f"Run {ctx.run_key}: budget {describe(before)} -> {describe(after)}; spent so far "
        f"{format_usd(spend.usd, spend.estimated)}, {format_tokens(spend.tokens)} tokens, "
        f"{spend.agent_minutes:.1f} agent minutes.",
        flush=True,
    )


def cmd_retry(args: argparse.Namespace) -> int:
    from tasks.lifecycle import load_context
    from tasks.locking import hold_run_lock

    ctx = load_context(args.run_key, args.store)
    with hold_run_lock(ctx.store_url, ctx.run_key, "flotilla retry"):  # one writer per run key
        return _retry(ctx, args)


def _retry(ctx, args: argparse.Namespace) -> int:
    from flotilla.errors import RunError
    from tasks.control import load_added
    from tasks.lifecycle import read_summary, saved_units

    runs = _runs(ctx.store_url, ctx.run_key)
    units = [*(saved_units(runs) or ctx.request.units), *load_added(runs).specs()]
    known = [u.id for u in units]
    unknown = [u for u in args.unit if u not in known]
    if unknown:
        raise RunError(
            f"Run {ctx.run_key} has no unit {', '.join(map(repr, unknown))}; its units: "
            f"{', '.join(known)}."
        )
    ledger = runs.read_ledger()
    failed = [u for u in known if u in ledger and ledger[u].status == UnitStatus.FAILED]
    blocked = [u for u in known if u in ledger and ledger[u].status == UnitStatus.BLOCKED]
    summary = read_summary(runs)
    succeeded = summary is not None and summary.state == RunState.SUCCEEDED
    if not args.unit and not failed and succeeded:
        print(f"Run {ctx.run_key} succeeded; nothing failed. Name units with --unit to redo them.")
        return EXIT_OK
    again = args.unit or failed
    plan_note = f" (and the units they blocked: {', '.join(blocked)})" if blocked else ""
    done = [u for u in known if u in ledger and ledger[u].status == UnitStatus.SUCCEEDED]
    redone = _with_dependents(units, set(again))
    reused = [u for u in done if u not in redone]
    print(
        f"Retrying run {ctx.run_key}: running {', '.join(again) or 'no failed unit'} again"
        f"{plan_note}; reusing {len(reused)} succeeded unit(s)  "
        f"(store: {ctx.store_url})",
        flush=True,
    )
    return _carry_on(ctx.run_key, ctx.store_url, args.unit, False, "", push_force=args.force)


def _with_dependents(units, roots: set[str]) -> set[str]:
    """`roots` and every unit after them: a new commit of a dependency re-runs its dependents."""
    import networkx as nx

    graph = nx.DiGraph()
    for unit in units:
        graph.add_node(unit.id)
        for dep in [*unit.depends_on, *(ref.split("/", 1)[0] for ref in unit.inputs)]:
            graph.add_edge(dep, unit.id)
    found = set(roots)
    for root in roots & set(graph):
        found |= nx.descendants(graph, root)
    return found


def _carry_on(
    run_key: str,
    store: str | None,
    rerun: list[str],
    force: bool,
    verb: str,
    push_force: bool | None = None,
) -> int:
    from tasks.lifecycle import load_context
    from tasks.locking import hold_run_lock

    ctx = load_context(run_key, store)
    with hold_run_lock(ctx.store_url, run_key, f"flotilla {verb and 'resume' or 'retry'}"):
        return _carry_on_locked(
            ctx, rerun, force, verb, force if push_force is None else push_force
        )


def _carry_on_locked(ctx, rerun: list[str], force: bool, verb: str, push_force: bool) -> int:
    from prefect import tags

    from commands.common import quiet_expected_errors
    from commands.run import check_target_branches, guarded
    from flows.feature import feature
    from tasks.lifecycle import read_summary
    from tasks.naming import run_tags
    from tasks.recovery import check_not_running

    quiet_expected_errors()
    run_key = ctx.run_key
    runs = _runs(ctx.store_url, run_key)
    summary = read_summary(runs)
    if summary is not None:
        if summary.state == RunState.SUCCEEDED and not rerun:
            print(f"Run {run_key} already succeeded; there is nothing to resume.")
            return EXIT_OK
        check_not_running(summary, force)  # refuse while its orchestrator is alive
    if verb:
        print(f"{verb} run {run_key}  (store: {ctx.store_url})", flush=True)
    check_target_branches(ctx, push_force)
    with tags(*run_tags(ctx)):  # named and tagged like the run's first start
        state, guard = guarded(
            feature.with_options(flow_run_name=run_key),
            run_key,
            ctx.store_url,
            ctx.workdir,
            run_key=run_key,
            store=ctx.store_url,
            resume=True,
            rerun=rerun,
            force=force,
        )
    return report_outcome(state, ctx.store_url, run_key, ctx.repo, guard)


def report_outcome(state, store_url: str, run_key: str, repo: str, guard=None) -> int:
    """Print how a run ended (summary, failure report or pause note); return the exit code."""
    from commands.run import _read_result, print_summary
    from tasks.lifecycle import failures_key
    from tasks.pushing import PUSH_REFUSED
    from tasks.store_faults import STORE_UNREACHABLE

    if state.is_failed() and STORE_UNREACHABLE in (state.message or ""):
        print(
            f"{state.message}; nothing was lost: `flotilla resume {run_key}` once it is back",
            file=sys.stderr,
        )
        return EXIT_FAILED
    result = _read_result(store_url, run_key)
    if result is None and guard is not None and guard.api_was_down:
        print(
            f"The run stopped while the Prefect API at {guard.api_url} was unreachable; the run "
            f"is saved: `flotilla resume {run_key}`",
            file=sys.stderr,
        )
        return EXIT_API_UNREACHABLE
    if result is None:
        print(f"The run ended before it produced a result: {state.message}", file=sys.stderr)
        print(
            f"`flotilla resume {run_key}` carries it on once the cause is fixed.", file=sys.stderr
        )
        return EXIT_FAILED
    print_summary(result, repo)
    if result.status == FeatureStatus.PAUSED:
        print()
        if result.error.startswith("paused: budget spent"):
            print(f"{result.error} (--store {store_url})")
        else:
            print(f"Paused. Carry on with: flotilla resume {run_key} --store {store_url}")
        return EXIT_PAUSED
    if not result.ok:
        runs = _runs(store_url, run_key)
        try:
            report = runs.store.read_text(failures_key(runs))
        except KeyError:
            report = ""
        if report:
            print()
            print(report.rstrip())
            print()
            print(f"This report is stored at {runs.store.uri(failures_key(runs))}")
        return EXIT_FOREIGN_COMMITS if PUSH_REFUSED in result.error else EXIT_FAILED
    return EXIT_OK if state.is_completed() else EXIT_FAILED


def cmd_pause(args: argparse.Namespace) -> int:
    import socket

    from tasks.control import request_pause
    from tasks.lifecycle import load_context, read_summary
    from tasks.recovery import process_alive

    ctx = load_context(args.run_key, args.store)
    runs = _runs(ctx.store_url, ctx.run_key)
    summary = read_summary(runs)
    if summary is None or summary.state != RunState.RUNNING:
        state = summary.state.value if summary else "not started"
        print(
            f"Run {ctx.run_key} is not running (state: {state}); there is nothing to pause.",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if summary.host == socket.gethostname() and not process_alive(summary.pid):
        print(
            f"Run {ctx.run_key} is marked running, but its orchestrator (pid {summary.pid}) is "
            f"gone: it crashed. Carry it on with: flotilla resume {ctx.run_key} --store "
            f"{ctx.store_url}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    request_pause(runs, args.reason)
    print(
        f"Pause requested for run {ctx.run_key} (orchestrator pid {summary.pid} on "
        f"{summary.host}). It starts no new unit, lets the units in flight finish, writes a "
        f"checkpoint and exits with code {EXIT_PAUSED}.\n"
        f"Carry on later with: flotilla resume {ctx.run_key} --store {ctx.store_url}"
    )
    return EXIT_OK


def cmd_checkpoints(args: argparse.Namespace) -> int:
    from tasks.checkpoints import list_checkpoints
    from tasks.lifecycle import load_context

    ctx = load_context(args.run_key, args.store)
    checkpoints = list_checkpoints(_runs(ctx.store_url, ctx.run_key))
    if not checkpoints:
        print(f"Run {ctx.run_key} has no checkpoints yet (one is written after each unit).")
        return EXIT_OK
    print(f"{'#':>4}  {'time (UTC)':<19}  {'done':>7}  reason")
    for cp in checkpoints:
        done = f"{len(cp.units_done)}/{cp.units_total}"
        print(f"{cp.number:>4}  {cp.created_at:%Y-%m-%d %H:%M:%S}  {done:>7}  {cp.reason}")
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tasks.checkpoints import rollback
    from tasks.lifecycle import load_context, read_summary, workspace_of
    from tasks.locking import hold_run_lock
    from tasks.recovery import recover

    ctx = load_context(args.run_key, args.store)
    runs = _runs(ctx.store_url, ctx.run_key)
    workspace = workspace_of(ctx)
    summary = read_summary(runs)
    with hold_run_lock(ctx.store_url, ctx.run_key, "flotilla rollback"):  # not under a live run
        if summary is not None:
            for line in recover(summary, Path(ctx.workdir), workspace.clone_dir):
                print(f"Recovering: {line}.")
        done = rollback(ctx, runs, workspace, args.to)
    cp = done.checkpoint
    print(
        f"Rolled run {ctx.run_key} back to checkpoint {cp.number} "
        f"({cp.created_at:%Y-%m-%d %H:%M:%S}, {cp.reason}): "
        f"{len(cp.units_done)} of {cp.units_total} unit(s) done."
    )
    if done.note:
        print(done.note)
    print(f"`flotilla resume {ctx.run_key}` runs again: {', '.join(done.rerun) or 'nothing'}.")
    return EXIT_OK


def _runs(store_url: str, run_key: str):
    from tasks.store import ArtifactStore, RunStore

    return RunStore(ArtifactStore(store_url), run_key)
