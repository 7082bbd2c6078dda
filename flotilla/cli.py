"""The `flotilla` command: parses arguments, dispatches to `commands`, prints errors.

Errors Flotilla raises on purpose are printed as sentences, never as tracebacks.
"""

from __future__ import annotations

import argparse
import os
import sys

from commands import MODULES
from commands.common import EXIT_BAD_INPUT
from deployments.prefect_server import start_temporary_servers_here
from flotilla.errors import FlotillaError, SpecError
from flotilla.server_settings import use_server_settings


def main(argv: list[str] | None = None) -> int:
    use_server_settings()  # for the temporary server a run starts when no API is set
    start_temporary_servers_here()
    # Prefect's 20 s is too short for a temporary server on a busy machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return args.handler(args)
    except SpecError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_BAD_INPUT
    except FlotillaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `flotilla runs | head`
        sys.stderr.close()
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flotilla",
        description="Turn a feature request into one feature PR by running coding agents in "
        "parallel on Prefect.",
    )
    sub = parser.add_subparsers(metavar="COMMAND")
    for module in MODULES:
        module.register(sub)
    return parser


if __name__ == "__main__":
    sys.exit(main())
