"""PR providers and the PR description.

The local provider pushes the feature branch and the unit branches to the target repository and
writes PR.md to the store; a reviewer reads it like a PR description.
"""

from __future__ import annotations

from pydantic import BaseModel

from flotilla.results import MergeRecord, TestReport, UnitRecord, UnitStatus
from flotilla.spec import FeatureInfo


class PullRequestDraft(BaseModel):
    """Everything the PR description is made of."""

    feature: FeatureInfo
    base_branch: str
    feature_branch: str
    feature_commit: str
    units: list[UnitRecord]
    titles: dict[str, str]
    merge_order: list[str]
    merges: list[MergeRecord] = []
    gate: TestReport | None = None
    strategy: str = "merge"
    artifact_links: dict[str, str] = {}
    missing_units: list[str] = []


def render_pr(draft: PullRequestDraft) -> str:
    feature = draft.feature
    done = [u for u in draft.units if u.status == UnitStatus.SUCCEEDED]
    totals = TestReport.combine([u.tests for u in done if u.tests])
    files = sorted({f for u in done for f in u.files_changed})
    lines = [
        f"# {feature.title}",
        "",
        feature.description.strip() or "_No description given._",
        "",
        f"- Branch: `{draft.feature_branch}` → `{draft.base_branch}`"
        f" (head `{draft.feature_commit[:12]}`)",
        f"- Units: {len(done)} of {len(draft.units)} succeeded; merged in this order "
        f"({draft.strategy}): {', '.join(draft.merge_order) or 'none'}",
        f"- Files changed: {len(files)}",
        f"- Unit tests: {totals.one_line() if done else 'none run'}",
        f"- Feature test gate: {draft.gate.one_line() if draft.gate else 'not run'}",
    ]
    if draft.missing_units:
        lines += [
            "",
            "> **Partial feature.** These units are missing: "
            + ", ".join(f"`{u}`" for u in draft.missing_units),
        ]
    redone = [m for m in draft.merges if m.reimplemented]
    if redone:
        lines += [
            "",
            "Units re-done after merge conflicts: " + ", ".join(m.unit_id for m in redone),
        ]
    lines += ["", "## Units"]
    by_id = {u.unit_id: u for u in draft.units}
    for unit_id in [*draft.merge_order, *[u for u in by_id if u not in draft.merge_order]]:
        lines += ["", *_unit_section(by_id[unit_id], draft)]
    if draft.gate and draft.gate.failing_tests:
        lines += ["", "## Failing tests at the gate", ""]
        lines += [f"- `{name}`" for name in draft.gate.failing_tests]
    return "\n".join(lines) + "\n"


def _unit_section(unit: UnitRecord, draft: PullRequestDraft) -> list[str]:
    title = draft.titles.get(unit.unit_id, unit.unit_id)
    lines = [
        f"### {title} (`{unit.unit_id}`)",
        "",
        f"Status: **{unit.status.value}** · attempts: {unit.attempts} · iterations: "
        f"{unit.iterations} · {unit.duration_s:.1f}s · branch `{unit.branch}`",
        "",
        unit.summary or "_The agent left no summary._",
        "",
        f"Tests: {unit.tests.one_line() if unit.tests else 'no test command'}",
    ]
    if unit.files_changed:
        lines += ["", "Files changed:", *[f"- `{f}`" for f in unit.files_changed]]
    if unit.error:
        lines += ["", "Error:", "```", unit.error.strip(), "```"]
    link = draft.artifact_links.get(unit.unit_id)
    if link:
        lines += ["", f"Artifacts: {link}"]
    return lines
