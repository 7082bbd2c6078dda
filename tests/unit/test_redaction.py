"""The redactor hides every secret it knows of, and nothing else."""

from __future__ import annotations

import pytest

from flotilla.environment import child_env
from flotilla.loading import parse_request_text
from flotilla.redaction import MASK, Redactor, current_redactor, looks_secret, register_secret

ENV = {
    "GITHUB_TOKEN": "ghx-fake-github-token-1234",
    "FLOTILLA_GITHUB_TOKEN": "flotilla-provider-token-5678",
    "AWS_SECRET_ACCESS_KEY": "aws/secret+key=abcdefgh",
    "AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKEFAKE",
    "AWS_REGION": "eu-central-1",
    "AWS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:5000",
    "DB_PASSWORD": "correct horse battery",
    "MAX_TOKENS": "4096",
    "HOME": "/home/someone",
}


def test_values_of_secret_looking_names_are_hidden_everywhere_in_a_text() -> None:
    redactor = current_redactor(ENV)
    text = "\n".join(f"{name}={value}" for name, value in ENV.items())
    hidden = redactor.text(text)
    for name in ("GITHUB_TOKEN", "FLOTILLA_GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD"):
        assert ENV[name] not in hidden
        assert f"{name}={MASK}" in hidden
    # a region, a path, a URL and a short number are not credentials: they stay readable
    for name in ("AWS_REGION", "AWS_CA_BUNDLE", "AWS_ENDPOINT_URL", "MAX_TOKENS", "HOME"):
        assert f"{name}={ENV[name]}" in hidden


@pytest.mark.parametrize(
    "token",
    [
        "ghp_" + "a1B2" * 9,
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
        "AKIAIOSFODNN7EXAMPLE",
        "sk-proj-abcdefghijklmnopqrstuvwx",
        "sk-ant-api03-abcdefghijklmnopqrstuvwxyz",
    ],
)
def test_common_token_shapes_are_hidden_even_when_no_variable_holds_them(token: str) -> None:
    redactor = Redactor()
    assert redactor.text(f"pushing with {token} now") == f"pushing with {MASK} now"
    assert redactor.bytes(f"x={token}\n".encode()) == f"x={MASK}\n".encode()


def test_a_password_in_a_url_is_hidden_but_the_host_stays() -> None:
    hidden = Redactor().text("cloning https://bot:hunter2hunter2@git.example.com/a/b.git")
    assert hidden == "cloning https://bot:***@git.example.com/a/b.git"


def test_json_data_and_binary_bytes_are_redacted_in_place() -> None:
    redactor = Redactor({"very-secret-value"})
    data = {"env": ["A=very-secret-value"], "very-secret-value": 3, "n": 1}
    assert redactor.data(data) == {"env": [f"A={MASK}"], MASK: 3, "n": 1}
    blob = b"\x00\xffvery-secret-value\x89PNG"
    assert redactor.bytes(blob) == b"\x00\xff***\x89PNG"


def test_a_registered_secret_is_hidden_from_then_on() -> None:
    value = "block-held-token-0123456789"
    assert value in current_redactor({}).text(value)
    register_secret(value)
    assert current_redactor({}).text(f"token {value}") == f"token {MASK}"


def test_what_counts_as_a_secret() -> None:
    assert looks_secret("ANTHROPIC_API_KEY", "anthropic-key-value")
    assert looks_secret("SOMETHING", "ghp_" + "x" * 36)  # by its shape
    assert not looks_secret("CLAUDE_CODE_MAX_OUTPUT_TOKENS", "32000")  # too short
    assert not looks_secret("GOOGLE_APPLICATION_CREDENTIALS", "/home/me/creds.json")  # a path


def test_a_child_gets_the_basics_its_preset_and_what_is_named_nothing_else() -> None:
    environ = {
        **ENV,
        "PATH": "/usr/bin",
        "LC_ALL": "C.UTF-8",
        "HTTPS_PROXY": "http://proxy:3128",
        "ANTHROPIC_API_KEY": "anthropic-key-value",
        "CLAUDE_CONFIG_DIR": "/cfg",
        "OPENAI_API_KEY": "openai-key-value",
        "FLOTILLA_STORE": "s3://bucket/runs",
        "FLOTILLA_S3_ENDPOINT_URL": "http://127.0.0.1:5000",
        "MY_SETTING": "on",
        "TOOL_A": "a",
        "TOOL_B": "b",
    }
    env = child_env(
        environ,
        preset="claude",
        pass_env=["MY_SETTING", "TOOL_*"],
        values={"PLAIN": "1"},
        contract={"FLOTILLA_UNIT_ID": "u1"},
    )
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/home/someone",
        "LC_ALL": "C.UTF-8",
        "HTTPS_PROXY": "http://proxy:3128",
        "ANTHROPIC_API_KEY": "anthropic-key-value",
        "CLAUDE_CONFIG_DIR": "/cfg",
        "MY_SETTING": "on",
        "TOOL_A": "a",
        "TOOL_B": "b",
        "PLAIN": "1",
        "FLOTILLA_UNIT_ID": "u1",
    }
    copilot = child_env(environ, preset="copilot")
    assert copilot["GITHUB_TOKEN"] == ENV["GITHUB_TOKEN"]  # copilot signs in with it
    assert "FLOTILLA_GITHUB_TOKEN" not in copilot and "AWS_ACCESS_KEY_ID" not in copilot
    named = child_env(environ, pass_env=["AWS_*"])  # named: then, and only then, it goes
    assert named["AWS_SECRET_ACCESS_KEY"] == ENV["AWS_SECRET_ACCESS_KEY"]


REQUEST = """\
feature: {{id: f, title: F}}
units:
  - id: a
    {field}
"""


@pytest.mark.parametrize(
    ("field", "message"),
    [
        (
            "env: {ANTHROPIC_API_KEY: sk-ant-abcdefghijklmnopqrstuvwxyz}",
            "`pass_env: [ANTHROPIC_API_KEY]` instead",
        ),
        ("env: {FLOTILLA_UNIT_ID: x}", "FLOTILLA_UNIT_ID is set by Flotilla"),
        ("env: {'1BAD': x}", "'1BAD' is not a variable name"),
        ("pass_env: ['NOT-A-NAME']", "'NOT-A-NAME' is not a variable name or prefix"),
    ],
)
def test_the_request_names_variables_but_holds_no_secret(field: str, message: str) -> None:
    with pytest.raises(Exception) as info:
        parse_request_text(REQUEST.format(field=field), "request.yaml")
    assert message in str(info.value)
    assert "sk-ant-abcdefghijklmnopqrstuvwxyz" not in str(info.value)
