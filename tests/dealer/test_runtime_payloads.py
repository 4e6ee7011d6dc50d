"""A task whose payload is a pinned runtime (Payload.python: 104.5 MB, over the wire's
payload cap), served by the dealer's service driven directly (a real SQLite journal):
its jobs go only to jobbers whose host.cached lists the runtime, the others are asked to
prepare it (retry_later.runtimes) and may fetch it and its library before any job, and
each job's args start with the script. One dealer process in
tests/e2e/test_dealer_runtimes.py. Nothing here compiles or runs the runtime."""

from __future__ import annotations

import hashlib

import pytest

import protocol as p
from dealer._core import Policy, unsendable
from dealer._journal import Journal
from dealer._service import RETRY_IDLE_S, RETRY_RUNTIME_S, Peer, Service
from protocol import CHUNK_BYTES, MAX_STR
from protocol._runtimes import PYTHON
from protocol._wire import MAX_ARGS
from tasks import Job, Payload, Task
from tests.task_files.python_echo import JOBS, NAME, SCRIPT, PythonEcho

STDLIB = "/usr/local/lib/python315.zip"
SCRIPT_PATH = f"/task/{NAME}.py"
ALICE = Peer("aa" * 32, "127.0.0.2")


@pytest.fixture(scope="module")
def payload() -> Payload:
    """The Python payload of tests/task_files/python_echo.py, built once: the runtime's
    files are read from the user's cache (fetched once per machine)."""
    return Payload.python(source=SCRIPT, name=NAME)


class Echo(PythonEcho):
    """PythonEcho with a payload built once, and jobs of its own if given."""

    def __init__(self, payload: Payload, jobs: list[Job] | None = None) -> None:
        Task.__init__(self)
        self.payload = payload
        self.outputs = []
        self._jobs = jobs

    def jobs(self):
        return iter(self._jobs) if self._jobs is not None else super().jobs()


def service(tmp_path, task: Task, name: str = "j", **policy) -> Service:
    journal = Journal(tmp_path / f"{name}.sqlite", "Echo")
    return Service(task, journal, now=0.0, policy=Policy(**policy))


def bored(
    s: Service,
    peer: Peer,
    now: float,
    *,
    cached: tuple[str, ...] = (),
    input_mb: int | None = 64,
    memory_mb: int = 1024,
    want: int = 2,
) -> p.Message:
    host = p.HostFacts(1, memory_mb, 1, cached, input_mb=input_mb)
    s.tick(now)
    reply = s.handle(p.Bored(1, "j", host, want), now, peer)
    s.commit()
    return reply


def fetch(s: Service, peer: Peer, sha: str, chunk: int, now: float) -> p.Message:
    s.tick(now)
    return s.handle(p.Fetch(7, sha, chunk), now, peer)


def sent(s: Service) -> list:
    return [r for r in s.journal.records() if type(r).__name__ == "Sent"]


def test_a_jobber_without_the_runtime_is_asked_to_prepare_it_and_gets_no_job(tmp_path, payload):
    s = service(tmp_path, Echo(payload))
    reply = bored(s, ALICE, 0.0)
    assert isinstance(reply, p.RetryLater), reply
    assert reply.runtimes == (PYTHON.sha256,)
    assert reply.seconds == RETRY_RUNTIME_S == 10.0  # docs/dealer.md, "Runtimes"
    assert "runtime python" in reply.reason and PYTHON.sha256[:12] in reply.reason
    assert reply.more is None  # a jobber that never prepares it may go idle
    # the core was not asked: nothing sent, no job out, nothing held for this jobber
    assert sent(s) == [] and s.core.replicas_out == 0
    assert s.core.jobbers[ALICE.key].held == 0
    assert "jobbers asked to prepare the runtime python: 1" in s.status(0.0)["waiting"]
    # once it lists the runtime in host.cached, it gets jobs, and is no longer waited on
    assert isinstance(bored(s, ALICE, 1.0, cached=(PYTHON.sha256,)), p.Jobs)
    assert not any("prepare" in w for w in s.status(1.0)["waiting"])
    s.close()


