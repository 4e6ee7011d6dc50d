"""The journal's format on disk (dealer._format): schema 3 writes a turn's records in one
row and its settled jobs in one row; journals of schema 2 (a row per record and per
settled job), written by the dealer of that schema (tests/dealer/data, made by
tests/dealer/schema2.py), are still read, resumed, restored and retried, and become
schema 3 with their first write."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import msgpack
import pytest

from dealer import Journal, JournalError
from dealer._core import Drawn, Overdue, Sent
from dealer._format import TURN
from dealer._history import History
from dealer._reader import ReadOnly
from tests.dealer import schema2

DATA = Path(__file__).parent / "data"
AFRESH = "to start the batch afresh, pass another --db, or --fresh to move this journal aside"


def old(tmp_path, name: str) -> tuple[Path, dict]:
    """A copy of a journal the schema 2 dealer wrote, and what that dealer made of it."""
    path = tmp_path / f"{name}.sqlite"
    shutil.copy(DATA / f"schema2-{name}.sqlite", path)
    return path, json.loads((DATA / f"schema2-{name}.json").read_text())


def meta(path, key: str) -> str | None:
    db = sqlite3.connect(path)
    try:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row and row[0]
    finally:
        db.close()


def kinds(path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [k for (k,) in db.execute("SELECT kind FROM records ORDER BY seq")]
    finally:
        db.close()


@pytest.mark.parametrize("name", sorted(schema2.SCENARIOS))
def test_the_same_batch_ends_the_same_as_under_schema_2(tmp_path, name):
    """Run by this dealer, each scenario ends as the schema 2 dealer ended it; and its
    journal is turns."""
    path = tmp_path / "new.sqlite"
    expected = json.loads((DATA / f"schema2-{name}.json").read_text())
    assert schema2.SCENARIOS[name](path) == expected
    assert meta(path, "schema") == "3" and set(kinds(path)) == {TURN}


def test_a_schema_2_journal_is_replayed_resumed_and_upgraded(tmp_path):
    path, then = old(tmp_path, "unfinished")
    assert meta(path, "schema") == "2"
    svc = schema2.unfinished_service(path)  # replayed: the state the old dealer had
    assert schema2.summary(svc) == then
    assert svc.journal.count() == 33
    svc.close()
    assert meta(path, "schema") == "2"  # opened and closed, not written: still schema 2
    svc = schema2.unfinished_service(path)
    (jobs,) = schema2.turn(svc, 1200.0, lambda: schema2.bored(svc, schema2.A, 2, 1200.0))
    rs = [(s.tag, schema2.OK, f"out{s.args[0]}".encode(), 5) for s in jobs.jobs]
    schema2.turn(svc, 1201.0, lambda: schema2.results(svc, schema2.A, rs, 1201.0))
    now = schema2.summary(svc)
    records = list(svc.journal.records())
    svc.close()
    assert meta(path, "schema") == "3"  # written: schema 3 from then on
    assert kinds(path)[:33] == kinds(DATA / "schema2-unfinished.sqlite")
    assert set(kinds(path)[33:]) == {TURN}
    svc = schema2.unfinished_service(path)  # the old rows, then the turns
    assert schema2.summary(svc) == now
    assert list(svc.journal.records()) == records
    svc.close()
    with ReadOnly(path) as r:  # `python -m dealer results|jobs` read it too
        assert list(r.records()) == records
        assert History.of(svc.core.policy, r.tag_prefix, r.records()).counts()["accepted"] == 2


def test_a_finished_schema_2_journal_is_restored_and_retried(tmp_path):
    path, then = old(tmp_path, "finished")
    svc = schema2.finished_service(path)
    assert svc.journal.finished_summary() is not None  # restored from the old settled rows
    assert schema2.summary(svc) == then and svc.finished()
    assert svc.journal.failed_ids() == [1]
    svc.close()
    svc = schema2.finished_service(path, retry=())  # the failed job put back
    assert not svc.finished() and svc.journal.failed_ids() == []
    (jobs,) = schema2.turn(svc, 1200.0, lambda: schema2.bored(svc, schema2.A, 4, 1200.0))
    assert [s.args[0] for s in jobs.jobs] == ["1"]
    rs = [(jobs.jobs[0].tag, schema2.OK, b"r1", 1)]
    schema2.turn(svc, 1201.0, lambda: schema2.results(svc, schema2.A, rs, 1201.0))
    assert svc.finished() and svc.task.seen[-1] == ["ok", "1", "r1"]
    svc.close()
    assert meta(path, "schema") == "3"
    svc = schema2.finished_service(path)  # restored: old rows, then a turn's
    assert svc.journal.finished_summary() is not None
    assert svc.task.seen == [["ok", "0", "r0"], ["ok", "2", "r2"], ["ok", "1", "r1"]]
    svc.close()


def test_a_retry_drops_failures_from_the_settled_turns(tmp_path):
    path = tmp_path / "j.sqlite"
    assert schema2.finished(path)["failed"] == 1
    svc = schema2.finished_service(path)
    assert svc.journal.failed_ids() == [1]
    svc.close()
    svc = schema2.finished_service(path, retry=())
    assert svc.journal.failed_ids() == []
    assert svc.journal.finished_summary() is None
    (jobs,) = schema2.turn(svc, 1200.0, lambda: schema2.bored(svc, schema2.A, 4, 1200.0))
    rs = [(jobs.jobs[0].tag, schema2.EXIT, b"", 1, "exit 3")]  # fails again
    schema2.turn(svc, 1201.0, lambda: schema2.results(svc, schema2.A, rs, 1201.0))
    assert svc.finished() and svc.journal.failed_ids() == [1]
    svc.close()
    svc = schema2.finished_service(path)
    assert [s[0] for s in svc.task.seen] == ["ok", "ok", "failed"]  # its latest outcome
    svc.close()


def turn_journal(tmp_path, *bodies) -> Path:
    """A journal with one good turn (a Drawn and a Sent) and then rows of turns `bodies`."""
    path = tmp_path / "j.sqlite"
    j = Journal(path, "t")
    j.append([Drawn(0, "d"), Sent(f"{j.tag_prefix}.0", 0, "k", 1.0, "m")])
    j._db.executemany("INSERT INTO records (kind, body) VALUES (?, ?)", [(TURN, b) for b in bodies])
    j.close()
    return path


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"\xc1", "the turn in row 2 (from record 3 on) is damaged: "),
        (msgpack.packb({"a": 1}), "the turn in row 2 (from record 3 on) is damaged: ValueError"),
        (msgpack.packb([[3, ["x.1"]], 7]), "record 4 is damaged: not [code, fields]"),
        (msgpack.packb([[99, ["x"]]]), "record 3: unknown kind 99: the journal was damaged, or a"),
        (msgpack.packb([[3, []]]), "record 3 (Overdue) is damaged: TypeError: "),
        (msgpack.packb([[3, ["x", 1]]]), "record 3 (Overdue) is damaged: TypeError: "),
        (msgpack.packb([[3, [7]]]), "record 3 (Overdue) is damaged: its tag is a int, not str"),
        (
            msgpack.packb([[1, ["x.1", 0, "k", None, "m"]]]),
            "record 3 (Sent) is damaged: its deadline is a NoneType, not float",
        ),
    ],
)
def test_a_damaged_turn_is_refused_naming_the_record(tmp_path, body, why):
    path = turn_journal(tmp_path, body)
    j = Journal(path, "t")
    with pytest.raises(JournalError) as e:
        list(j.records())
    assert str(e.value).startswith(f"{path}: {why}") and str(e.value).endswith(AFRESH)
    j.close()


def test_turns_are_counted_and_read_back_in_order(tmp_path):
    path = turn_journal(tmp_path, msgpack.packb([[3, ["x.1"]], [3, ["x.2"]]]))
    j = Journal(path, "t")
    assert j.count() == 4
    assert list(j.records())[2:] == [Overdue("x.1"), Overdue("x.2")]
    j.close()


def test_damaged_settled_jobs_are_refused(tmp_path):
    path = tmp_path / "j.sqlite"
    j = Journal(path, "t")
    j.append([], [(0, "d", "accepted", b"out"), (1, "e", "failed", msgpack.packb(["no"]))])
    assert list(j.settled_rows()) == [
        (0, "d", "accepted", b"out"),
        (1, "e", "failed", msgpack.packb(["no"])),
    ]
    assert j.failed_ids() == [1]
    j._db.execute("UPDATE settled_turns SET body = ?", (msgpack.packb([[0, "d", "maybe", b""]]),))
    with pytest.raises(JournalError) as e:
        list(j.settled_rows())
    assert str(e.value).startswith(f"{path}: the settled jobs of row 1 are damaged: ValueError")
    j.close()


def test_a_retried_record_is_a_row_of_its_own_wherever_it_is_written(tmp_path):
    from dealer._records import Retried

    j = Journal(tmp_path / "j.sqlite", "t")
    records = [Drawn(0, "d"), Retried((0,), False, None, 1.0)]
    j.append(records)
    assert [k for (k,) in j._db.execute("SELECT kind FROM records")] == ["Drawn", "Retried"]
    assert list(j.records()) == records and j.retried() == {0: 1}
    j.close()


def test_a_batch_retried_and_not_finished_resumes(tmp_path):
    """Its Retried record is not the journal's first: the retries are read all the same
    (before, reading them alone failed as a record missing)."""
    path = tmp_path / "j.sqlite"
    assert schema2.finished(path)["failed"] == 1
    svc = schema2.finished_service(path, retry=())  # job 1 put back; the dealer stops
    svc.close()
    svc = schema2.finished_service(path)  # resumed: replayed, the retry included
    assert not svc.finished() and svc.journal.retried() == {1: 1}
    assert [s[:2] for s in svc.task.seen] == [["ok", "0"], ["ok", "2"]]  # (not the failure)
    svc.close()
