"""Flotilla's credentials stay home: an agent and tests that dump their environment leak nothing.

`flotilla run` runs as its own process with its own PREFECT_HOME (a temporary Prefect server),
with a GitHub token, Flotilla's provider token and AWS keys set to distinctive fake values. The
agent writes `env` into a committed file and into its log; the unit's tests and the feature's
gate print `env`. None of the values may appear anywhere afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.e2e.helpers import git, make_target

REPO = Path(__file__).resolve().parents[2]
SECRETS = {
    "GITHUB_TOKEN": "ghtok-e2e-7f3a9c1d5b",
    "FLOTILLA_GITHUB_TOKEN": "flotok-e2e-2b8e6d4f0a",
    "AWS_ACCESS_KEY_ID": "AKIAE2EFAKE7Q3W9X1Z5",
    "AWS_SECRET_ACCESS_KEY": "awssec-e2e-9d1c7b5a3f",
    "FLOTILLA_S3_SECRET": "s3sec-e2e-4e2a0c8b6d",
}
LEAKY_AGENT = """\
set -eu
env | sort > leaked-env.txt
echo "--- my environment:"
env | sort
echo "Wrote my environment to leaked-env.txt." > "$FLOTILLA_SUMMARY_FILE"
"""


def occurrences(data: bytes) -> list[str]:
    return [name for name, value in SECRETS.items() if value.encode() in data]


def leaks_under(root: Path) -> dict[str, list[str]]:
    found = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            names = occurrences(path.read_bytes())
            if names:
                found[str(path.relative_to(root))] = names
    return found


def test_agent_and_tests_that_print_env_leak_no_credential(tmp_path: Path) -> None:
    target = make_target(tmp_path / "target")
    (tmp_path / "leaky.sh").write_text(LEAKY_AGENT)
    prints_env = f"env | sort && {sys.executable} -m pytest -q"
    request = {
        "feature": {"id": "leaky", "title": "Leaky feature"},
        "test": prints_env,
        "defaults": {"test": prints_env, "timeout_s": 60, "max_iterations": 1},
        "units": [{"id": "dump-env", "agent": {"command": "bash {request_dir}/leaky.sh"}}],
    }
    (tmp_path / "request.yaml").write_text(yaml.safe_dump(request, sort_keys=False))
    home, prefect_home = tmp_path / "home", tmp_path / "prefect-home"
    home.mkdir()
    env = {name: value for name, value in os.environ.items() if not name.startswith("PREFECT_")}
    env.update(SECRETS)
    env.update(
        {
            "HOME": str(home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        }
    )
    store, work = tmp_path / "store", tmp_path / "work"
    code = "import sys; from flotilla.cli import main; sys.exit(main(sys.argv[1:]))"
    args = ["run", "request.yaml", "--repo", str(target), "--store", str(store)]
    done = subprocess.run(
        [sys.executable, "-c", code, *args, "--workdir", str(work), "--run-key", "leak"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]

    # The agent and the tests did print their environment (so the check below means something).
    committed = git(target, "show", "flotilla/leaky:leaked-env.txt")
    assert "FLOTILLA_UNIT_ID=dump-env" in committed and "PATH=" in committed
    log = (store / "runs/leak/units/dump-env/logs/attempt-1.log").read_text()
    assert "--- my environment:" in log and "FLOTILLA_UNIT_ID=dump-env" in log
    assert "HOME=" in (store / "runs/leak/feature/gate.log").read_text()

    # ...and not one credential is anywhere.
    assert occurrences(done.stdout + done.stderr) == []
    assert leaks_under(store) == {}
    assert leaks_under(work) == {}
    history = subprocess.run(
        ["git", "-C", str(target), "log", "-p", "--all"], capture_output=True, check=True
    ).stdout
    assert occurrences(history) == []
    assert list(prefect_home.rglob("*.db*")), "the run used the temporary server's database"
    assert leaks_under(prefect_home) == {}
