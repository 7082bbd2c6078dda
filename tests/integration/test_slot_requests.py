"""The scheduler's slot requests never wait out Prefect's client back-off: a busy server (503, as
SQLite answers when another write overtook a transaction) leaves the request for the next tick,
so the scheduler's one thread never sleeps 2 s while units wait to start or to be counted done;
until that tick it asks the server nothing more.

The server here is a small local HTTP server speaking the three concurrency-lease endpoints; it
answers 503 to the first requests it is told to, and counts every request it gets. The client is
Prefect's own."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prefect import get_client
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_RETRY_JITTER_FACTOR, temporary_settings

from tasks.api_retries import sent_once
from tasks.slots import LEASE_S, RunSlots, SlotRegistry, new_holder
from tests.integration.local_api import JsonHandler, LocalApi, serving

INCREMENT = "/api/v2/concurrency_limits/increment-with-lease"
RELEASE = "/api/v2/concurrency_limits/decrement-with-lease"


class LeaseServer(LocalApi):
    """Grants every lease asked for; answers 503 to the next `busy` requests to a path."""

    def __init__(self):
        super().__init__(LeaseHandler)
        self.busy: dict[str, int] = {}
        self.seen: list[str] = []

    def paths(self, kind: str) -> list[str]:
        return [p for p in self.seen if p == kind or p.endswith(kind)]


class LeaseHandler(JsonHandler):
    server: LeaseServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        # what a Prefect server with CSRF protection off (its default) answers the client
        self.answer(422, {"detail": "CSRF protection is disabled."})

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        path = self.path if not self.path.endswith("/renew") else "/renew"
        self.server.seen.append(path)
        if self.server.busy.get(path, 0) > 0:
            self.server.busy[path] -= 1
            self.answer(503, {"exception_message": "Service Unavailable"})
        elif path == INCREMENT:
            self.answer(200, {"lease_id": str(uuid.uuid4()), "limits": []})
        else:
            self.answer(200, {})


@pytest.fixture
def server() -> Iterator[LeaseServer]:
    with (
        serving(LeaseServer()) as server,
        temporary_settings({PREFECT_API_URL: server.url, PREFECT_CLIENT_RETRY_JITTER_FACTOR: 0}),
    ):
        yield server


@pytest.fixture
def slots(server: LeaseServer, tmp_path: Path) -> Iterator[RunSlots]:
    with get_client(sync_client=True) as client:
        holder = new_holder("busy-1", "", server.url)
        yield RunSlots(client, holder, SlotRegistry(tmp_path), logging.getLogger("test"))


def test_a_request_sent_once_comes_back_busy_at_once_and_others_retry_as_before(
    server: LeaseServer,
) -> None:
    server.busy = {INCREMENT: 2}
    with get_client(sync_client=True) as client:
        with sent_once(), pytest.raises(httpx.HTTPStatusError) as busy:
            client.increment_concurrency_slots_with_lease(["tag:x"], 1, "concurrency", LEASE_S)
        assert busy.value.response.status_code == 503
        assert len(server.paths(INCREMENT)) == 1, "sent once, not retried"

        client.increment_concurrency_slots_with_lease(["tag:x"], 1, "concurrency", LEASE_S)
    assert len(server.paths(INCREMENT)) == 3, "outside, the client retried its 503 (after 2 s)"


def test_a_busy_answer_leaves_the_class_for_the_next_tick(slots: RunSlots, server: LeaseServer):
    server.busy = {INCREMENT: 1}
    assert not slots.try_acquire("heavy", "u1")
    assert slots.busy == {"heavy"}, "busy, not full: no other run holds the class"
    assert "u1" not in slots.holder.slots
    assert len(server.paths(INCREMENT)) == 1

    assert not slots.try_acquire("standard", "u2"), "no slot request while it waits out busy"
    assert len(server.paths(INCREMENT)) == 1

    slots.quiet_until = 0.0  # the next tick
    assert slots.try_acquire("heavy", "u1")
    assert slots.busy == {"standard"}, "refused while waiting out busy; heavy answered now"
    assert "u1" in slots.holder.slots
    assert len(server.paths(INCREMENT)) == 2


def test_a_parked_slot_the_server_is_too_busy_to_take_back_is_given_back_next_tick(
    slots: RunSlots, server: LeaseServer, tmp_path: Path
) -> None:
    assert slots.try_acquire("heavy", "u1")
    slots.park("u1")
    server.busy = {RELEASE: 1}

    slots.release_parked()
    assert slots.parked == ["u1"] and "u1" in slots.holder.slots, "still held, still parked"
    assert SlotRegistry(tmp_path).path("busy-1").exists()

    slots.release_parked()  # too soon: not asked again
    assert len(server.paths(RELEASE)) == 1 and slots.parked == ["u1"]

    slots.quiet_until = 0.0
    slots.release_parked()  # the next tick
    assert slots.parked == [] and slots.holder.slots == {}
    assert not SlotRegistry(tmp_path).path("busy-1").exists()
    assert len(server.paths(RELEASE)) == 2


def test_a_renewal_the_server_is_too_busy_for_stays_due(slots: RunSlots, server: LeaseServer):
    assert slots.try_acquire("heavy", "u1")
    slots.renewed_at -= 60  # due
    server.busy = {"/renew": 1}

    slots.keep_alive({"u1": "heavy"})
    assert len(server.paths("/renew")) == 1
    slots.keep_alive({"u1": "heavy"})  # too soon: not asked again
    assert len(server.paths("/renew")) == 1
    slots.quiet_until = 0.0
    slots.keep_alive({"u1": "heavy"})  # the next tick: due still, and renewed
    assert len(server.paths("/renew")) == 2
    slots.keep_alive({"u1": "heavy"})  # renewed: not due for RENEW_EVERY_S
    assert len(server.paths("/renew")) == 2
