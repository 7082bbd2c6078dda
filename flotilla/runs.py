"""A run's identity: everything needed to start, resume or inspect it from its key alone.

The context is written to the store at the start of a run (`runs/<key>/run.json`), so `resume`,
`retry` and `status` need nothing but the run key and the store.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field

from flotilla.redaction import URL_PASSWORD
from flotilla.results import utcnow
from flotilla.spec import FeatureRequest, UnitSpec, WorkflowSpec

RUN_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class RunContext(BaseModel):
    """What a feature run works on; passed to every stage instead of long argument lists."""

    run_key: str
    request: FeatureRequest
    workflow: WorkflowSpec
    request_dir: str = Field(description="Directory of the request file; agents' {request_dir}.")
    repo: str = Field(description="Target repository: a path or a git URL.")
    base: str
    store_url: str
    workdir: str = Field(description="This run's local work directory (clone, worktrees).")
    created_at: datetime = Field(default_factory=utcnow)
    author_name: str = "Flotilla"
    author_email: str = "flotilla@localhost"

    @property
    def feature_id(self) -> str:
        return self.request.feature.id

    @property
    def feature_branch(self) -> str:
        return f"flotilla/{self.feature_id}"

    def unit_branch(self, unit_id: str) -> str:
        """`flotilla/<feature>--<unit>`: git cannot hold both `flotilla/<feature>` and
        `flotilla/<feature>/<unit>`, and the feature branch is the one reviewers see."""
        return f"flotilla/{self.feature_id}--{unit_id}"

    def stage(self, processor: str):
        return self.workflow.stage_for(processor)


def new_run_key(feature_id: str, now: datetime | None = None) -> str:
    stamp = (now or utcnow()).strftime("%Y%m%d-%H%M%S")
    return f"{feature_id}-{stamp}"


def check_run_key(key: str) -> str:
    if not re.fullmatch(RUN_KEY_PATTERN, key):
        from flotilla.errors import RunError

        raise RunError(
            f"Run key {key!r} is not allowed: use letters, digits, '.', '_' and '-' "
            "(at most 128 characters, starting with a letter or digit)."
        )
    return key


def resolve_repo(repo: str, request_dir: Path) -> str:
    """A local path is made absolute relative to the request file; URLs stay as they are."""
    if "://" in repo or re.match(r"^[\w.-]+@[\w.-]+:", repo):
        if URL_PASSWORD.search(repo):
            from flotilla.errors import RunError

            shown = URL_PASSWORD.sub(lambda m: m.group("head") + "***", repo)
            raise RunError(
                f"The target repository URL {shown} carries a "
                "password or token, which would be stored with the run and shown in Prefect. "
                "Remove it from the URL and let git find it (a credential helper, or SSH)."
            )
        return repo
    path = Path(repo).expanduser()
    return str((path if path.is_absolute() else request_dir / path).resolve())


def unit_fingerprint(
    unit: UnitSpec, settings_json: str, base_commit: str, dep_commits: dict[str, str]
) -> str:
    """What a unit's result depends on; a finished unit with the same fingerprint is reused."""
    payload = json.dumps(
        {
            "unit": unit.model_dump(mode="json", exclude={"budget"}),  # a cap, not the work
            "settings": settings_json,
            "base": base_commit,
            "deps": dict(sorted(dep_commits.items())),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
