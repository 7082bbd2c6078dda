"""A local fake of the GitHub REST endpoints Flotilla uses, checking every request it gets.

It listens on 127.0.0.1 on a free port (under an optional path prefix, as GitHub Enterprise's
`/api/v3`) and speaks exactly five endpoints: get a repository (with the token's permissions),
list open pulls by head, create a pull, update a pull, add labels. It answers like GitHub (status codes, JSON shapes, rate-limit headers) and
records every request. A request GitHub would not take as sent (missing or odd headers, a path
outside the prefix, unknown or mistyped JSON fields) is answered 400 and listed in `violations`,
which `running()` asserts empty when the test ends. `fail()` injects answers such as 403 with
`x-ratelimit-remaining: 0`, 5xx, or 422; `{token}` in an injected body is replaced by the token
the request carried, to prove the client never repeats it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

API_VERSION = "2022-11-28"
_REPO = r"/repos/(?P<owner>[^/]+)/(?P<name>[^/]+)"
_ROUTES = [
    ("GET", re.compile(_REPO), "get_repo"),
    ("GET", re.compile(_REPO + r"/pulls"), "list_pulls"),
    ("POST", re.compile(_REPO + r"/pulls"), "create_pull"),
    ("PATCH", re.compile(_REPO + r"/pulls/(?P<number>\d+)"), "update_pull"),
    ("POST", re.compile(_REPO + r"/issues/(?P<number>\d+)/labels"), "add_labels"),
]


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    at: float


@dataclass
class Fault:
    method: str
    pattern: str
    status: int
    headers: dict[str, str | Callable[[], str]]  # a callable is asked when answering
    body: Any
    times: int


@dataclass
class FakeGitHub:
    token: str
    repos: tuple[str, ...] = ("acme/app",)
    prefix: str = ""
    branch_exists: Callable[[str], bool] | None = None
    read_only: tuple[str, ...] = ()
    requests: list[Recorded] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    pulls: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    def fail(
        self,
        method: str,
        pattern: str,
        status: int,
        *,
        headers: dict[str, str | Callable[[], str]] | None = None,
        body: Any = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` matching requests (regex on the path) with this instead."""
        body = body if body is not None else {"message": f"Injected {status}"}
        self.faults.append(Fault(method, pattern, status, headers or {}, body, times))

    def calls(self, method: str | None = None) -> list[Recorded]:
        return [r for r in self.requests if method in (None, r.method)]

    # -- the endpoints ---------------------------------------------------------------------

    def get_repo(self, repo: str, body: Any, **_: Any):
        if body is not None:
            self.violations.append("GET repo carried a body")
        permissions = {"admin": False, "push": repo not in self.read_only, "pull": True}
        return 200, {"full_name": repo, "permissions": permissions}

    def list_pulls(self, repo: str, owner: str, query: dict, body: Any, **_: str):
        if body is not None:
            self.violations.append("GET pulls carried a body")
        head, state = query.get("head", [""])[0], query.get("state", [""])[0]
        if state != "open" or not head.startswith(f"{owner}:"):
            self.violations.append(f"GET pulls wants head=<owner>:<branch>&state=open: {query}")
        branch = head.split(":", 1)[-1]
        found = [p for p in self.pulls.get(repo, []) if p["state"] == "open"]
        return 200, [p for p in found if p["head"]["ref"] == branch]

    def create_pull(self, repo: str, owner: str, body: Any, **_: Any):
        if not self._fields(
            body, {"title": str, "head": str, "base": str}, {"body": str, "draft": bool}
        ):
            return 400, {"message": "Problems parsing JSON"}
        for side in ("head", "base"):
            if self.branch_exists and not self.branch_exists(body[side]):
                return 422, _invalid(side)
        if any(
            p["head"]["ref"] == body["head"] and p["state"] == "open"
            for p in self.pulls.get(repo, [])
        ):
            return 422, {
                "message": "Validation Failed",
                "errors": [
                    {"message": f"A pull request already exists for {owner}:{body['head']}."}
                ],
            }
        number = sum(len(v) for v in self.pulls.values()) + 1
        pull = {
            "number": number,
            "html_url": f"https://github.example/{repo}/pull/{number}",
            "url": f"{self.url}/repos/{repo}/pulls/{number}",
            "state": "open",
            "draft": body.get("draft", False),
            "title": body["title"],
            "body": body.get("body", ""),
            "head": {"ref": body["head"], "label": f"{owner}:{body['head']}"},
            "base": {"ref": body["base"]},
            "labels": [],
        }
        self.pulls.setdefault(repo, []).append(pull)
        return 201, pull

    def update_pull(self, repo: str, number: str, body: Any, **_: Any):
        allowed = {"title": str, "body": str, "base": str, "state": str}
        if not self._fields(body, {}, allowed):
            return 400, {"message": "Problems parsing JSON"}
        pull = self._pull(repo, number)
        if pull is None:
            return 404, {"message": "Not Found"}
        if "base" in body and self.branch_exists and not self.branch_exists(body["base"]):
            return 422, _invalid("base")
        for key in ("title", "body", "state"):
            pull[key] = body.get(key, pull[key])
        pull["base"] = {"ref": body.get("base", pull["base"]["ref"])}
        return 200, pull

    def add_labels(self, repo: str, number: str, body: Any, **_: Any):
        if not self._fields(body, {"labels": list}, {}) or not all(
            isinstance(x, str) and x for x in body["labels"]
        ):
            return 400, {"message": "Problems parsing JSON"}
        pull = self._pull(repo, number)
        if pull is None:
            return 404, {"message": "Not Found"}
        names = [label["name"] for label in pull["labels"]]
        pull["labels"] += [{"name": n} for n in body["labels"] if n not in names]
        return 200, pull["labels"]

    # -- checks ----------------------------------------------------------------------------

    def _fields(self, body: Any, required: dict[str, type], optional: dict[str, type]) -> bool:
        if not isinstance(body, dict):
            self.violations.append(f"JSON body must be an object, got {body!r}")
            return False
        known = {**required, **optional}
        problems = [f"unknown field {k!r}" for k in body if k not in known]
        problems += [f"missing field {k!r}" for k in required if k not in body]
        problems += [
            f"field {k!r} should be {t.__name__}"
            for k, t in known.items()
            if k in body and not isinstance(body[k], t)
        ]
        self.violations += problems
        return not problems

    def _pull(self, repo: str, number: str) -> dict[str, Any] | None:
        return next((p for p in self.pulls.get(repo, []) if p["number"] == int(number)), None)

    def handle(self, method: str, raw_path: str, headers: dict[str, str], raw: bytes):
        """(status, extra headers, JSON answer) for one request; records it first."""
        parts = urlsplit(raw_path)
        body = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                self.violations.append(f"{method} {parts.path}: body is not JSON")
                return 400, {}, {"message": "Problems parsing JSON"}
        query = parse_qs(parts.query)
        with self.lock:
            self.requests.append(Recorded(method, parts.path, query, headers, body, time.time()))
            return self._answer(method, parts.path, query, headers, body)

    def _answer(self, method, path, query, headers, body):
        expected = {"accept": "application/vnd.github+json", "x-github-api-version": API_VERSION}
        for name, value in expected.items():
            if headers.get(name) != value:
                self.violations.append(f"{method} {path}: header {name} is {headers.get(name)!r}")
        if not headers.get("user-agent"):
            self.violations.append(f"{method} {path}: no User-Agent")
        if body is not None and not headers.get("content-type", "").startswith("application/json"):
            self.violations.append(f"{method} {path}: body without a JSON content type")
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            self.violations.append(f"{method} {path}: authorization is not a bearer token")
        if auth != f"Bearer {self.token}":
            return 401, {}, {"message": "Bad credentials"}
        if not path.startswith(self.prefix + "/"):
            self.violations.append(f"{method} {path}: outside the API prefix {self.prefix!r}")
            return 404, {}, {"message": "Not Found"}
        route = path[len(self.prefix) :]
        for fault in self.faults:
            if fault.times > 0 and fault.method == method and re.search(fault.pattern, route):
                fault.times -= 1
                given = auth.removeprefix("Bearer ")
                text = json.dumps(fault.body).replace("{token}", given)
                headers = {k: v() if callable(v) else v for k, v in fault.headers.items()}
                return fault.status, headers, json.loads(text)
        for verb, pattern, name in _ROUTES:
            match = pattern.fullmatch(route)
            if match and verb == method:
                args = match.groupdict()
                repo = f"{args.pop('owner')}/{args.pop('name')}"
                if repo not in self.repos:
                    return 404, {}, {"message": "Not Found"}
                owner = repo.split("/")[0]
                status, answer = getattr(self, name)(
                    repo=repo, owner=owner, query=query, body=body, **args
                )
                return status, {}, answer
        self.violations.append(f"{method} {path}: not an endpoint Flotilla should call")
        return 404, {}, {"message": "Not Found"}


def _invalid(side: str) -> dict[str, Any]:
    return {
        "message": "Validation Failed",
        "errors": [{"resource": "PullRequest", "field": side, "code": "invalid"}],
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeGitHub

    def _serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, extra, answer = self.fake.handle(self.command, self.path, headers, raw)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@contextmanager
def running(token: str, **options: Any) -> Iterator[FakeGitHub]:
    """Serve a FakeGitHub on a free port; on exit stop it and fail on any violation."""
    fake = FakeGitHub(token=token, **options)
    handler = type("Handler", (_Handler,), {"fake": fake})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    fake.port = server.server_address[1]
    thread = threading.Thread(
        target=server.serve_forever, args=(0.02,), name="fake-github", daemon=True
    )
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert not fake.violations, "requests GitHub would refuse:\n" + "\n".join(fake.violations)
