"""The GitHub client and provider against a local fake GitHub that checks every request."""

from __future__ import annotations

import base64
import logging
import socket
import subprocess
import time
import traceback
import uuid
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from flotilla.spec import PublishSpec
from tasks.github import GitHubClient, GitHubError, git_auth_env, rate_limit_wait
from tasks.publishing import (
    GitHubProvider,
    PullRequestInfo,
    preflight,
    publish_pull_request,
    push_env,
)
from tests.integration.fake_github import FakeGitHub, running

TOKEN = f"ghp_test{uuid.uuid4().hex}"
HEAD = "flotilla/add-auth"


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with running(TOKEN) as fake:
        yield fake


@pytest.fixture(autouse=True)
def no_token_env(monkeypatch):
    for name in ("GITHUB_TOKEN", "FLOTILLA_GITHUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def client_for(fake: FakeGitHub, repo: str = "acme/app", token: str = TOKEN, **kw) -> GitHubClient:
    options = {"retries": 2, "max_wait_s": 5.0, "backoff_s": 0.01, **kw}
    return GitHubClient(fake.url, repo, SecretStr(token), **options)


def spec_for(fake: FakeGitHub, **kw) -> PublishSpec:
    options = {
        "provider": "github",
        "repo": "acme/app",
        "api_url": fake.url,
        "labels": ["flotilla"],
    }
    return PublishSpec(**{**options, **kw})


def info(body: str = "The body.", title: str = "Add auth") -> PullRequestInfo:
    return PullRequestInfo(
        title=title, body=body, head=HEAD, base="main", full_text_url="s3://b/pr"
    )


def publish(fake: FakeGitHub, pr: PullRequestInfo | None = None, **kw):
    spec = spec_for(fake, **{k: v for k, v in kw.items() if k in PublishSpec.model_fields})
    options = {k: v for k, v in kw.items() if k not in PublishSpec.model_fields}
    with client_for(fake, spec.repo or "", **options) as c:
        return GitHubProvider(spec, c).publish(pr or info())


def fail_with(fake: FakeGitHub, *args, **kw) -> GitHubError:
    with pytest.raises(GitHubError) as caught:
        publish(fake, *args, **kw)
    return caught.value


# -- creating and updating ---------------------------------------------------------------------


def test_opens_a_draft_pr_with_labels(github):
    pr = publish(github)

    assert pr.created and pr.number == 1 and pr.url == "https://github.example/acme/app/pull/1"
    (pull,) = github.pulls["acme/app"]
    assert pull["draft"] is True and pull["title"] == "Add auth" and pull["body"] == "The body."
    assert pull["head"]["ref"] == HEAD and pull["base"]["ref"] == "main"
    assert [label["name"] for label in pull["labels"]] == ["flotilla"]
    calls = [(r.method, r.path) for r in github.requests]
    assert calls == [
        ("GET", "/repos/acme/app/pulls"),
        ("POST", "/repos/acme/app/pulls"),
        ("POST", "/repos/acme/app/issues/1/labels"),
    ]
    assert github.requests[0].query == {"head": [f"acme:{HEAD}"], "state": ["open"]}


def test_draft_false_and_no_labels(github):
    publish(github, draft=False, labels=[])

    (pull,) = github.pulls["acme/app"]
    assert pull["draft"] is False and pull["labels"] == []
    assert [r.method for r in github.requests] == ["GET", "POST"]


def test_running_again_updates_the_open_pr(github):
    first = publish(github, info("First body."))
    second = publish(github, info("Second body.", title="Add auth (v2)"))

    assert first.created and not second.created
    assert (second.number, second.url) == (first.number, first.url)
    (pull,) = github.pulls["acme/app"]
    assert pull["body"] == "Second body." and pull["title"] == "Add auth (v2)"
    assert [label["name"] for label in pull["labels"]] == ["flotilla"]
    patch = github.calls("PATCH")[-1]
    assert patch.path == "/repos/acme/app/pulls/1"
    assert patch.body == {"title": "Add auth (v2)", "body": "Second body.", "base": "main"}


def test_a_closed_pr_is_left_alone_and_a_new_one_opened(github):
    publish(github)
    github.pulls["acme/app"][0]["state"] = "closed"

    again = publish(github)

    assert again.created and again.number == 2
    assert [p["state"] for p in github.pulls["acme/app"]] == ["closed", "open"]


def test_a_pr_opened_meanwhile_is_updated_instead_of_duplicated(github):
    publish(github, info("First."))
    github.fail("GET", r"/pulls$", 200, body=[])  # the lookup misses it once

    again = publish(github, info("Second."))

    assert not again.created and again.number == 1
    assert len(github.pulls["acme/app"]) == 1 and github.pulls["acme/app"][0]["body"] == "Second."


def test_enterprise_api_url_keeps_its_path_prefix():
    with running(TOKEN, prefix="/api/v3") as ghe:
        pr = publish(ghe)

    assert pr.created
    assert ghe.requests and all(r.path.startswith("/api/v3/repos/acme/app/") for r in ghe.requests)


def test_publish_pull_request_takes_the_token_from_github_token(github, monkeypatch):
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)

    pr = publish_pull_request(spec_for(github), info())

    assert pr.created and pr.provider == "github"


