"""A real S3 endpoint for tests: moto's threaded server on 127.0.0.1, reached over HTTP.

Start it once per session (`moto_s3_server()`), give each test its own prefix. Fake AWS
credentials and region are put in the environment while it runs (and restored after), so s3fs
and boto3 never look for real ones.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass

import boto3
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
FAKE_AWS_ENV: dict[str, str | None] = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    # Never read a developer's real profile or config files.
    "AWS_PROFILE": None,
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


@dataclass(frozen=True)
class MotoS3:
    """A running moto S3 server and the bucket created on it."""

    endpoint_url: str
    bucket: str

    def url(self, prefix: str) -> str:
        """An `s3://` store URL for `prefix` in the bucket."""
        return f"s3://{self.bucket}/{prefix.strip('/')}"

    @property
    def env(self) -> dict[str, str]:
        """Variables a child process needs to reach this server through Flotilla."""
        values = {k: v for k, v in FAKE_AWS_ENV.items() if v is not None}
        return {**values, "FLOTILLA_S3_ENDPOINT_URL": self.endpoint_url}


@contextmanager
def patched_env(values: dict[str, str | None]) -> Iterator[None]:
    """Set (or, for None, unset) environment variables; restore the old values afterwards."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def moto_s3_server(bucket: str = "flotilla-test") -> Iterator[MotoS3]:
    """Run moto on a free port of 127.0.0.1 with `bucket` created; yield where to reach it."""
    with patched_env(FAKE_AWS_ENV):
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            endpoint_url = f"http://{host}:{port}"
            client = boto3.client("s3", endpoint_url=endpoint_url, region_name=REGION)
            with closing(client):
                client.create_bucket(Bucket=bucket)
            yield MotoS3(endpoint_url=endpoint_url, bucket=bucket)
        finally:
            server.stop()
