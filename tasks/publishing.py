"""The PR description, the run report, and the PR providers (local and GitHub).

The description is written for a reviewer receiving the work of many agents at once: what the
feature is, the order the units were merged in, one section per unit (its agent's summary, the
files it changed, its tests), the conflicts that were resolved, the feature's test gate, and links
to every unit's artifacts in the store. Rendering is pure; the providers do the I/O.

Providers: `local` leaves the pushed branches and PR.md in the store as the PR; `github` opens a
draft pull request through the REST API, or updates the open one for the same branch.
"""

from __future__ import annotations

import logging
from typing import Protocol

from pydantic import BaseModel

from flotilla.candidates import candidate_lines
from flotilla.redaction import redact
from flotilla.results import MergeRecord, ReworkNote, TestReport, UnitRecord, UnitStatus
from flotilla.settings import get_settings
from flotilla.spec import FeatureInfo, PublishSpec
from flotilla.usage import Usage
from tasks.github import GitHubClient, GitHubError, git_auth_env, resolve_token
from tasks.links import opens_in_browser

GITHUB_BODY_LIMIT = 60_000  # GitHub refuses bodies over 65,536 characters
FILES_SHOWN_INLINE = 12


class ArtifactLink(BaseModel):
    name: str
    url: str


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
    unit_artifacts: dict[str, list[ArtifactLink]] = {}
    feature_artifacts: list[ArtifactLink] = []
    missing_units: list[str] = []
    gate_runs: int = 0
    gate_notes: list[str] = []
    run_key: str = ""
    run_url: str = ""


class PullRequestInfo(BaseModel):
    """What a provider publishes."""

    title: str
    body: str
    head: str
    base: str
    full_text_url: str = ""


class PublishedPR(BaseModel):
    provider: str
    url: str = ""
    number: int | None = None
    created: bool = False


# -- rendering -----------------------------------------------------------------------------------


def render_pr(draft: PullRequestDraft) -> str:
    feature = draft.feature
    done = [u for u in draft.units if u.status == UnitStatus.SUCCEEDED]
    totals = TestReport.combine([u.tests for u in done if u.tests])
    files = sorted({f for u in done for f in u.files_changed})
    redone = [m for m in draft.merges if m.reimplemented or m.conflicts]
    fixed = [m.unit_id for m in draft.merges if m.fixed_for_gate]
    order = " → ".join(f"`{u}`" for u in draft.merge_order) or "none"
    lines = [
        f"# {feature.title}",
        "",
        feature.description.strip() or "_No description given._",
        "",
        f"- **Branch:** `{draft.feature_branch}` → `{draft.base_branch}`"
        f" (head `{draft.feature_commit[:12]}`)",
        f"- **Units:** {len(done)} of {len(draft.units)} succeeded",
        f"- **Merge order** ({draft.strategy}): {order}",
        f"- **Files changed:** {len(files)}",
        f"- **Unit tests:** {totals.one_line() if done else 'none run'}",
        f"- **Feature test gate:** {draft.gate.one_line() if draft.gate else 'not run'}",
        f"- **Conflicts resolved:** {len(redone) if redone else 'none'}",
        f"- **Agent spend:** {Usage.total(u.total_usage for u in draft.units).one_line()}",
    ]
    if fixed:
        lines.append("- **Fixed after the test gate:** " + ", ".join(f"`{u}`" for u in fixed))
    if draft.run_url:
        where = draft.run_url if opens_in_browser(draft.run_url) else f"`{draft.run_url}`"
        lines.append(f"- **Run:** `{draft.run_key}` · artifacts: {where}")
    if draft.missing_units:
        lines += [
            "",
            "> **Partial feature.** These units are missing: "
            + ", ".join(f"`{u}`" for u in draft.missing_units),
        ]
    lines += ["", *_merge_order(draft), "", *_tests_table(draft, done, totals)]
    lines += ["", *_conflicts(draft, redone), "", *_gate(draft), "", "## Units"]
    by_id = {u.unit_id: u for u in draft.units}
    for unit_id in [*draft.merge_order, *[u for u in by_id if u not in draft.merge_order]]:
        if unit_id in by_id:
            lines += ["", *_unit_section(by_id[unit_id], draft)]
    return "\n".join(lines) + "\n"


def render_report(draft: PullRequestDraft, pr: PublishedPR | None, pr_md_command: str) -> str:
    """The PR as Prefect shows it: where the PR is, then the same aggregated content."""
    if pr and pr.url:
        where = f"{pr.url} ({'opened' if pr.created else 'updated'} on {pr.provider})"
    else:
        where = f"`{draft.feature_branch}`; its description: `{pr_md_command}`"
    head = [
        f"# Feature PR: {draft.feature.title}",
        "",
        f"- **Run:** `{draft.run_key}` · succeeded",
        f"- **Pull request:** {where}",
        "",
        "---",
        "",
    ]
    body = render_pr(draft).split("\n", 1)[1].lstrip("\n")
    return "\n".join(head) + body


