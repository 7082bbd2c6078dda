#!/usr/bin/env bash
# Scripted agent for unit `tokenizer`: writes textstats/tokenize.py and its tests, then
# publishes tokens-schema.json (the rules plus worked examples computed by the new code).
set -euo pipefail
: "${FLOTILLA_UNIT_ID:?run this script through Flotilla (FLOTILLA_UNIT_ID is not set)}"
: "${FLOTILLA_OUTPUTS_DIR:?FLOTILLA_OUTPUTS_DIR is not set}"
: "${FLOTILLA_SUMMARY_FILE:?FLOTILLA_SUMMARY_FILE is not set}"
echo "[$FLOTILLA_UNIT_ID] iteration ${FLOTILLA_ITERATION:-1}: $(head -n 1 "${FLOTILLA_PROMPT_FILE:-/dev/null}")"
sleep "${TEXTSTATS_AGENT_SLEEP_S:-1}"  # stands in for thinking time, so parallel units overlap

mkdir -p textstats tests
cat > textstats/tokenize.py <<'PY'
"""Splitting plain English text into words and sentences."""

import re

SCHEMA = "textstats.tokens/v1"
TOKEN_PATTERN = r"[a-z0-9]+(?:'[a-z0-9]+)*"
SENTENCE_TERMINATORS = ".!?"

_TOKEN = re.compile(TOKEN_PATTERN)
_SENTENCE_END = re.compile(r"[.!?]+")


def tokenize(text: str) -> list[str]:
    """Lowercase words; an inner apostrophe keeps a word whole ("don't" is one token)."""
    return _TOKEN.findall(text.lower())


def split_sentences(text: str) -> list[str]:
    """Sentences, stripped, ending at '.', '!' or '?'; text after the last one counts too."""
    parts = (part.strip() for part in _SENTENCE_END.split(text))
    return [part for part in parts if tokenize(part)]
PY

cat > tests/test_tokenize.py <<'PY'
from textstats.tokenize import SCHEMA, split_sentences, tokenize


def test_tokens_are_lowercase_words():
    assert tokenize("The cat SAT on the mat.") == ["the", "cat", "sat", "on", "the", "mat"]


def test_inner_apostrophe_keeps_a_word_whole():
    assert tokenize("Don't panic, it's 42!") == ["don't", "panic", "it's", "42"]


def test_punctuation_and_blank_text_give_no_tokens():
    assert tokenize("  ... !? ") == []
    assert tokenize("") == []


def test_sentences_end_at_terminators():
    text = "First one. Second one! Third? And a tail"
    assert split_sentences(text) == ["First one", "Second one", "Third", "And a tail"]


def test_runs_of_terminators_end_one_sentence():
    assert split_sentences("Wait... What?! Yes.") == ["Wait", "What", "Yes"]


def test_schema_is_versioned():
    assert SCHEMA.startswith("textstats.tokens/")
PY

# The published rules and examples come from running the code just written.
python - "$FLOTILLA_OUTPUTS_DIR/tokens-schema.json" <<'PY'
import json
import sys

from textstats.tokenize import SCHEMA, SENTENCE_TERMINATORS, TOKEN_PATTERN, split_sentences, tokenize

texts = [
    "The cat sat on the mat. The cat slept.",
    "Don't panic! It's only 42 words, isn't it?",
    "One fish, two fish, red fish, blue fish.",
]
schema = {
    "schema": SCHEMA,
    "function": "textstats.tokenize.tokenize",
    "lowercase": True,
    "token_pattern": TOKEN_PATTERN,
    "sentence_terminators": SENTENCE_TERMINATORS,
    "examples": [
        {"text": t, "tokens": tokenize(t), "sentences": len(split_sentences(t))} for t in texts
    ],
}
with open(sys.argv[1], "w", encoding="utf-8") as out:
    json.dump(schema, out, indent=2)
    out.write("\n")
PY

cat > "$FLOTILLA_SUMMARY_FILE" <<'MD'
- `textstats.tokenize`: `tokenize()` (lowercase words, apostrophes kept inside words) and
  `split_sentences()`, schema `textstats.tokens/v1`.
- Publishes `tokens-schema.json` with worked examples for the units built on it.
MD
echo "[$FLOTILLA_UNIT_ID] wrote textstats/tokenize.py, tests/test_tokenize.py, tokens-schema.json"
