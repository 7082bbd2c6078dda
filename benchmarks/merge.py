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
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.docblock import save_results, write_block
from tasks.git import git_env, identity_env, run_git, tree_of
from tasks.merging import UnitBranch, integrate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "merge.json"
HEADING = "## Merge throughput"
BEGIN, END = "<!-- merge:begin -->", "<!-- merge:end -->"
FEATURE = "flotilla/bench"
STAMP = 1_700_000_000
TARGET_RATIO = 5.0
TARGET_SECONDS = 10.0
STRATEGIES = ("merge", "squash", "sequential_rebase")


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


def measure(files: int, units: int, rounds: int) -> dict:
    """`rounds` rounds, each running every way once on fresh clones; the best time counts.

    The machine may be shared, so the minimum over rounds is the least disturbed measurement
    of each way; every round's times are kept in the result.
    """
    runs: dict[str, list[float]] = {"checkout_and_merge": [], **{s: [] for s in STRATEGIES}}
    with tempfile.TemporaryDirectory(prefix="flotilla-bench-merge-") as tmp:
        source = Path(tmp) / "source"
        started = time.perf_counter()
        generate(source, files, units)
        generated = time.perf_counter() - started
        tracked = len(run_git(source, "ls-files").stdout.splitlines())
        for round_no in range(rounds):
            scratch = Path(tmp) / f"round-{round_no}"
            scratch.mkdir()
            seconds, expected = checkout_and_merge(source, scratch, units)
            runs["checkout_and_merge"].append(round(seconds, 3))
            for strategy in STRATEGIES:
                seconds, tree = plumbing(source, scratch, units, strategy)
                if tree != expected:
                    raise SystemExit(f"plumbing ({strategy}) built a different tree than git merge")
                runs[strategy].append(round(seconds, 3))
            shutil.rmtree(scratch)
    best = {name: min(times) for name, times in runs.items()}
    ratio = best["checkout_and_merge"] / best["merge"]
    per_round = [b / p for b, p in zip(runs["checkout_and_merge"], runs["merge"], strict=True)]
    return {
        "benchmark": "merge",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "git": run_git(ROOT, "--version").stdout.strip(),
        },
        "repository": {"files": tracked, "units": units, "commits_per_unit": 2},
        "generate_s": round(generated, 3),
        "rounds": rounds,
        "runs_s": runs,
        "checkout_and_merge_s": best["checkout_and_merge"],
        "plumbing_s": {s: best[s] for s in STRATEGIES},
        "ratio_merge": round(ratio, 2),
        "ratio_merge_per_round": [round(r, 2) for r in per_round],
        "target": {"ratio_at_least": TARGET_RATIO, "plumbing_under_s": TARGET_SECONDS},
        "met": ratio >= TARGET_RATIO and best["merge"] < TARGET_SECONDS,
    }


PROSE = """\
`make bench` (or `.venv/bin/python -m benchmarks.merge`) integrates 100 unit branches (two
commits each, no conflicts) into a feature branch on a generated repository of 5,000 files, two
ways in the same run, and checks that both build the same tree:

- **plumbing**: what Flotilla's merge stage does: `git merge-tree --write-tree` and
  `git commit-tree` per unit in a bare clone, one `git update-ref` at the end; no working tree,
  no index;
- **checkout-and-merge**: a normal clone, `git checkout` of the feature branch and
  `git merge --no-ff` per unit.

Each round runs every way once on fresh clones; the table shows the best round (the one least
disturbed by other work on the machine) and every round. Wall-clock times move with the
machine's load, so compare the two ways within one run, not across runs.
"""


def generated(result: dict) -> str:
    """The measured part of the section, between markers so a new run replaces only it."""
    repo, best, runs = result["repository"], result["plumbing_s"], result["runs_s"]
    machine = result["machine"]
    verdict = "met" if result["met"] else "**not met**"

    def row(label: str, name: str, seconds: float) -> str:
        every = ", ".join(f"{t:.2f}" for t in runs[name])
        return f"| {label} | {seconds:.2f} s | {every} |\n"

    return (
        f"{BEGIN}\n"
        f"{repo['units']} units, {repo['files']:,} files, {result['rounds']} rounds:\n\n"
        "| Way | Best | Every round (s) |\n|---|---|---|\n"
        + row("checkout-and-merge", "checkout_and_merge", result["checkout_and_merge_s"])
        + row("plumbing, `merge_strategy: merge`", "merge", best["merge"])
        + row("plumbing, `merge_strategy: squash`", "squash", best["squash"])
        + row(
            "plumbing, `merge_strategy: sequential_rebase`",
            "sequential_rebase",
            best["sequential_rebase"],
        )
        + f"\nPlumbing (`merge`) is **{result['ratio_merge']:.1f}×** faster than "
        "checkout-and-merge for the same merge commits (best against best; round by round: "
        + ", ".join(f"{r:.1f}×" for r in result["ratio_merge_per_round"])
        + "). Target: at least "
        f"{TARGET_RATIO:g}× and under {TARGET_SECONDS:g} s: {verdict}.\n\n"
        f"Measured {result['when']} on {machine['platform']} ({machine['cpus']} CPUs, load "
        f"average {machine['load_average_1m']} at the end), {machine['git']}, Python "
        f"{machine['python']}. Raw numbers: `benchmarks/results/merge.json`.\n"
        f"{END}\n"
    )


def write_doc(block: str) -> None:
    write_block(HEADING, BEGIN, END, block, PROSE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=100, help="unit branches (default 100)")
    parser.add_argument("--files", type=int, default=5000, help="files in the repo (default 5000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; best counts (default 3)")
    parser.add_argument("--no-write", action="store_true", help="print only; write no files")
    args = parser.parse_args(argv)
    result = measure(args.files, args.units, max(args.rounds, 1))
    print(json.dumps(result, indent=2))
    if not args.no_write:
        save_results(RESULTS.stem, result)
        write_doc(generated(result))
        print(f"Wrote {RESULTS.relative_to(ROOT)} and the merge section of docs/performance.md.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
