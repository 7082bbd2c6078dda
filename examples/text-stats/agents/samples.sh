#!/usr/bin/env bash
# Scripted agent for unit `samples`: writes textstats/samples.py (built-in texts) and its tests.
# It needs nothing from other units, so it runs alongside the tokenizer.
set -euo pipefail
: "${FLOTILLA_UNIT_ID:?run this script through Flotilla (FLOTILLA_UNIT_ID is not set)}"
: "${FLOTILLA_SUMMARY_FILE:?FLOTILLA_SUMMARY_FILE is not set}"
echo "[$FLOTILLA_UNIT_ID] iteration ${FLOTILLA_ITERATION:-1}: $(head -n 1 "${FLOTILLA_PROMPT_FILE:-/dev/null}")"
sleep "${TEXTSTATS_AGENT_SLEEP_S:-1}"  # stands in for thinking time, so parallel units overlap

mkdir -p textstats tests
cat > textstats/samples.py <<'PY'
"""Built-in sample texts, handy for trying the package and for tests."""

SAMPLES: dict[str, str] = {
    "simple": (
        "The cat sat on the mat. It was a warm day. "
        "The sun was out and the cat was glad. Then it went to sleep."
    ),
    "technical": (
        "Asynchronous orchestration frameworks coordinate heterogeneous computational "
        "activities, guaranteeing eventual consistency notwithstanding intermittent "
        "infrastructure unavailability. Consequently, sophisticated implementations "
        "necessitate comprehensive observability, deterministic idempotency and "
        "meticulously documented operational procedures."
    ),
}


def get_sample(name: str) -> str:
    """The sample called `name`; a KeyError lists the known names."""
    try:
        return SAMPLES[name]
    except KeyError:
        known = ", ".join(sorted(SAMPLES))
        raise KeyError(f"unknown sample {name!r}; known samples: {known}") from None
PY

cat > tests/test_samples.py <<'PY'
import pytest

from textstats.samples import SAMPLES, get_sample


def test_simple_and_technical_samples_exist():
    assert {"simple", "technical"} <= set(SAMPLES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_sample_is_finished_prose(name):
    text = get_sample(name)
    assert text.strip() == text
    assert text[-1] in ".!?"


def test_unknown_sample_names_the_known_ones():
    with pytest.raises(KeyError, match="simple"):
        get_sample("poetry")
PY

cat > "$FLOTILLA_SUMMARY_FILE" <<'MD'
- `textstats.samples`: a "simple" and a "technical" text and `get_sample()`, whose error names
  the known samples.
MD
echo "[$FLOTILLA_UNIT_ID] wrote textstats/samples.py, tests/test_samples.py"
