"""Helpers the tests share (imported by conftest and test modules; no fixtures here)."""

from __future__ import annotations

import collections
import os
import random
import re
import socket
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import msgpack
import zmq

import protocol as p
import sandbox
from net._keys import z85_of_hex
from tasks import Job, Limits, Payload, Task

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

# The factoring batch most end-to-end tests run.
N = 1000000007 * 1000000009
LINE = f"{N} = 1000000007 * 1000000009"
CHUNK = "100000000"  # 11 jobs of about 0.3 s each here: long enough to be caught running
JOBS = 11


def _ephemeral() -> tuple[int, int]:
    """The kernel's range of ports for outgoing connections."""
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


PORT_BLOCK = 1500  # ports each xdist worker draws from
_recent: collections.deque[int] = collections.deque(maxlen=100)  # ports lately handed out


def free_port() -> int:
    """A TCP port P on 127.0.0.1 such that P and P + 1 (the dealer's plaintext port) were
    both free a moment ago. P is below the kernel's ephemeral range, so no outgoing
    connection takes it while a test kills and restarts a server on it; each xdist worker
    draws from a block of its own, so two never pick the same one at once. Nor does one process
    get a port it got lately (or a neighbour of one), so a test that draws many ports before
    binding them gets distinct ones: 23 random draws from 1,500 repeat one about one time
    in six."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    lo, _ = _ephemeral()
    base = 10000 + (index % 12) * PORT_BLOCK
    if base + PORT_BLOCK >= lo:  # a kernel with a wide ephemeral range: any free pair
        base, size = 0, 0
    else:
        size = PORT_BLOCK
    for _ in range(200):
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", base + random.randrange(size - 1) if size else 0))
                port = a.getsockname()[1]
                if port >= 65535 or {port - 1, port, port + 1} & set(_recent):
                    continue
                b.bind(("127.0.0.1", port + 1))
            except OSError:  # in use
                continue
            _recent.append(port)
            return port
    raise RuntimeError("no pair of free ports")


def wait_for(pred: Callable[[], Any], timeout: float, what: str, every_s: float = 0.05) -> Any:
    """Poll `pred` until it returns something true; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(every_s)


def cpu_s(pid: int) -> float:
    """The CPU seconds process `pid` has used so far (user and system; Linux's /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CurveClient:
    """A raw DEALER socket with its own key pair, speaking the wire as a jobber in another
    language would: encrypted to the dealer's key, optionally from a chosen source address."""

    def __init__(
        self,
        address: str,
        *,
        source: str | None = None,
        keys: tuple[bytes, bytes] | None = None,
        ctx: zmq.Context | None = None,
    ) -> None:
        endpoint, key = p.split_key(address)
        assert key is not None, "give the dealer's full address (with #key)"
        self.public, self.secret = keys or zmq.curve_keypair()
        self.sock = (ctx or zmq.Context.instance()).socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.curve_publickey, self.sock.curve_secretkey = self.public, self.secret
        self.sock.curve_serverkey = z85_of_hex(key)
        if source is not None:
            endpoint = f"tcp://{source}:0;{endpoint[len('tcp://') :]}"
        self.sock.connect(endpoint)

    @property
    def key(self) -> str:
        from net._keys import hex_of_z85

        return hex_of_z85(self.public)

    def send(self, msg_or_bytes: p.Message | bytes) -> None:
        data = msg_or_bytes if isinstance(msg_or_bytes, bytes) else p.encode(msg_or_bytes)
        self.sock.send(data)

    # a reply waited for this long by default: generous for a busy machine (a test that
    # wants "no reply" says how long it waits)
    def recv(self, timeout_s: float = 30.0) -> p.Message:
        assert self.sock.poll(int(timeout_s * 1000)), "no reply from the dealer"
        return p.decode(self.sock.recv())

    def ask(self, msg_or_bytes: p.Message | bytes, timeout_s: float = 30.0) -> p.Message:
        self.send(msg_or_bytes)
        return self.recv(timeout_s)

    def close(self) -> None:
        self.sock.close()


def fake_dealer(ctx: zmq.Context | None = None) -> tuple[zmq.Socket, str]:
    """A bare CurveZMQ ROUTER on a free loopback port, and the address a jobber needs
    (with its key), for tests that play a dealer by hand."""
    from net._keys import hex_of_z85

    public, secret = zmq.curve_keypair()
    router = (ctx or zmq.Context.instance()).socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.curve_server = True
    router.curve_publickey, router.curve_secretkey = public, secret
    port = router.bind_to_random_port("tcp://127.0.0.1")
    return router, f"127.0.0.1:{port}#{hex_of_z85(public)}"