@pytest.mark.parametrize("value", [None, "", "  "])
def test_a_missing_token_says_how_to_set_one(github, monkeypatch, value):
    if value is not None:
        monkeypatch.setenv("GITHUB_TOKEN", value)

    with pytest.raises(GitHubError) as caught:
        publish_pull_request(spec_for(github), info())

    message = str(caught.value)
    assert "GITHUB_TOKEN" in message and "token_secret_block" in message and "acme/app" in message
    assert github.requests == []


def test_preflight_checks_token_and_push_access_before_a_run(monkeypatch):
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    with running(TOKEN, repos=("acme/app", "acme/docs"), read_only=("acme/docs",)) as fake:
        preflight(spec_for(fake))
        assert [(r.method, r.path) for r in fake.requests] == [("GET", "/repos/acme/app")]
        with pytest.raises(GitHubError, match="can read acme/docs but not push to it"):
            preflight(spec_for(fake, repo="acme/docs"))
        with pytest.raises(GitHubError, match="publish.repo"):
            preflight(spec_for(fake, repo="acme/missing"))
        preflight(PublishSpec())  # the local provider needs nothing
        assert len(fake.requests) == 3
        monkeypatch.delenv("GITHUB_TOKEN")
        with pytest.raises(GitHubError, match="GITHUB_TOKEN"):
            preflight(spec_for(fake))


# -- errors ------------------------------------------------------------------------------------


def test_401_names_the_token_and_how_to_fix_it(github):
    error = fail_with(github, token="ghp_wrong")

    assert error.status == 401
    text = str(error)
    assert "rejected the token" in text and "Bad credentials" in text and "acme/app" in text
    assert "GITHUB_TOKEN" in text and "ghp_wrong" not in text


def test_403_without_rate_limit_is_a_permission_problem(github):
    github.fail("POST", r"/pulls$", 403, body={"message": "Resource not accessible by integration"})

    error = fail_with(github)

    assert error.status == 403
    assert "Resource not accessible by integration" in str(error)
    assert "lacks permission" in str(error) and "acme/app" in str(error)
    assert len(github.calls("POST")) == 1  # no retry: waiting does not fix permissions


def test_404_points_at_repo_and_api_url(github):
    error = fail_with(github, repo="acme/missing")

    assert error.status == 404
    text = str(error)
    assert "acme/missing" in text and "publish.repo" in text and "publish.api_url" in text
    assert "private repository" in text


def test_422_for_an_unpushed_branch_says_to_push_it():
    with running(TOKEN, branch_exists=lambda b: b == "main") as fake:
        error = fail_with(fake)

    assert error.status == 422
    assert "head" in str(error) and "invalid" in str(error)
    assert f"Check that {HEAD} was pushed to acme/app" in str(error)


def test_422_for_drafts_says_to_turn_them_off(github):
    message = "Draft pull requests are not supported in this repository."
    github.fail("POST", r"/pulls$", 422, body={"message": "Validation Failed", "errors": [message]})

    error = fail_with(github)

    assert message in str(error) and "publish.draft: false" in str(error)


def test_5xx_is_retried_then_succeeds(github):
    github.fail("POST", r"/pulls$", 502, times=2)

    pr = publish(github)

    assert pr.created and len(github.calls("POST")) == 4  # 3 tries + labels
    assert len(github.pulls["acme/app"]) == 1


def test_5xx_that_persists_gives_up_after_the_retries(github):
    github.fail("GET", r"/pulls$", 503, times=10)

    error = fail_with(github)

    assert error.status == 503 and "3 times" in str(error) and "githubstatus" in str(error)
    assert len(github.calls("GET")) == 3


def test_unreachable_api_is_a_clear_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = GitHubClient(f"http://127.0.0.1:{port}", "acme/app", SecretStr(TOKEN), backoff_s=0.01)

    with client, pytest.raises(GitHubError) as caught:
        client.find_open_pull(HEAD)

    assert "Could not reach GitHub" in str(caught.value) and "publish.api_url" in str(caught.value)


# -- rate limits -------------------------------------------------------------------------------


