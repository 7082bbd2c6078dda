"""The request, workflow and settings reference, generated from the pydantic models.

    python -m flotilla.docgen > docs/reference.md

Every field's type, default, limits and description come from the models themselves, so the
reference cannot drift from the code; `tests/unit/test_docgen.py` fails when the file is stale.
"""

from __future__ import annotations

import json
import types
import typing
from importlib import resources
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from flotilla.settings import FlotillaSettings
from flotilla.spec import SLUG_PATTERN, FeatureRequest, WorkflowSpec

COMMAND = "python -m flotilla.docgen > docs/reference.md"

# What a model checks across its fields (its validators); one line each, shown under its table.
RULES: dict[str, list[str]] = {
    "AgentSpec": [
        "Exactly one of `preset` and `command`.",
        "`model`, `args` and `executable` apply to presets only.",
    ],
    "UnitSpec": [
        "`outputs` are plain file names (letters, digits, `.`, `_`, `-`).",
        "`inputs` look like `<unit>/<artifact name>`; the producer must declare that output.",
    ],
    "PublishSpec": [
        "The `github` provider needs `repo` as `owner/name`.",
        "`api_url` is an http(s) URL.",
    ],
    "StageSpec": [
        "A `parallel` stage needs `foreach` (an earlier stage's output); a `single` one has none.",
    ],
}

REQUEST_CHECKS = [
    "Unit ids are unique.",
    "`depends_on` names units of the request, never the unit itself.",
    "`inputs` name a unit of the request and an output it declares.",
    "Every unit has an agent: its own `agent` or `defaults.agent`.",
    "An agent given by name is a key of `agents` or a preset.",
    "A unit's `resources` is declared in `resources` when the request declares any.",
    "Dependencies (`depends_on` and `inputs`) form no cycle.",
]

WORKFLOW_CHECKS = [
    "Stage names are unique; `depends_on` names earlier stages.",
    "`foreach` and `inputs` name outputs of earlier stages.",
    "Each processor appears at most once, in the order plan_decomposer, work_loop, pr_merger, "
    "feature_pr_creator; a work_loop stage is `parallel` and needs a plan_decomposer before it.",
]


def render() -> str:
    """The whole reference page, as Markdown."""
    seen: set[str] = set()
    lines = [
        "# Reference: feature request, workflow spec, settings",
        "",
        f"<!-- Generated from the pydantic models by `{COMMAND}`. Do not edit. -->",
        "",
        "Every field Flotilla reads, with its type, default and limits. Unknown fields are errors",
        "(a typo is never silently ignored), and `flotilla validate FILE` reports every problem",
        "of a file at once, with its line. A *slug* is lowercase letters, digits and dashes,",
        "starting with a letter or digit, at most 64 characters (`add-auth`).",
        "",
        "## Feature request",
        "",
        "The file given to `flotilla run REQUEST`. Its top level is a "
        "[`FeatureRequest`](#featurerequest).",
        "",
    ]
    lines += _models(FeatureRequest, seen)
    lines += ["### Checks across the whole request", ""]
    lines += [f"- {check}" for check in REQUEST_CHECKS] + [""]
    lines += [
        "## Workflow spec",
        "",
        "The file given with `--workflow FILE`; its top level is a "
        "[`WorkflowSpec`](#workflowspec). Without it the built-in workflow runs:",
        "",
        "```yaml",
        resources.files("flotilla").joinpath("default_workflow.yaml").read_text().strip(),
        "```",
        "",
    ]
    lines += _models(WorkflowSpec, seen)
    lines += ["### Checks across the whole workflow", ""]
    lines += [f"- {check}" for check in WORKFLOW_CHECKS] + [""]
    lines += _settings()
    return "\n".join(lines).rstrip() + "\n"