def by_hand(router: zmq.Socket, jobber, timeout_s: float = 30.0):
    """The (identity, message) pairs a jobber process sends a dealer played by hand
    (`fake_dealer`), for as long as the jobber runs, at most `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while jobber.popen.poll() is None and time.monotonic() < deadline:
        if router.poll(100):
            ident, frame = router.recv_multipart()
            yield ident, p.decode(frame)


def routine(router: zmq.Socket, ident: bytes, msg: p.Message, results: dict) -> bool:
    """The dull part of playing a dealer by hand: acknowledge `results` (kept by tag in
    `results`) and answer `alive`. True if `msg` was one of those."""
    if isinstance(msg, p.Results):
        results.update({r.tag: r for r in msg.results})
        tags = tuple(r.tag for r in msg.results)
        router.send_multipart([ident, p.encode(p.Ack(msg.id, tags))])
        return True
    if isinstance(msg, p.Alive):
        router.send_multipart([ident, p.encode(p.AliveAck(msg.id, 20.0))])
        return True
    return False


def summary_rows(stderr: str) -> list[tuple[str, str, int, int, int, int]]:
    """The dealer's closing table: (name, key prefix, valid, invalid, errors, credit) rows."""
    rx = r"^(\S+)(?: \(denied\))?\s+([0-9a-f]{12})\s+\S+\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$"
    return [
        (m.group(1), m.group(2), *(int(m.group(i)) for i in range(3, 7)))
        for m in re.finditer(rx, stderr, re.M)
    ]


def summary(stderr: str) -> dict[str, tuple[int, int, int, int]]:
    """The dealer's closing table by name: name -> (valid, invalid, errors, credit)."""
    rows = {}
    for name, _, *counts in summary_rows(stderr):
        assert name not in rows, f"two jobbers named {name}: use summary_rows"
        rows[name] = tuple(counts)
    return rows


def by_name(info: dict) -> dict[str, dict]:
    """A dealer status's jobbers, by the names they gave."""
    return {row["name"]: row for row in info["jobbers"]}


def wait_status(port: int, pred, timeout: float = 60.0) -> dict:
    from net._ask import query_status

    last = None

    def check():
        nonlocal last
        try:
            last = query_status(f"127.0.0.1:{port}", timeout_s=1.0)
        except (TimeoutError, RuntimeError):
            return None
        return last if pred(last) else None

    try:
        return wait_for(check, timeout, "dealer status to match", every_s=0.1)
    except AssertionError:
        raise AssertionError(f"dealer status never matched; last {last}") from None


def jobber_status(data_dir) -> dict:
    from jobber._control import ask

    return ask(data_dir, "status", timeout_s=2.0)


class Few(Task):
    """`n` jobs of a payload that does nothing: a batch for tests of the service and its journal."""

    limits = Limits(fuel=10**6, memory_mb=1, time_s=5, output_kb=1)

    def __init__(self, n: int) -> None:
        super().__init__()
        self.payload = Payload.from_wat(
            '(module (memory (export "memory") 1) (func (export "_start")))', "few"
        )
        self.n = n

    def jobs(self):
        return [Job((str(i),)) for i in range(self.n)]


def collect_one(slots: sandbox.Slots, timeout_s: float = 60.0) -> tuple[str, sandbox.Outcome]:
    """Wait on the slots' fds, as the jobber's poller does, for one finished job. An
    outcome decided without a worker (a module remembered as failed) is there at once,
    with no fd to wake for it: collected before any wait."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = slots.collect()
        if got:
            assert len(got) == 1, got
            return got[0]
        if time.monotonic() >= deadline:
            raise AssertionError(f"no job finished within {timeout_s} s")
        wait(slots.fds(), timeout=min(1.0, max(0.0, deadline - time.monotonic())))


def raw(client: CurveClient, body: dict) -> dict:
    """One request as bare msgpack (the wire as docs/protocol.md writes it), its reply."""
    client.send(msgpack.packb({"v": 2, **body}, use_bin_type=True))
    return msgpack.unpackb(client.sock.recv() if client.sock.poll(5000) else b"\xc0")
