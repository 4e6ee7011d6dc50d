"""End to end, input files: a real `python -m jobber` against a dealer played by hand
(a CurveZMQ ROUTER), which sends jobs that read files and serves their chunks. The
jobber fetches a file's chunks several at once, refuses a corrupted one and takes it
again, keeps the file whole by its hash and reads it from there for a second job without
fetching it again; killed mid-transfer it resumes with the chunks it has; answered
`busy` by the dealer's own ration it waits and asks again, never backing off; a file
over the owner's cap is given back unrun."""

from __future__ import annotations

import hashlib
import random
import time

import protocol as p
from dealer import _fileserver
from net._gate import Ration
from tasks import InputFile, Payload
from tests.helpers import by_hand, fake_dealer, jobber_status, routine, wait_for

CH = p.CHUNK_BYTES
NOTHING = Payload.from_wat('(module (memory (export "memory") 1) (func (export "_start")))')
LIMITS = p.Limits(fuel=10**6, memory_mb=16, time_s=10.0, output_kb=1)


def reader(path: str) -> Payload:
    """A payload that writes the first 16 bytes of its input file at `path` to stdout
    (opened under the preopened `/`, fd 3, read-only)."""
    rel = path.lstrip("/")
    return Payload.from_wat(f"""
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "{rel}")
  (func (export "_start")
    (drop (call $open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const {len(rel)})
      (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 200)))
    (i32.store (i32.const 0) (i32.const 300))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $read (i32.load (i32.const 200)) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 4) (i32.load (i32.const 8)))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
""")


class FileServer:
    """The dealer's side of `fetch`: chunks of the files it serves, each fetch counted."""

    def __init__(self, *files: bytes) -> None:
        self.files = {hashlib.sha256(f).hexdigest(): f for f in files}
        self.asked: list[tuple[str, int]] = []
        self.corrupt: set[tuple[str, int]] = set()  # served wrong once, then right

    def answer(self, msg: p.Fetch) -> p.Message:
        self.asked.append((msg.hash, msg.chunk))
        data = self.files.get(msg.hash)
        if data is None:
            return p.Error(msg.id, p.ErrorCode.UNKNOWN_FILE, "no such file")
        n = p.chunk_count(len(data))
        part = data[msg.chunk * CH : (msg.chunk + 1) * CH]
        digests = tuple(hashlib.sha256(data[i * CH : (i + 1) * CH]).digest() for i in range(n))
        if (msg.hash, msg.chunk) in self.corrupt:
            self.corrupt.discard((msg.hash, msg.chunk))
            part = bytes([part[0] ^ 1]) + part[1:]
        return p.Chunk(msg.id, msg.hash, msg.chunk, len(data), part, digests)

    def chunks(self, sha: str) -> list[int]:
        return sorted(i for s, i in self.asked if s == sha)


def job(tag: str, data: bytes, path: str = "/in/data", payload: Payload = NOTHING) -> p.JobSpec:
    ref = p.FileRef(hashlib.sha256(data).hexdigest(), len(data))
    return p.JobSpec(tag, payload.sha256, (), b"", LIMITS, 60.0, {path: ref})


