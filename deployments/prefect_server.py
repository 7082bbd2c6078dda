"""The Prefect server processes Flotilla starts run through here: Prefect's own server, with one
SQLAlchemy fix applied first.

On SQLite, SQLAlchemy 2.0's aiosqlite adapter leaves the driver's cursor open when a statement
fails, as Prefect's statements do with "database is locked" under load. The error's traceback
keeps that cursor in a reference cycle, so the garbage collector frees it later, on whichever
thread happens to allocate, most often the server's event loop. Freeing an open cursor resets its
statement, which waits for its connection's lock. When that connection is meanwhile in SQLite's
busy wait for a write lock that another connection holds until the event loop lets it commit,
nothing moves until Prefect's 60 s busy timeout runs out: the server stands still for a minute,
about one 200-unit run in six. Closing the cursor as soon as its statement fails, on its
connection's own thread, leaves the collector nothing to wait for. SQLAlchemy 2.1 closes it
itself, but Prefect 3.8's scheduler does not run on 2.1.

    python -m deployments.prefect_server prefect server start --host 127.0.0.1 --port 4200
    python -m deployments.prefect_server uvicorn --factory prefect.server.api.server:create_app …

`make server` and `deployments/local.py` start their servers the first way. The temporary server
Prefect starts when no API is set gets the second through `start_temporary_servers_here()`, with
the temporary server's own settings (`flotilla/server_settings.py`).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import runpy
import sys
from collections.abc import Sequence
from types import ModuleType

from flotilla.server_settings import temporary_server_env

TEMPORARY_SERVER_MODULE = "prefect.server.api.server"


def close_cursors_on_errors() -> bool:
    """Make SQLAlchemy's aiosqlite adapter close the driver's cursor whenever a statement fails,
    not only when it is interrupted. False when this SQLAlchemy has no such adapter method."""
    from sqlalchemy.dialects.sqlite import aiosqlite

    cursor_class = aiosqlite.AsyncAdapt_aiosqlite_cursor
    if not hasattr(cursor_class, "_close_interrupted"):
        return False

    def _close_interrupted(self, cursor, error: BaseException) -> None:
        with contextlib.suppress(Exception):  # the statement's own error is the one to raise
            self.await_(cursor.close())

    cursor_class._close_interrupted = _close_interrupted
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Apply the fix, then run `prefect …` or `uvicorn …` in this process."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("prefect", "uvicorn"):
        print(
            "usage: python -m deployments.prefect_server prefect|uvicorn ARGS… "
            f"(got {' '.join(args) or 'nothing'}); for example "
            "`python -m deployments.prefect_server prefect server start`.",
            file=sys.stderr,
        )
        return 2
    close_cursors_on_errors()
    sys.argv = args
    if args[0] == "uvicorn":
        runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)
        return 0
    from prefect.cli import app

    return app() or 0


def start_temporary_servers_here() -> None:
    """Have the temporary servers Prefect starts in this process run through `main`.

    Prefect imports its server module only when it starts a temporary server, and the import
    costs over a second, so the command is changed when (if ever) the module is imported."""
    module = sys.modules.get(TEMPORARY_SERVER_MODULE)
    if module is not None:
        _launch_through_here(module)
    elif not any(isinstance(finder, _WhenImported) for finder in sys.meta_path):
        sys.meta_path.insert(0, _WhenImported())


def _launch_through_here(module: ModuleType) -> None:
    server_class = module.SubprocessASGIServer
    if getattr(server_class, "_flotilla_launch", False):
        return
    prefect_command = server_class._run_uvicorn_command

    def _run_uvicorn_command(self):
        real_popen = module.subprocess.Popen

        def popen(args, **kwargs):
            if list(args[1:3]) == ["-m", "uvicorn"]:
                args = [args[0], "-m", __name__, "uvicorn", *args[3:]]
                kwargs["env"] = temporary_server_env(kwargs.get("env") or os.environ)
            return real_popen(args, **kwargs)

        module.subprocess = _WithPopen(module.subprocess, popen)
        try:
            return prefect_command(self)
        finally:
            module.subprocess = module.subprocess.wrapped

    server_class._run_uvicorn_command = _run_uvicorn_command
    server_class._flotilla_launch = True


class _WithPopen:
    """The `subprocess` module as Prefect's server module sees it while it starts a server."""

    def __init__(self, wrapped: ModuleType, popen) -> None:
        self.wrapped = wrapped
        self.Popen = popen

    def __getattr__(self, name: str):
        return getattr(self.wrapped, name)


class _WhenImported(importlib.abc.MetaPathFinder):
    """Changes Prefect's temporary-server command right after its module is imported."""

    def find_spec(self, name, path, target=None):
        if name != TEMPORARY_SERVER_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            _launch_through_here(module)

        spec.loader.exec_module = exec_module
        return spec


if __name__ == "__main__":
    sys.exit(main())
