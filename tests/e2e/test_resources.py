"""Resource classes: Prefect tag concurrency limits `flotilla:<class>` cap each class.

Thirty units over three classes run with sleep agents that record their start and end; the
stage's `max_concurrent` is larger than the sum of the limits, so only the tags limit them.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from flotilla.cli import main
from tasks.resources import ensure_resource_limits, read_resource_limits
from tests.e2e.helpers import make_target, timeline_of, write_request

LIMITS = {"light": 4, "standard": 3, "heavy": 2}
COUNTS = {"light": 12, "standard": 10, "heavy": 8}


def peak_overlap(spans: list[tuple[float, float]]) -> int:
    """Most spans open at one instant (an end at the same instant as a start closes first)."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def test_peak_overlap_per_class_reaches_its_limit_and_never_exceeds_it(tmp_path):
    target = make_target(tmp_path / "target")
    timeline = tmp_path / "timeline.txt"
    units = [
        {"id": f"{name}-{i}", "resources": name, "env": {"SLEEP_S": "1.5"}}
        for name, count in COUNTS.items()
        for i in range(count)
    ]
    request = write_request(
        tmp_path,
        units,
        timeline=timeline,
        test="true",
        extra={
            "defaults": {"timeout_s": 60, "max_iterations": 1},
            "resources": LIMITS,
        },
    )
    workflow = yaml.safe_load(
        (Path(__file__).parents[2] / "flotilla" / "default_workflow.yaml").read_text()
    )
    implement = workflow["workflow"]["stages"][1]
    implement["max_concurrent"] = 30  # more than 4 + 3 + 2: only the tags limit the classes
    implement["retry_policy"] = {"max_attempts": 1}
    spec = tmp_path / "workflow.yaml"
    spec.write_text(yaml.safe_dump(workflow))

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

    import shutil; shutil.copy(timeline, '/tmp/timeline-debug.txt')
    assert code == 0
    assert read_resource_limits(list(LIMITS)) == LIMITS
    spans = timeline_of(timeline)
    assert len(spans) == 30
    for name, limit in LIMITS.items():
        in_class = [span for unit, span in spans.items() if unit.startswith(f"{name}-")]
        assert peak_overlap(in_class) == limit, name


def test_limits_are_created_and_then_updated(tmp_path):
    assert ensure_resource_limits({"probe-a": 3}) == {"flotilla:probe-a": 3}
    assert read_resource_limits(["probe-a", "probe-missing"]) == {
        "probe-a": 3,
        "probe-missing": None,
    }
    ensure_resource_limits({"probe-a": 7})
    assert read_resource_limits(["probe-a"]) == {"probe-a": 7}