def _models(root: type[BaseModel], seen: set[str]) -> list[str]:
    """`root` and every model it contains, each once, in order of first appearance."""
    lines: list[str] = []
    queue = [root]
    while queue:
        model = queue.pop(0)
        if model.__name__ in seen:
            continue
        seen.add(model.__name__)
        lines += _model(model)
        for field in model.model_fields.values():
            queue += [m for m in _nested(field.annotation) if m.__name__ not in seen]
    return lines


def _model(model: type[BaseModel]) -> list[str]:
    doc = _cell(model.__doc__ or "")
    lines = [f"### `{model.__name__}`", ""]
    if doc:
        lines += [doc, ""]
    lines += ["| Field | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        lines.append(
            f"| `{name}` | {_type(field)} | {_default(field)} | {_cell(field.description or '')} |"
        )
    lines.append("")
    if model.__name__ in RULES:
        lines += [f"- {rule}" for rule in RULES[model.__name__]] + [""]
    return lines


def _settings() -> list[str]:
    lines = [
        "## Settings",
        "",
        "Environment variables (a `.env` file is not read). They apply to every run a process",
        "starts: the CLI, a Prefect worker, the nightly flow.",
        "",
        "| Variable | Type | Default | Description |",
        "| --- | --- | --- | --- |",
    ]
    prefix = FlotillaSettings.model_config.get("env_prefix", "")
    for name, field in FlotillaSettings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names = [str(choice) for choice in alias.choices]
        else:
            names = [f"{prefix}{name}".upper()]
        variables = " or ".join(f"`{n}`" for n in names)
        lines.append(
            f"| {variables} | {_type(field)} | {_default(field)} | "
            f"{_cell(field.description or '')} |"
        )
    lines.append("")
    for field in FlotillaSettings.model_fields.values():  # models inside a setting (prices)
        for model in _nested(field.annotation):
            lines += _model(model)
    return lines


# -- types and defaults as text ----------------------------------------------------------------


def _nested(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _nested(arg)]


def _type(field: FieldInfo) -> str:
    if any(getattr(m, "pattern", None) == SLUG_PATTERN for m in field.metadata):
        return "slug"
    text = _type_of(field.annotation)
    limits = _limits(field.metadata)
    return f"{text} ({limits})" if limits else text


def _type_of(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        base, meta = args[0], args[1:]
        if any(getattr(m, "pattern", None) == SLUG_PATTERN for m in meta):
            return "slug"
        limits = _limits(meta)
        return f"{_type_of(base)} ({limits})" if limits else _type_of(base)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_of(a) for a in args if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin is list and typing.get_origin(args[0]) is Literal:
        return "list of any of " + ", ".join(f"`{a}`" for a in typing.get_args(args[0]))
    if origin is list:
        return f"list of {_type_of(args[0])}"
    if origin is dict:
        return f"map of {_type_of(args[0])} to {_type_of(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[`{annotation.__name__}`](#{annotation.__name__.lower()})"
    names = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if annotation is SecretStr:
        return "secret string"
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _limits(metadata: typing.Iterable[Any]) -> str:
    """Numeric bounds and lengths from annotated-types and StringConstraints metadata."""
    found = []
    for item in metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if (value := getattr(item, attr, None)) is not None:
                found.append(f"{sign} {value:g}")
        low, high = getattr(item, "min_length", None), getattr(item, "max_length", None)
        if low == 1:
            found.append("non-empty")
        elif low:
            found.append(f"at least {low} long")
        if high:
            found.append(f"at most {high} long")
    return ", ".join(found)


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if value is None:
        return "not set"
    if isinstance(value, BaseModel):
        return "all defaults"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int):
        return f"`{value}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, str):
        return f"`{value}`" if value else "empty"
    if not value:
        return "empty"
    return f"`{_cell(json.dumps(value))}`"


def _cell(text: str) -> str:
    """One table cell: one line, pipes escaped, `<` and `>` outside code kept from HTML."""
    parts = " ".join(text.split()).replace("|", "\\|").split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


if __name__ == "__main__":
    print(render(), end="")