def fit_body(markdown: str, limit: int = GITHUB_BODY_LIMIT, full_text_url: str = "") -> str:
    """Cut a too long description at a section boundary and say where the full text is."""
    if len(markdown) <= limit:
        return markdown
    shown = full_text_url if opens_in_browser(full_text_url) else f"`{full_text_url}`"
    where = f" The full description: {shown}." if full_text_url else ""
    note = f"\n\n---\n_The description was cut to fit GitHub's size limit.{where}_\n"
    room = limit - len(note)
    cut = max(markdown.rfind("\n### ", 0, room), markdown.rfind("\n## ", 0, room))
    if cut <= 0:
        cut = markdown.rfind("\n", 0, room)
    return markdown[: max(cut, 0) or room].rstrip() + note


def _merge_order(draft: PullRequestDraft) -> list[str]:
    lines = ["## Merge order", ""]
    merges = {m.unit_id: m for m in draft.merges}
    for n, unit_id in enumerate(draft.merge_order, 1):
        merge = merges.get(unit_id)
        commit = f" · `{merge.commit[:10]}`" if merge and merge.commit else ""
        note = " · re-done after a merge conflict" if merge and merge.reimplemented else ""
        note += " · fixed after the test gate" if merge and merge.fixed_for_gate else ""
        lines.append(f"{n}. `{unit_id}` {draft.titles.get(unit_id, unit_id)}{commit}{note}")
    return lines if draft.merge_order else [*lines, "_Nothing was merged._"]


