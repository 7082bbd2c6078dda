"""A script agent for end-to-end tests: a real process that records when it ran.

It appends `start`/`end` lines with timestamps to $TIMELINE, sleeps $SLEEP_S seconds, waits
until every unit in $WAIT_FOR has started (exit 9 if one never does), writes
`units/<unit>.txt` in its worktree (plus a passing test for it), copies every input it received
into that file, writes the outputs named in $OUTPUTS, and exits with $EXIT_CODE (default 0).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def main() -> int:
    unit = os.environ["FLOTILLA_UNIT_ID"]
    timeline = Path(os.environ["TIMELINE"])
    with timeline.open("a") as log:
        log.write(f"start {unit} {time.time():.6f}\n")
    time.sleep(float(os.environ.get("SLEEP_S", "0")))
    for sibling in filter(None, os.environ.get("WAIT_FOR", "").split(",")):
        if not wait_for_start(timeline, sibling, timeout_s=float(os.environ.get("WAIT_S", "90"))):
            print(f"{sibling} never started while {unit} was running", file=sys.stderr)
            return 9
    inputs = Path(os.environ["FLOTILLA_INPUTS_DIR"])
    received = sorted(str(p.relative_to(inputs)) for p in inputs.rglob("*") if p.is_file())
    Path("units").mkdir(exist_ok=True)
    Path("units", f"{unit}.txt").write_text(f"{unit}\ninputs: {received}\n")
    Path("tests").mkdir(exist_ok=True)
    Path("tests", f"test_{unit.replace('-', '_')}.py").write_text(
        f"def test_{unit.replace('-', '_')}_wrote_its_file():\n"
        f"    assert open('units/{unit}.txt').read().startswith('{unit}')\n"
    )
    outputs = Path(os.environ["FLOTILLA_OUTPUTS_DIR"])
    for name in filter(None, os.environ.get("OUTPUTS", "").split(",")):
        (outputs / name).write_text(f'{{"from": "{unit}"}}\n')
    Path(os.environ["FLOTILLA_SUMMARY_FILE"]).write_text(f"Wrote units/{unit}.txt.\n")
    with timeline.open("a") as log:
        log.write(f"end {unit} {time.time():.6f}\n")
    return int(os.environ.get("EXIT_CODE", "0"))


def wait_for_start(timeline: Path, unit: str, timeout_s: float) -> bool:
    """Proves overlap without timing: this agent stays alive until `unit` has started."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if f"start {unit} " in timeline.read_text():
            return True
        time.sleep(0.05)
    return False


if __name__ == "__main__":
    sys.exit(main())
