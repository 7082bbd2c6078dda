#!/usr/bin/env bash
# A scripted agent that reports its usage the way any agent may: JSON in $FLOTILLA_USAGE_FILE.
set -euo pipefail
mkdir -p notes
echo "- ${FLOTILLA_UNIT_ID}: $(head -n 3 "$FLOTILLA_PROMPT_FILE" | tail -n 1)" > "notes/${FLOTILLA_UNIT_ID}.md"
echo "Wrote notes/${FLOTILLA_UNIT_ID}.md." > "$FLOTILLA_SUMMARY_FILE"
printf '{"input_tokens": %s, "output_tokens": %s, "cost_usd": %s}\n' \
  "$INPUT_TOKENS" "$OUTPUT_TOKENS" "$COST_USD" > "$FLOTILLA_USAGE_FILE"
