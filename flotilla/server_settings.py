"""Settings for the Prefect servers Flotilla starts: the temporary server of `flotilla run`,
`make server`, and the servers of the tests, the demo and the benchmarks.

Prefect's task run recorder writes every task run event in a transaction of its own (batch size
1), six per unit (two task runs, three states each). On SQLite any of those commits can make a
concurrent API request fail with "database is locked": the server answers 503 and the client
retries after 2, 4, 8, 16 and 32 s. A 1,000-unit run stood still for a minute between two
stages that way. Batches of 100, flushed every second, commit far less often; the UI shows a
task run's state at most a second later. Set a variable yourself to override it.

The temporary server `flotilla run` starts when no API is set also leaves Prefect's event feed
unstored (TEMPORARY_SERVER_SETTINGS): writing every event and its related resources to the
database was a third of that server's CPU in a 200-unit run, and nothing reads the feed of a
server that lives for one run. Flow runs, task runs, states, logs and artifacts are stored as
before; automations still see every event. A server you run keeps its feed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

SERVER_SETTINGS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
}


TEMPORARY_SERVER_SETTINGS = {
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED": "false",
}


def use_server_settings(environ: MutableMapping[str, str] = os.environ) -> None:
    """Fill in the settings the environment does not set. Call it before Prefect is imported:
    Prefect reads its settings once, and a temporary server inherits this environment."""
    for name, value in SERVER_SETTINGS.items():
        environ.setdefault(name, value)


def temporary_server_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment of a temporary server: `env`, with the temporary server's own settings
    where `env` does not set them."""
    return {**TEMPORARY_SERVER_SETTINGS, **env}


def main() -> None:
    """`make server`: print `NAME=VALUE` for each setting the environment does not set, for `env`."""
    print(" ".join(f"{n}={v}" for n, v in SERVER_SETTINGS.items() if n not in os.environ))


if __name__ == "__main__":
    main()
