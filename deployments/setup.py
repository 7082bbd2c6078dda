"""Prepare a Prefect server for Flotilla's deployments: the work pool, and the zombie automation.

    python -m deployments.setup                  # the process work pool `flotilla`, if missing
    python -m deployments.setup --automation     # ... and the crash-zombie-flow-runs automation
    prefect deploy --all --no-prompt             # then the deployments in prefect.yaml

Both steps are idempotent: what exists is left as it is. The server is the one `PREFECT_API_URL`
(or the active Prefect profile) names.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.events.schemas.automations import AutomationCore
from prefect.exceptions import ObjectNotFound
from prefect.workers.process import ProcessWorker

POOL = "flotilla"
AUTOMATION_FILE = Path(__file__).with_name("zombie-automation.yaml")


def ensure_work_pool(name: str = POOL, concurrency_limit: int | None = None) -> bool:
    """Create the process work pool `name` unless it exists; True if this call created it."""
    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type=ProcessWorker.type,
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                    concurrency_limit=concurrency_limit,
                    description="Flotilla: feature, nightly-features and unit flow runs.",
                )
            )
            return True
    if pool.type != ProcessWorker.type:
        raise SystemExit(
            f"The work pool {name!r} exists with type {pool.type!r}, but Flotilla's deployments "
            f"need a 'process' pool. Delete it (prefect work-pool delete {name}) or deploy to "
            "another pool."
        )
    return False


def load_automation(path: Path = AUTOMATION_FILE, within_s: int | None = None) -> AutomationCore:
    """The automation in `path`; `within_s` replaces how long a flow run may go without a
    heartbeat before it is marked Crashed."""
    data = yaml.safe_load(Path(path).read_text())
    if within_s is not None:
        data["trigger"]["within"] = within_s
        data["description"] = f"Mark flow runs Crashed when their heartbeats stop for {within_s} s."
        for action in data["actions"]:
            action["message"] = f"No heartbeat for {within_s} s; the flow run's process is gone."
    return AutomationCore.model_validate(data)


def ensure_automation(path: Path = AUTOMATION_FILE, within_s: int | None = None) -> bool:
    """Create the automation in `path` unless one of that name exists; True if created."""
    automation = load_automation(path, within_s)
    with get_client(sync_client=True) as client:
        if client.read_automations_by_name(automation.name):
            return False
        client.create_automation(automation)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.setup", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--pool", default=POOL, help=f"work pool name (default: {POOL})")
    parser.add_argument(
        "--limit", type=int, help="most flow runs the pool runs at once (default: no limit)"
    )
    parser.add_argument(
        "--automation",
        action="store_true",
        help=f"also create the automation in {AUTOMATION_FILE.name}",
    )
    parser.add_argument(
        "--zombie-after",
        type=int,
        metavar="SECONDS",
        help="with --automation: mark a flow run Crashed after this long without a heartbeat "
        "(default 600; keep it a few PREFECT_FLOWS_HEARTBEAT_FREQUENCY periods long)",
    )
    args = parser.parse_args(argv)
    made = ensure_work_pool(args.pool, args.limit)
    print(f"Work pool {args.pool!r}: {'created' if made else 'already there'}.")
    if args.automation:
        name = load_automation().name
        made = ensure_automation(within_s=args.zombie_after)
        print(f"Automation {name!r}: {'created' if made else 'already there'}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
