"""A whole feature run with its artifact store on S3 (a moto server on 127.0.0.1, via s3fs)."""

from __future__ import annotations

from flotilla.cli import main
from tasks.store import ArtifactStore, RunStore
from tests.e2e.helpers import git, make_target, write_request


def test_a_feature_runs_with_the_store_on_s3(tmp_path, capsys, monkeypatch, moto_s3, s3_store_url):
    monkeypatch.setenv("FLOTILLA_S3_ENDPOINT_URL", moto_s3.endpoint_url)
    target = make_target(tmp_path / "target")
    request = write_request(
        tmp_path,
        [
            {"id": "producer", "outputs": ["schema.json"]},
            {"id": "consumer", "inputs": ["producer/schema.json"]},
        ],
        timeline=tmp_path / "timeline.txt",
    )

    code = main(
        [
            "run",
            str(request),
            "--repo",
            str(target),
            "--store",
            s3_store_url,
            "--workdir",
            str(tmp_path / "work"),
            "--run-key",
            "on-s3",
        ]
    )

    assert code == 0, capsys.readouterr()
    runs = RunStore(ArtifactStore(s3_store_url), "on-s3")
    assert runs.store.read_text(runs.pr_key).startswith("# Demo feature")
    assert runs.read_record("consumer").status == "succeeded"
    assert runs.store.read_json(runs.output_key("producer", "schema.json")) == {"from": "producer"}
    assert runs.store.exists(runs.log_key("consumer", 1))
    # the consumer's agent received the producer's artifact through S3
    assert "producer/schema.json" in git(target, "show", "flotilla/demo-feature:units/consumer.txt")
    assert f"PR description: {s3_store_url}/runs/on-s3/feature/pr.md" in capsys.readouterr().out
