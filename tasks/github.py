"""A small GitHub REST client: find, open and update a pull request, and label it.

It speaks only the endpoints the github PR provider needs. Every call retries where waiting helps
(rate limits, 5xx answers, network errors) with a capped wait, and every failure becomes a
`GitHubError` that says what failed, in which repository and how to fix it. The token travels in
one header only: it is never logged, and every message is scrubbed of it before it is raised.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import BaseModel, SecretStr

from flotilla.errors import FlotillaError
from flotilla.redaction import register_secret
from flotilla.settings import get_settings

API_VERSION = "2022-11-28"
SECONDARY_LIMIT_WAIT_S = 60.0  # GitHub: "wait at least one minute" when it names no time
_log = logging.getLogger(__name__)


class GitHubError(FlotillaError):
    """A GitHub API call failed; `status` is the HTTP status (None for network errors)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class PullRequest(BaseModel):
    number: int
    url: str
    draft: bool = False
    state: str = "open"
    title: str = ""


def rate_limit_wait(
    status: int, headers: httpx.Headers | dict[str, str], text: str, now: float
) -> float | None:
    """Seconds until GitHub takes calls again, or None when this answer is no rate limit."""
    if status not in (403, 429):
        return None
    headers = httpx.Headers(headers)
    retry_after = headers.get("retry-after")
    if retry_after is not None:
        try:
            return max(0.0, float(retry_after))
        except ValueError:
            return SECONDARY_LIMIT_WAIT_S
    reset = headers.get("x-ratelimit-reset")
    if headers.get("x-ratelimit-remaining") == "0" and reset is not None:
        try:
            return max(0.0, float(reset) - now)
        except ValueError:
            return SECONDARY_LIMIT_WAIT_S
    if status == 429 or "rate limit" in text.lower():
        return SECONDARY_LIMIT_WAIT_S
    return None


