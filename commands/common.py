"""What every command shares: exit codes and how a subcommand is declared."""

from __future__ import annotations

import argparse
from collections.abc import Callable

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_PAUSED = 0, 1, 2, 3
EXIT_LOCKED, EXIT_FOREIGN_COMMITS = 4, 5  # flotilla.errors.RunLocked, ForeignCommits

FORCE_HELP = (
    "overwrite branches in the target that hold commits this run did not make, after keeping "
    "each old tip at refs/flotilla/backup/<feature>/<time>"
)


def command(sub, name: str, handler: Callable, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(handler=handler)
    return parser
