"""Reading request and workflow files into typed objects, with errors that point at lines.

Every problem is collected (YAML syntax, pydantic field errors, whole-request checks) and raised
as one `SpecError`, so a user fixes a file in one pass instead of one error at a time.
"""

from __future__ import annotations

import re
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from flotilla.errors import Problem, SpecError, clip
from flotilla.input_limits import check_expansion, check_size, read_input
from flotilla.spec import (
    SLUG_HELP,
    SLUG_PATTERN,
    AgentSpec,
    FeatureRequest,
    UnitSpec,
    WorkflowSpec,
)
from flotilla.validation import (
    suggest,
    validate_request,
    validate_request_for,
    validate_workflow,
)

Loc = tuple[str | int, ...]
M = typing.TypeVar("M", bound=BaseModel)
DEFAULT_WORKFLOW = "default_workflow.yaml"


def load_request(path: Path | str) -> FeatureRequest:
    path = Path(path)
    data, root = _read_yaml(path)
    return _request_from_data(data, root, str(path))


def _request_from_data(data: Any, root, source: str) -> FeatureRequest:
    try:
        request = _validate_model(FeatureRequest, data, root, source)
    except SpecError as exc:
        # Report whole-request problems too, from the parts that did validate.
        exc.problems += [
            Problem(_dotted(loc, data), msg, _line_of(root, loc)) for loc, msg in _salvage(data)
        ]
        raise SpecError(source, exc.problems) from None
    _raise_if(source, root, validate_request(request), data)
    return request


def _salvage(data: dict) -> list[tuple[Loc, str]]:
    """Whole-request checks over the units and agents that are valid on their own."""
    units = data.get("units") if isinstance(data.get("units"), list) else []
    agents = data.get("agents") if isinstance(data.get("agents"), dict) else {}
    kept = [(i, u) for i, u in enumerate(units) if _valid(UnitSpec, u)]
    good_agents = {k: v for k, v in agents.items() if _valid(AgentSpec, v)}
    bad_units = {u.get("id") for u in units if isinstance(u, dict) and not _valid(UnitSpec, u)}
    attempt = {**data, "units": [u for _, u in kept], "agents": good_agents}
    try:
        request = FeatureRequest.model_validate(attempt)
    except ValidationError:
        return []
    issues = validate_request(request, {str(u) for u in bad_units}, set(agents) - set(good_agents))
    return [
        (
            ("units", kept[loc[1]][0], *loc[2:]) if loc[:1] == ("units",) and len(loc) > 1 else loc,
            msg,
        )
        for loc, msg in issues
    ]


def _valid(model: type[BaseModel], value: Any) -> bool:
    try:
        model.model_validate(value)
    except ValidationError:
        return False
    return True


def load_workflow(path: Path | str | None = None) -> WorkflowSpec:
    """The workflow at `path`, or the built-in four-stage default."""
    if path is None:
        text = resources.files("flotilla").joinpath(DEFAULT_WORKFLOW).read_text()
        return WorkflowSpec.model_validate(yaml.safe_load(text))
    path = Path(path)
    data, root = _read_yaml(path)
    workflow = _validate_model(WorkflowSpec, data, root, str(path))
    _raise_if(str(path), root, validate_workflow(workflow), data)
    return workflow


def check_request_for(request: FeatureRequest, workflow: WorkflowSpec, source: str) -> None:
    """What `validate` and `run` both check about a request and the workflow it runs with."""
    issues = validate_request_for(request, workflow)
    if issues:
        raise SpecError(source, [Problem(_dotted(loc), msg) for loc, msg in issues])


def load_any(path: Path | str) -> FeatureRequest | WorkflowSpec:
    """A request or a workflow, told apart by the top-level `workflow:` key."""
    path = Path(path)
    data, _ = _read_yaml(path)
    if isinstance(data, dict) and "workflow" in data:
        return load_workflow(path)
    return load_request(path)


def parse_request_text(text: str, source: str) -> FeatureRequest:
    """A request given as text (from the store's inbox, or an agent's answer)."""
    check_size(len(text.encode("utf-8", "replace")), source)
    data, root = _parse_yaml(text, source)
    return _request_from_data(data, root, source)


def _read_yaml(path: Path) -> tuple[Any, yaml.Node | None]:
    return _parse_yaml(read_input(path), str(path))