class GitHubClient:
    """Calls to one repository (`owner/name`) through one API root (github.com or Enterprise)."""

    def __init__(
        self,
        api_url: str,
        repo: str,
        token: SecretStr,
        *,
        retries: int = 4,
        max_wait_s: float = 120.0,
        backoff_s: float = 1.0,
        timeout_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        logger: logging.Logger | logging.LoggerAdapter = _log,
    ):
        self.api_url = api_url.rstrip("/")
        self.repo = repo
        self.owner = repo.split("/", 1)[0]
        self._secret = token.get_secret_value()
        if not self._secret.strip():
            raise GitHubError(
                f"The GitHub token for {repo} is empty. Set GITHUB_TOKEN or the Prefect Secret "
                "block named in `publish.token_secret_block` to a token with write access."
            )
        self.retries = retries
        self.max_wait_s = max_wait_s
        self.backoff_s = backoff_s
        self._sleep = sleep
        self._log = logger
        self._http = httpx.Client(
            base_url=self.api_url + "/",
            timeout=timeout_s,
            headers={
                "Accept": "application/vnd.github+json",
                "Authorization": f"Bearer {self._secret}",
                "User-Agent": "flotilla",
                "X-GitHub-Api-Version": API_VERSION,
            },
        )

    def __enter__(self) -> GitHubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GitHubClient({self.api_url!r}, {self.repo!r})"

    def close(self) -> None:
        self._http.close()

    # -- the endpoints -----------------------------------------------------------------------

    def check_access(self) -> None:
        """Fail now, before any agent runs, if the token cannot see or push to the repository."""
        data = self._call("GET", f"repos/{self.repo}", what="checking access").json()
        if not (data.get("permissions") or {}).get("push", False):
            raise GitHubError(
                f"The GitHub token can read {self.repo} but not push to it, so Flotilla could "
                "not open the feature PR there. Use a token with write access to its contents "
                "and pull requests."
            )

    def find_open_pull(self, branch: str) -> PullRequest | None:
        """The open pull request whose head is `branch` in this repository, if there is one."""
        found = self._call(
            "GET",
            f"repos/{self.repo}/pulls",
            params={"head": f"{self.owner}:{branch}", "state": "open"},
            what=f"looking for an open pull request from {branch}",
        ).json()
        return _pull(found[0]) if found else None

    def create_pull(
        self, *, head: str, base: str, title: str, body: str, draft: bool
    ) -> PullRequest:
        payload = {"title": title, "head": head, "base": base, "body": body, "draft": draft}
        answer = self._call(
            "POST",
            f"repos/{self.repo}/pulls",
            json=payload,
            what=f"opening a pull request from {head} into {base}",
            fix=f"Check that {head} was pushed to {self.repo} and that {base} exists there.",
        )
        return _pull(answer.json())

    def update_pull(self, number: int, *, title: str, body: str, base: str) -> PullRequest:
        answer = self._call(
            "PATCH",
            f"repos/{self.repo}/pulls/{number}",
            json={"title": title, "body": body, "base": base},
            what=f"updating pull request #{number}",
            fix=f"Check that the base branch {base} exists in {self.repo}.",
        )
        return _pull(answer.json())

    def add_labels(self, number: int, labels: list[str]) -> None:
        """Adds labels (GitHub creates unknown ones); labels already on the PR stay."""
        self._call(
            "POST",
            f"repos/{self.repo}/issues/{number}/labels",
            json={"labels": labels},
            what=f"adding labels {', '.join(labels)} to pull request #{number}",
            fix="Check the label names in `publish.labels`.",
        )

    # -- one call, with retries and clear errors --------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        fix: str = "",
    ) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, json=json, params=params)
            except httpx.TransportError as exc:
                if attempt < self.retries:
                    attempt += 1
                    self._wait(self._backoff(attempt), f"{type(exc).__name__} while {what}")
                    continue
                raise GitHubError(
                    self._scrub(
                        f"Could not reach GitHub at {self.api_url} while {what} in {self.repo} "
                        f"({type(exc).__name__}: {exc}), after {attempt + 1} tries. Check "
                        "`publish.api_url` and the network, then run the feature again."
                    )
                ) from None
            if response.is_success:
                return response
            text = response.text
            wait = rate_limit_wait(response.status_code, response.headers, text, time.time())
            if wait is not None:
                if attempt < self.retries and wait <= self.max_wait_s:
                    attempt += 1
                    self._wait(wait, f"GitHub's rate limit while {what}")
                    continue
                raise self._rate_limited(response, wait, what)
            if response.status_code >= 500 and attempt < self.retries:
                attempt += 1
                self._wait(self._backoff(attempt), f"GitHub answered {response.status_code}")
                continue
            raise self._error(response, method, path, what, fix, attempt + 1)

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff_s * 2 ** (attempt - 1), self.max_wait_s)

    def _wait(self, seconds: float, why: str) -> None:
        self._log.warning("Waiting %.1f s for GitHub (%s) in %s.", seconds, why, self.repo)
        self._sleep(seconds + 0.05 if seconds else 0)

    def _rate_limited(self, response: httpx.Response, wait: float, what: str) -> GitHubError:
        resume = datetime.fromtimestamp(time.time() + wait, UTC).strftime("%H:%M:%S UTC")
        reason = (
            f"the wait of {wait:.0f} s is longer than the cap of {self.max_wait_s:g} s "
            "(FLOTILLA_GITHUB_MAX_WAIT_S)"
            if wait > self.max_wait_s
            else f"it was still limited after {self.retries + 1} tries"
        )
        return GitHubError(
            self._scrub(
                f"GitHub's rate limit stopped {what} in {self.repo} ({response.status_code} "
                f"{_said(response)}); it lifts at about {resume}, and {reason}. Run the feature "
                "again after that (finished units are reused), or raise "
                "FLOTILLA_GITHUB_MAX_WAIT_S to wait longer."
            ),
            response.status_code,
        )

    def _error(
        self, response: httpx.Response, method: str, path: str, what: str, fix: str, tries: int
    ) -> GitHubError:
        status = response.status_code
        said = _said(response)
        where = f"{method} {self.api_url}/{path}"
        if status == 401:
            text = (
                f"GitHub rejected the token while {what} in {self.repo} (401 {said}). Set "
                "GITHUB_TOKEN, or the Prefect Secret block named in `publish.token_secret_block`, "
                f"to a valid token with write access to pull requests and contents of {self.repo}."
            )
        elif status == 403:
            text = (
                f"GitHub refused {what} in {self.repo} (403 {said}). The token lacks permission: "
                "it needs write access to contents and pull requests (and issues, for labels); "
                "for an organisation with SSO, authorise the token for it."
            )
        elif status == 404:
            text = (
                f"GitHub found nothing at {where} while {what} (404 {said}). Check `publish.repo` "
                f"({self.repo}) and `publish.api_url`; GitHub also answers 404 when the token "
                "cannot see a private repository."
            )
        elif status == 422:
            hint = (
                "Set `publish.draft: false`: this repository does not take draft pull requests."
                if "draft" in said.lower()
                else fix
            )
            text = f"GitHub did not accept {what} in {self.repo} (422 {said}). {hint}".strip()
        elif status >= 500:
            text = (
                f"GitHub answered {status} ({said}) to {where} while {what}, {tries} times. "
                "GitHub may be having trouble (https://www.githubstatus.com); run the feature "
                "again later, finished units are reused."
            )
        else:
            text = f"GitHub answered {status} ({said}) to {where} while {what}. {fix}".strip()
        return GitHubError(self._scrub(text), status)

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***")


