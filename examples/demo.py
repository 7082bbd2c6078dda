"""`make demo`: build a throwaway target repository and run the text-stats feature on it.

Everything runs locally: Prefect's embedded server, the local artifact store under ./.flotilla,
and scripted agents (bash files next to the request) instead of an LLM, so the demo needs no
account, no network and no configuration.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

from examples.demo_repo import build_demo_repo
from flotilla.server_settings import use_server_settings

REQUEST = Path(__file__).resolve().parent / "text-stats" / "request.yaml"
FEATURE_BRANCH = "flotilla/text-stats"


def main() -> int:
    """Build the demo repository, run the feature request through the CLI, return its exit code."""
    if importlib.util.find_spec("pytest") is None:
        print(
            f"The demo's test gates run `python -m pytest -q`, but pytest is not installed for "
            f"{sys.executable}. Install it with `{sys.executable} -m pip install pytest` "
            "(or `make test`, which installs the dev extras), then run `make demo` again.",
            file=sys.stderr,
        )
        return 2
    # Set before Prefect is imported (through flotilla.cli): Prefect reads settings at import.
    use_server_settings()
    # Agents and test gates call `python`; make it this interpreter, which has pytest.
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])

    repo = build_demo_repo(Path.cwd() / ".flotilla" / "demo-repo")
    shown = _relative(repo)
    run_key = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"Built the demo target repository at {shown} (branch main, one commit).")
    print(f"Running {_relative(REQUEST)} with run key {run_key}.\n", flush=True)

    from flotilla.cli import main as flotilla_main

    code = flotilla_main(["run", str(REQUEST), "--repo", str(repo), "--run-key", run_key])

    print()
    print("See the result:")
    print(f"  git -C {shown} log --oneline {FEATURE_BRANCH}")
    print(f"  git -C {shown} diff --stat main {FEATURE_BRANCH}")
    flotilla = _relative(Path(sys.executable).parent / "flotilla")
    print("Run it again on the same repository; the same run key reuses finished units:")
    print(f"  {flotilla} run {_relative(REQUEST)} --repo {shown} --run-key {run_key}")
    if code != 0:
        print(f"The run did not pass (exit code {code}); the lines above say which unit failed.")
    return code


def _relative(path: Path) -> str:
    """`path` relative to the working directory when it lies inside it, for copy-paste."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    raise SystemExit(main())
