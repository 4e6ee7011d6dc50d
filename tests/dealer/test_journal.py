"""The journal against damage, on real SQLite files: a lost write-ahead log, damaged
records, and a batch whose payload or limits changed. Every case ends in a JournalError
that names the file and says what is wrong and what to do; none starts the batch over.
Real dealer processes (SIGKILLed, rerun after a payload edit): tests/e2e/test_journal.py."""

from __future__ import annotations

import gc
import hashlib
import logging
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap

import msgpack
import pytest

from dealer import Dealer, Journal, JournalError
from dealer._core import Core, Drawn, Policy, Returned, Sent
from dealer._history import History
from dealer._journal import RETRY_HINT, move_aside, pack, task_pins
from dealer._reader import ReadOnly
from dealer._service import Service
from protocol import ProtocolError, Status
from tasks import Job, Limits, Payload, Task
from tests.helpers import PY, ROOT
from tests.wat import printing

AFRESH = "to start the batch afresh, pass another --db, or --fresh to move this journal aside"


def drawn(n: int) -> list[Drawn]:
    return [Drawn(i, f"{i:064x}") for i in range(n)]


def killed_writer(path, n: int = 5) -> None:
    """A process opens the journal at `path`, commits `n` records, and is killed with
    SIGKILL before it closes it: its commits are in PATH-wal, not yet in PATH."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from dealer import Journal
        from dealer._core import Drawn
        j = Journal(sys.argv[1], "t")
        j.append([Drawn(i, f"{{i:064x}}") for i in range({n})])
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([PY, "-c", script, str(path)], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()


def wal(path):
    return path.with_name(path.name + "-wal")


def shm(path):
    return path.with_name(path.name + "-shm")


def meta(path) -> dict[str, str]:
    db = sqlite3.connect(path)
    try:
        return dict(db.execute("SELECT key, value FROM meta"))
    finally:
        db.close()


# --- the write-ahead log ----------------------------------------------------------


def test_an_open_journal_has_its_wal_and_a_closed_one_is_its_main_file_alone(tmp_path):
    path = tmp_path / "j.sqlite"
    j = Journal(path, "t")
    # SQLite keeps the -wal while the journal is open: truncated by the checkpoint at
    # open, never removed; so a journal marked open with no -wal beside it lost its log
    assert wal(path).exists() and wal(path).stat().st_size == 0
    j.append(drawn(3))
    assert wal(path).stat().st_size > 0
    assert meta(path)["state"].startswith("open ")
    j.close()
    j.close()  # twice is harmless
    assert not wal(path).exists() and not shm(path).exists()
    assert meta(path)["state"] == "closed"
    # closed, the main file is the whole journal: a copy of it alone opens whole
    copy = tmp_path / "copy.sqlite"
    shutil.copyfile(path, copy)
    again = Journal(copy, "t")
    assert list(again.records()) == drawn(3)
    again.close()


def test_a_journal_collected_unclosed_is_marked_closed(tmp_path):
    path = tmp_path / "j.sqlite"
    j = Journal(path, "t")
    j.append(drawn(2))
    del j
    gc.collect()
    assert not wal(path).exists() and meta(path)["state"] == "closed"
    assert list(Journal(path, "t").records()) == drawn(2)


def test_a_killed_journal_resumes_from_its_wal(tmp_path):
    path = tmp_path / "j.sqlite"
    killed_writer(path, 5)
    assert wal(path).stat().st_size > 0  # the commits are there, not in the main file
    j = Journal(path, "t")
    assert list(j.records()) == drawn(5)
    j.close()


def test_a_killed_journal_whose_wal_was_deleted_is_refused(tmp_path):
    path = tmp_path / "j.sqlite"
    killed_writer(path, 5)
    wal(path).unlink()
    shm(path).unlink()
    before = path.read_bytes()
    for _ in range(2):  # refused, and left as it was: refused again
        with pytest.raises(JournalError) as e:
            Journal(path, "t")
        assert path.read_bytes() == before
        assert not wal(path).exists() and not shm(path).exists()
    text = str(e.value)
    assert text.startswith(
        f"{path} was left open (its dealer was killed or crashed) and its write-ahead log "
        "j.sqlite-wal is not beside it: the results and tags committed since the journal's "
        "last checkpoint are in that file"
    )
    assert "would lose acknowledged results and hand their tags out again" in text
    assert "Put j.sqlite-wal back beside it" in text
    assert text.endswith(AFRESH)


def test_a_killed_journal_copied_without_its_wal_is_refused(tmp_path):
    path = tmp_path / "j.sqlite"
    killed_writer(path, 5)
    copy = tmp_path / "copy.sqlite"
    shutil.copyfile(path, copy)
    with pytest.raises(JournalError, match=re.escape(f"{copy} was left open")):
        Journal(copy, "t")
    # with its -wal copied beside it, it is whole
    shutil.copyfile(wal(path), wal(copy))
    assert list(Journal(copy, "t").records()) == drawn(5)


def test_a_shm_without_its_wal_is_refused(tmp_path):
    path = tmp_path / "j.sqlite"
    killed_writer(path, 5)
    kept = tmp_path / "kept-wal"
    wal(path).rename(kept)
    with pytest.raises(JournalError) as e:
        Journal(path, "t")
    assert str(e.value) == (
        f"{path}: j.sqlite-shm is beside the journal but j.sqlite-wal is not: its write-ahead "
        "log was deleted, or the journal was copied without it, and the results and tags "
        "committed in that log since the last checkpoint are not in j.sqlite. Put "
        "j.sqlite-wal back beside it (a copy: copy the journal with its -wal and -shm, while "
        f"no dealer runs on it); or, {AFRESH}"
    )
    kept.rename(wal(path))  # put back: whole again
    assert list(Journal(path, "t").records()) == drawn(5)


def test_a_wal_without_its_journal_is_refused_not_started_over(tmp_path):
    path = tmp_path / "j.sqlite"
    killed_writer(path, 5)
    path.rename(tmp_path / "elsewhere.sqlite")
    with pytest.raises(JournalError) as e:
        Journal(path, "t")
    assert str(e.value) == (
        f"{path} does not exist, but j.sqlite-wal and j.sqlite-shm beside it do: the "
        "journal's main file was deleted or moved without its write-ahead log. Put the "
        f"journal back; or, {AFRESH} (it moves the j.sqlite-wal and j.sqlite-shm aside too)"
    )
    assert not path.exists()


def test_move_aside_keeps_the_journal_whole_under_a_dated_name(tmp_path):
    path = tmp_path / "j.sqlite"
    assert move_aside(path) is None  # nothing there: nothing moved
    killed_writer(path, 5)
    aside = move_aside(path)
    assert re.fullmatch(r"j\.\d{8}-\d{6}\.sqlite", aside.name), aside.name
    assert not any(p.exists() for p in (path, wal(path), shm(path)))
    assert wal(aside).exists() and shm(aside).exists()
    assert list(Journal(aside, "t").records()) == drawn(5)  # resumable under its new name
    Journal(path, "t").close()  # the old path starts afresh
    again = move_aside(path)  # within the same second: another name, nothing overwritten
    assert again not in (None, aside) and again.exists() and aside.exists()


# --- damaged files and records ----------------------------------------------------


def damaged(tmp_path, name, *sql, params=()):
    """A closed journal with one Sent record, then `sql` run on it."""
    path = tmp_path / f"{name}.sqlite"
    j = Journal(path, "t")
    j.append([Sent(f"{j.tag_prefix}.0", 0, "jobber", 12.5, "127.0.0.1")])
    j.close()
    db = sqlite3.connect(path)
    for statement in sql:
        db.execute(statement, params if "?" in statement else ())
    db.commit()
    db.close()
    return path


def body(**fields) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


SENT = {"tag": "x.0", "job_id": 0, "jobber": "j", "deadline": 1.5, "machine": "m"}


@pytest.mark.parametrize(
    ("name", "sql", "params", "why"),
    [
        (
            "meta-dropped",
            ["DROP TABLE meta"],
            (),
            "the journal has no meta table: it was damaged, or is not a journal",
        ),
        (
            "both-dropped",
            ["DROP TABLE meta", "DROP TABLE records"],
            (),
            "the journal has no meta and records table",
        ),
        (
            "schema",
            ["UPDATE meta SET value = '1' WHERE key = 'schema'"],
            (),
            "journal schema '1' is not 2 or 3 (another version of borednet wrote it, or it was "
            "damaged): resume it with the borednet that wrote it",
        ),
        (
            "prefix",
            ["DELETE FROM meta WHERE key = 'tag_prefix'"],
            (),
            "the journal's tag prefix is 'missing', not 8 hex digits: its meta table was damaged",
        ),
    ],
)
def test_a_damaged_meta_is_refused(tmp_path, name, sql, params, why):
    path = damaged(tmp_path, name, *sql, params=params)
    with pytest.raises(JournalError) as e:
        Journal(path, "t")
    assert str(e.value).startswith(f"{path}: {why}")
    assert str(e.value).endswith(AFRESH)


@pytest.mark.parametrize(
    ("name", "kind", "raw", "why"),
    [
        ("unknown", "Vanished", body(tag="x"), "record 2: unknown kind 'Vanished'"),
        (
            "short",
            "Sent",
            body(tag="x.0", job_id=0),
            "record 2 (Sent) is damaged: TypeError: Sent.__init__() missing 3 required "
            "positional arguments: 'jobber', 'deadline', and 'machine'",
        ),
        (
            "long",
            "Sent",
            body(**SENT, extra=1),
            "record 2 (Sent) is damaged: TypeError: Sent.__init__() got an unexpected "
            "keyword argument 'extra'",
        ),
        (
            "garbage",
            "Sent",
            b"\xc1\xc1\xc1",
            "record 2 (Sent) is damaged: ",
        ),
        (
            "list",
            "Sent",
            msgpack.packb(list(SENT.values())),
            "record 2 (Sent) is damaged: TypeError: ",
        ),
        (
            "typed",
            "Sent",
            body(**{**SENT, "deadline": "soon"}),
            "record 2 (Sent) is damaged: its deadline is a str, not float",
        ),
        (
            "bool",
            "Sent",
            body(**{**SENT, "job_id": True}),
            "record 2 (Sent) is damaged: its job_id is a bool, not int",
        ),
        (
            "at",
            "Sent",
            body(**SENT, at="soon"),
            "record 2 (Sent) is damaged: its at is a str, not float | None",
        ),
        (
            "args",
            "Drawn",
            body(job_id=1, digest="d", args=["a", 2]),
            "record 2 (Drawn) is damaged: its args is a tuple, not tuple[str, ...] | None",
        ),
    ],
)
def test_a_damaged_record_is_refused_naming_it(tmp_path, name, kind, raw, why):
    path = damaged(
        tmp_path, name, "INSERT INTO records (kind, body) VALUES (?, ?)", params=(kind, raw)
    )
    j = Journal(path, "t")  # records are read as they are replayed
    with pytest.raises(JournalError) as e:
        list(j.records())
    assert str(e.value).startswith(f"{path}: {why}")
    assert str(e.value).endswith(AFRESH)
    j.close()


def test_a_file_that_is_not_a_journal_is_refused(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database at all" * 100)
    before = junk.read_bytes()
    with pytest.raises(JournalError) as e:
        Journal(junk, "t")
    assert str(e.value) == (
        f"{junk}: not a usable journal: file is not a database: it was damaged, or is not "
        f"a journal: {AFRESH}"
    )
    assert junk.read_bytes() == before
    scribbled = damaged(tmp_path, "scribbled")
    raw = bytearray(scribbled.read_bytes())
    raw[100:4096] = b"\xff" * (4096 - 100)  # over the first page
    scribbled.write_bytes(bytes(raw))
    with pytest.raises(JournalError) as e:
        Journal(scribbled, "t")
    assert str(e.value).startswith(
        f"{scribbled}: not a usable journal: database disk image is malformed: it was damaged"
    )


def test_a_missing_record_is_refused(tmp_path):
    path = tmp_path / "gap.sqlite"
    j = Journal(path, "t")
    for rec in drawn(4):  # a turn (a row) each
        j.append([rec])
    j.close()
    db = sqlite3.connect(path)
    db.execute("DELETE FROM records WHERE seq = 2")
    db.commit()
    db.close()
    j = Journal(path, "t")
    with pytest.raises(JournalError) as e:
        list(j.records())
    assert str(e.value) == (
        f"{path}: the records' row 2 is missing (the next is 3): the journal was damaged: {AFRESH}"
    )
    j.close()
    old = tmp_path / "old-gap.sqlite"  # rows of schema 2: a record each, named as such
    j = Journal(old, "t")
    j._db.executemany(
        "INSERT INTO records (kind, body) VALUES (?, ?)",
        [("Drawn", body(job_id=i, digest=f"{i:064x}")) for i in (0, 1, 2)],
    )
    j._db.execute("DELETE FROM records WHERE seq = 2")
    with pytest.raises(JournalError) as e:
        list(j.records())
    assert str(e.value) == (
        f"{old}: record 2 is missing (the next is 3): the journal was damaged: {AFRESH}"
    )
    j.close()


# --- records gain optional fields ------------------------------------------------------

# the fields every record had before Drawn.args, Sent.at and Returned.at (HEAD before them)
OLD_FIELDS = {
    "Drawn": ("job_id", "digest"),
    "Sent": ("tag", "job_id", "jobber", "deadline", "machine"),
    "Returned": ("tag", "status", "output", "fuel", "detail"),
}


def scenario(prefix: str) -> list:
    """Records a real core makes for Hi's two jobs: one accepted, one out."""
    core = Core(Hi().jobs(), Policy(), prefix)
    core.refill()
    a = core.bored("jobber-a", 2, 1000, 100.0, machine="10.0.0.1")
    assert core.result("jobber-a", a[0].tag, Status.OK, b"hi\n", 7, "", 101.5) is None
    return core.take_records()


