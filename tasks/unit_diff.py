"""What a unit changed, as markdown: `git diff --stat` and the patch, readable in the UI.

It is the "Diff" section of the unit's report artifact (`<feature>-unit-<unit>`, tasks/reporting.py):
one artifact per unit, so the Artifacts page keeps each unit's history across runs and the
Prefect server stores one artifact per unit, not two. A long patch is cut at a line, with a note
saying how much is left out and the command that shows all of it. Like every report, it never
fails a run.
"""

from __future__ import annotations

import logging
import re

from flotilla.results import UnitRecord
from flotilla.runs import RunContext
from tasks.links import branch_markdown
from tasks.workspace import Workspace

PATCH_LIMIT = 40_000  # characters of patch shown; the UI renders far more slowly past this
log = logging.getLogger("flotilla.reporting")


def unit_diff_markdown(ctx: RunContext, record: UnitRecord, workspace: Workspace) -> str:
    """The diff of the unit's commit against where it started, or "" when it made none."""
    if not record.commit or not record.start_commit:
        return ""
    try:
        stat, patch = workspace.diff(record.start_commit, record.commit)
    except Exception as exc:  # the commit is made; a report must not undo it
        log.warning("Could not read the diff of unit %s: %s", record.unit_id, exc)
        return ""
    return diff_markdown(record, ctx.run_key, branch_markdown(ctx, record.branch), stat, patch)


def diff_markdown(
    record: UnitRecord, run_key: str, branch: str, stat: str, patch: str, limit: int = PATCH_LIMIT
) -> str:
    """`branch` is the branch as markdown: a link on GitHub, the name for local runs."""
    since, until = record.start_commit[:12], record.commit[:12]
    lines = [
        "## Diff",
        "",
        f"Branch {branch}: `{since}..{until}` (run `{run_key}`).",
        "",
        _fenced(stat.rstrip() or "(no changes)", "text"),
    ]
    if not patch.strip():
        return "\n".join([*lines, "", "_The commit changes no file._"]) + "\n"
    shown = _cut(patch, limit)
    lines += ["", _fenced(shown.rstrip(), "diff")]
    if len(shown) < len(patch):
        lines += [
            "",
            f"_The patch is {len(patch):,} characters; the first {len(shown):,} are shown. "
            f"All of it: `git diff {since} {until}` in a clone of the target that has "
            f"`{record.branch}`._",
        ]
    return "\n".join(lines) + "\n"


def _cut(text: str, limit: int) -> str:
    """At most `limit` characters, ending at a line break when there is one."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    return head[: head.rfind("\n") + 1] or head


def _fenced(text: str, language: str) -> str:
    """A code block whose fence is longer than any backtick run in `text`."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text}\n{fence}"