def test_a_jobber_holding_the_runtime_gets_its_jobs_without_its_bytes(tmp_path, payload):
    s = service(tmp_path, Echo(payload))
    reply = bored(s, ALICE, 0.0, cached=(PYTHON.sha256,), want=JOBS)
    assert isinstance(reply, p.Jobs), reply
    assert reply.payloads == {}
    stdlib_sha, stdlib_size = PYTHON.files[STDLIB]
    script = SCRIPT.encode()
    files = {
        STDLIB: p.FileRef(stdlib_sha, stdlib_size),
        SCRIPT_PATH: p.FileRef(hashlib.sha256(script).hexdigest(), len(script)),
    }
    assert [spec.args for spec in reply.jobs] == [(SCRIPT_PATH, str(i)) for i in range(2)]
    for spec in reply.jobs:
        assert spec.payload == PYTHON.sha256 and spec.files == files
    assert len(p.encode(reply)) < 64 * 1024  # no payload bytes on the wire
    # the journal keeps each job's own arguments, as for any task
    drawn = [tuple(r.args) for r in s.journal.records() if type(r).__name__ == "Drawn"]
    assert drawn[:2] == [("0",), ("1",)]
    s.close()


def test_a_jobber_that_cannot_run_the_jobs_is_not_asked_to_prepare_the_runtime(tmp_path, payload):
    """Its input files (the 51 MiB library) and its memory are read first: a runtime of
    100 MB and minutes of compiling is asked for only where its jobs could then go."""
    s = service(tmp_path, Echo(payload))
    for kwargs in ({"input_mb": None}, {"input_mb": 8}, {"memory_mb": 64}):
        reply = bored(s, ALICE, 0.0, **kwargs)
        assert isinstance(reply, p.RetryLater), (kwargs, reply)
        assert reply.seconds == RETRY_IDLE_S and reply.runtimes is None, (kwargs, reply)
    assert sent(s) == []
    s.close()


def test_the_runtime_and_its_library_are_served_by_fetch_before_any_job(tmp_path, payload):
    s = service(tmp_path, Echo(payload))
    assert isinstance(bored(s, ALICE, 0.0), p.RetryLater)  # asked to prepare it: no job
    # the module, by its hash: chunk 0 with every digest, and the short last chunk
    first = fetch(s, ALICE, PYTHON.sha256, 0, 1.0)
    assert isinstance(first, p.Chunk), first
    last_index = (PYTHON.size - 1) // CHUNK_BYTES
    assert (first.size, len(first.digests)) == (PYTHON.size, last_index + 1)
    assert hashlib.sha256(first.data).digest() == first.digests[0]
    last = fetch(s, ALICE, PYTHON.sha256, last_index, 2.0)
    assert isinstance(last, p.Chunk), last
    assert len(last.data) == PYTHON.size - last_index * CHUNK_BYTES
    assert hashlib.sha256(last.data).digest() == first.digests[last_index]
    past = fetch(s, ALICE, PYTHON.sha256, last_index + 1, 3.0)
    assert isinstance(past, p.Error) and past.code is p.ErrorCode.UNEXPECTED
    # the library and the script, which every job names
    stdlib_sha, stdlib_size = PYTHON.files[STDLIB]
    lib = fetch(s, ALICE, stdlib_sha, 0, 4.0)
    assert isinstance(lib, p.Chunk) and lib.size == stdlib_size
    assert hashlib.sha256(lib.data).digest() == lib.digests[0]
    script = fetch(s, ALICE, hashlib.sha256(SCRIPT.encode()).hexdigest(), 0, 5.0)
    assert isinstance(script, p.Chunk) and script.data == SCRIPT.encode()
    assert s.status(5.0)["fetches"] == 4
    # a denied identity fetches none of it
    s.core.deny(ALICE.key, "test", 6.0)
    denied = fetch(s, ALICE, PYTHON.sha256, 0, 6.0)
    assert isinstance(denied, p.Error) and denied.code is p.ErrorCode.DENIED
    s.close()