def test_a_file_comes_in_chunks_several_at_once_is_kept_whole_and_read_again(procs, tmp_path):
    data = random.Random(1).randbytes(9 * 1024 * 1024)  # 3 chunks, the last 1 MiB
    sha = hashlib.sha256(data).hexdigest()
    server = FileServer(data)
    server.corrupt.add((sha, 1))
    router, address = fake_dealer()
    j = procs.jobber("j", address)
    readers = [reader("/in/data"), reader("/other/name")]
    jobs = [job("f.1", data, "/in/data", readers[0]), job("f.2", data, "/other/name", readers[1])]
    results: dict[str, p.Result] = {}
    boreds: list[p.Bored] = []
    held: list[tuple[bytes, p.Fetch]] = []  # chunks 1 and 2 answered once both are out
    most_out = given = 0
    try:
        for ident, msg in by_hand(router, j, timeout_s=90):
            if isinstance(msg, p.Bored):
                boreds.append(msg)
                if jobs and given == len(results):  # one job at a time
                    given += 1
                    spec = jobs.pop(0)
                    wasm = readers[given - 1].wasm
                    reply = p.Jobs(msg.id, (spec,), {spec.payload: wasm})
                else:
                    reply = p.RetryLater(msg.id, 0.2)
                router.send_multipart([ident, p.encode(reply)])
            elif isinstance(msg, p.Fetch):
                held.append((ident, msg))
                most_out = max(most_out, len(held))
                if msg.chunk == 0 or len(held) >= 2 or len(server.asked) >= 3:
                    for who, f in held:
                        router.send_multipart([who, p.encode(server.answer(f))])
                    held.clear()
            else:
                routine(router, ident, msg, results)
            if len(results) == 2:
                break
        files = jobber_status(tmp_path / "data-j")["files"]
        assert [f["hash"] for f in files["held"]] == [sha] and not files["coming"]
    finally:
        router.close()
        j.kill()
    assert set(results) == {"f.1", "f.2"}, j.stderr
    assert all(r.status is p.Status.OK for r in results.values()), results
    # each read the file's own bytes, at its own guest path
    assert [results[t].output for t in ("f.1", "f.2")] == [data[:16]] * 2, results
    # chunk 0 alone first; then 1 and 2 out together; 1 came corrupted and was asked again
    assert server.chunks(sha) == [0, 1, 1, 2], server.asked
    assert server.asked[0] == (sha, 0) and most_out >= 2
    assert "chunk 1 of input file" in j.stderr and "refused" in j.stderr
    kept = tmp_path / "data-j" / "files" / sha
    assert kept.read_bytes() == data  # stored whole, by its hash
    # the second job read the file kept: nothing fetched for it, and asks since name it
    assert boreds[-1].host.files == (sha,)
    assert boreds[-1].host.input_mb == 1024  # --max-input-mb 4096, within --cache-mb 1024
    assert "Traceback" not in j.stderr


def test_a_jobber_killed_mid_transfer_fetches_only_the_missing_chunks(procs, tmp_path):
    data = random.Random(2).randbytes(4 * CH + 100)  # 5 chunks
    sha = hashlib.sha256(data).hexdigest()
    server = FileServer(data)
    router, address = fake_dealer()
    results: dict[str, p.Result] = {}
    j = procs.jobber("j", address)
    try:
        for ident, msg in by_hand(router, j, timeout_s=60):
            if isinstance(msg, p.Bored):
                jobs = p.Jobs(msg.id, (job("r.1", data),), {NOTHING.sha256: NOTHING.wasm})
                router.send_multipart([ident, p.encode(jobs)])
            elif isinstance(msg, p.Fetch):  # the first three answered, the rest never
                router.send_multipart([ident, p.encode(server.answer(msg))])
                if len(server.asked) == 3:
                    break
        wait_for(lambda: _have(tmp_path / "data-j") == 3, 30, "three chunks kept")
        j.kill()  # mid-transfer: 3 chunks of 5 kept
        answered = set(server.chunks(sha))
        while router.poll(500):  # what the killed jobber sent before it died is stale
            router.recv_multipart()
        server.asked.clear()
        j = procs.jobber("j", address, log="j-again")
        for ident, msg in by_hand(router, j, timeout_s=60):
            if isinstance(msg, p.Bored):  # the dealer sends the job again (it was lost)
                jobs = p.Jobs(msg.id, (job("r.1", data),), {NOTHING.sha256: NOTHING.wasm})
                router.send_multipart([ident, p.encode(jobs)])
            elif isinstance(msg, p.Fetch):
                router.send_multipart([ident, p.encode(server.answer(msg))])
            else:
                routine(router, ident, msg, results)
            if "r.1" in results:
                break
    finally:
        router.close()
        j.kill()
    assert 0 in answered and len(answered) == 3
    # the restarted jobber re-checked what it had and asked only for the rest, once each
    assert server.chunks(sha) == sorted(set(range(5)) - answered), (answered, server.asked)
    assert (tmp_path / "data-j" / "files" / sha).read_bytes() == data
    assert "chunks kept from an earlier run" in j.stderr
    assert results["r.1"].status is p.Status.OK, results


