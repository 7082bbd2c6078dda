"""A target that cannot work is bad input: `flotilla run` says so in one line and writes nothing.

Each case runs the real CLI against a real directory or repository: exit 2, one line on stderr
naming the repository or branch and the fix, no traceback, no store, no clone.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flotilla.cli import main
from tests.e2e.helpers import make_target


def write_request(tmp_path: Path) -> Path:
    request = {
        "feature": {"id": "preflight", "title": "Preflight"},
        "defaults": {"agent": {"command": f"{sys.executable} -c pass"}},
        "units": [{"id": "only"}],
    }
    path = tmp_path / "request.yaml"
    path.write_text(yaml.safe_dump(request))
    return path


def run(tmp_path: Path, capsys, repo: str, *extra: str) -> tuple[int, str]:
    args = ["run", str(write_request(tmp_path)), "--repo", repo, *extra]
    code = main([*args, "--store", str(tmp_path / "store"), "--workdir", str(tmp_path / "work")])
    captured = capsys.readouterr()
    assert captured.out == ""  # not even the run key: no run exists
    return code, captured.err


def assert_nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "store").exists()
    assert not (tmp_path / "work").exists()


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_a_directory_that_is_not_a_git_repository(tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "README").write_text("not a repository\n")

    code, err = run(tmp_path, capsys, str(plain))

    assert code == 2
    line = one_line(err)
    assert f"The target repository {plain} is not a git repository" in line
    assert "pass --repo with a git repository's path or URL" in line
    assert_nothing_written(tmp_path)


def test_a_url_that_is_not_a_git_repository(tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()

    code, err = run(tmp_path, capsys, f"file://{plain}")

    assert code == 2
    line = one_line(err)
    assert f"The target repository file://{plain} cannot be read (git ls-remote: fatal:" in line
    assert_nothing_written(tmp_path)


def test_a_repository_without_commits(tmp_path, capsys):
    empty = tmp_path / "empty"
    subprocess.run(["git", "init", "-q", "-b", "main", str(empty)], check=True)

    code, err = run(tmp_path, capsys, str(empty))

    assert code == 2
    line = one_line(err)
    assert f"The target repository {empty} has no commits yet" in line
    assert f"git -C {empty} commit --allow-empty" in line
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("as_url", [False, True], ids=["path", "file-url"])
def test_an_unknown_base_branch(tmp_path, capsys, as_url):
    target = make_target(tmp_path / "target")
    repo = f"file://{target}" if as_url else str(target)

    code, err = run(tmp_path, capsys, repo, "--base", "develop")

    assert code == 2
    line = one_line(err)
    assert f"The base branch 'develop' does not exist in the target repository {repo}" in line
    assert "(its branches: main); pass --base with one of them" in line
    assert_nothing_written(tmp_path)


def test_a_missing_path(tmp_path, capsys):
    missing = tmp_path / "nowhere"

    code, err = run(tmp_path, capsys, str(missing))

    assert code == 2
    assert f"The target repository {missing} does not exist" in one_line(err)
    assert_nothing_written(tmp_path)
