"""`flotilla run` with `provider: github` against a local fake GitHub that checks every request."""

from __future__ import annotations

import logging
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    LogFilter,
    LogFilterTimestamp,
)
from prefect.logging.handlers import APILogHandler

from flotilla.cli import main
from tasks.github import GitHubError, resolve_token
from tests.e2e.helpers import git, make_target, write_request
from tests.integration.fake_github import FakeGitHub, running

TOKEN = f"ghp_e2e{uuid.uuid4().hex}"
PR_URL = "https://github.example/acme/app/pull/1"
PAGE = 200


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    """The target plus a bare copy of it standing in for the GitHub remote."""
    target = make_target(tmp_path / "target")
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "--bare", "-q", str(target), str(bare)], check=True)
    return bare


@pytest.fixture
def github(remote: Path) -> Iterator[FakeGitHub]:
    def branch_exists(branch: str) -> bool:
        found = subprocess.run(
            ["git", "-C", str(remote), "show-ref", "--verify", "--quiet", f"refs/heads/{branch}"]
        )
        return found.returncode == 0

    with running(TOKEN, prefix="/api/v3", branch_exists=branch_exists) as fake:
        yield fake


def request_for(tmp_path: Path, github: FakeGitHub, remote: Path, **publish) -> Path:
    spec = {
        "provider": "github",
        "repo": "acme/app",
        "api_url": github.url,
        "labels": ["flotilla", "needs-review"],
        "remote": str(remote),
        **publish,
    }
    return write_request(
        tmp_path,
        [{"id": "models"}, {"id": "api", "depends_on": ["models"]}],
        timeline=tmp_path / "timeline.txt",
        feature_id="gh-feature",
        extra={"publish": spec},
    )


def run(tmp_path: Path, request: Path, run_key: str, *extra: str) -> int:
    return main(
        [
            "run",
            str(request),
            "--repo",
            str(tmp_path / "target"),
            "--store",
            str(tmp_path / "store"),
            "--workdir",
            str(tmp_path / "work"),
            "--run-key",
            run_key,
            *extra,
        ]
    )


def prefect_texts(since: datetime) -> str:
    """Every log line since `since` and every artifact of the feature, as one text to search."""
    APILogHandler().flush()
    texts: list[str] = []
    since_filter = LogFilter(timestamp=LogFilterTimestamp(after_=since))
    with get_client(sync_client=True) as client:
        while page := client.read_logs(since_filter, limit=PAGE, offset=len(texts)):
            texts += [log.message for log in page]
        feature = ArtifactFilter(key=ArtifactFilterKey(like_="gh-feature"))
        offset = 0
        while page := client.read_artifacts(artifact_filter=feature, limit=PAGE, offset=offset):
            texts += [str(a.data) + str(a.description) for a in page]
            offset += len(page)
    return "\n".join(texts)


def store_bytes(tmp_path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file())


