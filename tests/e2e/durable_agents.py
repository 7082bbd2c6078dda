"""A script agent for the durability tests: a real process that counts its own invocations.

Every invocation creates `$MARKERS/<unit>.<n>` (n = 1, 2, ...) holding its pid and prompt, then
writes `units/<unit>.txt` and a check `checks/<unit>.sh` (the test command runs them all), so the
feature tree depends only on which units ran. Variables tune it:

- `HOLD_FILE`: on the first invocation only, wait until this path exists (a unit "in flight").
- `FAIL_UNLESS`: exit 1, saying so, unless this path exists.
- `PASS_ON_ITERATION=k`: the unit's check fails before iteration k (the fix-forward loop).
- `RATE_LIMIT_FIRST=1`: answer the first invocation with exit 75 (a rate limit).
- `NEW_UNITS`: JSON written to $FLOTILLA_NEW_UNITS_FILE (follow-up units).
- `PAUSE_RUN=<store>|<run key>`: run `flotilla pause` in a separate process first.
- `USAGE_JSON`: written to $FLOTILLA_USAGE_FILE first (what the call "spent").
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HOLD_LIMIT_S = 300.0


def claim_marker(markers: Path, unit: str) -> int:
    markers.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        try:
            fd = os.open(markers / f"{unit}.{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            n += 1
            continue
        prompt = Path(os.environ["FLOTILLA_PROMPT_FILE"]).read_text()
        os.write(fd, f"pid {os.getpid()}\n{prompt}".encode())
        os.close(fd)
        return n


def main() -> int:
    unit = os.environ["FLOTILLA_UNIT_ID"]
    n = claim_marker(Path(os.environ["MARKERS"]), unit)
    print(f"{unit}: invocation {n}", flush=True)
    if os.environ.get("USAGE_JSON"):
        Path(os.environ["FLOTILLA_USAGE_FILE"]).write_text(os.environ["USAGE_JSON"])
    if os.environ.get("PAUSE_RUN"):
        store, key = os.environ["PAUSE_RUN"].split("|")
        cli = [sys.executable, "-m", "flotilla.cli", "pause", key, "--store", store]
        subprocess.run(cli, check=True)
    hold = os.environ.get("HOLD_FILE")
    if hold and n == 1:
        deadline = time.monotonic() + HOLD_LIMIT_S
        while not Path(hold).exists():
            if time.monotonic() > deadline:
                print(f"{unit}: gave up waiting for {hold}", flush=True)
                return 9
            time.sleep(0.05)
    if os.environ.get("RATE_LIMIT_FIRST") and n == 1:
        print("Error: rate limit exceeded, try again later", flush=True)
        return 75
    fail_unless = os.environ.get("FAIL_UNLESS")
    if fail_unless and not Path(fail_unless).exists():
        print(f"{unit}: cannot do this yet, {fail_unless} is missing", flush=True)
        return 1
    Path("units").mkdir(exist_ok=True)
    Path("units", f"{unit}.txt").write_text(f"{unit}\n")
    iteration = int(os.environ.get("FLOTILLA_ITERATION", "1"))
    passing = iteration >= int(os.environ.get("PASS_ON_ITERATION", "1"))
    Path("checks").mkdir(exist_ok=True)
    verdict = f"echo '{unit}: ok'" if passing else f"echo '{unit}: not finished yet'; exit 1"
    Path("checks", f"{unit}.sh").write_text(verdict + "\n")
    if os.environ.get("NEW_UNITS"):
        Path(os.environ["FLOTILLA_NEW_UNITS_FILE"]).write_text(os.environ["NEW_UNITS"])
    Path(os.environ["FLOTILLA_SUMMARY_FILE"]).write_text(f"Wrote units/{unit}.txt.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
