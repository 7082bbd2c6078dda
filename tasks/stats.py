"""Durations of finished units per resource class, kept in the store across runs.

They weight the critical path when a unit has no `estimate_s`, and give `flotilla status` its ETAs.
"""

from __future__ import annotations

from statistics import median

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
