"""What the benchmarks share: a task of trivial jobs, a CurveZMQ client socket, a bare
CurveZMQ ROUTER to measure against, and readings of a process's CPU and memory."""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

import msgpack
import zmq

# run from a checkout; the bench folder must not shadow the `dealer` package
ROOT = Path(__file__).resolve().parent.parent
if sys.path[0] != str(ROOT):
    sys.path.insert(0, str(ROOT))

import protocol as p  # noqa: E402
from net._keys import hex_of_z85, z85_of_hex  # noqa: E402
from tasks import Job, Limits, Payload, Task  # noqa: E402

NOP_WAT = '(module (memory (export "memory") 1) (func (export "_start")))'
CLK = os.sysconf("SC_CLK_TCK")


class Trivial(Task):
    """`n` jobs whose payload returns at once (None: more than any run settles); their
    outputs are counted and dropped."""

    limits = Limits(fuel=10**6, memory_mb=1, time_s=10, output_kb=1)

    def __init__(self, n: int | None = None) -> None:
        super().__init__()
        self.n = n
        self.payload = Payload.from_wat(NOP_WAT)
        self.count = 0

    def jobs(self):
        return (Job((str(i),)) for i in range(self.n or 10**12))

    def total(self):
        return self.n

    def on_output(self, job, output):
        self.count += 1

    def result(self):
        return self.count


def curve_client(ctx: zmq.Context, address: str) -> zmq.Socket:
    """A DEALER socket with a key pair of its own, connected to `address` (`endpoint#key`)."""
    endpoint, key = p.split_key(address)
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.curve_publickey, s.curve_secretkey = zmq.curve_keypair()
    s.curve_serverkey = z85_of_hex(key)
    s.connect(endpoint)
    return s


def curve_router(ctx: zmq.Context) -> tuple[zmq.Socket, str]:
    """A bare CurveZMQ ROUTER on a free loopback port, and its address (`endpoint#key`)."""
    sock = ctx.socket(zmq.ROUTER)
    public, secret = zmq.curve_keypair()
    sock.curve_server = True
    sock.curve_publickey, sock.curve_secretkey = public, secret
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    return sock, f"tcp://127.0.0.1:{port}#{hex_of_z85(public)}"


def echo_router(window: tuple[float, float], reply_size: int, ready_q, out_q) -> None:
    """A bare CurveZMQ ROUTER in one Python process: each request decoded, each reply
    (of about `reply_size` bytes) encoded, as any server must. Puts its address on
    `ready_q`, then the round trips per second it answered within `window` (monotonic
    start and end, counted from now) on `out_q`."""
    ctx = zmq.Context()
    sock, address = curve_router(ctx)
    ready_q.put(address)
    pad = b"x" * reply_size
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    now = time.monotonic()
    start, end = now + window[0], now + window[1]
    counted = 0
    while time.monotonic() < end + 1.0:
        if not poller.poll(100):
            continue
        for _ in range(512):
            try:
                ident, frame = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            body = msgpack.unpackb(frame)
            sock.send_multipart(
                [ident, msgpack.packb({"v": 2, "type": "echo", "re": body["id"], "pad": pad})]
            )
            if start <= time.monotonic() < end:
                counted += 1
    out_q.put(counted / (end - start))
    sock.close(0)
    ctx.term()


def more_files() -> None:
    """As many open files as the hard limit allows (thousands of sockets)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_s(pid: int) -> float:
    """CPU seconds (user and system) process `pid` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def rss_mb(pid: int) -> float:
    """The resident memory of process `pid`, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def take(q, procs, timeout_s: float = 600.0):
    """The next item from the multiprocessing queue `q`, waiting while every process of
    `procs` lives: a benchmark whose server or client died stops with a clear error
    instead of waiting forever."""
    import queue

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return q.get(timeout=1.0)
        except queue.Empty:
            dead = [x for x in procs if x.exitcode not in (None, 0)]
            if dead:
                raise SystemExit(
                    f"bench: {dead[0].name} died (exit code {dead[0].exitcode})"
                ) from None
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: no answer in {timeout_s:.0f} s") from None