def test_opens_a_draft_pr_then_updates_it_on_the_next_run(
    tmp_path, remote, github, monkeypatch, capsys, caplog
):
    caplog.set_level(logging.DEBUG)
    start = datetime.now(UTC)
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    request = request_for(tmp_path, github, remote)

    assert run(tmp_path, request, "gh-1") == 0

    out = capsys.readouterr().out
    assert f"Pull request:   {PR_URL}" in out
    (created,) = github.calls("POST")[:1]
    assert created.path == "/api/v3/repos/acme/app/pulls"
    assert created.body["head"] == "flotilla/gh-feature" and created.body["base"] == "main"
    assert created.body["draft"] is True and created.body["title"] == "Demo feature"
    feature_dir = tmp_path / "store" / "runs" / "gh-1" / "feature"
    body = created.body["body"]
    assert body == (feature_dir / "pr.md").read_text()
    for text in ("## Merge order", "## Test results", "## Conflicts resolved", "## Units"):
        assert text in body
    assert "1. `models`" in body and "2. `api`" in body
    assert "Wrote units/models.txt." in body and "Wrote units/api.txt." in body
    assert "**Tests:** passed (" in body and "**Feature test gate:** passed (" in body
    # a store path means nothing to a reader on GitHub: names, and the command that fetches them
    assert "`summary.md`" in body and "`flotilla artifacts gh-1 api --store " in body
    assert "file://" not in body
    (labels,) = [r for r in github.requests if r.path.endswith("/issues/1/labels")]
    assert labels.body == {"labels": ["flotilla", "needs-review"]}
    # the branches went to the remote, the base branch was not written
    assert git(remote, "branch", "--list", "flotilla/*").split() == [
        "flotilla/gh-feature",
        "flotilla/gh-feature--api",
        "flotilla/gh-feature--models",
    ]
    assert PR_URL in (feature_dir / "report.md").read_text()  # the run report links the PR
    assert f"{PR_URL} (opened on github)" in prefect_texts(start)  # the PR artifact in the UI
    # In the UI, the PR and the branches are links to GitHub (an Enterprise server's web root).
    web = github.url.removesuffix("/api/v3") + "/acme/app/tree"
    texts = prefect_texts(start)
    assert f"- **Pull request:** [{PR_URL}]({PR_URL})" in texts
    assert f"[`flotilla/gh-feature`]({web}/flotilla/gh-feature)" in texts
    assert f"[`flotilla/gh-feature--models`]({web}/flotilla/gh-feature--models)" in texts
    assert f"[{PR_URL}]({PR_URL})The pull request of run gh-1" in texts  # the link artifact

    # The same feature again, this time with the token in a Prefect Secret block. A new run
    # key over the branches of gh-1 must say --force (those commits are another run's).
    monkeypatch.delenv("GITHUB_TOKEN")
    Secret(value=TOKEN).save("flotilla-e2e-github", overwrite=True)
    again = request_for(tmp_path, github, remote, token_secret_block="flotilla-e2e-github")

    assert run(tmp_path, again, "gh-2") == 5
    assert run(tmp_path, again, "gh-2", "--force") == 0

    assert f"Pull request:   {PR_URL}" in capsys.readouterr().out
    assert len(github.pulls["acme/app"]) == 1
    (patch,) = github.calls("PATCH")
    assert patch.path == "/api/v3/repos/acme/app/pulls/1"
    assert "`gh-2`" in patch.body["body"] and patch.body["base"] == "main"
    assert github.pulls["acme/app"][0]["body"] == patch.body["body"]
    assert PR_URL in (tmp_path / "store" / "runs" / "gh-2" / "feature" / "report.md").read_text()

    # The token is nowhere: not in the store, Prefect's logs and artifacts, or our output.
    assert TOKEN.encode() not in store_bytes(tmp_path)
    texts = prefect_texts(start)
    assert f"{PR_URL} (updated on github)" in texts and "Pull request updated" in texts
    assert TOKEN not in texts
    assert TOKEN not in caplog.text


def test_a_rejected_token_fails_the_run_with_a_clear_message(
    tmp_path, remote, github, monkeypatch, capsys
):
    start = datetime.now(UTC)
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_not_the_right_one")
    request = request_for(tmp_path, github, remote, labels=[])

    assert run(tmp_path, request, "gh-bad") == 1

    captured = capsys.readouterr()
    shown = captured.out + captured.err
    assert "rejected the token" in shown and "acme/app" in shown and "GITHUB_TOKEN" in shown
    assert "ghp_not_the_right_one" not in shown
    assert b"ghp_not_the_right_one" not in store_bytes(tmp_path)
    assert "ghp_not_the_right_one" not in prefect_texts(start)
    assert github.pulls == {}


def test_a_missing_secret_block_says_how_to_create_it():
    with pytest.raises(GitHubError) as caught:
        resolve_token("acme/app", "no-such-block")

    text = str(caught.value)
    assert "Prefect Secret block 'no-such-block'" in text and "publish.token_secret_block" in text
    assert "GITHUB_TOKEN" in text
