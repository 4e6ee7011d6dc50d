"""End to end, a Python task from the dealer's side: a real dealer process serving
tests/task_files/python_echo.py (a pinned runtime of 104.5 MB, over the wire's payload
cap), and a client written from docs/protocol.md (as in test_dealer_input_files.py). A
`bored` whose host.cached lacks the runtime gets `retry_later` naming it in `runtimes`
and no job; the runtime and its library are fetched by hash before any job, each chunk
checked against chunk 0's digests; with the runtime in host.cached the client gets jobs
whose args start with the script's guest path, whose files are the library and the
script, and whose message carries no payload bytes. Nothing compiles or runs the runtime.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import zmq

from protocol._runtimes import PYTHON
from tests.e2e.test_dealer_input_files import Client
from tests.helpers import free_port, wait_status
from tests.task_files.python_echo import NAME, SCRIPT

TASK = "../tests/task_files/python_echo.py"  # relative to examples/
STDLIB = "/usr/local/lib/python315.zip"
CHUNK = 4 * 1024 * 1024  # CHUNK_BYTES, as docs/protocol.md gives it


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def bored(client: Client, cached: list[str]) -> dict:
    host: dict[str, Any] = {"cpus": 1, "memory_mb": 1024, "slots": 1, "cached": cached}
    host["input_mb"] = 64  # the library is 51.4 MiB
    return client.ask({"type": "bored", "jobber": "hand", "host": host, "want": 2})


def fetched(client: Client, sha: str, chunks: list[int]) -> tuple[dict, dict[int, dict]]:
    """Chunk 0 of file `sha` (with the digests), then `chunks` with all of them out at
    once; each checked against chunk 0's digests."""
    (zero,) = client.replies([client.fetch(sha, 0)]).values()
    assert zero["type"] == "chunk" and zero["hash"] == sha, zero
    digests = zero["digests"]
    assert hashlib.sha256(zero["data"]).digest() == digests[0]
    ids = {client.fetch(sha, c): c for c in chunks}
    got = {}
    for rid, reply in client.replies(list(ids)).items():
        c = ids[rid]
        assert reply["type"] == "chunk" and reply["chunk"] == c, reply
        assert hashlib.sha256(reply["data"]).digest() == digests[c]
        got[c] = reply
    return zero, got


def test_a_python_task_asks_jobbers_to_prepare_its_runtime_and_serves_it_by_fetch(procs, ctx):
    port = free_port()
    procs.dealer("dealer", TASK, port=port)
    key = wait_status(port, lambda s: True)["key"]
    client = Client(ctx, port, key)
    try:
        # no runtime: asked to prepare it, no job
        first = bored(client, [])
        assert first["type"] == "retry_later", first
        assert first["runtimes"] == [PYTHON.sha256]
        assert 0 < first["seconds"] <= 30 and "python" in first["reason"]
        assert "jobs" not in first

        # the module by its hash, before any job: chunk 0, and the short last one
        last = (PYTHON.size - 1) // CHUNK
        zero, got = fetched(client, PYTHON.sha256, [1, last])
        assert zero["size"] == PYTHON.size and len(zero["digests"]) == last + 1
        assert len(zero["data"]) == CHUNK and len(got[last]["data"]) == PYTHON.size - last * CHUNK
        # ... and its library, which every job names
        lib_sha, lib_size = PYTHON.files[STDLIB]
        lib, _ = fetched(client, lib_sha, [])
        assert lib["size"] == lib_size

        # the runtime in host.cached: jobs, without the module's bytes
        jobs = bored(client, [PYTHON.sha256])
        assert jobs["type"] == "jobs", jobs
        assert jobs["payloads"] == {}
        script, script_path = SCRIPT.encode(), f"/task/{NAME}.py"
        files = {
            STDLIB: {"hash": lib_sha, "size": lib_size},
            script_path: {"hash": hashlib.sha256(script).hexdigest(), "size": len(script)},
        }
        assert [spec["args"] for spec in jobs["jobs"]] == [[script_path, "0"], [script_path, "1"]]
        for spec in jobs["jobs"]:
            assert spec["payload"] == PYTHON.sha256 and spec["files"] == files
        # the script by its hash, as a job names it
        (own,) = client.replies([client.fetch(files[script_path]["hash"], 0)]).values()
        assert own["data"] == script

        status = wait_status(port, lambda s: s.get("fetches") == 5)
        assert status["files_served_bytes"] == sum(
            len(r["data"]) for r in (zero, *got.values(), lib, own)
        )
    finally:
        client.close()
