"""The settings Flotilla gives the Prefect servers it starts are ones Prefect reads, and yield
to what the operator set."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from flotilla.server_settings import SERVER_SETTINGS, temporary_server_env, use_server_settings


def test_prefect_reads_them_as_a_recorder_that_writes_in_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    environ: dict[str, str] = {}
    use_server_settings(environ)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    from prefect.settings import Settings

    server = Settings().server
    assert server.services.task_run_recorder.batch_size == 100
    assert server.services.task_run_recorder.flush_interval == 1
    assert server.analytics_enabled is False


def test_a_temporary_server_stores_no_event_feed_unless_the_operator_asks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in temporary_server_env({}).items():
        monkeypatch.setenv(name, value)
    from prefect.settings import Settings

    assert Settings().server.services.event_persister.enabled is False
    asked = {"PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED": "true", "HOME": "/home/lead"}
    assert temporary_server_env(asked) == asked


def test_what_the_operator_set_wins() -> None:
    environ = {"PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "7"}
    use_server_settings(environ)
    assert environ["PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE"] == "7"
    assert environ["PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL"] == "1"


def test_make_server_gets_only_the_unset_ones_as_words_for_env() -> None:
    env = {k: v for k, v in os.environ.items() if k not in SERVER_SETTINGS}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "true"
    printed = subprocess.run(
        [sys.executable, "-m", "flotilla.server_settings"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert printed == [
        "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE=100",
        "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL=1",
    ]