def write_old(path, task_name: str = "hi") -> None:
    """A journal as the dealer wrote it before the optional fields: records of the same
    scenario, packed with the old fields only."""
    j = Journal(path, task_name)
    rows = []
    for rec in scenario(j.tag_prefix):
        kind = type(rec).__name__
        names = OLD_FIELDS.get(kind, rec.__slots__)
        rows.append((kind, body(**{f: getattr(rec, f) for f in names})))
    j._db.executemany("INSERT INTO records (kind, body) VALUES (?, ?)", rows)
    j.close()


def test_new_fields_are_stored_and_unset_ones_are_not(tmp_path):
    path = tmp_path / "j.sqlite"
    j = Journal(path, "hi")
    records = scenario(j.tag_prefix)
    j.append(records)
    j.append([Returned(f"{j.tag_prefix}.1", "abandoned", b"", 0, "lost")])  # at unknown
    assert list(j.records()) == [
        *records,
        Returned(f"{j.tag_prefix}.1", "abandoned", b"", 0, "lost"),
    ]
    drawn0, sent0 = records[0], records[1]
    assert drawn0 == Drawn(0, drawn0.digest, ("0",), 0, None)
    assert sent0.at == 100.0 and records[-1].at == 101.5
    # a turn's records: [code, [fields in declaration order]], nil where unset
    turns = [msgpack.unpackb(b) for (b,) in j._db.execute("SELECT body FROM records")]
    assert turns[0][0] == [0, [0, drawn0.digest, ["0"], 0, None, None]]
    assert turns[0][1][1][5] == 100.0 and turns[1] == [
        [2, [f"{j.tag_prefix}.1", "abandoned", b"", 0, "lost", None]]
    ]
    j.close()
    # a record in a row of its own (as schema 2 wrote them all): unset fields not stored
    assert msgpack.unpackb(pack(drawn0)) == {
        "job_id": 0,
        "digest": drawn0.digest,
        "args": ["0"],
        "stdin_size": 0,
    }
    assert "at" in msgpack.unpackb(pack(sent0)) and "at" not in msgpack.unpackb(
        pack(Returned(f"{j.tag_prefix}.1", "abandoned", b"", 0, "lost"))
    )


