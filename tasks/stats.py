"""Durations of finished units per resource class, and what they cost per agent and model,
kept in the store across runs.

Durations weight the critical path when a unit has no `estimate_s`, and give `flotilla status`
its ETAs; usage samples give `flotilla plan` its cost estimate.
"""

from __future__ import annotations

from statistics import median

from flotilla.estimate import UsageSample
from flotilla.usage import Usage
from tasks.store import ArtifactStore

KEEP = 50


def durations_key(resource_class: str) -> str:
    return f"stats/durations/{resource_class}.json"


def record_duration(store: ArtifactStore, resource_class: str, seconds: float) -> None:
    """Remember one unit's duration (last KEEP per class). Races lose a sample, never data."""
    key = durations_key(resource_class)
    try:
        samples = list(store.read_json(key))
    except KeyError:
        samples = []
    samples = [*samples, round(float(seconds), 3)][-KEEP:]
    store.write_json(key, samples)


def typical_durations(store: ArtifactStore) -> dict[str, float]:
    """Median recorded duration per resource class (classes with no record are absent)."""
    typical: dict[str, float] = {}
    for key in store.list("stats/durations"):
        name = key.rsplit("/", 1)[-1].removesuffix(".json")
        try:
            samples = [float(s) for s in store.read_json(key)]
        except (KeyError, TypeError, ValueError):
            continue
        if samples:
            typical[name] = median(samples)
    return typical


# --- usage per agent and model, for `flotilla plan`'s estimate -----------------------------------


def usage_key(agent: str, model: str) -> str:
    """`stats/usage/<agent>[@<model>].json`; names are made safe for a store key."""
    name = f"{agent}@{model}" if model else agent
    safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in name)
    return f"stats/usage/{safe}.json"


def record_usage(
    store: ArtifactStore,
    agent: str,
    model: str,
    resource_class: str,
    prompt_chars: int,
    usage: Usage,
    duration_s: float,
) -> None:
    """Remember what one succeeded unit cost (last KEEP per agent and model)."""
    key = usage_key(agent, model)
    try:
        samples = list(store.read_json(key))
    except KeyError:
        samples = []
    sample = UsageSample(
        resources=resource_class,
        prompt_chars=prompt_chars,
        cost_usd=usage.cost_usd,
        tokens=usage.tokens,
        agent_s=usage.wall_s,
        duration_s=round(duration_s, 3),
    )
    store.write_json(key, [*samples, sample.model_dump()][-KEEP:])


def usage_samples(store: ArtifactStore, agent: str, model: str) -> list[UsageSample]:
    """The recorded samples of one agent and model (empty when there is no history)."""
    try:
        raw = store.read_json(usage_key(agent, model))
    except KeyError:
        return []
    samples = []
    for item in raw if isinstance(raw, list) else []:
        try:
            samples.append(UsageSample.model_validate(item))
        except ValueError:
            continue
    return samples
