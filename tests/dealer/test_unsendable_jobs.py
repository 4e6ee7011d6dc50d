"""A job that can never be sent fails where it is drawn: the dealer's core and service
driven directly (a real SQLite journal) and a journal replayed; one batch end to end in
tests/e2e/test_unsendable_jobs.py."""

from __future__ import annotations

import hashlib
import re

import msgpack

import protocol as p
from dealer import _core
from dealer._core import Core, Drawn, Failed, Policy, unsendable
from dealer._history import History
from dealer._journal import Journal
from dealer._policy import files_digest, job_digest, refusal
from dealer._service import Peer, Service, policy_for
from protocol._wire import MAX_ARGS, MAX_OUTPUT_BYTES, MAX_STDIN_BYTES
from tasks import InputFile, Job
from tests.helpers import ROOT
from tests.task_files.oversize import BIG, JOBS, Oversize

MiB = 1024 * 1024


def core_of(jobs: list[Job], payload_bytes: int = 0) -> Core:
    return Core(iter(jobs), Policy(backups=0, deadline_s=100.0), "t", payload_bytes=payload_bytes)


# --- the rule --------------------------------------------------------------------------


def test_each_cap_of_one_job_at_the_cap_and_one_past_it():
    assert unsendable(Job(("a",) * MAX_ARGS, b"\0" * MAX_STDIN_BYTES)) is None
    assert unsendable(Job(stdin=b"\0" * (MAX_STDIN_BYTES + 1))) == (
        "stdin of 16,777,217 bytes, over the wire's cap of 16,777,216 bytes"
    )
    assert unsendable(Job(("a",) * (MAX_ARGS + 1))) == (
        "1,025 arguments, over the wire's cap of 1,024"
    )
    assert unsendable(Job(("x" * p.MAX_STR,))) is None
    assert unsendable(Job(("", "x" * (p.MAX_STR + 1)))) == (
        "argument 1 of 4,097 characters, over the wire's cap of 4,096"
    )
    assert "argument 0 is not valid Unicode text" in unsendable(Job(("\udc80",)))
    # each field within its cap, the whole over the message cap with the payload
    wide = Job(("\U0001f600" * p.MAX_STR,) * MAX_ARGS, b"\0" * MAX_STDIN_BYTES)
    assert unsendable(wide) is None  # 48 MiB: fits when the jobber has the payload
    why = unsendable(wide, payload_bytes=p.MAX_PAYLOAD_BYTES)
    assert why.startswith("a jobs message of about ") and "over the wire's cap of 67,108,864" in why


def test_the_message_estimate_to_the_byte():
    """The estimate of a `jobs` message: the payload, the stdin, each argument's UTF-8
    and its 5-byte header, and JOB_MESSAGE_OVERHEAD; at the cap it passes, a byte over
    it does not."""
    job = Job(("ab", "\u00e9"), b"xyz")  # arguments of 2 and 2 bytes: 14 with headers
    fits = p.MAX_MESSAGE_BYTES - 3 - 14 - 64 * 1024
    assert unsendable(job, payload_bytes=fits) is None
    assert unsendable(job, payload_bytes=fits + 1) == (
        f"a jobs message of about {p.MAX_MESSAGE_BYTES + 1:,} bytes with the payload, over "
        f"the wire's cap of {p.MAX_MESSAGE_BYTES:,} bytes (stdin 3, arguments 14, payload "
        f"{fits + 1:,})"
    )


def test_the_message_estimate_with_input_files_to_the_byte():
    """Each input file adds its guest path and 128 bytes (a FileRef with its field
    names, with room to spare) to the estimate, beside the stdin and arguments."""
    job = Job(("ab",), b"xyz")  # 3 of stdin, 7 of argument with its header
    files = {"/input/a": InputFile.from_bytes(b"1"), "/task/bb": InputFile.from_bytes(b"22")}
    fits = p.MAX_MESSAGE_BYTES - 3 - 7 - (8 + 128) * 2 - 64 * 1024
    assert unsendable(job, payload_bytes=fits, files=files) is None
    assert unsendable(job, payload_bytes=fits + 1, files=files) == (
        f"a jobs message of about {p.MAX_MESSAGE_BYTES + 1:,} bytes with the payload, over "
        f"the wire's cap of {p.MAX_MESSAGE_BYTES:,} bytes (stdin 3, arguments 7, input "
        f"files 272, payload {fits + 1:,})"
    )


