"""A small local HTTP server standing in for part of the Prefect API, so that tests can drive
Prefect's own client through answers a real server gives only now and then (503, 502, ...)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar


class LocalApi(ThreadingHTTPServer):
    """On a free port of 127.0.0.1; `url` is what PREFECT_API_URL would be."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        super().__init__(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}/api"


Server = TypeVar("Server", bound=LocalApi)


class JsonHandler(BaseHTTPRequestHandler):
    """Answers in JSON, as the Prefect API does, and keeps quiet about each request."""

    def answer(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_args) -> None:
        pass


@contextmanager
def serving(server: Server) -> Iterator[Server]:
    """Serve from a thread until the block ends; then stop and close."""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
