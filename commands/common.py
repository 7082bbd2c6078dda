"""What every command shares: exit codes and how a subcommand is declared."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from flotilla.errors import ApiUnreachable

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_PAUSED = 0, 1, 2, 3
EXIT_API_UNREACHABLE = ApiUnreachable.exit_code  # 4: the run is saved; resume carries it on
# A run stopped by SIGINT or SIGTERM exits 128 + the signal: 130 or 143.


def command(sub, name: str, handler: Callable, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(handler=handler)
    return parser
