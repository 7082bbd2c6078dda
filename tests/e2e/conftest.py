"""One Prefect test harness (a temporary SQLite server) for every end-to-end test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from deployments.prefect_server import start_temporary_servers_here
from flotilla.server_settings import use_server_settings


@pytest.fixture(scope="session", autouse=True)
def prefect_harness(tmp_path_factory) -> Iterator[None]:
    """The session's own PREFECT_HOME too (for this process and every `flotilla` it starts):
    Flotilla keeps its slot holders there, and nothing may land in the user's ~/.prefect."""
    home = tmp_path_factory.mktemp("prefect-home")
    use_server_settings()
    start_temporary_servers_here()
    os.environ["PREFECT_HOME"] = str(home)
    from prefect import flow
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_HOME,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    @flow(name="warm-up")
    def warm_up() -> int:
        return 1

    with (
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None, PREFECT_HOME: home}),
        prefect_test_harness(server_startup_timeout=120),
    ):
        # The first flow run sets up Prefect's console logging; doing it here binds it to the
        # session's stderr rather than to one test's captured stream, which is closed after it.
        warm_up()
        yield