def test_an_older_journal_replays_the_same_in_the_dealer_and_in_history(tmp_path):
    old, new = tmp_path / "old.sqlite", tmp_path / "new.sqlite"
    write_old(old)
    j = Journal(new, "hi")
    j.append(scenario(j.tag_prefix))
    j.close()
    loaded = list(Journal(old, "hi").records())
    assert [type(r).__name__ for r in loaded] == ["Drawn", "Sent", "Drawn", "Sent", "Returned"]
    assert all(r.args is None for r in loaded if isinstance(r, Drawn))
    assert all(r.at is None for r in loaded if isinstance(r, Sent | Returned))
    states = []
    for path in (old, new):
        service = Service(Hi(), Journal(path, "hi"), now=200.0, policy=Policy())
        c = service.core
        a = c.jobbers["jobber-a"]
        states.append(
            (c.accepted, c.failed, c.in_flight, c.drawn, a.valid, a.credit, a.held, c.replicas_out)
        )
        nxt = c.bored("jobber-b", 1, 1000, 200.0, machine="10.0.0.2")  # the tags go on
        assert [x.tag for x in nxt] == [f"{service.journal.tag_prefix}.2"]
        service.close()
    assert states[0] == states[1] == (1, 0, 1, 2, 1, 7, 1, 1)
    with ReadOnly(old) as r:
        h = History.of(Policy(), r.tag_prefix, r.records())
    assert h.jobs[0].args is None and h.jobs[0].output == b"hi\n"
    assert h.counts() == {"drawn": 2, "accepted": 1, "failed": 0, "unsettled": 1}