def _have(data_dir) -> int:
    """Chunks the jobber says it has of the file coming (its status), 0 if none."""
    try:
        coming = jobber_status(data_dir)["files"]["coming"]
    except (TimeoutError, RuntimeError, OSError, KeyError):
        return 0
    return max((c["have"] for c in coming), default=0)


def test_a_file_past_the_dealers_fetch_ration_comes_whole_and_busy_is_no_failure(procs):
    """The dealer's own fetch rationing (dealer._fileserver), its burst lowered to 2 so a
    small file passes it: the jobber's 8 fetches out are answered `busy` past the burst,
    and it asks again when each says. A busy counted as a failed contact would back the
    dealer off for a minute at least (--min-backoff 60 here, as a lender's): it would
    not finish in time."""
    table = InputFile.from_bytes(random.Random(3).randbytes(5 * CH + 7))  # 6 chunks
    server = _fileserver.FileServer()
    server.ration = Ration(8.0, 2.0, 100.0, 100.0)  # 8 a second after a burst of 2
    peer = p.Peer("aa" * 32, "127.0.0.1")
    router, address = fake_dealer()
    backoff = ("--min-backoff", "60", "--max-backoff", "600")
    j = procs.jobber("j", address, extra=backoff)
    spec = p.JobSpec("b.1", NOTHING.sha256, (), b"", LIMITS, 60.0, {"/in/t": table.ref})
    results: dict[str, p.Result] = {}
    replies: list[p.Message] = []
    try:
        for ident, msg in by_hand(router, j, timeout_s=40):
            if isinstance(msg, p.Bored):
                if replies or results:
                    reply = p.RetryLater(msg.id, 0.2)
                else:
                    reply = p.Jobs(msg.id, (spec,), {NOTHING.sha256: NOTHING.wasm})
                    replies.append(reply)
            elif isinstance(msg, p.Fetch):
                server.turn()
                reply = server.fetch(msg, time.monotonic(), peer, {table.sha256: table}.get)
                replies.append(reply)
            else:
                routine(router, ident, msg, results)
                if "b.1" in results:
                    break
                continue
            router.send_multipart([ident, p.encode(reply)])
    finally:
        router.close()
        j.kill()
    busy = [r for r in replies if isinstance(r, p.Error)]
    assert results["b.1"].status is p.Status.OK, (results, j.stderr)
    assert busy and all(r.code is p.ErrorCode.BUSY and r.retry_s for r in busy), busy
    assert server.fetches == 6 and server.busy == len(busy)  # each chunk served once
    assert "failure" not in j.stderr and "refused" not in j.stderr, j.stderr


def test_a_file_over_the_owners_cap_is_given_back_unrun(procs):
    data = b"x" * (9 * 1024 * 1024)
    router, address = fake_dealer()
    j = procs.jobber("j", address, extra=("--max-input-mb", "8"))
    results: dict[str, p.Result] = {}
    fetched = 0
    given = False
    try:
        for ident, msg in by_hand(router, j, timeout_s=40):
            if isinstance(msg, p.Bored):
                assert msg.host.input_mb == 8
                if not given:
                    jobs = p.Jobs(msg.id, (job("big", data),), {NOTHING.sha256: NOTHING.wasm})
                    given = True
                else:
                    jobs = p.RetryLater(msg.id, 1.0)
                router.send_multipart([ident, p.encode(jobs)])
            elif isinstance(msg, p.Fetch):
                fetched += 1
            else:
                routine(router, ident, msg, results)
            if "big" in results:
                break
    finally:
        router.close()
        j.kill()
    result = results["big"]
    assert result.status is p.Status.ABANDONED and fetched == 0
    assert "input files" in result.detail and "8 MiB" in result.detail, result.detail
