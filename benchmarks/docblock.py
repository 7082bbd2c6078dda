"""Where benchmark numbers land: `benchmarks/results/<name>.json` and a generated block of
docs/performance.md, so that every number in the docs comes from a results file."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "performance.md"


def run_header() -> dict:
    """When and where a benchmark ran: the first keys of every results file."""
    return {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}",
    }


def save_results(name: str, result: dict) -> Path:
    path = RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def write_block(heading: str, begin: str, end: str, block: str, prose: str = "") -> None:
    """Replace the block between `begin` and `end`; keep the prose and the other sections. A
    page without the block gets it under `heading` (made, with `prose`, if missing)."""
    current = DOC.read_text() if DOC.exists() else "# Performance\n"
    if begin in current and end in current:
        start, stop = current.index(begin), current.index(end) + len(end) + 1
        updated = current[:start] + block + current[stop:]
    elif heading in current:
        at = current.index(heading) + len(heading) + 1
        updated = current[:at] + "\n" + block + current[at:]
    else:
        text = f"{prose}\n" if prose else ""
        updated = current.rstrip("\n") + f"\n\n{heading}\n\n{text}{block}"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(updated)
