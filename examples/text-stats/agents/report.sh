#!/usr/bin/env bash
# Scripted agent for unit `report`: reads counts-api.json from the counts unit and writes
# textstats/report.py (counts + readability in one report) and its tests.
set -euo pipefail
: "${FLOTILLA_UNIT_ID:?run this script through Flotilla (FLOTILLA_UNIT_ID is not set)}"
: "${FLOTILLA_INPUTS_DIR:?FLOTILLA_INPUTS_DIR is not set}"
: "${FLOTILLA_SUMMARY_FILE:?FLOTILLA_SUMMARY_FILE is not set}"
echo "[$FLOTILLA_UNIT_ID] iteration ${FLOTILLA_ITERATION:-1}: $(head -n 1 "${FLOTILLA_PROMPT_FILE:-/dev/null}")"

api="$FLOTILLA_INPUTS_DIR/counts/counts-api.json"
if [[ ! -f "$api" ]]; then
  echo "[$FLOTILLA_UNIT_ID] error: expected input $api is missing. The unit must declare" \
       "'counts/counts-api.json' in its inputs and the counts unit must publish it." >&2
  exit 1
fi
for module in counts readability samples; do
  if [[ ! -f "textstats/$module.py" ]]; then
    echo "[$FLOTILLA_UNIT_ID] error: textstats/$module.py is missing from the worktree; this unit" \
         "must depend on the '$module' unit so its code is merged in first." >&2
    exit 1
  fi
done
sleep "${TEXTSTATS_AGENT_SLEEP_S:-1}"  # stands in for thinking time, so parallel units overlap

mkdir -p textstats tests
# The report's fields are the keys counts-api.json declares, in its order.
python - "$api" <<'PY'
import json
import sys

with open(sys.argv[1], encoding="utf-8") as f:
    api = json.load(f)
missing = {"totals", "top_words"} - set(api.get("functions", []))
if missing or not api.get("totals_keys"):
    sys.exit(f"error: {sys.argv[1]} lacks functions {sorted(missing)} or totals_keys: {api!r}")

module = '''"""One report for a text: counts, top words and readability, as data and as text."""

from textstats.counts import top_words, totals
from textstats.readability import difficulty, flesch_reading_ease

# The keys of textstats.counts.totals, as published by the counts unit (counts-api.json).
TOTALS_KEYS = %r


def build_report(text: str, top: int = 3) -> dict:
    """Every total, the `top` most frequent words, the reading ease and its difficulty."""
    counted = totals(text)
    report: dict = {key: counted[key] for key in TOTALS_KEYS}
    report["top_words"] = top_words(text, top)
    report["reading_ease"] = flesch_reading_ease(text)
    report["difficulty"] = difficulty(report["reading_ease"])
    return report


def format_report(report: dict) -> str:
    """One "Label: value" line per field, in the report's order."""
    lines = []
    for key, value in report.items():
        label = key.replace("_", " ").capitalize()
        if key == "top_words":
            value = ", ".join(f"{word} ({count})" for word, count in value) or "-"
        lines.append(f"{label}: {value}")
    return "\\n".join(lines)
''' % (tuple(api["totals_keys"]),)

with open("textstats/report.py", "w", encoding="utf-8") as f:
    f.write(module)
PY

cat > tests/test_report.py <<'PY'
from textstats import counts
from textstats.report import TOTALS_KEYS, build_report, format_report
from textstats.samples import get_sample


def test_report_carries_every_total_of_the_counts_module():
    assert TOTALS_KEYS == counts.TOTALS_KEYS
    report = build_report("The cat sat. The cat slept.")
    assert {key: report[key] for key in TOTALS_KEYS} == counts.totals("The cat sat. The cat slept.")
    assert report["top_words"] == [("cat", 2), ("the", 2), ("sat", 1)]


def test_simple_sample_reads_easier_than_technical():
    simple = build_report(get_sample("simple"))
    technical = build_report(get_sample("technical"))
    assert simple["reading_ease"] > technical["reading_ease"]
    assert simple["difficulty"] == "easy"
    assert technical["difficulty"] == "hard"


def test_format_report_has_one_line_per_field():
    report = build_report("Hello world. Hello again!")
    text = format_report(report)
    assert len(text.splitlines()) == len(report)
    assert "Words: 4" in text
    assert "Top words: hello (2), again (1), world (1)" in text


def test_empty_text_still_reports():
    text = format_report(build_report(""))
    assert "Words: 0" in text
    assert "Top words: -" in text
PY

cat > "$FLOTILLA_SUMMARY_FILE" <<'MD'
- `textstats.report`: `build_report()` joins every total named in the counts unit's
  `counts-api.json`, the top words and the reading ease; `format_report()` renders it.
MD
echo "[$FLOTILLA_UNIT_ID] wrote textstats/report.py, tests/test_report.py"
