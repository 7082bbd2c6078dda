"""A unit's diff as the UI shows it: the stat, the patch, and a note when the patch is cut."""

from __future__ import annotations

from pathlib import Path

import pytest

from flotilla.results import UnitRecord
from tasks.unit_diff import diff_markdown
from tasks.workspace import Workspace
from tests.integration.gitrepos import commit_on, isolate_git, make_repo


@pytest.fixture(autouse=True)
def no_git_identity(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    isolate_git(monkeypatch, tmp_path_factory.mktemp("home"))


def unit_commit(tmp_path: Path, files: dict[str, str]) -> tuple[Workspace, UnitRecord]:
    target = tmp_path / "target"
    start = make_repo(target, {"app.py": "print('hi')\n"})
    workspace = Workspace(tmp_path / "work", str(target), "main")
    workspace.prepare()
    commit = commit_on(workspace.clone_dir, start, files, "Tokenizer", branch="flotilla/f--tok")
    record = UnitRecord(unit_id="tok", branch="flotilla/f--tok", start_commit=start, commit=commit)
    return workspace, record


def test_the_diff_shows_the_stat_and_the_whole_patch(tmp_path):
    workspace, record = unit_commit(tmp_path, {"tok.py": "def tokens(text):\n    return []\n"})

    markdown = diff_markdown(
        record, "run-1", "`flotilla/f--tok`", *workspace.diff(record.start_commit, record.commit)
    )

    assert markdown.startswith("## Diff\n")
    assert (
        f"Branch `flotilla/f--tok`: `{record.start_commit[:12]}..{record.commit[:12]}`" in markdown
    )
    assert " tok.py | 2 ++\n 1 file changed, 2 insertions(+)" in markdown
    assert "```diff\ndiff --git a/tok.py b/tok.py\n" in markdown
    assert "+def tokens(text):\n+    return []\n```" in markdown
    assert "characters; the first" not in markdown


def test_a_long_patch_is_cut_at_a_line_with_a_note(tmp_path):
    lines = "".join(f"line {n}\n" for n in range(5000))
    workspace, record = unit_commit(tmp_path, {"big.txt": lines})
    stat, patch = workspace.diff(record.start_commit, record.commit)

    markdown = diff_markdown(record, "run-1", "`flotilla/f--tok`", stat, patch, limit=2000)

    assert "big.txt | 5000 +++" in markdown  # the stat is never cut
    shown = markdown.split("```diff\n", 1)[1].split("\n```", 1)[0]
    assert len(shown) < 2000 and patch.startswith(shown + "\n")  # whole lines only
    kept = len(shown) + 1
    assert f"_The patch is {len(patch):,} characters; the first {kept:,} are shown." in markdown
    assert f"`git diff {record.start_commit[:12]} {record.commit[:12]}`" in markdown


def test_backticks_in_the_patch_do_not_end_the_code_block(tmp_path):
    workspace, record = unit_commit(tmp_path, {"README.md": "```python\nprint(1)\n```\n"})

    markdown = diff_markdown(
        record, "run-1", "b", *workspace.diff(record.start_commit, record.commit)
    )

    assert "````diff\n" in markdown and markdown.rstrip().endswith("````")
