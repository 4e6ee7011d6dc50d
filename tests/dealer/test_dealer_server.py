"""The dealer's journal (real SQLite) and its ZeroMQ server (real sockets, in-process)."""

from __future__ import annotations

import dataclasses
import re
import sqlite3
import threading
import time

import pytest
import zmq

import protocol as p
from dealer import Dealer, Journal, JournalError
from dealer._core import Drawn, Overdue, Returned, Sent
from dealer._service import policy_for
from net._ask import query_status
from net._router import STATUS_BURST
from tasks import Job, Limits, Payload, Task
from tests.helpers import CurveClient, wait_for
from tests.wat import printing


class Collect(Task):
    """Collects outputs of N trivial jobs."""

    limits = Limits(fuel=10**6, memory_mb=16, time_s=5, output_kb=1)
    redundancy = 1

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.payload = Payload(printing("hi\n"), "hi")
        self.outputs: list[tuple[str, bytes]] = []

    def jobs(self):
        return (Job((str(i),)) for i in range(self.n))

    def on_output(self, job, output):
        self.outputs.append((job.args[0], output))

    def result(self):
        return self.outputs


# --- journal -------------------------------------------------------------------


def test_journal_round_trips_records_and_keeps_its_tag_prefix(tmp_path):
    path = tmp_path / "j.sqlite"
    j = Journal(path, "task-a")
    recs = [
        Drawn(0, "ab" * 32),
        Sent(f"{j.tag_prefix}.0", 0, "jobber", 12.5, "127.0.0.1"),
        Returned(f"{j.tag_prefix}.0", "ok", b"\x00\xffbytes", 42, ""),
        Overdue(f"{j.tag_prefix}.1"),
    ]
    j.append(recs[:2])
    j.append(recs[2:])
    prefix = j.tag_prefix
    j.close()
    again = Journal(path, "task-a")
    assert list(again.records()) == recs
    assert again.tag_prefix == prefix
    assert again.count() == 4
    again.close()
    assert Journal(tmp_path / "other.sqlite", "task-a").tag_prefix != prefix


def test_journal_refuses_another_task_and_non_journals(tmp_path):
    path = tmp_path / "j.sqlite"
    Journal(path, "task-a").close()
    with pytest.raises(JournalError, match="journal of task 'task-a', not 'task-b'"):
        Journal(path, "task-b")
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(JournalError, match="not a usable journal"):
        Journal(junk, "task-a")


def test_journal_is_in_wal_mode(tmp_path):
    path = tmp_path / "j.sqlite"
    Journal(path, "t").close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# --- server -----------------------------------------------------------------------


@pytest.fixture
def serving(tmp_path):
    """A dealer for Collect(3) on a free loopback port, run in a thread."""
    task = Collect(3)
    dealer = Dealer(task, "tcp://127.0.0.1:*", Journal(tmp_path / "d.sqlite", "collect"))
    thread = threading.Thread(target=dealer.run, kwargs={"max_s": 30}, daemon=True)
    thread.start()
    client = CurveClient(dealer.address)
    yield dealer, task, client
    client.close()
    dealer.stop()
    thread.join(timeout=35)
    dealer.close()


HOST = p.HostFacts(cpus=2, memory_mb=1024, slots=2)


def test_server_hands_out_jobs_takes_results_and_finishes(serving):
    dealer, task, client = serving
    reply = client.ask(p.Bored(1, "j1", HOST, want=5))
    assert isinstance(reply, p.Jobs) and reply.re == 1
    assert [s.args for s in reply.jobs] == [("0",), ("1",), ("2",)]
    assert list(reply.payloads) == [task.payload.sha256]  # j1 did not have it
    # the task's limits, run with native NaNs (the task is not cross-platform)
    native = dataclasses.replace(Collect.limits, native_nans=True)
    assert all(s.limits == native and s.deadline_s > 0 for s in reply.jobs)
    results = tuple(p.Result(s.tag, p.Status.OK, b"hi\n", 9) for s in reply.jobs)
    ack = client.ask(p.Results(2, "j1", results))
    assert isinstance(ack, p.Ack) and sorted(ack.tags) == sorted(r.tag for r in results)
    assert ack.rejected == ()
    wait_for(lambda: len(task.outputs) == 3, 10, "three outputs delivered to the task")
    assert sorted(task.outputs) == [("0", b"hi\n"), ("1", b"hi\n"), ("2", b"hi\n")]


def test_server_answers_garbage_with_errors_and_keeps_serving(serving):
    dealer, task, client = serving
    bad = client.ask(b"\xc1 not msgpack")
    assert isinstance(bad, p.Error) and bad.code is p.ErrorCode.MALFORMED
    wrong_version = client.ask(b"\x83\xa1v\x07\xa4type\xa5bored\xa2id\x05")
    assert isinstance(wrong_version, p.Error) and "version" in wrong_version.text
    assert wrong_version.re == 5  # the request id is echoed when it can be read
    odd = client.ask(p.Ack(3, ("x",)))
    assert isinstance(odd, p.Error) and odd.code is p.ErrorCode.UNEXPECTED
    # cached payloads are not sent again
    reply = client.ask(p.Bored(4, "j1", p.HostFacts(2, 1024, 2, (task.payload.sha256,)), 1))
    assert isinstance(reply, p.Jobs) and reply.payloads == {}
    # another connection, with its own key, naming j1: the name proves nothing
    mallory = CurveClient(dealer.address)
    try:
        forged = mallory.ask(p.Results(5, "j1", (p.Result(reply.jobs[0].tag, p.Status.OK),)))
    finally:
        mallory.close()
    assert isinstance(forged, p.Ack) and forged.tags == ()
    assert forged.rejected[0].code is p.ErrorCode.UNKNOWN_TAG
    status = client.ask(p.StatusQuery(6))
    assert isinstance(status, p.StatusReply)
    assert status.info["drawn"] == 1 and status.info["accepted"] == 0
    # mallory never got a replica: it is not even remembered
    assert [(j["name"], j["key"]) for j in status.info["jobbers"]] == [("j1", client.key)]


