"""`flotilla plan`: the plan a request makes, printed without running anything.

Units by level, the critical path and the makespan lower bound, the conflict groups and the edges
they added, and the resource classes with their limits. Weights use the durations recorded in the
store. An llm-mode request has no plan until its decomposer ran; `--run-key` shows the plan that
run accepted.
"""

from __future__ import annotations

import argparse
import json
import sys

from commands.common import EXIT_FAILED, EXIT_OK, command
from flotilla.errors import RunError
from flotilla.estimate import RunEstimate
from flotilla.plan import Plan
from flotilla.spec import FeatureRequest, UnitSpec, WorkflowSpec

FORMATS = ("text", "json", "mermaid")


def register(sub) -> None:
    plan = command(sub, "plan", cmd_plan, "Show the plan of a feature request; runs nothing.")
    plan.add_argument("request", metavar="REQUEST", help="feature request file (YAML)")
    plan.add_argument("--workflow", metavar="FILE", help="workflow spec (default: built-in)")
    plan.add_argument(
        "--store", metavar="URL", help="store with recorded durations and saved plans"
    )
    plan.add_argument("--run-key", metavar="KEY", help="show the plan saved by this run")
    plan.add_argument("--format", choices=FORMATS, default="text", help="output format")


def cmd_plan(args: argparse.Namespace) -> int:
    from flotilla.loading import load_request, load_workflow
    from flotilla.settings import get_settings
    from tasks.stats import typical_durations
    from tasks.store import ArtifactStore, RunStore

    request = load_request(args.request)
    workflow = load_workflow(args.workflow)
    store = ArtifactStore(args.store or get_settings().store)
    source = "request"
    if args.run_key:
        runs = RunStore(store, args.run_key)
        try:
            saved = store.read_json(runs.plan_key)
        except KeyError:
            raise RunError(
                f"No plan is saved for run {args.run_key!r} in {store.url}. Check the run key "
                "and --store, or run the request first (`flotilla run REQUEST --run-key KEY`)."
            ) from None
        units = [UnitSpec.model_validate(u) for u in saved.get("units", [])]
        request = request.model_copy(update={"units": units})
        source = f"run {args.run_key} ({saved.get('source', 'static')} decomposer)"
    elif not request.units:
        print(_no_plan_yet(args, workflow), file=sys.stderr)
        return EXIT_FAILED
    plan = Plan.from_request(request, workflow=workflow, durations=typical_durations(store))
    estimate = estimate_plan(plan, request, store)
    if args.format == "json":
        print(
            json.dumps(
                {"source": source, **plan.to_json(), "estimate": estimate.model_dump(mode="json")},
                indent=2,
            )
        )
    elif args.format == "mermaid":
        print(render_mermaid(plan))
    else:
        print(render_text(plan, source))
        print()
        print(f"Estimate (from the history recorded in {store.url}):")
        print("\n".join(f"  {line}" for line in estimate.lines()))
    return EXIT_OK


def estimate_plan(plan: Plan, request: FeatureRequest, store) -> RunEstimate:
    """Cost and duration of `plan`, from the usage its agents recorded in `store`."""
    from flotilla.estimate import agent_label, estimate_run, prompt_size
    from tasks.stats import usage_samples

    samples = {}
    for settings in plan.settings.values():
        label = agent_label(settings.agent_name, settings.agent.model)
        if label not in samples:
            samples[label] = usage_samples(store, settings.agent_name, settings.agent.model or "")
    sizes = {u.id: prompt_size(request, u) for u in plan.units.values()}
    return estimate_run(plan, samples, sizes)


def _no_plan_yet(args: argparse.Namespace, workflow: WorkflowSpec) -> str:
    stage = workflow.stage_for("plan_decomposer")
    if stage is None or stage.mode != "llm":
        return (
            f"{args.request} lists no units, and the workflow's plan_decomposer stage is in "
            "`static` mode, so there is no plan. List the units in the request, or set "
            "`mode: llm` (with an `agent:`) on the plan_decomposer stage so an agent plans them."
        )
    store = f" --store {args.store}" if args.store else ""
    workflow_arg = f" --workflow {args.workflow}" if args.workflow else ""
    return (
        f"{args.request} lists no units: its plan is made by an agent when the run starts (the "
        f"plan_decomposer stage {stage.name!r} is in `llm` mode). Run it with a key, e.g. "
        f"`flotilla run {args.request}{workflow_arg}{store} --run-key KEY`; the accepted plan is "
        f"saved in the store, and `flotilla plan {args.request}{workflow_arg}{store} "
        "--run-key KEY` shows it."
    )