# --- reading a journal without writing ---------------------------------------------------


def files(path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.parent.glob(path.name + "*"))}


def test_a_closed_journal_is_read_without_making_a_wal(tmp_path):
    path = tmp_path / "j.sqlite"
    j = Journal(path, "t")
    j.append(drawn(3))
    j.close()
    before = files(path)
    with ReadOnly(path) as r:
        assert r.meta["state"] == "closed" and r.tag_prefix == meta(path)["tag_prefix"]
        assert list(r.records()) == drawn(3)
        assert r.intact()
    assert files(path) == before  # nothing beside it, nothing changed


def test_a_dealer_opening_a_closed_journal_while_it_is_read_is_noticed(tmp_path):
    path = tmp_path / "j.sqlite"
    Journal(path, "t").close()
    r = ReadOnly(path)
    assert r.intact()
    writer = Journal(path, "t")  # read as immutable, and now it is not
    assert not r.intact()
    r.close()
    writer.append(drawn(2))
    with ReadOnly(path) as again:  # its -wal is there: read as a WAL reader
        assert list(again.records()) == drawn(2) and again.intact()
    writer.close()


def test_a_live_journal_is_read_as_a_snapshot_without_disturbing_its_writer(tmp_path):
    path = tmp_path / "j.sqlite"
    writer = Journal(path, "t")
    writer.append(drawn(2))
    r = ReadOnly(path)
    assert r.meta["state"].startswith("open ")
    writer.append([Drawn(2, f"{2:064x}")])  # not blocked by the reader
    assert list(r.records()) == drawn(2)  # the snapshot it began with
    r.close()
    with ReadOnly(path) as r2:
        assert list(r2.records()) == drawn(3)
    writer.close()  # the reader is gone: the writer closes the journal whole
    assert not wal(path).exists() and meta(path)["state"] == "closed"


