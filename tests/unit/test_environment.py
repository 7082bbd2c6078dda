"""What a request names for the environment, resolved per unit; and URLs that carry passwords."""

from __future__ import annotations

from pathlib import Path

import pytest

from flotilla.errors import RunError
from flotilla.loading import parse_request_text
from flotilla.plan import resolve_settings
from flotilla.runs import resolve_repo

REQUEST = """\
feature: {id: f, title: F}
defaults:
  agent: claude
  env: {SHARED: "1", OVERRIDDEN: defaults}
  pass_env: [PIP_INDEX_URL]
units:
  - id: named
    env: {OVERRIDDEN: unit}
    pass_env: [STAGING_API_TOKEN]
  - id: plain
"""


def test_a_unit_adds_to_what_defaults_name_and_wins_on_the_same_name() -> None:
    request = parse_request_text(REQUEST, "request.yaml")
    named, plain = (resolve_settings(request, unit, None) for unit in request.units)
    assert named.env == {"SHARED": "1", "OVERRIDDEN": "unit"}
    assert named.pass_env == ["PIP_INDEX_URL", "STAGING_API_TOKEN"]
    assert plain.env == {"SHARED": "1", "OVERRIDDEN": "defaults"}
    assert plain.pass_env == ["PIP_INDEX_URL"]


def test_a_repository_url_with_a_password_is_refused_without_showing_it() -> None:
    with pytest.raises(RunError) as info:
        resolve_repo("https://x-access-token:s3cr3t-value@github.com/acme/app.git", Path("."))
    message = str(info.value)
    assert "s3cr3t-value" not in message
    assert "https://x-access-token:***@github.com/acme/app.git" in message
    assert "credential helper" in message
    assert resolve_repo("https://github.com/acme/app.git", Path(".")).endswith("app.git")
    assert resolve_repo("git@github.com:acme/app.git", Path(".")) == "git@github.com:acme/app.git"
