"""The nightly inbox on a moto S3 store: requests are claimed, run once, and filed with results."""

from __future__ import annotations

import concurrent.futures as cf
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.states import Running

from flows.nightly import nightly_features
from tasks.inbox import Claim, Inbox, InboxResult
from tasks.store import ArtifactStore
from tests.e2e.helpers import AGENT, git, make_target, write_request

BAD_REQUEST = """\
feature: {id: broken, title: Broken request}
units:
  - id: only
    promt: a typo in a field name
"""


@pytest.fixture
def s3_store(monkeypatch, moto_s3, s3_store_url) -> ArtifactStore:
    monkeypatch.setenv("FLOTILLA_S3_ENDPOINT_URL", moto_s3.endpoint_url)
    return ArtifactStore(s3_store_url)


def queue(store: ArtifactStore, tmp_path: Path, name: str, feature_id: str, target: Path) -> Path:
    """Queue a one-unit request for `feature_id`; return the agent's timeline file.

    A `name` without .yaml queues a folder, `inbox/<name>/request.yaml`, whose agent is a
    script in that folder named through `{request_dir}`.
    """
    directory = tmp_path / "requests" / feature_id
    directory.mkdir(parents=True)
    timeline = tmp_path / f"{feature_id}.timeline"
    path = write_request(
        directory,
        [{"id": "part"}],
        timeline=timeline,
        feature_id=feature_id,
        extra={"repo": {"url": str(target)}},
    )
    if name.endswith(".yaml"):
        store.upload_file(f"inbox/{name}", path)
        return timeline
    request = yaml.safe_load(path.read_text())
    request["units"][0]["agent"]["command"] = f"{sys.executable} {{request_dir}}/agent.py"
    path.write_text(yaml.safe_dump(request))
    shutil.copy(AGENT, directory / "agent.py")
    store.upload_dir(f"inbox/{name}", directory)
    return timeline


def test_the_nightly_flow_files_each_request_under_done_or_failed(tmp_path, s3_store):
    target = make_target(tmp_path / "target")
    timelines = [
        queue(s3_store, tmp_path, "alpha.yaml", "alpha", target),
        queue(s3_store, tmp_path, "beta", "beta", target),  # a folder with its agent
    ]
    s3_store.write_text("inbox/bad.yaml", BAD_REQUEST)

    state = nightly_features(store=s3_store.url, workdir=str(tmp_path / "work"), return_state=True)

    assert state.is_failed()  # one request failed, so the morning shows a red run
    assert "1 of 3 queued request(s) failed: bad.yaml" in state.message
    assert s3_store.list("inbox") == []
    assert s3_store.list("running") == []
    for name, filed in (("alpha", "alpha.yaml"), ("beta", "beta/request.yaml")):
        assert s3_store.exists(f"done/{filed}")
        result = s3_store.read_json(f"done/{name}.result.json")
        assert result["state"] == "succeeded", result
        assert result["feature_id"] == name
        assert result["pr_path"] == s3_store.uri(f"runs/{result['run_key']}/feature/pr.md")
        assert result["report"].startswith(s3_store.uri(f"runs/{result['run_key']}/feature/"))
        assert s3_store.read_text(f"runs/{result['run_key']}/feature/pr.md").startswith("#")
        assert git(target, "show", f"flotilla/{name}:units/part.txt").startswith("part")
    assert all(t.read_text().count("start part") == 1 for t in timelines)
    bad = s3_store.read_json("failed/bad.result.json")
    assert bad["state"] == "invalid"
    assert bad["run_key"] == ""
    assert (
        f"{s3_store.uri('inbox/bad.yaml')}:4: units[0] (id: only).promt: unknown field"
        in bad["error"]
    )
    assert s3_store.read_text("failed/bad.yaml") == BAD_REQUEST


def test_a_claimed_request_is_not_started_twice(tmp_path, s3_store):
    target = make_target(tmp_path / "target")
    held = queue(s3_store, tmp_path, "held.yaml", "held", target)
    stale = queue(s3_store, tmp_path, "stale.yaml", "stale", target)

    @flow(name="earlier-nightly")
    def earlier() -> None:
        pass

    finished = earlier(return_state=True).state_details.flow_run_id
    with get_client(sync_client=True) as client:
        running = client.create_flow_run(earlier, state=Running()).id
    inbox = Inbox(s3_store)
    for name, owner in (("held.yaml", running), ("stale.yaml", finished)):
        claim = Claim(name=name, flow_run_id=str(owner))
        s3_store.write_json(inbox.claim_key(name), claim)

    report = nightly_features(store=s3_store.url, workdir=str(tmp_path / "work"))

    # held: another run that is still running has it, so it waits in the inbox untouched
    assert report.skipped == ["held.yaml"]
    assert s3_store.exists("inbox/held.yaml")
    assert inbox.holder("held.yaml").flow_run_id == str(running)
    assert not held.exists()
    # stale: its run ended without filing it, so the claim was given back and it ran once
    assert report.released == ["stale.yaml"]
    assert [r.request for r in report.results] == ["stale.yaml"]
    assert s3_store.read_json("done/stale.result.json")["state"] == "succeeded"
    assert stale.read_text().count("start part") == 1


def test_only_one_of_two_racing_claims_wins_on_s3(s3_store):
    s3_store.write_text("inbox/race.yaml", BAD_REQUEST)
    inboxes = [Inbox(ArtifactStore(s3_store.url)) for _ in range(2)]
    with cf.ThreadPoolExecutor(2) as pool:
        claims = list(pool.map(lambda i: i.claim("race.yaml", "run"), inboxes))
    assert sum(c is not None for c in claims) == 1
    assert s3_store.exists("running/race.yaml")
    assert not s3_store.exists("inbox/race.yaml")
    assert inboxes[0].claim("race.yaml") is None  # claimed already, and gone from the inbox


def test_a_request_filed_again_keeps_the_earlier_result(tmp_path):
    inbox = Inbox(ArtifactStore(str(tmp_path / "store")))
    for n in (1, 2):
        inbox.store.write_text("inbox/same.yaml", f"try {n}")
        claim = inbox.claim("same.yaml")
        result = InboxResult(request="same.yaml", state="succeeded", request_key="")
        inbox.finish(claim.name, result)
    assert inbox.store.list("done") == [
        "done/same-2.result.json",
        "done/same-2.yaml",
        "done/same.result.json",
        "done/same.yaml",
    ]
    assert inbox.store.read_text("done/same-2.yaml") == "try 2"
    assert inbox.store.list("running") == []
