"""Store faults: transient ones are waited out (bounded), the rest fail at once, in one line.

The store is moto's S3 server behind a TCP proxy on 127.0.0.1 that the tests cut and restore;
moto keeps its data through the outage, as S3 would.
"""

from __future__ import annotations

import errno
import re
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from flotilla.errors import StoreUnavailable
from tasks.store import ArtifactStore
from tasks.store_faults import is_transient
from tests.integration.s3 import MotoS3
from tests.integration.tcp_proxy import TcpProxy


@pytest.fixture
def proxy(moto_s3: MotoS3) -> Iterator[TcpProxy]:
    host, port = moto_s3.endpoint_url.removeprefix("http://").rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    yield proxy
    proxy.close()


@pytest.fixture
def store(moto_s3: MotoS3, proxy: TcpProxy) -> ArtifactStore:
    return ArtifactStore(moto_s3.url(f"faults-{uuid.uuid4().hex[:8]}"), endpoint_url=proxy.url)


def restore_after(proxy: TcpProxy, seconds: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(seconds), proxy.restore()))
    thread.start()
    return thread


def test_a_five_second_outage_costs_nothing(store: ArtifactStore, proxy: TcpProxy) -> None:
    store.write_text("runs/k/plan.json", "{}")
    proxy.cut()
    back = restore_after(proxy, 5.0)
    try:
        store.write_text("runs/k/ledger/a.json", '{"unit": "a"}')  # starts while cut
        assert store.read_text("runs/k/plan.json") == "{}"
        assert store.exists("runs/k/ledger/a.json")
        assert store.list("runs/k") == ["runs/k/ledger/a.json", "runs/k/plan.json"]
        assert store.create("runs/k/lock/1.json", b"mine")
    finally:
        back.join()
    assert store.read_text("runs/k/ledger/a.json") == '{"unit": "a"}'


def test_a_store_gone_for_good_is_one_line(
    store: ArtifactStore, proxy: TcpProxy, monkeypatch
) -> None:
    monkeypatch.setenv("FLOTILLA_STORE_RETRY_S", "2")
    store.write_text("kept.txt", "still here")
    proxy.cut()
    for call in (
        lambda: store.write_text("new.txt", "x"),
        lambda: store.read_text("kept.txt"),
        lambda: store.exists("kept.txt"),  # never a silent False while the store is away
        lambda: store.list(""),
    ):
        with pytest.raises(StoreUnavailable) as gone:
            call()
        message = str(gone.value)
        assert "\n" not in message
        assert re.match(rf"store {store.url} unreachable for \d+ s: Could not connect", message)
    proxy.restore()
    assert store.read_text("kept.txt") == "still here"  # nothing was lost


def _client_error(status: int, code: str) -> ClientError:
    response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "PutObject")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), True),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), True),
        (TimeoutError("timed out"), True),
        (_client_error(503, "SlowDown"), True),
        (_client_error(500, "InternalError"), True),
        (_client_error(429, "TooManyRequests"), True),
        (OSError(errno.EREMOTEIO, "We encountered an internal error"), True),
        (FileNotFoundError("no such key"), False),
        (PermissionError("access denied"), False),
        (_client_error(403, "AccessDenied"), False),
        (_client_error(404, "NoSuchBucket"), False),
        (ValueError("bad"), False),
    ],
)
def test_which_faults_are_waited_out(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient
    wrapped = OSError(errno.EIO, "wrapped")
    wrapped.__cause__ = error
    assert is_transient(wrapped) is transient  # s3fs wraps botocore's errors
