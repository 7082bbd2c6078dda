"""Links in Prefect artifacts that open for whoever reads them, wherever they sit.

A store path is local to the worker that wrote it, and a browser does not open `s3://`; so what
a run stored is reached through the command that fetches it from any machine with the store
(`flotilla artifacts KEY UNIT --store URL`). Branches and pull requests on GitHub are web links.
"""

from __future__ import annotations

import shlex
from urllib.parse import quote, urlparse

from flotilla.runs import RunContext


def artifacts_command(
    run_key: str, store_url: str, unit: str | None = None, get: str | None = None
) -> str:
    """The `flotilla artifacts` command that lists (or, with `get`, prints) what a run stored."""
    words = ["flotilla", "artifacts", run_key, *([unit] if unit else [])]
    words += [*(["--get", get] if get else []), "--store", store_url]
    return " ".join(shlex.quote(word) for word in words)


def github_web_root(api_url: str) -> str:
    """The web address behind a GitHub API root: api.github.com is github.com; an Enterprise
    server serves its API under /api/v3 of its web address."""
    parsed = urlparse(api_url.rstrip("/"))
    if parsed.netloc == "api.github.com":
        return "https://github.com"
    return f"{parsed.scheme}://{parsed.netloc}{parsed.path.removesuffix('/api/v3')}"


def branch_url(ctx: RunContext, branch: str) -> str | None:
    """The branch's page on GitHub for the github provider; None for local runs."""
    publish = ctx.request.publish
    if publish.provider != "github" or not publish.repo:
        return None
    return f"{github_web_root(publish.api_url)}/{publish.repo}/tree/{quote(branch, safe='/')}"


def branch_markdown(ctx: RunContext, branch: str) -> str:
    url = branch_url(ctx, branch)
    return f"[`{branch}`]({url})" if url else f"`{branch}`"


def opens_in_browser(url: str) -> bool:
    return url.startswith(("http://", "https://"))
