"""End to end, input files from the dealer's side: a real dealer process serving
tests/task_files/inputs.py, and a client written here from docs/protocol.md (zmq,
CurveZMQ and msgpack, as tests/wrong_jobber.py): it gets jobs with `files` only when its
`host.input_mb` holds them, fetches every chunk of a 9 MiB file with eight fetches out
at once, checks each against chunk 0's digests and the whole against its hash, and is
refused `unknown_file` and past-the-end chunks with the codes the doc gives.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import pytest
import zmq
from zmq.utils import z85

from net._router import DEALER_SNDHWM
from tests import flood
from tests import wrong_jobber as wire
from tests.helpers import free_port, wait_status
from tests.task_files.inputs import own_file

TASK = "../tests/task_files/inputs.py"  # relative to examples/
MiB = 1 << 20
CHUNK = 4 * MiB  # CHUNK_BYTES, as docs/protocol.md gives it
TABLE_BYTES = 9 * MiB + 5  # three chunks, the last short


class Client:
    """One identity on one DEALER socket, several requests out at once."""

    def __init__(
        self, ctx: zmq.Context, port: int, key: str, source: str = "127.0.0.1", rcvhwm: int = 1000
    ) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.curve_publickey, self.sock.curve_secretkey = zmq.curve_keypair()
        self.sock.curve_serverkey = z85.encode(bytes.fromhex(key))
        self.sock.connect(f"tcp://{source}:0;127.0.0.1:{port}")
        self.next_id = 1

    def send(self, body: dict[str, Any]) -> int:
        rid, self.next_id = self.next_id, self.next_id + 1
        self.sock.send(wire._frame({**body, "id": rid}))
        return rid

    def replies(self, ids: list[int], timeout_s: float = 60.0) -> dict[int, dict]:
        """The replies to `ids`, by id: every one, or the test fails."""
        got: dict[int, dict] = {}
        deadline = time.monotonic() + timeout_s
        while len(got) < len(ids):
            left = deadline - time.monotonic()
            assert left > 0 and self.sock.poll(int(left * 1000)), f"no reply to {ids}"
            reply = wire.parse_reply(self.sock.recv())
            assert reply is not None
            if reply["re"] in ids:
                got[reply["re"]] = reply
        return got

    def ask(self, body: dict[str, Any]) -> dict:
        rid = self.send(body)
        return self.replies([rid])[rid]

    def bored(self, input_mb: int | None, files: list[str] = ()) -> dict:
        host: dict[str, Any] = {"cpus": 1, "memory_mb": 1024, "slots": 1, "cached": []}
        if input_mb is not None:
            host["input_mb"] = input_mb
        if files:
            host["files"] = list(files)
        return self.ask({"type": "bored", "jobber": "hand", "host": host, "want": 2})

    def fetch(self, sha: str, chunk: int) -> int:
        return self.send({"type": "fetch", "hash": sha, "chunk": chunk})

    def close(self) -> None:
        self.sock.close(linger=0)


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def test_jobs_with_files_go_only_to_jobbers_that_take_them_and_every_chunk_is_served(
    procs, tmp_path, ctx
):
    table = tmp_path / "table.bin"
    table.write_bytes(os.urandom(TABLE_BYTES))
    table_sha = hashlib.sha256(table.read_bytes()).hexdigest()
    port = free_port()
    procs.dealer("dealer", TASK, "--table", str(table), port=port)
    key = wait_status(port, lambda s: True)["key"]
    client = Client(ctx, port, key)
    try:
        # no input_mb: a jobber that takes no files gets none of these jobs, and is told why
        old = client.bored(None)
        assert old["type"] == "retry_later", old
        assert "input files (this jobber takes none)" in old["reason"], old
        # too little room for the 9 MiB table
        small = client.bored(1)
        assert small["type"] == "retry_later", small
        assert f"{TABLE_BYTES + len(own_file(0))} bytes of input files" in small["reason"]
        assert "allows 1 MiB" in small["reason"], small
        # room enough: jobs, each naming both files by guest path
        jobs = client.bored(64)
        assert jobs["type"] == "jobs", jobs
        assert 1 <= len(jobs["jobs"]) <= 2
        for spec in jobs["jobs"]:
            i = int(spec["args"][0])
            own = own_file(i)
            assert spec["files"] == {
                "/input/table.bin": {"hash": table_sha, "size": TABLE_BYTES},
                "/input/own.txt": {"hash": hashlib.sha256(own).hexdigest(), "size": len(own)},
            }
        own_ref = jobs["jobs"][0]["files"]["/input/own.txt"]

        # chunk 0 first, for the digests; then the rest with eight fetches out at once
        first = client.replies([client.fetch(table_sha, 0)])
        (zero,) = first.values()
        assert zero["type"] == "chunk" and zero["chunk"] == 0 and zero["size"] == TABLE_BYTES
        digests = zero["digests"]
        assert len(digests) == 3 and all(len(d) == 32 for d in digests)
        wanted = [1, 2, 0, 1, 2, 2, 1, 0]  # eight out at once: each answered, none dropped
        ids = {client.fetch(table_sha, c): c for c in wanted}
        got = client.replies(list(ids))
        chunks = {0: zero["data"]}
        for rid, reply in got.items():
            assert reply["type"] == "chunk", reply
            c = ids[rid]
            assert (reply["hash"], reply["chunk"], reply["size"]) == (table_sha, c, TABLE_BYTES)
            assert len(reply["data"]) == min(CHUNK, TABLE_BYTES - c * CHUNK)
            assert hashlib.sha256(reply["data"]).digest() == digests[c]
            assert reply.get("digests") in (None, digests)
            chunks[c] = reply["data"]
        whole = b"".join(chunks[c] for c in range(3))
        assert hashlib.sha256(whole).hexdigest() == table_sha

        # a job's own file: one chunk, its digest the hash of the whole
        (own_reply,) = client.replies([client.fetch(own_ref["hash"], 0)]).values()
        assert hashlib.sha256(own_reply["data"]).hexdigest() == own_ref["hash"]
        assert own_reply["digests"] == [hashlib.sha256(own_reply["data"]).digest()]

        # refused: a hash this dealer serves no file of, a chunk past the end
        unknown = client.ask({"type": "fetch", "hash": "ab" * 32, "chunk": 0})
        assert (unknown["type"], unknown["code"]) == ("error", "unknown_file"), unknown
        past = client.ask({"type": "fetch", "hash": table_sha, "chunk": 3})
        assert (past["type"], past["code"]) == ("error", "unexpected"), past
        assert "past the end" in past["text"]

        served = sum(len(r["data"]) for r in (zero, own_reply, *got.values()))
        status = wait_status(port, lambda s: s.get("fetches") == 1 + len(wanted) + 1)
        assert status["files_served_bytes"] == served
    finally:
        client.close()


def test_a_file_that_changed_under_the_dealer_is_not_served(procs, tmp_path, ctx):
    table = tmp_path / "table.bin"
    table.write_bytes(b"a" * 100)
    port = free_port()
    procs.dealer("dealer", TASK, "--table", str(table), port=port)
    key = wait_status(port, lambda s: True)["key"]
    table.write_bytes(b"b" * 100)  # the author broke the rule: the bytes are not those hashed
    client = Client(ctx, port, key)
    try:
        sha = hashlib.sha256(b"a" * 100).hexdigest()
        reply = client.ask({"type": "fetch", "hash": sha, "chunk": 0})
        assert (reply["type"], reply["code"]) == ("error", "internal"), reply
        assert "changed" in reply["text"]
    finally:
        client.close()


# what two connections that never read may cost the dealer: DEALER_SNDHWM + 1 chunk
# replies each (the mark, and one in libzmq's hands), a turn's 16 replies held until its
# commit, and slack for malloc. Without a bound, their 600 fetches would be 2.4 GB.
UNREAD_FETCH_FLOOD_MB = 2 * (DEALER_SNDHWM + 1) * 4 + 16 * 4 + 48


def test_a_fetch_flood_nobody_reads_costs_what_the_caps_say_and_others_are_served(
    procs, tmp_path, ctx
):
    table = tmp_path / "table.bin"
    table.write_bytes(os.urandom(TABLE_BYTES))
    sha = hashlib.sha256(table.read_bytes()).hexdigest()
    port = free_port()
    dealer = procs.dealer(
        "dealer", "../tests/task_files/inputs.py", "--table", str(table), port=port
    )
    key = wait_status(port, lambda s: True)["key"]
    before = flood.rss_mb(dealer.pid)
    peak = flood.Peak(dealer.pid)
    peak.start()
    flooders = [Client(ctx, port, key, source="127.0.6.1", rcvhwm=1) for _ in range(2)]
    honest = Client(ctx, port, key, source="127.0.6.2")
    try:
        for c in flooders:
            for i in range(300):
                c.fetch(sha, i % 3)
        # an honest jobber elsewhere gets every chunk meanwhile, asking again when busy
        started, got, busy = time.monotonic(), {}, 0
        while len(got) < 3:
            (reply,) = honest.replies([honest.fetch(sha, len(got))]).values()
            if reply["type"] == "error":
                assert reply["code"] == "busy" and reply["text"].startswith("busy:"), reply
                assert 0 < reply["retry_s"] <= 1, reply  # a token back within a second
                busy += 1
                time.sleep(reply["retry_s"])  # as the protocol says: wait, then ask again
                continue
            got[reply["chunk"]] = reply["data"]
        took = time.monotonic() - started
        assert hashlib.sha256(b"".join(got[c] for c in range(3))).hexdigest() == sha
        shown = wait_status(port, lambda s: s["fetches"] + s["fetches_busy"] >= 600, 120)
        grown = peak.stop() - before
    finally:
        for c in (*flooders, honest):
            c.close()
    print(
        f"\n600 fetches never read: {before:.0f} MB + {grown:.0f} MB at the peak; "
        f"{shown['fetches']} served, {shown['fetches_busy']} busy; the honest file in "
        f"{took:.1f} s ({busy} busy)"
    )
    assert shown["fetches_busy"] > 0  # the ration held the flood back
    assert grown < UNREAD_FETCH_FLOOD_MB
