"""The demo's parts, without Flotilla running them: the target repo, the request, the agents.

The agent scripts are run by hand in one checkout of the demo repository, in dependency order,
with the same environment Flotilla gives an agent, so a broken script or a unit that breaks the
package's tests shows up here in seconds rather than in a full `make demo`.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
from graphlib import TopologicalSorter
from pathlib import Path

import pytest
import yaml

from examples.demo_repo import DEMO_IDENTITY, build_demo_repo
from flotilla.spec import FeatureRequest, UnitSpec

REQUEST_DIR = Path(__file__).resolve().parents[2] / "examples" / "text-stats"
REQUEST_FILE = REQUEST_DIR / "request.yaml"


def load_request() -> FeatureRequest:
    return FeatureRequest.model_validate(yaml.safe_load(REQUEST_FILE.read_text(encoding="utf-8")))


def unit_order(request: FeatureRequest) -> list[UnitSpec]:
    """Units in an order where each comes after everything it depends on or reads from."""
    by_id = {unit.id: unit for unit in request.units}
    graph = {
        unit.id: set(unit.depends_on) | {ref.split("/")[0] for ref in unit.inputs}
        for unit in request.units
    }
    return [by_id[unit_id] for unit_id in TopologicalSorter(graph).static_order()]


def tool_env() -> dict[str, str]:
    """This interpreter's directory first on PATH, as `make demo` arranges, so `python` has pytest."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def run_pytest(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["python", "-m", "pytest", "-q"],
        cwd=repo,
        env=tool_env(),
        capture_output=True,
        text=True,
        check=False,
    )


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **DEMO_IDENTITY, "GIT_CONFIG_GLOBAL": os.devnull}
    result = subprocess.run(
        ["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True
    )
    return result.stdout


def run_agent(
    unit: UnitSpec, request: FeatureRequest, repo: Path, work: Path, published: Path
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """Run one unit's script as Flotilla would; returns the process, outputs dir, summary file."""
    inputs, outputs = work / unit.id / "inputs", work / unit.id / "outputs"
    outputs.mkdir(parents=True)
    inputs.mkdir(parents=True)
    for ref in unit.inputs:
        source = published / ref
        if source.exists():
            (inputs / ref).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, inputs / ref)
    prompt = work / unit.id / "prompt.md"
    prompt.write_text(unit.prompt, encoding="utf-8")
    summary = work / unit.id / "summary.md"
    env = {
        **tool_env(),
        "FLOTILLA_UNIT_ID": unit.id,
        "FLOTILLA_FEATURE_ID": request.feature.id,
        "FLOTILLA_PROMPT_FILE": str(prompt),
        "FLOTILLA_INPUTS_DIR": str(inputs),
        "FLOTILLA_OUTPUTS_DIR": str(outputs),
        "FLOTILLA_SUMMARY_FILE": str(summary),
        "FLOTILLA_ITERATION": "1",
        "TEXTSTATS_AGENT_SLEEP_S": "0",
    }
    process = subprocess.run(
        ["bash", str(REQUEST_DIR / "agents" / f"{unit.id}.sh")],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return process, outputs, summary


def test_request_is_valid_and_shows_chain_handoff_and_parallel_units() -> None:
    request = load_request()
    units = {unit.id: unit for unit in request.units}
    assert len(units) >= 5
    assert request.test == "python -m pytest -q"
    for unit in request.units:
        assert unit.prompt.strip() and unit.touches, unit.id
        assert (REQUEST_DIR / "agents" / f"{unit.id}.sh").is_file(), unit.id
        for ref in unit.inputs:
            producer, name = ref.split("/")
            assert name in units[producer].outputs, ref
    # A chain tokenizer -> counts -> report -> cli, and counts/readability free to run together.
    assert "tokenizer" in units["counts"].depends_on
    assert "counts" in units["report"].depends_on
    assert "report" in units["cli"].depends_on
    assert "counts" not in units["readability"].depends_on
    assert "readability" not in units["counts"].depends_on
    touched = [glob for unit in request.units for glob in unit.touches]
    assert len(touched) == len(set(touched)), "units must not share files"


def test_demo_repo_builds_with_passing_tests_and_is_rebuilt_in_place(tmp_path: Path) -> None:
    target = tmp_path / "demo-repo"
    target.mkdir()
    (target / "stale.txt").write_text("left over from an earlier run", encoding="utf-8")
    repo = build_demo_repo(target)
    assert repo == target.resolve()
    assert not (repo / "stale.txt").exists()
    assert git(repo, "branch", "--show-current").strip() == "main"
    assert len(git(repo, "log", "--oneline").splitlines()) == 1
    assert git(repo, "remote").strip() == ""
    assert git(repo, "status", "--porcelain") == ""
    result = run_pytest(repo)
    assert result.returncode == 0, result.stdout + result.stderr
    # Same commit id on every build, so a run key keeps matching the base commit.
    first = git(repo, "rev-parse", "HEAD")
    assert git(build_demo_repo(tmp_path / "again"), "rev-parse", "HEAD") == first


def test_agents_in_dependency_order_keep_the_package_green(tmp_path: Path) -> None:
    request = load_request()
    repo = build_demo_repo(tmp_path / "repo")
    published = tmp_path / "published"
    for unit in unit_order(request):
        process, outputs, summary = run_agent(unit, request, repo, tmp_path / "work", published)
        assert process.returncode == 0, f"{unit.id}: {process.stdout}{process.stderr}"
        assert summary.read_text(encoding="utf-8").strip(), f"{unit.id} wrote no summary"
        assert sorted(p.name for p in outputs.iterdir()) == sorted(unit.outputs), unit.id
        for name in unit.outputs:
            (published / unit.id).mkdir(parents=True, exist_ok=True)
            shutil.copy(outputs / name, published / unit.id / name)
        changed = git(repo, "status", "--porcelain", "--untracked-files=all").splitlines()
        paths = [line[3:] for line in changed]
        assert paths, f"{unit.id} changed nothing"
        for path in paths:
            assert any(fnmatch.fnmatch(path, glob) for glob in unit.touches), (unit.id, path)
        result = run_pytest(repo)
        assert result.returncode == 0, f"after {unit.id}:\n{result.stdout}{result.stderr}"
        git(repo, "add", "--all")
        git(repo, "commit", "--quiet", "-m", f"{unit.id}")
    final = run_pytest(repo)
    assert final.returncode == 0
    assert " passed" in final.stdout


@pytest.mark.parametrize("unit_id", ["counts", "report"])
def test_agent_fails_loudly_without_its_input(tmp_path: Path, unit_id: str) -> None:
    request = load_request()
    unit = next(unit for unit in request.units if unit.id == unit_id)
    repo = build_demo_repo(tmp_path / "repo")
    process, _, _ = run_agent(unit, request, repo, tmp_path / "work", tmp_path / "nothing")
    assert process.returncode != 0
    assert unit.inputs[0].split("/")[1] in process.stderr
    assert "missing" in process.stderr