def test_a_job_names_at_most_max_job_files_input_files():
    one = InputFile.from_bytes(b"x")
    files = {f"/input/f{i}": one for i in range(p.MAX_JOB_FILES)}
    assert p.MAX_JOB_FILES == 256
    assert unsendable(Job(), files=files) is None
    files["/input/one-more"] = one
    assert unsendable(Job(), files=files) == "257 input files, over the wire's cap of 256"


def test_a_jobs_digest_pins_its_args_stdin_and_input_files():
    """The journal pins each job by this digest (a task changed since it was written is
    refused on resume): a job without files keeps the digest it had before files
    existed, and any change to a file's content, a file's name or the task's files
    changes a job's."""
    plain = Job(("a", "b"), b"in")
    assert job_digest(plain) == hashlib.sha256(msgpack.packb([["a", "b"], b"in"])).hexdigest()
    x, y = InputFile.from_bytes(b"x"), InputFile.from_bytes(b"y")
    with_x = Job(("a", "b"), b"in", {"data": x})
    digests = {
        job_digest(plain),
        job_digest(with_x),
        job_digest(Job(("a", "b"), b"in", {"data": y})),  # another content
        job_digest(Job(("a", "b"), b"in", {"other": x})),  # another name
        job_digest(plain, files_digest({"/task/t": x})),  # the task's files
        job_digest(with_x, files_digest({"/task/t": x})),
        job_digest(with_x, files_digest({"/task/t": y})),
    }
    assert len(digests) == 7 and all(re.fullmatch("[0-9a-f]{64}", d) for d in digests)
    assert job_digest(with_x) == job_digest(Job(("a", "b"), b"in", {"data": x}))


def test_the_task_files_digest_is_empty_for_none_and_ignores_their_order():
    x, y = InputFile.from_bytes(b"x"), InputFile.from_bytes(b"y")
    assert files_digest({}) == ""
    one = files_digest({"/task/a": x, "/task/b": y})
    assert re.fullmatch("[0-9a-f]{64}", one)
    assert files_digest({"/task/b": y, "/task/a": x}) == one
    assert files_digest({"/task/a": y, "/task/b": x}) != one
    assert files_digest({"/task/a": x, "/task/c": y}) != one


def test_a_refusal_names_the_job_by_its_first_arguments():
    why = "stdin over the cap"
    eight, nine = Job(tuple("abcdefgh")), Job(tuple("abcdefghi"))
    assert refusal(7, eight, why) == (
        "job 7 (args a b c d e f g h) can never be sent: stdin over the cap; "
        "see 'Limits of one job' in docs/writing-tasks.md"
    )
    assert refusal(7, nine, why).startswith("job 7 (args a b c d e f g h ...) can never")
    assert refusal(0, Job(("x" * 300,)), why).startswith(f"job 0 (args {'x' * 200}) can")
    assert refusal(0, Job(), why).startswith("job 0 (args (none)) can never be sent")


