"""A script agent for best-of-N tests: what it does depends on $FLOTILLA_CANDIDATE.

$PLAN is JSON `{"<k>": {"answer": "42", "lines": 3, "sleep": 0}}`: candidate k writes `answer`
to answer.txt (the unit's test passes only for 42), plus `lines` extra lines to notes.txt, after
sleeping `sleep` seconds (and while the file `hold` exists; its pid goes to `pid_file`). Each start and end is appended to $MARKERS as `start <k>` / `end <k>`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

number = os.environ.get("FLOTILLA_CANDIDATE", "0")  # 0: a unit without candidates
plan = json.loads(os.environ["PLAN"]).get(number, {})
markers = Path(os.environ["MARKERS"])


def mark(what: str) -> None:
    with markers.open("a") as out:
        out.write(f"{what} {number}\n")
    with markers.with_suffix(".times").open("a") as out:
        out.write(f"{what} {number} {time.time():.2f}\n")


mark("start")
if "pid_file" in plan:
    Path(plan["pid_file"]).write_text(str(os.getpid()))
time.sleep(float(plan.get("sleep", 0)))
while plan.get("hold") and Path(plan["hold"]).exists():  # held until the test lets it go
    time.sleep(0.1)
worktree = Path(os.environ["FLOTILLA_WORKTREE"])
(worktree / "answer.txt").write_text(f"{plan.get('answer', '41')}\n")
extra = int(plan.get("lines", 0))
if extra:
    (worktree / "notes.txt").write_text("".join(f"note {n}\n" for n in range(extra)))
Path(os.environ["FLOTILLA_SUMMARY_FILE"]).write_text(f"candidate {number} answered\n")
Path(os.environ["FLOTILLA_USAGE_FILE"]).write_text(
    json.dumps({"input_tokens": 100, "output_tokens": 10, "cost_usd": 0.1})
)
mark("end")
