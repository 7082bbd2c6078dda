"""The `flotilla` subcommands, one module per area; each exposes `register(subparsers)`.

This is the CLI layer: `flotilla/cli.py` parses and dispatches here, and these modules reach into
`flows/` and `tasks/` (inside the handlers, so `flotilla --help` stays fast). Keeping them out of
the `flotilla` package keeps the planning brain free of Prefect, git and S3.
"""

from commands import durability, inspect, planning, run, slots

MODULES = [run, planning, durability, inspect, slots]
