"""A fake coding-agent CLI: records how it was started, then answers as told.

Tests install it under the name of a real CLI (`claude`, `codex`, ...) in a directory put first
on PATH. It writes `$FAKE_RECORD_DIR/<program>.json` with its program name, argv (without the
program), stdin, working directory and `FLOTILLA_*` environment, prints `$FAKE_OUTPUT` and exits
with `$FAKE_EXIT` (default 0).
"""

import json
import os
import sys
from pathlib import Path


def main() -> int:
    program = os.environ.get("FAKE_PROG") or Path(sys.argv[0]).name
    stdin = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    record = {
        "program": program,
        "argv": sys.argv[1:],
        "stdin": stdin,
        "cwd": os.getcwd(),
        "env": {k: v for k, v in os.environ.items() if k.startswith("FLOTILLA_")},
        "extra": {k: os.environ.get(k) for k in ("AGENT_ENV_VAR", "EXTRA_ENV_VAR")},
    }
    record_dir = Path(os.environ.get("FAKE_RECORD_DIR", "."))
    record_dir.mkdir(parents=True, exist_ok=True)
    (record_dir / f"{program}.json").write_text(json.dumps(record, indent=2))
    if os.environ.get("FAKE_OUTPUT"):
        print(os.environ["FAKE_OUTPUT"], flush=True)
    return int(os.environ.get("FAKE_EXIT", "0"))


if __name__ == "__main__":
    sys.exit(main())
