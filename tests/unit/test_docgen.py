"""docs/reference.md is generated from the models; it must match them."""

from __future__ import annotations

import typing
from pathlib import Path

from pydantic import BaseModel

from flotilla.docgen import COMMAND, render
from flotilla.settings import FlotillaSettings
from flotilla.spec import FeatureRequest, WorkflowSpec

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference.md"


def models_under(model: type[BaseModel]) -> set[type[BaseModel]]:
    """`model` and every model its fields contain, however deeply (lists, maps, unions)."""
    found = {model}
    for field in model.model_fields.values():
        for arg in _flatten(field.annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel) and arg not in found:
                found |= models_under(arg)
    return found


def _flatten(annotation) -> list:
    return [annotation, *(a for arg in typing.get_args(annotation) for a in _flatten(arg))]


def test_the_reference_is_up_to_date():
    assert REFERENCE.read_text() == render(), (
        f"docs/reference.md is stale: the models changed. Regenerate it with `{COMMAND}`."
    )


def test_every_field_of_every_model_and_setting_is_documented():
    page = render()
    models = models_under(FeatureRequest) | models_under(WorkflowSpec)
    assert {m.__name__ for m in models} >= {"UnitSpec", "AgentSpec", "RetryPolicy", "StageSpec"}
    for model in models:
        section = page.split(f"### `{model.__name__}`", 1)[1].split("\n### ", 1)[0]
        for name, field in model.model_fields.items():
            assert f"| `{name}` |" in section, f"{model.__name__}.{name} is missing"
            if field.description:
                assert field.description.split()[0] in section
    for name in FlotillaSettings.model_fields:
        if name != "github_token":
            assert f"`FLOTILLA_{name.upper()}`" in page
    assert "`GITHUB_TOKEN` or `FLOTILLA_GITHUB_TOKEN`" in page


def test_types_defaults_and_limits_read_plainly():
    page = render()
    assert "| `max_attempts` | integer (≥ 1, ≤ 50) | `1` |" in page
    assert "| `backoff` | one of `fixed`, `exponential` | `exponential` |" in page
    assert "| `units` | list of [`UnitSpec`](#unitspec) | empty |" in page
    assert "| `id` | slug | required |" in page
    assert "implies a dependency on &lt;unit&gt;" in page  # no stray HTML tags
