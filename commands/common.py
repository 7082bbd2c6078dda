"""What every command shares: exit codes and how a subcommand is declared."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from flotilla.errors import ApiUnreachable, FlotillaError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_PAUSED = 0, 1, 2, 3
EXIT_API_UNREACHABLE = ApiUnreachable.exit_code  # 4: the run is saved; resume carries it on
EXIT_FOREIGN_COMMITS, EXIT_LOCKED = 5, 6  # flotilla.errors.ForeignCommits, RunLocked
# A run stopped by SIGINT or SIGTERM exits 128 + the signal: 130 or 143.

FORCE_HELP = (
    "overwrite branches in the target that hold commits this run did not make, after keeping "
    "each old tip at refs/flotilla/backup/<feature>/<time>"
)


def command(sub, name: str, handler: Callable, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(handler=handler)
    return parser


class _NoTracebackForFlotillaErrors(logging.Filter):
    """Errors Flotilla raises on purpose say what to do in one line; their traceback (which
    Prefect logs for a failed task or flow) only buries that line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, FlotillaError):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_expected_errors() -> None:
    """Drop the tracebacks of FlotillaErrors from the console log (call after importing flows)."""
    for name in ("prefect", ""):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _NoTracebackForFlotillaErrors) for f in handler.filters):
                handler.addFilter(_NoTracebackForFlotillaErrors())
