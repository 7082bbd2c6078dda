"""Run control records in the store: pause requests, and units that joined the plan mid-run.

`flotilla pause` may run in another terminal or on another machine than the orchestrator, so the
request travels through the store (`runs/<key>/control/pause.json`), which every process of a run
already shares. The scheduler reads it between submissions.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime

from pydantic import BaseModel, Field

from flotilla.growth import AddedUnits
from flotilla.results import utcnow
from tasks.store import RunStore


class PauseRequest(BaseModel):
    """Who asked for a pause, and when."""

    requested_at: datetime = Field(default_factory=utcnow)
    host: str = Field(default_factory=socket.gethostname)
    pid: int = Field(default_factory=os.getpid)
    reason: str = ""


def pause_key(runs: RunStore) -> str:
    return f"{runs.prefix}/control/pause.json"


def added_units_key(runs: RunStore) -> str:
    return f"{runs.prefix}/added-units.json"


def proposals_key(runs: RunStore, unit_id: str) -> str:
    """Where a finished unit's proposed follow-up units are kept (its new-units.json)."""
    return f"{runs.unit_prefix(unit_id)}/new-units.json"


def request_pause(runs: RunStore, reason: str = "") -> PauseRequest:
    request = PauseRequest(reason=reason)
    runs.store.write_json(pause_key(runs), request)
    return request


def pause_requested(runs: RunStore) -> PauseRequest | None:
    try:
        return runs.store.read_model(pause_key(runs), PauseRequest)
    except KeyError:
        return None


def clear_pause(runs: RunStore) -> None:
    runs.store.delete(pause_key(runs))


def load_added(runs: RunStore) -> AddedUnits:
    try:
        return runs.store.read_model(added_units_key(runs), AddedUnits)
    except KeyError:
        return AddedUnits()


def save_added(runs: RunStore, added: AddedUnits) -> None:
    runs.store.write_json(added_units_key(runs), added)