def _tests_table(draft: PullRequestDraft, done: list[UnitRecord], totals: TestReport) -> list[str]:
    lines = [
        "## Test results",
        "",
        "| | Result | Passed | Failed | Errors | Skipped | Time |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    rows: list[tuple[str, TestReport | None]] = [(f"`{u.unit_id}`", u.tests) for u in draft.units]
    if done:
        rows.append(("**All units**", totals))
    rows.append(("**Feature gate**", draft.gate))
    for label, report in rows:
        if report is None or (report.exit_code is None and not report.timed_out):
            lines.append(f"| {label} | not run | | | | | |")
            continue
        verdict = "passed" if report.ok else ("timed out" if report.timed_out else "**failed**")
        lines.append(
            f"| {label} | {verdict} | {report.passed} | {report.failed} | {report.errors} "
            f"| {report.skipped} | {report.duration_s:.1f}s |"
        )
    return lines


def _conflicts(draft: PullRequestDraft, redone: list[MergeRecord]) -> list[str]:
    lines = ["## Conflicts resolved", ""]
    if not redone:
        return [*lines, "_None: every unit merged cleanly._"]
    for merge in redone:
        paths = ", ".join(f"`{p}`" for p in merge.conflicts) or "its files"
        how = (
            "re-implemented by its agent on top of the feature branch, then merged cleanly"
            if merge.reimplemented
            else "resolved"
        )
        title = draft.titles.get(merge.unit_id, merge.unit_id)
        lines.append(f"- `{merge.unit_id}` ({title}): conflicted in {paths}; {how}.")
    return lines


def _gate(draft: PullRequestDraft) -> list[str]:
    lines = ["## Feature test gate", ""]
    gate = draft.gate
    if gate is None:
        lines.append("_No feature test command: the gate did not run._")
    else:
        lines.append(f"`{gate.command}`: {gate.one_line()} (from {gate.source})")
        lines += _failing(gate)
    if draft.gate_runs > 1:
        lines += ["", f"The feature's tests ran {draft.gate_runs} times, bisection included."]
    lines += [f"- {note}" for note in draft.gate_notes]
    for merge in (m for m in draft.merges if m.fixed_for_gate):
        lines += [
            "",
            f"- `{merge.unit_id}` broke the feature's tests once merged (found by bisection); its "
            "agent fixed it on top of the units merged before it.",
        ]
    links = _links(draft.feature_artifacts)
    return [*lines, "", f"Artifacts: {links}"] if links else lines


def _unit_section(unit: UnitRecord, draft: PullRequestDraft) -> list[str]:
    title = draft.titles.get(unit.unit_id, unit.unit_id)
    commit = f" · commit `{unit.commit[:10]}`" if unit.commit else ""
    lines = [
        f"### {title} (`{unit.unit_id}`)",
        "",
        f"Status: **{unit.status.value}** · attempts: {unit.attempts} · iterations: "
        f"{unit.iterations} · {unit.duration_s:.1f}s · branch `{unit.branch}`{commit}",
        *([f"Usage: {unit.total_usage.one_line()}"] if unit.usage else []),
        "",
        *candidate_lines(unit),
        unit.summary.strip() or "_The agent left no summary._",
        "",
    ]
    tests = unit.tests
    if tests:
        lines.append(f"**Tests:** {tests.one_line()} · `{tests.command}`")
        lines += _failing(tests)
    else:
        lines.append("**Tests:** no test command")
    files = unit.files_changed
    if files and len(files) <= FILES_SHOWN_INLINE:
        lines += ["", f"**Files changed ({len(files)}):** " + ", ".join(f"`{f}`" for f in files)]
    elif files:
        lines += [
            "",
            f"<details><summary><b>Files changed ({len(files)})</b></summary>",
            "",
            *[f"- `{f}`" for f in files],
            "",
            "</details>",
        ]
    if unit.reworks:
        lines += ["", "**Re-done by its agent:**"]
        lines += [_rework_line(note) for note in unit.reworks]
    if unit.error:
        lines += ["", "Error:", "```", unit.error.strip(), "```"]
    links = _links(draft.unit_artifacts.get(unit.unit_id, []))
    folder = draft.artifact_links.get(unit.unit_id, "")
    if folder and not opens_in_browser(folder):
        folder = f"`{folder}`" + (" (`--get NAME` prints one)" if links else "")
    if links or folder:
        lines += ["", f"**Artifacts:** {links or folder}" + (f" — {folder}" if links else "")]
    return lines


def _rework_line(note: ReworkNote) -> str:
    why = "a merge conflict" if note.reason == "conflict" else "the feature's test gate failing"
    paths = f" in {', '.join(f'`{p}`' for p in note.paths)}" if note.paths else ""
    onto = f" on top of `{note.onto[:10]}`" if note.onto else ""
    outcome = "done" if note.ok else "did not succeed"
    detail = note.detail.strip().splitlines()[0] if note.detail.strip() else ""
    tail = f": {detail}" if detail else ""
    return f"- after {why}{paths}{onto}; {note.attempts} attempt(s), {outcome}{tail}"


def _failing(report: TestReport) -> list[str]:
    if not report.failing_tests:
        return []
    return ["", "Failing tests:", *[f"- `{name}`" for name in report.failing_tests]]


def _links(links: list[ArtifactLink]) -> str:
    """Web links as links; a store's names as names (a reader fetches them with the command)."""
    return " · ".join(
        f"[{link.name}]({link.url})" if opens_in_browser(link.url) else f"`{link.name}`"
        for link in links
    )


# -- providers -----------------------------------------------------------------------------------


class PRProvider(Protocol):
    name: str

    def publish(self, pr: PullRequestInfo) -> PublishedPR: ...


class LocalProvider:
    """The pushed branch plus PR.md in the store is the PR: nothing more to do."""

    name = "local"

    def publish(self, pr: PullRequestInfo) -> PublishedPR:
        return PublishedPR(provider=self.name)


class GitHubProvider:
    """A draft PR on GitHub; running the same feature again updates the open one."""

    name = "github"

    def __init__(self, spec: PublishSpec, client: GitHubClient):
        self.spec = spec
        self.client = client

    def publish(self, pr: PullRequestInfo) -> PublishedPR:
        body = fit_body(redact(pr.body), GITHUB_BODY_LIMIT, pr.full_text_url)  # no secret leaves
        created = False
        found = self.client.find_open_pull(pr.head)
        if found is None:
            try:
                found = self.client.create_pull(
                    head=pr.head, base=pr.base, title=pr.title, body=body, draft=self.spec.draft
                )
                created = True
            except GitHubError as exc:  # opened meanwhile, e.g. by a retried request
                if exc.status != 422 or "already exists" not in str(exc).lower():
                    raise
                found = self.client.find_open_pull(pr.head)
                if found is None:
                    raise
        if not created:
            found = self.client.update_pull(found.number, title=pr.title, body=body, base=pr.base)
        if self.spec.labels:
            self.client.add_labels(found.number, self.spec.labels)
        return PublishedPR(provider=self.name, url=found.url, number=found.number, created=created)


def publish_pull_request(
    spec: PublishSpec,
    pr: PullRequestInfo,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
) -> PublishedPR:
    """Open or update the PR with the provider the request names."""
    if spec.provider == "local":
        return LocalProvider().publish(pr)
    settings = get_settings()
    token = resolve_token(spec.repo or "", spec.token_secret_block)
    extra = {"logger": logger} if logger is not None else {}
    with GitHubClient(
        spec.api_url,
        spec.repo or "",
        token,
        retries=settings.github_retries,
        max_wait_s=settings.github_max_wait_s,
        **extra,
    ) as client:
        return GitHubProvider(spec, client).publish(pr)


def preflight(spec: PublishSpec) -> None:
    """Check before a run that the PR can be published: a token that can push to the repo.

    Raises GitHubError saying what to fix; the local provider needs nothing.
    """
    if spec.provider == "local":
        return
    settings = get_settings()
    token = resolve_token(spec.repo or "", spec.token_secret_block)
    with GitHubClient(
        spec.api_url, spec.repo or "", token, retries=min(settings.github_retries, 1)
    ) as client:
        client.check_access()


def push_env(spec: PublishSpec, remote: str) -> dict[str, str]:
    """Extra git environment for pushing: the GitHub token for an https remote on its host."""
    if spec.provider != "github" or not remote.startswith("https://"):
        return {}
    token = resolve_token(spec.repo or "", spec.token_secret_block)
    return git_auth_env(remote, spec.api_url, token)
