"""Merge throughput: integrating 100 unit branches with plumbing against checkout-and-merge.

A repository of about 5,000 files is generated with `git fast-import`; each of 100 unit branches
starts from the base and changes three files (two commits: an edit, then a new file), none of them
shared, so no merge conflicts. Both ways run in the same process, one after the other:

- plumbing: `tasks.merging.integrate` in a bare clone (`merge-tree --write-tree`, `commit-tree`,
  one `update-ref` at the end), for each of the three strategies;
- checkout-and-merge: in a normal clone, `git checkout -b` the feature branch, then per unit
  `git checkout <feature>` and `git merge --no-ff <unit>`.

Both build the same tree (checked). Results go to benchmarks/results/merge.json and the
"Merge throughput" section of docs/performance.md. Run it with `make bench` or
`.venv/bin/python -m benchmarks.merge [--units N] [--files N]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from tasks.merging import UnitBranch, git_env, identity_env, integrate, run_git, tree_of

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "merge.json"
DOC = ROOT / "docs" / "performance.md"
HEADING = "## Merge throughput"
FEATURE = "flotilla/bench"
STAMP = 1_700_000_000
TARGET_RATIO = 5.0
TARGET_SECONDS = 10.0


def unit_branch(i: int) -> str:
    return f"flotilla/bench--u{i:03d}"


def _data(text: str) -> bytes:
    raw = text.encode()
    return b"data %d\n" % len(raw) + raw + b"\n"


def _file(i: int) -> str:
    return f"src/pkg{i // 100:02d}/mod{i % 100:03d}.py"


def _content(i: int, extra: str = "") -> str:
    lines = [f"# module {i}", *(f"VALUE_{n} = {i * 100 + n}" for n in range(20))]
    return "\n".join(lines) + "\n" + extra


def generate(source: Path, files: int, units: int) -> None:
    """A non-bare repository: `main` with `files` files, and `units` unit branches on it."""
    run_git(source.parent, "init", "-q", "-b", "main", str(source))
    stream: list[bytes] = [b"commit refs/heads/main\nmark :1\n"]
    stream.append(b"committer Bench <bench@example.com> %d +0000\n" % STAMP)
    stream.append(_data("Base: generated files"))
    for i in range(files):
        stream.append(f"M 100644 inline {_file(i)}\n".encode() + _data(_content(i)))
    stride = max(files // (units * 2), 1)
    for u in range(units):
        picked = [(u * 2 * stride + k * stride) % files for k in range(2)]
        for step, (message, changes) in enumerate(
            [
                (
                    f"Unit {u}: tune two modules",
                    {_file(i): _content(i, f"TUNED_BY = {u}\n") for i in picked},
                ),
                (f"Unit {u}: add its module", {f"units/u{u:03d}.py": f"UNIT = {u}\n"}),
            ]
        ):
            stream.append(f"commit refs/heads/{unit_branch(u)}\n".encode())
            stream.append(b"committer Bench <bench@example.com> %d +0000\n" % (STAMP + u))
            stream.append(_data(message))
            stream.append(b"from :1\n" if step == 0 else b"")
            for path, text in changes.items():
                stream.append(f"M 100644 inline {path}\n".encode() + _data(text))
    done = subprocess.run(
        ["git", "fast-import", "--quiet"],
        cwd=source,
        input=b"".join(stream),
        env=git_env(),
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"git fast-import failed: {done.stderr.decode()}")
    run_git(source, "checkout", "-q", "main")


def plumbing(source: Path, scratch: Path, units: int, strategy: str) -> tuple[float, str]:
    clone = scratch / f"plumbing-{strategy}.git"
    run_git(scratch, "clone", "-q", "--bare", str(source), str(clone))
    branches = [
        UnitBranch(unit_id=f"u{u:03d}", branch=unit_branch(u), title=f"Unit {u}")
        for u in range(units)
    ]
    started = time.perf_counter()
    result = integrate(clone, "main", FEATURE, branches, strategy, identity_env())  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    assert result.ok, result.conflict
    return seconds, tree_of(clone, FEATURE)


def checkout_and_merge(source: Path, scratch: Path, units: int) -> tuple[float, str]:
    clone = scratch / "checkout"
    run_git(scratch, "clone", "-q", "--no-checkout", str(source), str(clone))
    run_git(clone, "fetch", "-q", "origin", "refs/heads/*:refs/heads/*", "--update-head-ok")
    env = git_env()

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=clone, env=env, check=True, capture_output=True)

    started = time.perf_counter()
    git("checkout", "-q", "-b", FEATURE, "main")
    for u in range(units):
        git("checkout", "-q", FEATURE)
        git("merge", "-q", "--no-ff", "--no-edit", "-m", f"Merge unit u{u:03d}", unit_branch(u))
    seconds = time.perf_counter() - started
    return seconds, tree_of(clone, FEATURE)


def measure(files: int, units: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="flotilla-bench-merge-") as tmp:
        scratch = Path(tmp)
        source = scratch / "source"
        started = time.perf_counter()
        generate(source, files, units)
        generated = time.perf_counter() - started
        tracked = len(run_git(source, "ls-files").stdout.splitlines())
        baseline, baseline_tree = checkout_and_merge(source, scratch, units)
        timings = {}
        for strategy in ("merge", "squash", "sequential_rebase"):
            seconds, tree = plumbing(source, scratch, units, strategy)
            if tree != baseline_tree:
                raise SystemExit(f"plumbing ({strategy}) built a different tree than git merge")
            timings[strategy] = round(seconds, 3)
    ratio = baseline / timings["merge"]
    return {
        "benchmark": "merge",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "git": run_git(ROOT, "--version").stdout.strip(),
        },
        "repository": {"files": tracked, "units": units, "commits_per_unit": 2},
        "generate_s": round(generated, 3),
        "checkout_and_merge_s": round(baseline, 3),
        "plumbing_s": timings,
        "ratio_merge": round(ratio, 2),
        "target": {"ratio_at_least": TARGET_RATIO, "plumbing_under_s": TARGET_SECONDS},
        "met": ratio >= TARGET_RATIO and timings["merge"] < TARGET_SECONDS,
    }


def section(result: dict) -> str:
    """The "Merge throughput" section of docs/performance.md, from one result."""
    repo, timings = result["repository"], result["plumbing_s"]
    machine = result["machine"]
    verdict = "met" if result["met"] else "NOT met"
    return (
        f"{HEADING}\n\n"
        f"`make bench` (or `.venv/bin/python -m benchmarks.merge`) integrates {repo['units']} "
        f"unit branches ({repo['commits_per_unit']} commits each, no conflicts) into a feature "
        f"branch on a generated repository of {repo['files']:,} files, two ways in the same "
        "run, and checks that both build the same tree:\n\n"
        "- **plumbing**: what Flotilla's merge stage does, `git merge-tree --write-tree` and "
        "`git commit-tree` per unit in a bare clone, one `git update-ref` at the end; no "
        "working tree, no index;\n"
        "- **checkout-and-merge**: a normal clone, `git checkout` of the feature branch and "
        "`git merge --no-ff` per unit.\n\n"
        "| Way | Time |\n|---|---|\n"
        f"| checkout-and-merge (`merge --no-ff` per unit) | {result['checkout_and_merge_s']:.2f} s |\n"
        f"| plumbing, `merge_strategy: merge` | {timings['merge']:.2f} s |\n"
        f"| plumbing, `merge_strategy: squash` | {timings['squash']:.2f} s |\n"
        f"| plumbing, `merge_strategy: sequential_rebase` | {timings['sequential_rebase']:.2f} s |\n\n"
        f"Plumbing is **{result['ratio_merge']:.1f}×** faster than checkout-and-merge for the same "
        f"merge commits. Target: at least {TARGET_RATIO:g}× and under {TARGET_SECONDS:g} s — "
        f"{verdict}.\n\n"
        f"Measured {result['when']} on {machine['platform']}, {machine['cpus']} CPUs, "
        f"{machine['git']}, Python {machine['python']}; raw numbers in "
        "`benchmarks/results/merge.json`. Times are wall-clock for one run and vary with the "
        "machine's load; the ratio is the number to compare.\n"
    )


def write_doc(text: str) -> None:
    """Replace (or append) the section in docs/performance.md, leaving other sections alone."""
    current = DOC.read_text() if DOC.exists() else "# Performance\n"
    start = current.find(HEADING)
    if start == -1:
        updated = current.rstrip("\n") + "\n\n" + text
    else:
        following = current.find("\n## ", start + len(HEADING))
        tail = current[following + 1 :] if following != -1 else ""
        updated = current[:start] + text + ("\n" + tail if tail else "")
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(updated)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=100, help="unit branches (default 100)")
    parser.add_argument("--files", type=int, default=5000, help="files in the repo (default 5000)")
    parser.add_argument("--no-write", action="store_true", help="print only; write no files")
    args = parser.parse_args(argv)
    result = measure(args.files, args.units)
    print(json.dumps(result, indent=2))
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        write_doc(section(result))
        print(f"Wrote {RESULTS.relative_to(ROOT)} and the merge section of docs/performance.md.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
