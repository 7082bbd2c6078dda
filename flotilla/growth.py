"""A graph that grows: follow-up units an agent proposes while the run is going.

An agent may write JSON units to `$FLOTILLA_NEW_UNITS_FILE` (a list of units, or an object with a
`units` list). Each proposal is checked exactly like a unit of the request, against the plan as it
stands: a valid one joins the plan, a bad one is reported and ignored, and the run goes on. A
proposal may depend only on units already in the plan (including proposals accepted before it), so
it can never create a cycle or change what a running unit depends on.
"""

from __future__ import annotations

import json
from datetime import datetime

from pydantic import BaseModel, Field

from flotilla.errors import SpecError
from flotilla.loading import parse_request_text
from flotilla.results import utcnow
from flotilla.spec import FeatureRequest, UnitSpec

MAX_PROPOSALS = 50  # per unit; more than this is a runaway agent, not a plan


class AddedUnit(BaseModel):
    """A unit that joined the plan during the run, and which unit proposed it."""

    unit: UnitSpec
    proposed_by: str
    added_at: datetime = Field(default_factory=utcnow)


class RejectedProposal(BaseModel):
    """A proposal that was reported and ignored, with every reason."""

    proposed_by: str
    unit_id: str = ""
    problems: list[str]


class AddedUnits(BaseModel):
    """`runs/<key>/added-units.json`: what joined the plan, what was refused, who was read."""

    units: list[AddedUnit] = Field(default_factory=list)
    rejected: list[RejectedProposal] = Field(default_factory=list)
    processed: list[str] = Field(default_factory=list)

    def specs(self) -> list[UnitSpec]:
        return [a.unit for a in self.units]


def review_proposals(
    text: str, request: FeatureRequest, current: list[UnitSpec], proposer: str
) -> tuple[list[UnitSpec], list[RejectedProposal]]:
    """Accept the valid proposals in `text` (in order), reject the rest with their problems.

    `request` gives the agents, defaults and resource classes the proposals are checked against;
    `current` is the plan's units as they stand now.
    """
    try:
        data = json.loads(text)
    except ValueError as exc:
        return [], [_rejected(proposer, "", f"the file is not valid JSON ({exc})")]
    items = data.get("units") if isinstance(data, dict) else data
    if not isinstance(items, list):
        return [], [
            _rejected(proposer, "", "expected a JSON list of units or an object with `units`")
        ]
    accepted: list[UnitSpec] = []
    rejected: list[RejectedProposal] = []
    if len(items) > MAX_PROPOSALS:
        rejected.append(
            _rejected(
                proposer,
                "",
                f"{len(items)} units proposed; only the first {MAX_PROPOSALS} were considered",
            )
        )
        items = items[:MAX_PROPOSALS]
    for item in items:
        unit_id = str(item.get("id", "")) if isinstance(item, dict) else ""
        problems = _check_one(item, request, [*current, *accepted], proposer)
        if problems:
            rejected.append(
                RejectedProposal(proposed_by=proposer, unit_id=unit_id, problems=problems)
            )
        else:
            accepted.append(UnitSpec.model_validate(item))
    return accepted, rejected


def _check_one(
    item: object, request: FeatureRequest, current: list[UnitSpec], proposer: str
) -> list[str]:
    if not isinstance(item, dict):
        return [f"a unit must be a JSON object, got {type(item).__name__}"]
    base = request.model_dump(mode="json", exclude_none=True, exclude={"units"})
    units = [u.model_dump(mode="json", exclude_none=True) for u in current]
    where = f"units[{len(units)}]"
    source = f"units proposed by {proposer!r}"
    try:
        parse_request_text(json.dumps({**base, "units": [*units, item]}), source)
    except SpecError as exc:
        mine = [p for p in exc.problems if p.location.startswith(where)]
        return [
            f"{p.location.removeprefix(where).lstrip('.') or 'unit'}: {p.message}"
            for p in (mine or exc.problems)
        ]
    return []


def _rejected(proposer: str, unit_id: str, problem: str) -> RejectedProposal:
    return RejectedProposal(proposed_by=proposer, unit_id=unit_id, problems=[problem])
