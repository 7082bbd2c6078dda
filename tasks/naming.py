"""How a run shows in the Prefect UI: flow and task run names and tags, all derived from the run.

Every flow and task run of a run carries the tags `flotilla`, `feature:<feature id>` and
`run:<run key>`, and a unit's task runs also `unit:<unit id>`, so the UI's tag filter finds
tonight's runs of a feature, one run, or one unit. The feature flow run is named after the run
key, a stage subflow `<run key> · <stage>`, and a unit's task runs start with its id
(`tokenizer · agent #2`), so the run graph reads without opening each node.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prefect.client.orchestration import get_client
from prefect.concurrency.services import (
    ConcurrencySlotAcquisitionWithLeaseService as AcquisitionQueue,
)
from prefect.context import FlowRunContext

from flotilla.runs import RunContext

SEPARATOR = " · "
log = logging.getLogger("flotilla.naming")


def run_tags(ctx: RunContext) -> list[str]:
    """The tags of every flow and task run of this run."""
    return ["flotilla", f"feature:{ctx.feature_id}", f"run:{ctx.run_key}"]


def unit_tag(unit_id: str) -> str:
    return f"unit:{unit_id}"


def stage_run_name(run_key: str, stage: str) -> str:
    return f"{run_key}{SEPARATOR}{stage}"


def unit_task_name(unit_id: str, step: str) -> str:
    """`<unit> · <step>`: the unit comes first, so every task run of a unit sorts together."""
    return f"{unit_id}{SEPARATOR}{step}"


def label_flow_run(name: str, tags: list[str]) -> None:
    """Give the current flow run `name` and add `tags`, if it lacks them.

    A flow run started from a deployment (a worker, the UI, `prefect deployment run`) was named
    at random before Flotilla knew the run key; this renames it. Labels are a nicety: a Prefect
    API error is logged, never raised.
    """
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    flow_run = context.flow_run
    merged = list(dict.fromkeys([*(flow_run.tags or []), *tags]))
    if flow_run.name == name and merged == list(flow_run.tags or []):
        return
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, name=name, tags=merged)
    except Exception as exc:  # the run goes on with its old name
        log.warning("Could not name flow run %s %r: %s", flow_run.id, name, exc)
        return
    flow_run.name, flow_run.tags = name, merged


def retire_tag_queues(task_tags: Iterable[str]) -> None:
    """Stop Prefect's slot-acquisition queue for one set of task-run tags, once no task run of
    this process will ask it for slots again.

    Prefect keeps one such queue (a thread and an HTTP client) per distinct set of tags, for the
    life of the process. A unit's tags are its own (`unit:<id>`), so without this a run of 200
    units would keep 400 idle threads and clients until it ends. Slots already held are released
    and renewed without the queue; a later task run with the same tags gets a new one.
    """
    names = frozenset(f"tag:{tag}" for tag in task_tags)
    if not names:
        return
    try:
        queue = AcquisitionQueue._instances.get(hash((AcquisitionQueue, names)))
        if queue is not None and not queue._stopped:
            queue.drain()
    except Exception as exc:  # an idle thread is no reason to fail a unit
        log.debug("Could not stop the slot queue for %s: %s", sorted(names), exc)
