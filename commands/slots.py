"""`flotilla slots`: each resource class's limit and slots on the Prefect server, who holds them,
and (with --reclaim) freeing the slots of runs that are gone."""

from __future__ import annotations

import argparse

from commands.common import EXIT_OK, command


def register(sub) -> None:
    slots = command(
        sub,
        "slots",
        cmd_slots,
        "Show each resource class's limit and who holds its slots; free slots of dead runs.",
    )
    slots.add_argument(
        "--reclaim",
        action="store_true",
        help="free the slots of runs that are gone and slots no live lease holds",
    )


def cmd_slots(args: argparse.Namespace) -> int:
    from prefect import get_client

    from tasks.slots import SlotRegistry, flotilla_classes, holders_by_id, read_usage, reclaim

    registry = SlotRegistry()
    with get_client(sync_client=True) as client:
        if args.reclaim:
            done = reclaim(client, registry)
            for line in done:
                print(f"Reclaimed: {line}.")
            if not done:
                print("Nothing to reclaim: every taken slot is held by a live run.")
            print()
        known = holders_by_id(registry)
        classes = flotilla_classes(client)
        if not classes:
            print("No resource class limits on this Prefect server yet (a run creates them).")
            return EXIT_OK
        print(f"{'class':<16} {'limit':>5} {'active':>6}  holders")
        for resource_class in classes:
            usage = read_usage(client, resource_class)
            if usage is None:
                continue
            holders = [_holder_line(known.get(h), h, "lease") for h in usage.leased]
            lost = [
                found
                for h, found in known.items()
                if found[1].resource_class == resource_class and h not in usage.leased
            ]
            holders += [_holder_line(found, "", "lease lost by the server") for found in lost]
            if usage.unheld > len(lost):
                holders.append(f"{usage.unheld - len(lost)} held by no one known (leaked)")
            print(
                f"{resource_class:<16} {usage.limit:>5} {usage.active:>6}  "
                f"{'; '.join(holders) or '-'}"
            )
    dead = [h for h in registry.holders() if not h.alive]
    if dead and not args.reclaim:
        keys = ", ".join(h.run_key for h in dead)
        print(f"\nRuns gone but holding slots: {keys}. `flotilla slots --reclaim` frees them.")
    return EXIT_OK


def _holder_line(found, holder_id: str, lease: str) -> str:
    if found is None:
        return f"lease holder {holder_id[:8]} (not a run of this machine)"
    holder, slot = found
    state = "running" if holder.alive else "gone"
    if lease == "lease":
        lease = f"lease {slot.lease_id[:8]}"
    return f"run {holder.run_key} unit {slot.unit_id} (pid {holder.pid} on {holder.host}, {state}, {lease})"
