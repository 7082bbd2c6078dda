"""The nightly inbox: feature requests queued as YAML files under the store's `inbox/` prefix.

A request moves `inbox/<name>` -> `running/<name>` -> `done/<name>` or `failed/<name>`, and gets
a `<stem>.result.json` next to it that says which run it became and where its report is. Before
anything else a runner claims the request with `running/<name>.claim.json`, written only if no
claim exists (an exclusive create), so two nightly runs never start the same request.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, Field

from flotilla.results import utcnow
from tasks.store import ArtifactStore

INBOX, RUNNING, DONE, FAILED = "inbox", "running", "done", "failed"
REQUEST_SUFFIXES = (".yaml", ".yml")


class Claim(BaseModel):
    """Who is running a request; stored at `running/<name>.claim.json` while it runs."""

    name: str
    flow_run_id: str = ""
    host: str = Field(default_factory=socket.gethostname)
    pid: int = Field(default_factory=os.getpid)
    claimed_at: datetime = Field(default_factory=utcnow)


class InboxResult(BaseModel):
    """`<done|failed>/<stem>.result.json`: what became of one queued request."""

    request: str = Field(description="The request's file name in the inbox.")
    state: Literal["succeeded", "failed", "invalid"]
    request_key: str = Field(description="Where the request file is now (done/ or failed/).")
    run_key: str = ""
    feature_id: str = ""
    pr_path: str = ""
    pr_url: str = ""
    report: str = Field("", description="The run's report in the store (report.md or PR.md).")
    run: str = Field("", description="The run's folder in the store.")
    flow_run_id: str = ""
    error: str = ""
    claimed_at: datetime | None = None
    finished_at: datetime = Field(default_factory=utcnow)


class Inbox:
    """The inbox/, running/, done/ and failed/ prefixes of one store."""

    def __init__(self, store: ArtifactStore):
        self.store = store

    def waiting(self) -> list[str]:
        """Names of the request files directly under `inbox/`, oldest name first."""
        names = []
        for key in self.store.list(INBOX):
            name = key[len(INBOX) + 1 :]
            if "/" not in name and name.endswith(REQUEST_SUFFIXES):
                names.append(name)
        return names

    def claim_key(self, name: str) -> str:
        return f"{RUNNING}/{name}.claim.json"

    def holder(self, name: str) -> Claim | None:
        """The claim on `name`, if a run holds it."""
        try:
            return self.store.read_model(self.claim_key(name), Claim)
        except KeyError:
            return None

    def claim(self, name: str, flow_run_id: str = "") -> Claim | None:
        """Take `name` out of the inbox for this run; None if another run holds or took it."""
        claim = Claim(name=name, flow_run_id=flow_run_id)
        data = claim.model_dump_json(indent=2).encode() + b"\n"
        if not self.store.create(self.claim_key(name), data):
            return None
        try:
            self.store.move(f"{INBOX}/{name}", f"{RUNNING}/{name}")
        except KeyError:  # another run took and finished it since we listed the inbox
            self.store.delete(self.claim_key(name))
            return None
        return claim

    def download(self, name: str, directory: Path) -> Path:
        """The claimed request as a local file, for the feature flow (which reads paths)."""
        local = Path(directory) / name
        self.store.download_file(f"{RUNNING}/{name}", local)
        return local

    def finish(self, name: str, result: InboxResult) -> InboxResult:
        """File the request under done/ or failed/ with its result, then drop the claim."""
        folder = DONE if result.state == "succeeded" else FAILED
        target = self._free_name(folder, name)
        self.store.move(f"{RUNNING}/{name}", f"{folder}/{target}")
        result = result.model_copy(update={"request_key": self.store.uri(f"{folder}/{target}")})
        self.store.write_json(f"{folder}/{result_name(target)}", result)
        self.store.delete(self.claim_key(name))
        return result

    def _free_name(self, folder: str, name: str) -> str:
        """`name`, or `<stem>-<n><suffix>` when an earlier request of that name was filed."""
        if not self.store.exists(f"{folder}/{name}"):
            return name
        path = PurePosixPath(name)
        n = 2
        while self.store.exists(f"{folder}/{path.stem}-{n}{path.suffix}"):
            n += 1
        return f"{path.stem}-{n}{path.suffix}"


def result_name(name: str) -> str:
    """`<stem>.result.json` for a request file `<stem>.yaml`."""
    return f"{PurePosixPath(name).stem}.result.json"