def test_a_killed_dealers_journal_is_read_from_its_wal_and_left_as_it_was(tmp_path):
    path = tmp_path / "j.sqlite"
    killed_writer(path, 5)
    before = files(path)
    with ReadOnly(path) as r:
        assert list(r.records()) == drawn(5)
    after = files(path)
    assert after.keys() == before.keys() and after[path.name] == before[path.name]
    assert after[wal(path).name] == before[wal(path).name]  # the log is untouched
    j = Journal(path, "t")  # and the dealer resumes from it
    assert list(j.records()) == drawn(5)
    j.close()


def test_a_journal_that_cannot_be_read_is_refused_and_left_alone(tmp_path):
    missing = tmp_path / "missing.sqlite"
    with pytest.raises(JournalError) as e:
        ReadOnly(missing)
    assert str(e.value) == f"{missing}: no such journal (there is no file there)"
    assert not list(tmp_path.iterdir())
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    with pytest.raises(JournalError, match=re.escape(f"{empty}: the journal is an empty file")):
        ReadOnly(empty)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(JournalError) as e:
        ReadOnly(junk)
    assert str(e.value) == (
        f"{junk}: not a usable journal: file is not a database: it was damaged, or is not a journal"
    )
    lost = tmp_path / "lost.sqlite"
    killed_writer(lost, 2)
    wal(lost).unlink()
    shm(lost).unlink()
    with pytest.raises(JournalError) as e:
        ReadOnly(lost)
    assert str(e.value).startswith(
        f"{lost} was left open (its dealer was killed or crashed) and its write-ahead log "
        "lost.sqlite-wal is not beside it"
    )
    assert "what it shows would miss them" in str(e.value) and AFRESH not in str(e.value)
    gap = damaged(
        tmp_path,
        "gap",
        "INSERT INTO records (seq, kind, body) VALUES (5, 'Overdue', ?)",
        params=(body(tag="x"),),
    )
    with ReadOnly(gap) as r, pytest.raises(JournalError) as e:
        list(r.records())
    assert str(e.value) == (
        f"{gap}: the records' row 2 is missing (the next is 5): the journal was damaged"
    )
    schema = damaged(tmp_path, "schema", "UPDATE meta SET value = '1' WHERE key = 'schema'")
    with pytest.raises(JournalError) as e:
        ReadOnly(schema)
    assert str(e.value).endswith("read it with the borednet that wrote it")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for path in (empty, junk, lost, gap, schema):  # refused again, all left as they were
        with pytest.raises(JournalError), ReadOnly(path) as r:
            list(r.records())
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# --- what the batch is ----------------------------------------------------------------


