"""Prefect artifacts: what a team lead sees in the UI. Keys are stable per feature."""

from __future__ import annotations

import re

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flotilla.results import UnitRecord


def artifact_key(feature_id: str, kind: str) -> str:
    """Lowercase letters, digits and dashes only, as Prefect requires for artifact keys."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{feature_id}-{kind}".lower()).strip("-")


def publish_pr_artifact(feature_id: str, markdown: str, description: str) -> None:
    create_markdown_artifact(
        key=artifact_key(feature_id, "pr"), markdown=markdown, description=description
    )


def publish_unit_table(feature_id: str, records: list[UnitRecord]) -> None:
    rows = [
        {
            "unit": r.unit_id,
            "status": r.status.value,
            "step": r.step,
            "attempts": r.attempts,
            "iterations": r.iterations,
            "duration_s": round(r.duration_s, 1),
            "error": (r.error.splitlines() or [""])[0][:200],
        }
        for r in records
    ]
    create_table_artifact(
        key=artifact_key(feature_id, "units"), table=rows, description="Units of the feature run"
    )