def test_a_job_past_the_args_cap_with_the_script_fails_as_it_is_drawn(tmp_path, payload):
    """MAX_ARGS arguments fit a job alone, not behind the script's path."""
    jobs = [Job(("a",) * MAX_ARGS), Job(("ok",))]
    task = Echo(payload, jobs)
    s = service(tmp_path, task)
    reply = bored(s, ALICE, 0.0, cached=(PYTHON.sha256,))
    s.after_turn(0.0)
    assert isinstance(reply, p.Jobs) and [j.args for j in reply.jobs] == [(SCRIPT_PATH, "ok")]
    (failure,) = task.failures
    assert (
        "1,025 arguments (1 of them the payload's), over the wire's cap of 1,024"
        in (failure.reasons[0])
    )
    s.close()


def test_the_payloads_arguments_count_against_the_wires_caps():
    script = ("/task/x.py",)
    assert unsendable(Job(("a",) * MAX_ARGS)) is None
    assert unsendable(Job(("a",) * (MAX_ARGS - 1)), argv=script) is None
    assert unsendable(Job(("a",) * MAX_ARGS), argv=script) == (
        "1,025 arguments (1 of them the payload's), over the wire's cap of 1,024"
    )
    long = "x" * (MAX_STR + 1)
    assert unsendable(Job(("a", long)), argv=script) == (
        "argument 1 of 4,097 characters, over the wire's cap of 4,096"
    )
    assert unsendable(Job(("a",)), argv=(long,)) == (
        "the payload's argument 0 of 4,097 characters, over the wire's cap of 4,096"
    )
    # the message estimate counts them: 10 bytes and a 5-byte header past a job that fit
    job = Job(("ab",))
    fits = p.MAX_MESSAGE_BYTES - 7 - 64 * 1024
    assert unsendable(job, payload_bytes=fits) is None
    assert unsendable(job, payload_bytes=fits - 15, argv=script) is None
    assert unsendable(job, payload_bytes=fits - 14, argv=script).startswith("a jobs message")


def test_a_runtime_payload_needs_its_library_and_serves_its_module_from_its_bytes(
    tmp_path, payload
):
    bare = Payload(payload.wasm, "bare", {}, payload.argv)
    assert bare.runtime is PYTHON
    with pytest.raises(ValueError, match="python payload without its file /usr/local/lib/"):
        service(tmp_path, Echo(bare), "bare")
    # made by hand with its files but no module_file: the module is served from its bytes
    by_hand = Payload(payload.wasm, "by_hand", payload.files, payload.argv)
    s = service(tmp_path, Echo(by_hand))
    first = fetch(s, ALICE, PYTHON.sha256, 0, 0.0)
    assert isinstance(first, p.Chunk) and first.digests == payload.module_file.digests
    s.close()


def test_a_python_batch_is_replayed_from_its_journal(tmp_path, payload):
    s = service(tmp_path, Echo(payload))
    jobs = bored(s, ALICE, 0.0, cached=(PYTHON.sha256,))
    results = tuple(p.Result(j.tag, p.Status.OK, j.args[1].encode(), 5) for j in jobs.jobs)
    ack = s.handle(p.Results(2, "j", results), 0.0, ALICE)
    s.commit()
    s.after_turn(0.0)
    assert isinstance(ack, p.Ack) and len(ack.tags) == 2
    s.close()
    task = Echo(payload)
    again = service(tmp_path, task)  # the same payload, script and jobs: no mismatch
    assert (again.core.accepted, task.outputs) == (2, [b"0", b"1"])
    last = bored(again, ALICE, 1.0, cached=(PYTHON.sha256,))
    assert [j.args for j in last.jobs] == [(SCRIPT_PATH, "2")]
    again.close()