class Batch:
    """Enough of a task for task_pins."""

    def __init__(self, text: str = "hi\n", limits: Limits | None = None) -> None:
        self.payload = Payload(printing(text), "hi")
        self.limits = limits or Limits(fuel=10**6, memory_mb=16, time_s=5, output_kb=1)


def test_the_payload_and_the_limits_are_pinned(tmp_path):
    path = tmp_path / "j.sqlite"
    first, edited = Batch("hi\n"), Batch("bye\n")
    j = Journal(path, "t")
    j.pins(task_pins(first))
    j.pins(task_pins(first))  # the same: fine
    with pytest.raises(JournalError) as e:
        j.pins(task_pins(edited))
    assert str(e.value) == (
        f"{path}: the payload changed: the journal was written for payload "
        f"{first.payload.sha256}, the task now has {edited.payload.sha256}. The results in "
        "this journal were made under the old payload: replaying them would give a stale "
        f"answer. To resume it, run the batch as it was; {AFRESH} (renamed with the time, "
        f"not deleted); or, {RETRY_HINT}"
    )
    bigger = Batch(limits=Limits(fuel=2 * 10**6, memory_mb=16, time_s=7.5, output_kb=1))
    with pytest.raises(JournalError) as e:
        j.pins(task_pins(bigger))
    assert (
        "the limits changed: the journal was written for limits fuel=1000000 memory_mb=16 "
        "time_s=5.0 output_kb=1, the task now has fuel=2000000 memory_mb=16 time_s=7.5 "
        "output_kb=1 (fuel 1000000 then, 2000000 now; time_s 5.0 then, 7.5 now)"
    ) in str(e.value)
    both = Batch("bye\n", bigger.limits)
    with pytest.raises(JournalError, match="the payload changed: .*; the limits changed: "):
        j.pins(task_pins(both))
    j.close()
    assert meta(path)["payload"] == first.payload.sha256  # refusals record nothing


