"""The environment an agent or a test command gets: chosen variable by variable, never inherited.

A child process sees only
- the basics a shell and a CLI need (`PATH`, `HOME`, `LANG`, `LC_*`, `TERM`, `TMPDIR`, `USER`,
  proxies and CA bundles, XDG directories),
- what its agent preset's CLI reads (its API key, its own settings; see `PRESET_ENV`),
- what the request names: `pass_env: [NAME, PREFIX_*]` copies variables from Flotilla's
  environment, `env: {NAME: value}` sets values,
- and, for agents, the `FLOTILLA_*` contract variables of the invocation.

So Flotilla's own credentials (the GitHub provider's token, the store's `AWS_*` and
`FLOTILLA_S3_*`) reach a child only when the request names them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

BASIC_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "TERM",
        "COLORTERM",
        "NO_COLOR",
        "TMPDIR",
        "TZ",
        "XDG_CONFIG_HOME",
        "XDG_CACHE_HOME",
        "XDG_DATA_HOME",
        "XDG_STATE_HOME",
        "XDG_RUNTIME_DIR",
        # proxies, and the CA bundles that go with a TLS-inspecting proxy
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        # where Python keeps bytecode caches: a user who keeps them out of trees keeps them out
        # of worktrees (and so out of commits) too
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONPYCACHEPREFIX",
    }
)
BASIC_PREFIXES = ("LC_",)

# The variables that make up the agent contract (docs/agents.md). Only these FLOTILLA_* names
# ever reach a child, and only with the values of the invocation, never Flotilla's own.
CONTRACT_NAMES = frozenset(
    {
        "FLOTILLA_UNIT_ID",
        "FLOTILLA_FEATURE_ID",
        "FLOTILLA_WORKTREE",
        "FLOTILLA_PROMPT_FILE",
        "FLOTILLA_INPUTS_DIR",
        "FLOTILLA_OUTPUTS_DIR",
        "FLOTILLA_SUMMARY_FILE",
        "FLOTILLA_NEW_UNITS_FILE",
        "FLOTILLA_REQUEST_DIR",
        "FLOTILLA_ITERATION",
        "FLOTILLA_ATTEMPT",
        "FLOTILLA_USAGE_FILE",
        "FLOTILLA_CANDIDATE",
        "FLOTILLA_CANDIDATES_DIR",  # best-of-N: the judge's folder of candidates
        "FLOTILLA_PLAN_FILE",  # the LLM decomposer's answer
    }
)

# What each preset's CLI reads from its environment: names, and prefixes ending in `*`.
# Sources: each CLI's documentation of its environment variables (docs/agents.md links them).
PRESET_ENV: dict[str, tuple[str, ...]] = {
    "claude": ("ANTHROPIC_*", "CLAUDE_*", "DISABLE_*", "MCP_*"),
    "codex": ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORGANIZATION", "CODEX_*"),
    "aider": (
        "AIDER_*",
        "OPENAI_API_KEY",
        "OPENAI_API_BASE",
        "ANTHROPIC_API_KEY",
        "GEMINI_API_KEY",
        "DEEPSEEK_API_KEY",
        "OPENROUTER_API_KEY",
    ),
    "gemini": (
        "GEMINI_*",
        "GOOGLE_API_KEY",
        "GOOGLE_CLOUD_PROJECT",
        "GOOGLE_CLOUD_LOCATION",
        "GOOGLE_GENAI_USE_VERTEXAI",
        "GOOGLE_APPLICATION_CREDENTIALS",
    ),
    "cursor-agent": ("CURSOR_*",),
    "copilot": ("COPILOT_*", "GH_TOKEN", "GITHUB_TOKEN", "GH_HOST"),
    "opencode": (
        "OPENCODE_*",
        "ANTHROPIC_API_KEY",
        "OPENAI_API_KEY",
        "GEMINI_API_KEY",
        "OPENROUTER_API_KEY",
    ),
}

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PASS_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\*?$")


def _matches(name: str, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        if pattern.endswith("*") and name.startswith(pattern[:-1]):
            return True
        if name == pattern:
            return True
    return False


def _pick(environ: Mapping[str, str], patterns: Iterable[str]) -> dict[str, str]:
    patterns = tuple(patterns)
    return {name: value for name, value in environ.items() if _matches(name, patterns)}


def basic_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables every child gets: a shell, a locale, a home, a way out through a proxy."""
    return {
        name: value
        for name, value in environ.items()
        if name in BASIC_NAMES or name.startswith(BASIC_PREFIXES)
    }


def child_env(
    environ: Mapping[str, str],
    *,
    preset: str | None = None,
    pass_env: Iterable[str] = (),
    values: Mapping[str, str] | None = None,
    contract: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The whole environment of an agent or test process.

    Later layers win: basics, the preset's variables, `pass_env` names, `env` values, then
    the contract (which the request cannot override). Nothing else from `environ` gets in.
    """
    env = basic_env(environ)
    if preset is not None:
        env.update(_pick(environ, PRESET_ENV.get(preset, ())))
    env.update(_pick(environ, pass_env))
    env.update(values or {})
    env.update(contract or {})
    return env
