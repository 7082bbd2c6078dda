#!/usr/bin/env bash
# Scripted agent for unit `counts`: reads the tokenizer's tokens-schema.json, writes
# textstats/counts.py and tests generated from the schema's examples, and publishes counts-api.json.
set -euo pipefail
: "${FLOTILLA_UNIT_ID:?run this script through Flotilla (FLOTILLA_UNIT_ID is not set)}"
: "${FLOTILLA_INPUTS_DIR:?FLOTILLA_INPUTS_DIR is not set}"
: "${FLOTILLA_OUTPUTS_DIR:?FLOTILLA_OUTPUTS_DIR is not set}"
: "${FLOTILLA_SUMMARY_FILE:?FLOTILLA_SUMMARY_FILE is not set}"
echo "[$FLOTILLA_UNIT_ID] iteration ${FLOTILLA_ITERATION:-1}: $(head -n 1 "${FLOTILLA_PROMPT_FILE:-/dev/null}")"

schema="$FLOTILLA_INPUTS_DIR/tokenizer/tokens-schema.json"
if [[ ! -f "$schema" ]]; then
  echo "[$FLOTILLA_UNIT_ID] error: expected input $schema is missing. The unit must declare" \
       "'tokenizer/tokens-schema.json' in its inputs and the tokenizer unit must publish it." >&2
  exit 1
fi
sleep "${TEXTSTATS_AGENT_SLEEP_S:-1}"  # stands in for thinking time, so parallel units overlap

mkdir -p textstats tests
# Both files are generated from the schema, so the tests pin counts to the tokenizer's own examples.
python - "$schema" <<'PY'
import json
import sys

with open(sys.argv[1], encoding="utf-8") as f:
    schema = json.load(f)
if not str(schema.get("schema", "")).startswith("textstats.tokens/") or not schema.get("examples"):
    sys.exit(f"error: {sys.argv[1]} is not a textstats.tokens schema with examples: {schema!r}")

module = '''"""Word counts and totals, on top of textstats.tokenize."""

from collections import Counter

from textstats.tokenize import split_sentences, tokenize

TOKEN_SCHEMA = %r
TOTALS_KEYS = ("words", "unique_words", "sentences", "characters")


def word_counts(text: str) -> dict[str, int]:
    """How often each token occurs."""
    return dict(Counter(tokenize(text)))


def top_words(text: str, n: int = 5) -> list[tuple[str, int]]:
    """The `n` most frequent tokens, most frequent first, ties in alphabetical order."""
    return sorted(word_counts(text).items(), key=lambda item: (-item[1], item[0]))[:n]


def totals(text: str) -> dict[str, int]:
    """Words, distinct words, sentences and non-blank characters."""
    tokens = tokenize(text)
    return {
        "words": len(tokens),
        "unique_words": len(set(tokens)),
        "sentences": len(split_sentences(text)),
        "characters": sum(1 for c in text if not c.isspace()),
    }
''' % schema["schema"]

tests = '''import pytest

from textstats import tokenize as tokenizer
from textstats.counts import TOKEN_SCHEMA, TOTALS_KEYS, top_words, totals, word_counts

# Worked examples published by the tokenizer unit (tokens-schema.json).
EXAMPLES = %s


def test_built_against_the_tokenizer_schema_in_use():
    assert TOKEN_SCHEMA == tokenizer.SCHEMA


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e["text"][:20])
def test_counts_agree_with_the_tokenizer_examples(example):
    counts = word_counts(example["text"])
    assert sum(counts.values()) == len(example["tokens"])
    assert set(counts) == set(example["tokens"])
    assert totals(example["text"])["words"] == len(example["tokens"])
    assert totals(example["text"])["sentences"] == example["sentences"]


def test_top_words_most_frequent_first_then_alphabetical():
    assert top_words("b a b c a b", n=2) == [("b", 3), ("a", 2)]
    assert top_words("z y x", n=5) == [("x", 1), ("y", 1), ("z", 1)]


def test_totals_keys_and_empty_text():
    assert tuple(totals("")) == TOTALS_KEYS
    assert totals("") == {"words": 0, "unique_words": 0, "sentences": 0, "characters": 0}
    assert totals("Hi there. Hi!")["unique_words"] == 2
''' % "".join(["[\n", *(f"    {json.dumps(e)},\n" for e in schema["examples"]), "]"])

with open("textstats/counts.py", "w", encoding="utf-8") as f:
    f.write(module)
with open("tests/test_counts.py", "w", encoding="utf-8") as f:
    f.write(tests)
PY

python - "$FLOTILLA_OUTPUTS_DIR/counts-api.json" <<'PY'
import json
import sys

from textstats.counts import TOKEN_SCHEMA, TOTALS_KEYS

api = {
    "module": "textstats.counts",
    "functions": ["word_counts", "top_words", "totals"],
    "totals_keys": list(TOTALS_KEYS),
    "token_schema": TOKEN_SCHEMA,
}
with open(sys.argv[1], "w", encoding="utf-8") as out:
    json.dump(api, out, indent=2)
    out.write("\n")
PY

cat > "$FLOTILLA_SUMMARY_FILE" <<'MD'
- `textstats.counts`: `word_counts()`, `top_words()` and `totals()` on top of the tokenizer.
- Tests are generated from the tokenizer's published `tokens-schema.json` examples.
- Publishes `counts-api.json` (functions and the keys of `totals`) for the report.
MD
echo "[$FLOTILLA_UNIT_ID] wrote textstats/counts.py, tests/test_counts.py, counts-api.json"