def test_server_keeps_jobbers_without_enough_memory_waiting(serving):
    dealer, task, client = serving
    reply = client.ask(p.Bored(1, "tiny", p.HostFacts(1, 8, 1), want=1))
    assert isinstance(reply, p.RetryLater) and reply.seconds > 0


class BigStdin(Collect):
    """Jobs whose stdin adds up past one frame."""

    def jobs(self):
        return (Job((str(i),), bytes(12 * 1024 * 1024)) for i in range(self.n))


def test_jobs_with_large_stdin_are_split_across_replies(tmp_path):
    task = BigStdin(6)
    journal = Journal(tmp_path / "d.sqlite", "big")
    # a quota above 6, so that only the frame cap splits the replies
    policy = policy_for(task, quota=16)
    dealer = Dealer(task, "tcp://127.0.0.1:*", journal, policy=policy)
    thread = threading.Thread(target=dealer.run, kwargs={"max_s": 30}, daemon=True)
    thread.start()
    client = CurveClient(dealer.address)
    try:
        client.sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_MESSAGE_BYTES)
        got = []
        for rid in (1, 2, 3, 4):
            reply = client.ask(p.Bored(rid, "j", HOST, want=6))
            if isinstance(reply, p.Jobs):
                got += [s.args[0] for s in reply.jobs]
                assert 0 < len(reply.jobs) < 6  # never one oversized frame
        assert sorted(got) == ["0", "1", "2", "3", "4", "5"]
    finally:
        client.close()
        dealer.stop()
        thread.join(timeout=35)
        dealer.close()


def test_journal_refuses_other_voting_rules(tmp_path):
    from dealer._core import Policy

    path = tmp_path / "d.sqlite"
    Dealer(Collect(2), "tcp://127.0.0.1:*", Journal(path, "c")).close()
    same = Dealer(
        Collect(2),
        "tcp://127.0.0.1:*",
        Journal(path, "c"),
        policy=Policy(deadline_s=5.0),
    )  # a new deadline is fine
    same.close()
    with pytest.raises(
        JournalError,
        match="the voting rules changed: the journal was written for voting redundancy=1 "
        "quorum=1 .*, the task now has redundancy=2 quorum=2 .*"
        r"\(redundancy 1 then, 2 now; quorum 1 then, 2 now; max_replicas 5 then, 7 now\)",
    ):
        Dealer(
            Collect(2),
            "tcp://127.0.0.1:*",
            Journal(path, "c"),
            policy=Policy(redundancy=2, quorum=2),
        )


def test_a_damaged_journal_is_refused_and_never_silently_started_over(tmp_path):
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    with pytest.raises(JournalError, match="empty.sqlite: the journal is an empty file"):
        Journal(empty, "t")
    for name, damage, why in (
        ("dropped", "DROP TABLE records", "the journal has no records table"),
        ("wiped", "DELETE FROM meta", "the journal's meta table is empty"),
    ):
        path = tmp_path / f"{name}.sqlite"
        Journal(path, "t").close()
        db = sqlite3.connect(path)
        db.execute(damage)
        db.commit()
        db.close()
        with pytest.raises(JournalError, match=f"{name}.sqlite: {why}"):
            Journal(path, "t")
    scribbled = tmp_path / "scribbled.sqlite"
    j = Journal(scribbled, "t")
    j.append([Drawn(0, "ab" * 32)])
    j.close()
    raw = bytearray(scribbled.read_bytes())
    raw[100:4096] = b"\xff" * (4096 - 100)  # scribble over the first page
    scribbled.write_bytes(bytes(raw))
    with pytest.raises(JournalError, match="scribbled.sqlite"):
        list(Journal(scribbled, "t").records())


def test_status_past_its_ration_is_answered_busy_and_the_cli_waits(serving):
    dealer, task, client = serving
    burst = int(STATUS_BURST)
    # one after another on the work port (more than 4 unread would be dropped): the
    # burst is answered, then "busy" with a wait
    replies = [client.ask(p.StatusQuery(i + 1)) for i in range(burst + 5)]
    pages = [r for r in replies if isinstance(r, p.StatusReply)]
    busy = [r for r in replies if isinstance(r, p.Error)]
    assert burst <= len(pages) < burst + 5 and len(busy) >= 1
    for r in busy:  # as docs/protocol.md spells it
        assert r.code is p.ErrorCode.INTERNAL
        assert re.fullmatch(r"busy: .*; ask again in [0-9]+\.[0-9]+ s", r.text), r.text
    # the plaintext port rations the same source; the command line's client waits its turn
    started = time.monotonic()
    info = query_status(dealer.address.partition("#")[0], timeout_s=5)
    assert info["task"] == "Collect" and time.monotonic() - started > 0.05
    assert info["connections"]["status_refused"] >= len(busy)
