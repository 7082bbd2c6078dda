"""A tiny target repository for the demo: the `textstats` package with one passing test.

The demo needs a git repository it may freely change, on any machine, without network or git
configuration. This module writes one from scratch: branch `main`, one commit by a fixed identity,
no remote. `python -m pytest -q` passes in it from the start, so every unit's test gate and the
feature's test gate have something real to run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from flotilla.errors import GitError

DEMO_IDENTITY = {
    "GIT_AUTHOR_NAME": "Flotilla Demo",
    "GIT_AUTHOR_EMAIL": "demo@flotilla.invalid",
    "GIT_COMMITTER_NAME": "Flotilla Demo",
    "GIT_COMMITTER_EMAIL": "demo@flotilla.invalid",
    # Fixed dates make the commit, and so the base commit id of every run, the same on each build.
    "GIT_AUTHOR_DATE": "2024-01-01T00:00:00+00:00",
    "GIT_COMMITTER_DATE": "2024-01-01T00:00:00+00:00",
}

FILES: dict[str, str] = {
    "README.md": """\
# textstats

Small text statistics for plain English text.

    python -m pytest -q
""",
    ".gitignore": """\
__pycache__/
*.pyc
.pytest_cache/
""",
    "pytest.ini": """\
[pytest]
# The package is imported from the repository root; no installation needed.
pythonpath = .
testpaths = tests
addopts = -p no:cacheprovider
""",
    "pyproject.toml": """\
[project]
name = "textstats"
version = "0.1.0"
description = "Small text statistics for plain English text."
requires-python = ">=3.10"
""",
    "textstats/__init__.py": '''\
"""Small text statistics for plain English text."""

__version__ = "0.1.0"
''',
    "tests/test_package.py": """\
import textstats


def test_package_has_a_version():
    assert textstats.__version__.count(".") == 2
""",
}


def build_demo_repo(path: Path) -> Path:
    """Create the demo repository at `path` (replacing whatever is there) and return its path."""
    path = Path(path).resolve()
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    path.mkdir(parents=True)
    for name, text in FILES.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    _git(path, "init", "--quiet", "--initial-branch=main")
    _git(path, "add", "--all")
    _git(
        path,
        "commit",
        "--quiet",
        "--no-verify",
        "--no-gpg-sign",
        "-m",
        "textstats: package skeleton",
    )
    return path


def _git(repo: Path, *args: str) -> None:
    """Run git in `repo` with a fixed identity, ignoring the user's global and system config."""
    env = {
        **os.environ,
        **DEMO_IDENTITY,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    result = subprocess.run(
        ["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise GitError(
            f"Building the demo repository at {repo} failed: `git {' '.join(args)}` exited with "
            f"{result.returncode}: {result.stderr.strip()}. Check that git is installed and that "
            f"{repo.parent} is writable."
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.demo_repo",
        description="Create the demo target repository (replacing whatever is at DIR).",
    )
    parser.add_argument("dir", type=Path, metavar="DIR")
    args = parser.parse_args(argv)
    print(build_demo_repo(args.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
