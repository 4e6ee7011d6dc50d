"""Which journal `python -m dealer results|jobs` reads (dealer/_which.py): nothing (the
newest here), paths (a glob's: the newest), or a task file and its arguments."""

from __future__ import annotations

import os

import pytest

from dealer._which import NoJournal, journal_for, task_class

TASK = """
import sys
sys.path.insert(0, {root!r})
from tasks import Task

class Base(Task):
    pass

class Mine(Base):
    output_options = ("out",)

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument("n", type=int)
        parser.add_argument("--out", default="x.csv")
"""


def touch(path, mtime: float):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    os.utime(path, (mtime, mtime))
    return path


def test_nothing_given_reads_the_newest_journal_here_and_says_so(tmp_path):
    home = tmp_path / ".borednet"
    with pytest.raises(NoJournal, match="no journal in"):
        journal_for([], home)
    only = touch(home / "a-1.sqlite", 100)
    assert journal_for([], home) == (only, "")
    newer = touch(home / "b-2.sqlite", 200)
    path, note = journal_for([], home)
    assert path == newer and note == f"reading the newest of 2 journals in {home}/: {newer}"


def test_paths_given_a_glob_reads_the_newest_and_missing_ones_are_named(tmp_path):
    a, b = touch(tmp_path / "a.sqlite", 300), touch(tmp_path / "b.sqlite", 100)
    assert journal_for([str(b)]) == (b, "")
    assert journal_for([str(a), str(b)]) == (a, f"2 journals given: reading the newest, {a}")
    with pytest.raises(NoJournal, match="no such journal: .*nope.sqlite"):
        journal_for([str(a), str(tmp_path / "nope.sqlite")])


def test_a_task_file_names_the_journal_its_command_keeps(tmp_path, monkeypatch):
    from tests.helpers import ROOT

    monkeypatch.chdir(tmp_path)
    task = tmp_path / "mine.py"
    task.write_text(TASK.format(root=str(ROOT)))
    assert task_class(task).__name__ == "Mine"  # the leaf, not its base
    with pytest.raises(NoJournal, match="has no journal here"):
        journal_for([str(task), "5"])
    made = touch(tmp_path / ".borednet" / "placeholder", 1).parent
    # the name the batch would give: --out is output only, so it changes nothing
    with pytest.raises(NoJournal) as e1:
        journal_for([str(task), "5", "--out", "a.csv"], made)
    with pytest.raises(NoJournal) as e2:
        journal_for([str(task), "5", "--out", "b.csv"], made)
    with pytest.raises(NoJournal) as e3:
        journal_for([str(task), "6"], made)
    name = str(e1.value).split("(")[-1]
    assert name == str(e2.value).split("(")[-1] and name != str(e3.value).split("(")[-1]
    expected = tmp_path / name.rstrip(")")
    touch(expected, 5)
    assert journal_for([str(task), "5", "--out", "z.csv"]) == (expected.relative_to(tmp_path), "")


def test_a_task_file_with_no_task_or_that_fails_to_load_is_a_clear_error(tmp_path):
    (tmp_path / "none.py").write_text("x = 1\n")
    with pytest.raises(NoJournal, match="defines 0 tasks"):
        task_class(tmp_path / "none.py")
    (tmp_path / "bad.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(NoJournal, match="cannot be loaded: RuntimeError: boom"):
        task_class(tmp_path / "bad.py")
    with pytest.raises(NoJournal, match="no such task file"):
        task_class(tmp_path / "gone.py")
