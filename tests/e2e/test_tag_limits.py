"""Prefect is asked for tag slots only for tags that have a limit (tasks/tag_limits.py).

Flotilla's tags (`flotilla`, `feature:…`, `run:…`, `unit:…`) usually have none, and Prefect would
ask the server for each of them before every task run. A limit someone does put on one of them
still holds: two tasks tagged with a limited tag never overlap.
"""

from __future__ import annotations

import threading
import time
import uuid

from prefect import flow, get_client, task
from prefect.concurrency.services import (
    ConcurrencySlotAcquisitionWithLeaseService as AcquisitionQueue,
)
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.tag_limits import LIMITED, only_limited_tags

spans: dict[str, tuple[float, float]] = {}
lock = threading.Lock()


@task
def hold(name: str) -> None:
    started = time.monotonic()
    time.sleep(0.5)
    with lock:
        spans[name] = (started, time.monotonic())


def queues_for(tag: str) -> list:
    """Prefect's slot-request queues (one per set of tag names asked for) that ask for `tag`."""
    return [
        queue
        for queue in AcquisitionQueue._instances.values()
        if f"tag:{tag}" in getattr(queue, "concurrency_limit_names", ())
    ]


def test_unlimited_tags_are_not_asked_for_and_a_limited_tag_still_holds():
    free, limited = f"free-{uuid.uuid4().hex[:8]}", f"solo-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=limited, concurrency_limit=1)
    only_limited_tags()

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
    def tagged() -> None:
        futures = [hold.with_options(tags=[free]).submit(f"free-{i}") for i in range(3)]
        futures += [hold.with_options(tags=[free, limited]).submit(f"solo-{i}") for i in range(2)]
        for future in futures:
            future.result()

    tagged()

    assert queues_for(free) == []  # the limit-less tag alone: no slot request at all
    (a_start, a_end), (b_start, b_end) = spans["solo-0"], spans["solo-1"]
    assert a_end <= b_start or b_end <= a_start  # the limit of 1 kept them apart
    assert f"tag:{limited}" in (LIMITED.names() or ())
