"""Building small feature requests and target repositories for end-to-end tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

AGENT = Path(__file__).with_name("agents.py")


def make_target(path: Path) -> Path:
    """A target repository with only `main`, no remote, and a passing test suite."""
    path.mkdir(parents=True)
    (path / "tests").mkdir()
    (path / "tests" / "test_base.py").write_text("def test_base():\n    assert True\n")
    (path / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    env = {
        "GIT_AUTHOR_NAME": "Base",
        "GIT_AUTHOR_EMAIL": "base@example.com",
        "GIT_COMMITTER_NAME": "Base",
        "GIT_COMMITTER_EMAIL": "base@example.com",
        "PATH": "/usr/bin:/bin",
    }
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-qm", "Initial commit"]):
        subprocess.run(["git", "-C", str(path), *args], check=True, env=env)
    return path


def write_request(
    directory: Path,
    units: list[dict],
    *,
    timeline: Path,
    feature_id: str = "demo-feature",
    test: str | None = None,
    extra: dict | None = None,
) -> Path:
    """A request whose units all run the recording agent; per-unit `env` tunes it."""
    python = sys.executable
    unit_test = f"{python} -m pytest -q"
    spec_units = []
    for unit in units:
        unit = dict(unit)
        env = {"TIMELINE": str(timeline), **unit.pop("env", {})}
        if unit.get("outputs"):
            env["OUTPUTS"] = ",".join(unit["outputs"])
        unit["agent"] = {"command": f"{python} {AGENT}", "env": env}
        spec_units.append(unit)
    request = {
        "feature": {"id": feature_id, "title": "Demo feature", "description": "For tests."},
        "test": test if test is not None else unit_test,
        "defaults": {"test": unit_test, "timeout_s": 60, "max_iterations": 1},
        "units": spec_units,
        **(extra or {}),
    }
    path = directory / "request.yaml"
    path.write_text(yaml.safe_dump(request, sort_keys=False))
    return path


def timeline_of(path: Path) -> dict[str, tuple[float, float]]:
    """unit -> (start, end) from the recording agent's timeline file."""
    spans: dict[str, list[float]] = {}
    for line in path.read_text().splitlines():
        kind, unit, stamp = line.split()
        spans.setdefault(unit, [0.0, 0.0])[0 if kind == "start" else 1] = float(stamp)
    return {u: (s, e) for u, (s, e) in spans.items()}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()
