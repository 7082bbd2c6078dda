"""Resource classes: the scheduler caps each class; Prefect tag limits guard across runs.

Twenty-two units over three classes run with agents that record their start and end. The stage's
`max_concurrent` is larger than the sum of the limits, so only the class limits hold units back:
the scheduler submits a unit only when its class has room in the run and on the server.
Each agent of a class holds on (up to a time limit) until its class has been seen at its limit
once, so reaching the limit does not depend on how fast this machine starts units; agents that
come later just sleep briefly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from prefect import get_client

from flotilla.cli import main
from tasks.resources import ensure_resource_limits, read_resource_limits
from tasks.slots import read_usage
from tests.e2e.helpers import make_target, timeline_of

LIMITS = {"light": 4, "standard": 2, "heavy": 1}
COUNTS = {"light": 12, "standard": 6, "heavy": 4}

AGENT = """\
import os, sys, time
from pathlib import Path

unit, klass, limit = os.environ["FLOTILLA_UNIT_ID"], os.environ["CLASS"], int(os.environ["LIMIT"])
timeline = Path(os.environ["TIMELINE"])
with timeline.open("a") as log:
    log.write(f"start {unit} {time.time():.6f}\\n")
seen = timeline.parent / f"peak-{klass}"
deadline = time.monotonic() + float(os.environ.get("WAIT_S", "60"))
while not seen.exists() and time.monotonic() < deadline:
    running = set()
    for line in timeline.read_text().splitlines():
        kind, name, _ = line.split()
        if name.startswith(klass + "-"):
            (running.add if kind == "start" else running.discard)(name)
    if len(running) >= limit:
        seen.touch()
        break
    time.sleep(0.05)
time.sleep(1.0)
Path("units").mkdir(exist_ok=True)
Path("units", unit + ".txt").write_text(unit + "\\n")
Path(os.environ["FLOTILLA_SUMMARY_FILE"]).write_text(f"Wrote units/{unit}.txt.\\n")
with timeline.open("a") as log:
    log.write(f"end {unit} {time.time():.6f}\\n")
"""


def peak_overlap(spans: list[tuple[float, float]]) -> int:
    """Most spans open at one instant (an end at the same instant as a start closes first)."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def write_files(tmp_path: Path, timeline: Path) -> tuple[Path, Path]:
    agent = tmp_path / "class_agent.py"
    agent.write_text(AGENT)
    # Interleaved, so every class has units waiting for a slot from the start.
    ids = sorted(
        (f"{name}-{i}" for name, count in COUNTS.items() for i in range(count)),
        key=lambda u: (int(u.rsplit("-", 1)[1]), list(COUNTS).index(u.rsplit("-", 1)[0])),
    )
    units = []
    for unit in ids:
        klass = unit.rsplit("-", 1)[0]
        env = {"TIMELINE": str(timeline), "CLASS": klass, "LIMIT": str(LIMITS[klass])}
        units.append(
            {
                "id": unit,
                "resources": klass,
                "agent": {"command": f"{sys.executable} {agent}", "env": env},
            }
        )
    request = tmp_path / "request.yaml"
    request.write_text(
        yaml.safe_dump(
            {
                "feature": {"id": "classes", "title": "Resource classes"},
                "test": "true",
                "defaults": {"timeout_s": 120, "max_iterations": 1},
                "resources": LIMITS,
                "units": units,
            },
            sort_keys=False,
        )
    )
    workflow = yaml.safe_load(
        (Path(__file__).parents[2] / "flotilla" / "default_workflow.yaml").read_text()
    )
    implement = workflow["workflow"]["stages"][1]
    implement["max_concurrent"] = 8  # more than 4 + 2 + 1: only the class limits hold units back
    implement["retry_policy"] = {"max_attempts": 1}
    spec = tmp_path / "workflow.yaml"
    spec.write_text(yaml.safe_dump(workflow))
    return request, spec


def test_peak_overlap_per_class_reaches_its_limit_and_never_exceeds_it(tmp_path):
    target = make_target(tmp_path / "target")
    timeline = tmp_path / "timeline.txt"
    request, spec = write_files(tmp_path, timeline)

    code = main(
        [
            "run",
            str(request),
            "--repo",
            str(target),
            "--workflow",
            str(spec),
            "--store",
            str(tmp_path / "store"),
            "--workdir",
            str(tmp_path / "work"),
            "--run-key",
            "classes",
        ]
    )

    assert code == 0
    assert read_resource_limits(list(LIMITS)) == LIMITS  # set on the server by the run
    spans = timeline_of(timeline)
    assert len(spans) == sum(COUNTS.values())
    for name, limit in LIMITS.items():
        in_class = [span for unit, span in spans.items() if unit.startswith(f"{name}-")]
        assert len(in_class) == COUNTS[name]
        assert peak_overlap(in_class) == limit, name
    with get_client(sync_client=True) as client:  # every slot the run took is given back
        assert {c: read_usage(client, c).active for c in LIMITS} == dict.fromkeys(LIMITS, 0)


def test_limits_are_created_and_then_updated():
    assert ensure_resource_limits({"probe-a": 3}) == {"flotilla:probe-a": 3}
    assert read_resource_limits(["probe-a", "probe-missing"]) == {
        "probe-a": 3,
        "probe-missing": None,
    }
    ensure_resource_limits({"probe-a": 7})
    assert read_resource_limits(["probe-a"]) == {"probe-a": 7}