# --- text ----------------------------------------------------------------------------------------


def render_text(plan: Plan, source: str = "request") -> str:
    levels = plan.levels()
    lines = [
        f"Plan for {plan.feature.id} ({plan.feature.title}): {len(plan.units)} unit(s), "
        f"{plan.graph.number_of_edges()} edge(s), {len(levels)} level(s); from the {source}.",
        "Weights (seconds): estimate_s, else the typical duration of the unit's class"
        + (
            " (" + ", ".join(f"{k} {_s(v)}" for k, v in sorted(plan.durations.items())) + ")"
            if plan.durations
            else " (none recorded)"
        )
        + ", else 1.",
        "",
        "Levels (a level starts when what it depends on is done):",
    ]
    width = len(str(len(levels)))
    for number, level in enumerate(levels, 1):
        cells = [f"{u} [{plan.settings[u].resources}, {_s(plan.weight(u))}]" for u in level]
        lines.append(f"  {number:>{width}}. " + ", ".join(cells))
    path, length = plan.critical_path()
    bound = plan.lower_bound()
    lines += ["", f"Critical path: {' -> '.join(path) or '(empty)'}  ({_s(length)})"]
    lines.append(f"Makespan lower bound: {_s(bound.value)} = max of")
    lines.append(f"  critical path                {_s(bound.critical_path)}")
    work = plan.work_per_class()
    for name, value in sorted(bound.per_class.items()):
        term = f"class {name}: {_s(work[name])} / {plan.resources[name]}"
        lines.append(f"  {term:<28} {_s(value)}")
    if bound.stage is not None:
        term = f"max_concurrent: {_s(sum(work.values()))} / {plan.max_concurrent}"
        lines.append(f"  {term:<28} {_s(bound.stage)}")
    lines += ["", "Conflict groups (units whose touches overlap never run at the same time):"]
    if not plan.conflict_groups:
        note = " (units without touches are trusted)" if plan.unknown_touches == "trust" else ""
        lines.append(f"  (none){note}")
    for number, group in enumerate(plan.conflict_groups, 1):
        lines.append(f"  {number}. {', '.join(group.units)}")
        for a, b, ga, gb in group.overlaps:
            lines.append(f"       {a} ~ {b}: {ga} ~ {gb}")
        added = ", ".join(f"{a} -> {b}" for a, b in group.edges) or "none (already ordered)"
        lines.append(f"       edges added: {added}")
    lines += ["", "Edges:"]
    for a, b, reasons in plan.edge_reasons():
        lines.append(f"  {a} -> {b} ({', '.join(reasons)})")
    if not plan.graph.number_of_edges():
        lines.append("  (none)")
    lines += ["", "Resource classes (Prefect tag concurrency limits `flotilla:<class>`):"]
    counts: dict[str, int] = {}
    for settings in plan.settings.values():
        counts[settings.resources] = counts.get(settings.resources, 0) + 1
    for name, limit in plan.used_classes().items():
        shown = str(limit) if limit is not None else "-"
        note = "" if limit is not None else "  (no limit declared; only max_concurrent caps it)"
        lines.append(f"  {name:<12} {shown:>4}   {counts.get(name, 0)} unit(s){note}")
    if plan.max_concurrent:
        lines.append(f"  (the implement stage runs at most {plan.max_concurrent} units at once)")
    return "\n".join(lines)


def _s(value: float) -> str:
    return f"{value:.4g}"


# --- mermaid -------------------------------------------------------------------------------------


def render_mermaid(plan: Plan) -> str:
    """A `flowchart` for GitHub markdown or mermaid.live; conflict edges dashed, critical path bold."""
    ids = {u: f"u{i}" for i, u in enumerate(plan.units)}
    lines = ["flowchart TD"]
    for unit, node in ids.items():
        label = f"{unit}<br/>{plan.settings[unit].resources} · {_s(plan.weight(unit))}"
        lines.append(f'  {node}["{label.replace(chr(34), "#quot;")}"]')
    for a, b, reasons in plan.edge_reasons():
        if reasons == ["conflict"]:
            lines.append(f"  {ids[a]} -. conflict .-> {ids[b]}")
        else:
            lines.append(f"  {ids[a]} --> {ids[b]}")
    path, _ = plan.critical_path()
    if path:
        lines.append("  classDef critical stroke-width:3px,stroke:#d33")
        lines.append(f"  class {','.join(ids[u] for u in path)} critical")
    return "\n".join(lines)
