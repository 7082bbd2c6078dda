"""Shared fixtures."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.integration.gitrepos import isolate_git
from tests.integration.s3 import MotoS3, moto_s3_server


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """One moto S3 server (with a bucket) for the whole session; tests use their own prefixes."""
    with moto_s3_server() as s3:
        yield s3


@pytest.fixture
def s3_store_url(moto_s3: MotoS3) -> str:
    """A fresh, empty `s3://<bucket>/<unique prefix>` store URL for one test."""
    return moto_s3.url(f"test-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def git_without_identity(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Git as on a fresh CI machine: no identity configured anywhere (see `isolate_git`)."""
    isolate_git(monkeypatch, tmp_path_factory.mktemp("home"))
