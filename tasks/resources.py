"""Resource classes as Prefect tag concurrency limits: `flotilla:<class>` for every class.

Each unit task carries the tag of its class; the Prefect server lets at most `limit` task runs
with that tag run at once, across every flow run that uses the same server. The limits are
created, or updated to the run's values, before any unit starts.
"""

from __future__ import annotations

import httpx
from prefect import get_client
from prefect.exceptions import ObjectNotFound

from flotilla.errors import RunError
from flotilla.plan import resource_limits
from flotilla.runs import RunContext

TAG_PREFIX = "flotilla:"


def tag_for(resource_class: str) -> str:
    return f"{TAG_PREFIX}{resource_class}"


def ensure_resource_limits(limits: dict[str, int]) -> dict[str, int]:
    """Create or update the tag concurrency limit of each class; return {tag: limit}."""
    bad = {name: value for name, value in limits.items() if value < 1}
    if bad:
        listed = ", ".join(f"{k}: {v}" for k, v in bad.items())
        raise RunError(
            f"Resource class limits must be at least 1 (a limit of 0 would abort every unit of "
            f"the class); got {listed}. Fix `resources` in the request or the workflow."
        )
    applied: dict[str, int] = {}
    try:
        with get_client(sync_client=True) as client:
            for name, limit in sorted(limits.items()):
                # The API upserts: an existing limit for the tag gets the new value.
                client.create_concurrency_limit(tag=tag_for(name), concurrency_limit=limit)
                applied[tag_for(name)] = limit
    except httpx.HTTPError as exc:
        raise RunError(
            f"Could not set the Prefect concurrency limits for the resource classes "
            f"({', '.join(sorted(limits))}): {exc}. Check that the Prefect API "
            "(PREFECT_API_URL) is reachable."
        ) from exc
    return applied


def read_resource_limits(classes: list[str]) -> dict[str, int | None]:
    """The limit the Prefect server holds for each class's tag (None when it has none)."""
    found: dict[str, int | None] = {}
    with get_client(sync_client=True) as client:
        for name in classes:
            try:
                found[name] = client.read_concurrency_limit_by_tag(tag_for(name)).concurrency_limit
            except ObjectNotFound:
                found[name] = None
    return found


def apply_run_resources(ctx: RunContext) -> dict[str, int]:
    """The run's classes (defaults, then workflow, then request) as tag limits on the server."""
    return ensure_resource_limits(resource_limits(ctx.request, ctx.workflow))
