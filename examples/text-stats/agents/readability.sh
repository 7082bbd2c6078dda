#!/usr/bin/env bash
# Scripted agent for unit `readability`: writes textstats/readability.py (syllables and the
# Flesch reading ease) and its tests. It needs only the tokenizer, so it runs alongside `counts`.
set -euo pipefail
: "${FLOTILLA_UNIT_ID:?run this script through Flotilla (FLOTILLA_UNIT_ID is not set)}"
: "${FLOTILLA_SUMMARY_FILE:?FLOTILLA_SUMMARY_FILE is not set}"
echo "[$FLOTILLA_UNIT_ID] iteration ${FLOTILLA_ITERATION:-1}: $(head -n 1 "${FLOTILLA_PROMPT_FILE:-/dev/null}")"
if [[ ! -f textstats/tokenize.py ]]; then
  echo "[$FLOTILLA_UNIT_ID] error: textstats/tokenize.py is missing from the worktree; this unit" \
       "must depend on the tokenizer unit so its code is merged in first." >&2
  exit 1
fi
sleep "${TEXTSTATS_AGENT_SLEEP_S:-1}"  # stands in for thinking time, so parallel units overlap

mkdir -p textstats tests
cat > textstats/readability.py <<'PY'
"""How easy a text is to read: syllable counts and the Flesch reading ease score."""

import re

from textstats.tokenize import split_sentences, tokenize

_VOWEL_GROUP = re.compile(r"[aeiouy]+")


def count_syllables(word: str) -> int:
    """Vowel groups, minus a silent final 'e' (but not in consonant + "le"); at least one."""
    letters = re.sub(r"[^a-z]", "", word.lower())
    count = len(_VOWEL_GROUP.findall(letters))
    if letters.endswith("e") and not (
        letters.endswith("le") and len(letters) > 2 and letters[-3] not in "aeiouy"
    ):
        count -= 1
    return max(count, 1)


def flesch_reading_ease(text: str) -> float:
    """206.835 - 1.015 * words/sentence - 84.6 * syllables/word; higher reads easier."""
    words = tokenize(text)
    if not words:
        return 0.0
    sentences = max(len(split_sentences(text)), 1)
    syllables = sum(count_syllables(word) for word in words)
    score = 206.835 - 1.015 * len(words) / sentences - 84.6 * syllables / len(words)
    return round(score, 1)


def difficulty(score: float) -> str:
    """A word for a score: "easy" from 80, "standard" from 50, "hard" below."""
    if score >= 80:
        return "easy"
    if score >= 50:
        return "standard"
    return "hard"
PY

cat > tests/test_readability.py <<'PY'
import pytest

from textstats.readability import count_syllables, difficulty, flesch_reading_ease


@pytest.mark.parametrize(
    ("word", "syllables"),
    [("cat", 1), ("the", 1), ("make", 1), ("whale", 1), ("table", 2), ("reading", 2),
     ("syllable", 3), ("beautiful", 3), ("42", 1)],
)
def test_count_syllables(word, syllables):
    assert count_syllables(word) == syllables


def test_short_plain_sentence_scores_by_the_formula():
    # 6 words, 1 sentence, 6 syllables: 206.835 - 1.015 * 6 - 84.6 * 1
    assert flesch_reading_ease("The cat sat on the mat.") == 116.1


def test_long_words_read_harder_than_short_ones():
    easy = flesch_reading_ease("The dog ran to the park. It was fun.")
    hard = flesch_reading_ease("Comprehensive documentation facilitates organizational understanding.")
    assert easy > hard


def test_text_without_words_scores_zero():
    assert flesch_reading_ease(" ... ") == 0.0


@pytest.mark.parametrize(("score", "word"), [(95, "easy"), (80, "easy"), (79.9, "standard"),
                                              (50, "standard"), (49.9, "hard"), (-20, "hard")])
def test_difficulty_bands(score, word):
    assert difficulty(score) == word
PY

cat > "$FLOTILLA_SUMMARY_FILE" <<'MD'
- `textstats.readability`: `count_syllables()`, `flesch_reading_ease()` and `difficulty()`
  ("easy" / "standard" / "hard").
MD
echo "[$FLOTILLA_UNIT_ID] wrote textstats/readability.py, tests/test_readability.py"
