"""The `flotilla` subcommands, one module per area; each exposes `register(subparsers)`.

Together with `flotilla/cli.py` this is the CLI layer: the only part of `flotilla` that reaches
into `flows/` and `tasks/` (imported inside the handlers, so `flotilla --help` stays fast).
"""

from flotilla.commands import durability, inspect, planning, run

MODULES = [run, planning, durability, inspect]