def test_an_older_journal_gets_its_pins_on_first_open(tmp_path, caplog):
    path = tmp_path / "old.sqlite"
    j = Journal(path, "t")
    j.pin("voting", "redundancy=1", "the voting rules")
    j.close()
    batch = Batch()
    caplog.set_level(logging.INFO, logger="dealer._journal")
    j = Journal(path, "t")  # as an older dealer left it: voting pinned, nothing else
    # a refusal of one pin records none of the others
    pins = {"voting": ("redundancy=2", "the voting rules"), **task_pins(batch)}
    with pytest.raises(JournalError, match="the voting rules changed"):
        j.pins(pins)
    assert "payload" not in dict(j._db.execute("SELECT key, value FROM meta"))
    j.pins(task_pins(batch))
    j.close()
    assert meta(path)["payload"] == batch.payload.sha256
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert (
        f"{path}: the journal has no record of the payload (an older dealer wrote it): "
        f"recording payload {batch.payload.sha256}"
    ) in said
    assert any("has no record of the limits" in m for m in said)
    caplog.clear()
    Journal(path, "t").pins(task_pins(batch))  # recorded: nothing more to say
    assert not [r for r in caplog.records if "no record" in r.getMessage()]


class Hi(Task):
    """Two jobs printing `text`."""

    limits = Limits(fuel=10**6, memory_mb=16, time_s=5, output_kb=1)

    def __init__(self, text: str = "hi\n", limits: Limits | None = None) -> None:
        super().__init__()
        self.payload = Payload(printing(text), "hi")
        if limits is not None:
            self.limits = limits

    def jobs(self):
        return [Job(("0",)), Job(("1",))]


def test_a_dealer_refuses_a_journal_of_another_payload_or_limits(tmp_path):
    path = tmp_path / "d.sqlite"
    hi = sha("hi\n")
    Dealer(Hi(), "tcp://127.0.0.1:*", Journal(path, "hi")).close()
    Dealer(Hi(), "tcp://127.0.0.1:*", Journal(path, "hi")).close()  # the same
    for task, why in (
        (Hi("bye\n"), f"the payload changed: the journal was written for payload {hi}"),
        (Hi(limits=Limits(fuel=10**6, memory_mb=32, time_s=5, output_kb=1)), "memory_mb 16"),
    ):
        journal = Journal(path, "hi")
        with pytest.raises(JournalError, match=re.escape(why)):
            Dealer(task, "tcp://127.0.0.1:*", journal)
        journal.close()
    assert meta(path)["payload"] == hi


def sha(text: str) -> str:
    return hashlib.sha256(printing(text)).hexdigest()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_a_journal_record_takes_every_integer_msgpack_carries_and_no_other() -> None:
    """The journal's bounds are msgpack's (dealer._records), not the wire's caps: from
    -2**63 to 2**64 - 1, both included."""

    def drawn(job_id: int) -> Drawn:
        return Drawn._from_wire({"job_id": job_id, "digest": "d"}, "Drawn")

    for edge in (-(2**63), 2**64 - 1):
        assert drawn(edge).job_id == edge
        assert msgpack.unpackb(msgpack.packb(edge)) == edge  # both carried
    for beyond in (-(2**63) - 1, 2**64):
        with pytest.raises(ProtocolError, match="job_id"):
            drawn(beyond)