def _said(response: httpx.Response) -> str:
    """GitHub's own words: its message plus any field errors, kept short."""
    try:
        data = response.json()
    except ValueError:
        return (response.reason_phrase or response.text[:200]).strip()
    if not isinstance(data, dict):
        return response.reason_phrase
    parts = [str(data.get("message") or response.reason_phrase)]
    for item in data.get("errors") or []:
        if isinstance(item, dict):
            detail = item.get("message") or " ".join(
                str(item[k]) for k in ("resource", "field", "code") if item.get(k)
            )
            parts.append(str(detail))
        else:
            parts.append(str(item))
    return ": ".join(p for p in parts if p)[:400]


def _pull(data: dict[str, Any]) -> PullRequest:
    return PullRequest(
        number=data["number"],
        url=data.get("html_url") or data.get("url", ""),
        draft=bool(data.get("draft", False)),
        state=data.get("state", "open"),
        title=data.get("title", ""),
    )


def resolve_token(repo: str, secret_block: str | None = None) -> SecretStr:
    """The token: from the named Prefect Secret block, else from GITHUB_TOKEN. Never logged."""
    if secret_block:
        from prefect.blocks.system import Secret

        try:
            value = Secret.load(secret_block).value
        except Exception as exc:  # not found, no API, bad type: the same advice
            raise GitHubError(
                f"Could not load the Prefect Secret block {secret_block!r} named in "
                f"`publish.token_secret_block` for {repo} ({type(exc).__name__}). Create it "
                f"(`Secret(value=...).save({secret_block!r})` or the Blocks page of the UI), "
                "or remove the field to use GITHUB_TOKEN."
            ) from None
        secret = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        if not isinstance(secret, str) or not secret.strip():
            raise GitHubError(
                f"The Prefect Secret block {secret_block!r} does not hold a token (a non-empty "
                "string). Save the token itself in it."
            )
        register_secret(secret.strip())  # never written anywhere, like GITHUB_TOKEN
        return SecretStr(secret.strip())
    token = get_settings().github_token
    if token is None or not token.get_secret_value().strip():
        raise GitHubError(
            f"No GitHub token to open the pull request in {repo}. Set GITHUB_TOKEN to a token "
            "with write access to its contents and pull requests, or name a Prefect Secret "
            "block holding one in `publish.token_secret_block`."
        )
    return SecretStr(token.get_secret_value().strip())


def git_auth_env(remote: str, api_url: str, token: SecretStr) -> dict[str, str]:
    """Environment that lets `git push` use the token on an https remote of the same GitHub.

    The header goes through GIT_CONFIG_* variables, so it shows in no command line, error or log.
    Remotes on other hosts, ssh remotes and local paths get nothing: the token stays home.
    """
    if not remote.startswith("https://"):
        return {}
    host = httpx.URL(remote).netloc.decode()
    api_host = httpx.URL(api_url).netloc.decode()
    if host not in (api_host, api_host.removeprefix("api.")):
        return {}
    basic = base64.b64encode(f"x-access-token:{token.get_secret_value()}".encode()).decode()
    register_secret(basic)  # a git error quoting the header must not show it either
    index = int(os.environ.get("GIT_CONFIG_COUNT") or 0)
    return {
        "GIT_CONFIG_COUNT": str(index + 1),
        f"GIT_CONFIG_KEY_{index}": f"http.https://{host}/.extraheader",
        f"GIT_CONFIG_VALUE_{index}": f"AUTHORIZATION: basic {basic}",
    }
