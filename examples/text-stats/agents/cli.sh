#!/usr/bin/env bash
# Scripted agent for unit `cli`: writes textstats/cli.py (`python -m textstats.cli`) and its tests.
set -euo pipefail
: "${FLOTILLA_UNIT_ID:?run this script through Flotilla (FLOTILLA_UNIT_ID is not set)}"
: "${FLOTILLA_SUMMARY_FILE:?FLOTILLA_SUMMARY_FILE is not set}"
echo "[$FLOTILLA_UNIT_ID] iteration ${FLOTILLA_ITERATION:-1}: $(head -n 1 "${FLOTILLA_PROMPT_FILE:-/dev/null}")"
if [[ ! -f textstats/report.py ]]; then
  echo "[$FLOTILLA_UNIT_ID] error: textstats/report.py is missing from the worktree; this unit" \
       "must depend on the report unit so its code is merged in first." >&2
  exit 1
fi
sleep "${TEXTSTATS_AGENT_SLEEP_S:-1}"  # stands in for thinking time, so parallel units overlap

mkdir -p textstats tests
cat > textstats/cli.py <<'PY'
"""`python -m textstats.cli [FILE | --sample NAME] [--json]`: a text report on the terminal."""

import argparse
import json
import sys

from textstats.report import build_report, format_report
from textstats.samples import SAMPLES, get_sample


def main(argv: list[str] | None = None) -> int:
    """Print the report for a file, a built-in sample or standard input; 2 on bad input."""
    parser = argparse.ArgumentParser(prog="textstats", description="Statistics for a text.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("file", nargs="?", help="text file to read (default: standard input)")
    source.add_argument("--sample", help=f"a built-in text: {', '.join(sorted(SAMPLES))}")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        if args.sample:
            text = get_sample(args.sample)
        elif args.file:
            with open(args.file, encoding="utf-8") as f:
                text = f.read()
        else:
            text = sys.stdin.read()
    except KeyError as exc:
        print(f"textstats: {exc.args[0]}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"textstats: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    report = build_report(text)
    print(json.dumps(report) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
PY

cat > tests/test_cli.py <<'PY'
import json
import subprocess
import sys
from pathlib import Path

from textstats.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_reads_a_file(tmp_path, capsys):
    path = tmp_path / "note.txt"
    path.write_text("Short words. Short lines.", encoding="utf-8")
    assert main([str(path)]) == 0
    assert "Words: 4" in capsys.readouterr().out


def test_sample_as_json(capsys):
    assert main(["--sample", "simple", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["difficulty"] == "easy"


def test_unknown_sample_and_missing_file_exit_2(tmp_path, capsys):
    assert main(["--sample", "poetry"]) == 2
    assert main([str(tmp_path / "absent.txt")]) == 2
    err = capsys.readouterr().err
    assert "known samples" in err
    assert "cannot read" in err


def test_runs_as_a_module_reading_stdin():
    result = subprocess.run(
        [sys.executable, "-m", "textstats.cli"],
        input="One fish. Two fish.",
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Top words: fish (2), one (1), two (1)" in result.stdout
PY

cat > "$FLOTILLA_SUMMARY_FILE" <<'MD'
- `textstats.cli`: `python -m textstats.cli [FILE | --sample NAME] [--json]` prints the report;
  bad input gives a one-line error and exit code 2.
MD
echo "[$FLOTILLA_UNIT_ID] wrote textstats/cli.py, tests/test_cli.py"
