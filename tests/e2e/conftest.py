"""One Prefect test harness (a temporary SQLite server) for every end-to-end test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def prefect_harness() -> Iterator[None]:
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect import flow
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    @flow(name="warm-up")
    def warm_up() -> int:
        return 1

    with (
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        prefect_test_harness(server_startup_timeout=120),
    ):
        # The first flow run sets up Prefect's console logging; doing it here binds it to the
        # session's stderr rather than to one test's captured stream, which is closed after it.
        warm_up()
        yield