def test_a_job_passing_the_rule_encodes_under_the_cap():
    job = Job(("x" * p.MAX_STR,) * 100, b"\0" * MAX_STDIN_BYTES)
    payload = b"\0" * (p.MAX_PAYLOAD_BYTES - 100 * MiB // 100)
    assert unsendable(job, len(payload)) is None
    spec = p.JobSpec("t.0", "ab" * 32, job.args, job.stdin, p.Limits(), 100.0)
    assert len(p.encode(p.Jobs(1, (spec,), {"ab" * 32: payload}))) <= p.MAX_MESSAGE_BYTES


# --- the core ----------------------------------------------------------------------------


def test_the_core_fails_an_unsendable_job_as_it_draws_it_and_goes_on():
    big = Job(("1",), b"\0" * (MAX_STDIN_BYTES + 1))
    core = core_of([Job(("0",)), big, Job(("2",))])
    got = core.bored("a", 5, 1000, now=0.0)
    assert [a.job.args for a in got] == [("0",), ("2",)]
    [failed] = core.take_settled()
    assert isinstance(failed, Failed) and failed.job_id == 1 and failed.job is big
    assert failed.reasons == (
        "job 1 (args 1) can never be sent: stdin of 16,777,217 bytes, over the wire's cap "
        "of 16,777,216 bytes; see 'Limits of one job' in docs/writing-tasks.md",
    )
    assert core.failed == 1 and core.in_flight == 2
    records = core.take_records()
    drawn = [r for r in records if isinstance(r, Drawn)]
    assert [r.refused is not None for r in drawn] == [False, True, False]
    assert not any(isinstance(r, _core.Sent) and r.job_id == 1 for r in records)
    for a in got:
        assert core.result("a", a.tag, p.Status.OK, b"", 0, "", now=1.0) is None
    assert len(core.take_settled()) == 2
    core.refill()
    assert core.finished()

    # replayed from its records, a fresh core reaches the same state
    again = core_of([Job(("0",)), big, Job(("2",))])
    for rec in records:
        again.apply(rec)
    [refailed] = again.take_settled()
    assert refailed.reasons == failed.reasons and again.failed == 1


def test_a_draw_goes_past_a_bounded_run_of_unsendable_jobs(monkeypatch):
    monkeypatch.setattr(_core, "REFUSED_PER_DRAW", 3)
    big = b"\0" * (MAX_STDIN_BYTES + 1)
    core = core_of([Job((str(i),), big) for i in range(7)] + [Job(("ok",))])
    assert core.bored("a", 1, 1000, now=0.0) == []  # three failed, then the turn ends
    assert core.failed == 3 and core.has_work()
    assert core.bored("a", 1, 1000, now=0.0) == []
    [a] = core.bored("a", 1, 1000, now=0.0)
    assert a.job.args == ("ok",) and core.failed == 7


def test_a_history_replays_an_unsendable_job_as_failed():
    core = core_of([Job(("0",), b"\0" * (MAX_STDIN_BYTES + 1)), Job(("1",))])
    core.bored("a", 2, 1000, now=0.0)
    h = History.of(core.policy, "t", core.take_records())
    assert h.counts()["failed"] == 1
    [j] = h.select(["failed"])
    assert j.job_id == 0 and "can never be sent" in j.reasons[0] and j.replicas == []


# --- the service, with a journal --------------------------------------------------------


def serve(tmp_path, task: Oversize) -> Service:
    journal = Journal(tmp_path / "j.sqlite", "Oversize")
    return Service(task, journal, now=0.0, policy=policy_for(task, quota=16))


def test_the_service_sends_the_rest_and_a_restart_replays_the_failure(tmp_path):
    task = Oversize()
    s = serve(tmp_path, task)
    peer = Peer("aa" * 32, "127.0.0.2")
    reply = s.handle(p.Bored(1, "j", p.HostFacts(4, 1024, 4), 8), 0.0, peer)
    s.commit()
    assert isinstance(reply, p.Jobs)
    assert [j.args[0] for j in reply.jobs] == [str(i) for i in range(JOBS) if i != BIG]
    assert len(p.encode(reply)) < MiB  # the reply can be sent
    results = tuple(p.Result(j.tag, p.Status.OK, b"", 0) for j in reply.jobs)
    s.handle(p.Results(2, "j", results), 1.0, peer)
    s.commit()
    s.after_turn(1.0)
    assert s.finished()
    [failure] = task.failures
    assert failure.job.args == (str(BIG),) and "can never be sent: stdin of" in failure.reasons[0]
    assert len(task.settled) == JOBS - 1
    s.close()

    again = Oversize()
    s = serve(tmp_path, again)  # the journal replayed into a fresh task
    assert [f.reasons for f in again.failures] == [failure.reasons]
    assert sorted(again.settled) == sorted(task.settled)
    s.close()


# --- the caps as docs/writing-tasks.md states them ----------------------------------------


def _limits_table() -> dict[str, str]:
    text = (ROOT / "docs" / "writing-tasks.md").read_text()
    section = text.split("## Limits of one job", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (.+?) \| (.+?) \|$", section, re.M)
    return {what: cap for what, cap in rows if what not in ("what", "---")}


def _numbers(cap: str) -> list[int]:
    return [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", cap)]


def test_the_limits_of_one_job_in_the_docs_are_the_code_s():
    table = _limits_table()
    assert _numbers(table["`Job.stdin`"]) == [MAX_STDIN_BYTES // MiB, MAX_STDIN_BYTES]
    assert _numbers(table["`Job.args`, how many"]) == [MAX_ARGS]
    assert _numbers(table["`Job.args`, each"]) == [p.MAX_STR]
    payload = p.MAX_PAYLOAD_BYTES
    assert _numbers(table["the payload module"]) == [payload // MiB, payload]
    together = _numbers(table["a job's stdin, args and the payload together"])
    frame, overhead = p.MAX_MESSAGE_BYTES, _core.JOB_MESSAGE_OVERHEAD
    assert together == [frame // MiB, frame, overhead // 1024]
    output = MAX_OUTPUT_BYTES
    assert _numbers(table["the output of one job"]) == [output // MiB, output]
    assert len(table) == 6  # a cap added to the code belongs in the table too