def test_rate_limit_waits_for_the_reset_header_then_retries(github):
    resets: list[int] = []

    def next_second() -> str:  # the reset GitHub names: the start of the next second
        resets.append(int(time.time()) + 1)
        return str(resets[-1])

    limited = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": next_second}
    github.fail(
        "GET", r"/pulls$", 403, headers=limited, body={"message": "API rate limit exceeded"}
    )

    pr = publish(github)

    assert pr.created
    first, retry = github.calls("GET")
    assert retry.at >= resets[0] > first.at  # the retry came after the reset GitHub named


def test_secondary_rate_limit_honours_retry_after(github):
    github.fail(
        "POST",
        r"/pulls$",
        429,
        headers={"retry-after": "0"},
        body={"message": "secondary rate limit"},
    )

    pr = publish(github)

    assert pr.created and len(github.pulls["acme/app"]) == 1


def test_a_rate_limit_beyond_the_wait_cap_fails_at_once_saying_when(github):
    reset = str(int(time.time()) + 3600)
    limited = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": reset}
    github.fail(
        "GET", r"/pulls$", 403, headers=limited, body={"message": "API rate limit exceeded"}
    )

    error = fail_with(github, max_wait_s=5.0)

    text = str(error)
    assert "rate limit" in text and "FLOTILLA_GITHUB_MAX_WAIT_S" in text and "UTC" in text
    assert len(github.requests) == 1


@pytest.mark.parametrize(
    ("status", "headers", "text", "wait"),
    [
        (403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1030"}, "", 30.0),
        (403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "900"}, "", 0.0),
        (403, {"retry-after": "7"}, "", 7.0),
        (429, {}, "", 60.0),
        (403, {}, '{"message": "You have exceeded a secondary rate limit"}', 60.0),
        (403, {"x-ratelimit-remaining": "12"}, '{"message": "Forbidden"}', None),
        (500, {"retry-after": "3"}, "", None),
    ],
)
def test_rate_limit_wait(status, headers, text, wait):
    assert rate_limit_wait(status, headers, text, now=1000.0) == wait


# -- the token stays secret --------------------------------------------------------------------


def test_the_token_never_shows_in_errors_or_logs(github, caplog):
    caplog.set_level(logging.DEBUG)
    echo = {"message": "Validation Failed: token {token} is not welcome"}
    github.fail("POST", r"/pulls$", 422, body=echo)
    github.fail("GET", r"/pulls$", 403, headers={"retry-after": "0"}, body={"message": "{token}"})

    error = fail_with(github)
    wrong = fail_with(github, token="ghp_other_secret")
    client = client_for(github)

    assert "***" in str(error) and "not welcome" in str(error)
    for exc in (error, wrong):
        assert TOKEN not in "".join(traceback.format_exception(exc))
    assert "ghp_other_secret" not in str(wrong)
    assert "HTTP Request: POST" in caplog.text  # the HTTP logs were captured, and hold no token
    assert TOKEN not in repr(client) and TOKEN not in caplog.text
    client.close()


def test_git_auth_env_is_read_by_git_and_stays_on_the_github_host(monkeypatch):
    monkeypatch.delenv("GIT_CONFIG_COUNT", raising=False)
    token = SecretStr(TOKEN)
    env = git_auth_env("https://github.com/acme/app.git", "https://api.github.com", token)

    key = "http.https://github.com/.extraheader"
    shown = subprocess.run(
        ["git", "config", "--get", key], env={"PATH": "/usr/bin:/bin", **env}, capture_output=True
    )
    header = shown.stdout.decode().strip()
    assert header.startswith("AUTHORIZATION: basic ")
    assert base64.b64decode(header.split()[-1]).decode() == f"x-access-token:{TOKEN}"
    assert TOKEN not in str(env)  # only the base64 form travels
    ghe = git_auth_env(
        "https://ghe.example.com/acme/app.git", "https://ghe.example.com/api/v3", token
    )
    assert ghe["GIT_CONFIG_KEY_0"] == "http.https://ghe.example.com/.extraheader"
    assert git_auth_env("https://gitlab.com/acme/app.git", "https://api.github.com", token) == {}
    assert git_auth_env("git@github.com:acme/app.git", "https://api.github.com", token) == {}
    assert git_auth_env("/srv/git/app.git", "https://api.github.com", token) == {}
    monkeypatch.setenv("GIT_CONFIG_COUNT", "2")
    assert "GIT_CONFIG_KEY_2" in git_auth_env(
        "https://github.com/a/b", "https://api.github.com", token
    )


def test_push_env_only_for_github_https_remotes(github, monkeypatch):
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    spec = spec_for(github, api_url="https://api.github.com")

    assert push_env(spec, "/srv/git/app.git") == {}
    assert push_env(PublishSpec(), "https://github.com/acme/app.git") == {}
    assert push_env(spec, "https://github.com/acme/app.git")["GIT_CONFIG_COUNT"]