def _parse_yaml(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            check_expansion(root, source)
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        what = getattr(exc, "problem", None) or str(exc)
        raise SpecError(source, [Problem("", f"malformed YAML: {str(what)[:200]}", line)]) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise SpecError(source, [Problem("", "expected a mapping of fields at the top level")])
    return data, root


def _validate_model(model: type[M], data: Any, root, source: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [
            Problem(_dotted(loc, data), msg, _line_of(root, loc))
            for loc, msg in _friendly(model, exc)
        ]
        raise SpecError(source, problems) from None


def _raise_if(source: str, root, issues: list[tuple[Loc, str]], data: Any = None) -> None:
    if issues:
        raise SpecError(
            source,
            [Problem(_dotted(loc, data), msg, _line_of(root, loc)) for loc, msg in issues],
        )


def _friendly(model: type[BaseModel], exc: ValidationError) -> list[tuple[Loc, str]]:
    """Pydantic's errors, reworded for people and without union-member noise."""
    out: list[tuple[Loc, str]] = []
    seen: set[tuple[Loc, str]] = set()
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not _is_type_tag(p))
        if err["type"] == "string_type" and isinstance(err.get("input"), dict):
            continue  # the AgentSpec branch of `name | AgentSpec` explains it better
        msg = _message(model, err, loc)
        if (loc, msg) not in seen:
            seen.add((loc, msg))
            out.append((loc, msg))
    return out


def _is_type_tag(part: str | int) -> bool:
    return isinstance(part, str) and (part[:1].isupper() or "[" in part or part == "str")


def _message(model: type[BaseModel], err: dict, loc: Loc) -> str:
    kind, value = err["type"], err.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_fields(model, loc[:-1])
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return f"unknown field {clip(loc[-1])}{suggest(loc[-1], allowed)}{hint}"
    if kind == "missing":
        return "required field is missing"
    if kind == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") == SLUG_PATTERN:
        return f"{clip(value)} is not a safe slug; {SLUG_HELP}"
    if kind == "value_error":
        return str(err["ctx"]["error"])
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
        what = str(loc[-1]).replace("_", " ") if loc and isinstance(loc[-1], str) else "choice"
        article = "an" if what[:1] in "aeiou" else "a"
        return (
            f"{clip(value)} is not {article} {what}{suggest(value, choices)}; use one of "
            f"{', '.join(choices)}"
        )
    return f"{err['msg']} (got {clip(value)})" if value is not None else err["msg"]


def _allowed_fields(model: type[BaseModel], loc: Loc) -> list[str]:
    current: Any = model
    skip_key = False  # the part after a dict-valued field is a key the user chose, not a field
    for part in loc:
        if isinstance(part, int) or skip_key or current is None:
            skip_key = False
            continue
        field = current.model_fields.get(part) if _is_model(current) else None
        current = _model_in(field.annotation) if field else None
        skip_key = field is not None and typing.get_origin(field.annotation) is dict
    return list(current.model_fields) if _is_model(current) else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if _is_model(annotation):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (list, dict, typing.Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found:
                return found
    return None


def _is_model(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseModel)


def _dotted(loc: Loc, data: Any = None) -> str:
    """`units[2] (id: lonely).depends_on[0]`: a field path, with the id of the unit it is in."""
    text = ""
    for n, part in enumerate(loc):
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
        if n == 1 and loc[0] == "units" and isinstance(part, int) and isinstance(data, dict):
            units = data.get("units")
            unit = units[part] if isinstance(units, list) and 0 <= part < len(units) else None
            uid = unit.get("id") if isinstance(unit, dict) else None
            if isinstance(uid, str) and uid:
                text += f" (id: {clip(uid, 40)[1:-1]})"
    return text


def _line_of(root: yaml.Node | None, loc: Loc) -> int | None:
    """1-based line of the deepest YAML node that `loc` reaches."""
    node, line = root, (root.start_mark.line + 1 if root else None)
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            match = next((v for k, v in node.value if k.value == part), None)
            if match is None:
                key = next((k for k, _ in node.value if k.value == part), None)
                return key.start_mark.line + 1 if key else line
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
        else:
            return line
        line = node.start_mark.line + 1
    return line
