"""Links a reader can open: GitHub web addresses from API roots, commands that fetch from a store."""

from __future__ import annotations

import shlex

import pytest

from tasks.links import artifacts_command, github_web_root


@pytest.mark.parametrize(
    ("api_url", "web"),
    [
        ("https://api.github.com", "https://github.com"),
        ("https://api.github.com/", "https://github.com"),
        ("https://ghe.acme.internal/api/v3", "https://ghe.acme.internal"),
        ("http://127.0.0.1:8123/api/v3/", "http://127.0.0.1:8123"),
    ],
)
def test_the_web_root_of_a_github_api(api_url, web):
    assert github_web_root(api_url) == web


def test_the_artifacts_command_pastes_into_a_shell_even_with_spaces():
    command = artifacts_command("run-1", "/srv/flotilla store", "tok", get="logs/attempt-1.log")

    assert command == (
        "flotilla artifacts run-1 tok --get logs/attempt-1.log --store '/srv/flotilla store'"
    )
    assert shlex.split(command)[-1] == "/srv/flotilla store"
    assert artifacts_command("run-1", "s3://b/p") == "flotilla artifacts run-1 --store s3://b/p"
