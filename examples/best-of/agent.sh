#!/usr/bin/env bash
# A scripted candidate: $FLOTILLA_CANDIDATE says which one it is. Candidate 1 writes the note in
# the wrong place, the others write it right (candidate 3 at more length); each reports $0.40.
set -euo pipefail
mkdir -p notes
case "$FLOTILLA_CANDIDATE" in
  1) echo "- changes" > CHANGES.txt ;;
  2) echo "- ${FLOTILLA_UNIT_ID}: faster start-up" > "notes/${FLOTILLA_UNIT_ID}.md" ;;
  *) printf -- "- %s: faster start-up\n- %s: smaller install\n- %s: fewer settings\n" \
       "$FLOTILLA_UNIT_ID" "$FLOTILLA_UNIT_ID" "$FLOTILLA_UNIT_ID" > "notes/${FLOTILLA_UNIT_ID}.md" ;;
esac
echo "Candidate ${FLOTILLA_CANDIDATE} wrote its note." > "$FLOTILLA_SUMMARY_FILE"
printf '{"input_tokens": 52000, "output_tokens": 1800, "cost_usd": 0.40}\n' > "$FLOTILLA_USAGE_FILE"
