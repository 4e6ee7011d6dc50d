"""Floods against a real dealer process, written from docs/protocol.md: status requests
that are never read, status requests read as fast as they come, CURVE handshakes from
one address, idle connections to the dashboard. tests/e2e/test_floods.py asserts what
they may cost; run as a script, this module measures the same floods beside an honest
batch and prints the numbers (docs/security.md, "What a flood can cost"):

    python -m tests.flood [--jobs 300]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

import protocol as p
from tests.helpers import PY, ROOT, CurveClient, N, free_port, wait_status

LONG_NAME = "\U0001d518" * 256  # 256 code points of 4 bytes: the longest name, in bytes


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


class Peak(threading.Thread):
    """Samples a process's resident memory every `every_s` until stopped: the peak."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.peak = rss_mb(pid)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.every_s):
            with contextlib.suppress(OSError, AssertionError):  # gone: the peak stands
                self.peak = max(self.peak, rss_mb(self.pid))

    def stop(self) -> float:
        self._halt.set()
        self.join()
        return self.peak


def identities(address: str, n: int, ctx: zmq.Context) -> None:
    """`n` identities with the longest names, from sources 127.0.3.x, known to the dealer
    (each asks for nothing once): what makes a status page big."""
    clients = []
    try:
        for i in range(n):
            c = CurveClient(address, source=f"127.0.3.{1 + i % 200}", ctx=ctx)
            clients.append(c)
            c.send(p.Bored(1, LONG_NAME, p.HostFacts(1, 1024, 1), want=0))
        for c in clients:
            c.recv(30)
    finally:
        for c in clients:
            c.close()


def public_socket(port: int, source: str, ctx: zmq.Context, rcvhwm: int = 1000) -> zmq.Socket:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVHWM, rcvhwm)
    s.setsockopt(zmq.SNDHWM, 100_000)
    s.connect(f"tcp://{source}:0;127.0.0.1:{port + 1}")
    return s


def unread_status_flood(
    port: int, connections: int, requests: int, ctx: zmq.Context
) -> list[zmq.Socket]:
    """`connections` plaintext connections (receive high-water mark 1, each from its own
    source 127.0.4.x) that each send `requests` status requests and never read."""
    frame = p.encode(p.StatusQuery(1))
    socks = [public_socket(port, f"127.0.4.{i + 1}", ctx, rcvhwm=1) for i in range(connections)]
    for s in socks:
        for _ in range(requests):
            s.send(frame)
    return socks


class ReadFlood(threading.Thread):
    """`connections` plaintext connections (sources 127.0.5.x) asking status as fast as
    the replies come back, `in_flight` at a time each, until stopped."""

    def __init__(self, port: int, connections: int, ctx: zmq.Context, in_flight: int = 4):
        super().__init__(daemon=True)
        self.socks = [public_socket(port, f"127.0.5.{i + 1}", ctx) for i in range(connections)]
        self.in_flight = in_flight
        self.replies = self.busy = 0
        self._halt = threading.Event()

    def run(self) -> None:
        frame = p.encode(p.StatusQuery(1))
        poller = zmq.Poller()
        for s in self.socks:
            poller.register(s, zmq.POLLIN)
            for _ in range(self.in_flight):
                s.send(frame)
        while not self._halt.is_set():
            for s, _ in poller.poll(100):
                reply = p.decode(s.recv())
                if isinstance(reply, p.StatusReply):
                    self.replies += 1
                else:
                    self.busy += 1
                s.send(frame)

    def stop(self) -> None:
        self._halt.set()
        self.join()
        for s in self.socks:
            s.close()


def handshake_flood(address: str, source: str, n: int, ctx: zmq.Context) -> list[CurveClient]:
    """`n` CURVE connections from one `source` (one key pair), each asking status once,
    left open. A connection the dealer shuts tries again every 2 s (libzmq's 0.1 s would
    make it a storm of TCP connects: a firewall's matter, not this flood's)."""
    keys = zmq.curve_keypair()
    ctx.setsockopt(zmq.RECONNECT_IVL, 2000)  # the sockets made below take it
    try:
        clients = [CurveClient(address, source=source, keys=keys, ctx=ctx) for _ in range(n)]
    finally:
        ctx.setsockopt(zmq.RECONNECT_IVL, 100)  # libzmq's default, for what comes after
    for c in clients:
        c.send(p.StatusQuery(1))
    return clients


def idle_http(port: int, n: int) -> list[socket.socket]:
    """`n` TCP connections to the dashboard that send nothing."""
    out = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        out.append(s)
    return out


# --- measuring by hand ----------------------------------------------------------


def _dealer(cwd: Path, port: int, chunk: int, *extra: str) -> subprocess.Popen:
    argv = [PY, str(ROOT / "examples" / "factoring.py"), str(N), "--chunk", str(chunk)]
    argv += ["--bind", f"tcp://127.0.0.1:{port}", "--quiet", "--db", str(cwd / f"{port}.sqlite")]
    return subprocess.Popen(
        [*argv, *extra], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _jobbers(cwd: Path, port: int, k: int) -> list[subprocess.Popen]:
    out = []
    for i in range(k):
        argv = [PY, "-m", "jobber", f"127.0.0.1:{port}", "--slots", "1", "--name", f"h{i}"]
        argv += ["--data-dir", str(cwd / f"data-{port}-{i}"), "--source", f"127.0.2.{i + 1}"]
        argv += ["--min-backoff", "0.2", "--max-backoff", "1", "--max-idle", "3"]
        out.append(
            subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    return out


def honest_batch(cwd: Path, chunk: int, flood=None) -> tuple[float, float]:
    """Seconds for the honest batch (two jobbers) beside `flood(port, address)` (started
    once the dealer answers, stopped after), and the dealer's peak RSS in MB."""
    port = free_port()
    dealer = _dealer(cwd, port, chunk)
    ctx = zmq.Context()
    try:
        info = wait_status(port, lambda s: True)
        address = f"tcp://127.0.0.1:{port}#{info['key']}"
        peak = Peak(dealer.pid)
        peak.start()
        stop = flood(port, address, ctx, dealer.pid) if flood else None
        started = time.monotonic()
        jobbers = _jobbers(cwd, port, 2)
        dealer.wait(600)
        took = time.monotonic() - started
        for j in jobbers:
            j.wait(60)
        if stop:
            stop()
        return took, peak.stop()
    finally:
        if dealer.poll() is None:
            dealer.kill()
        ctx.destroy(linger=0)


def read_flood(port: int, address: str, ctx: zmq.Context, pid: int):
    """Beside a batch: 120 long names, then 20 connections asking status as fast as it comes."""
    identities(address, 120, ctx)
    f = ReadFlood(port, 20, ctx)
    f.start()
    return f.stop


def curve_flood(port: int, address: str, ctx: zmq.Context, pid: int):
    """Beside a batch: CURVE connections from one address, 50 at a time, closed and reopened."""
    halt = threading.Event()

    def loop():
        while not halt.is_set():
            try:
                clients = handshake_flood(address, "127.0.6.1", 50, ctx)
            except zmq.ZMQError:  # out of descriptors: let the closed ones go
                time.sleep(0.1)
                continue
            time.sleep(0.05)
            for c in clients:
                c.close()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return lambda: (halt.set(), t.join())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=300, help="jobs in the honest batch")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each batch (times vary)")
    ap.add_argument("--batches-only", action="store_true", help="skip the memory and threads")
    args = ap.parse_args()
    chunk = -(-31623 * 31623 // args.jobs)  # candidates up to sqrt(N), about 1e9
    cwd = Path(tempfile.mkdtemp(prefix="floods-"))
    try:
        for what, flood in (
            (f"honest batch of ~{args.jobs} jobs alone", None),
            ("beside a status flood read (20 connections)", read_flood),
            ("beside a CURVE handshake flood (one address)", curve_flood),
        ):
            runs = [honest_batch(cwd, chunk, flood) for _ in range(args.repeat)]
            times = sorted(t for t, _ in runs)
            print(
                f"{what}: {times[len(times) // 2]:.1f} s (runs: "
                f"{', '.join(f'{t:.1f}' for t in times)}), dealer peak "
                f"{max(m for _, m in runs):.0f} MB",
                flush=True,
            )
        if args.batches_only:
            return

        port = free_port()
        http = free_port()
        dealer = _dealer(cwd, port, chunk, "--http", f"127.0.0.1:{http}")
        ctx = zmq.Context()
        try:
            info = wait_status(port, lambda s: True)
            address = f"tcp://127.0.0.1:{port}#{info['key']}"
            identities(address, 120, ctx)
            size = len(p.encode(p.StatusReply(1, wait_status(port, lambda s: True))))
            before = rss_mb(dealer.pid)
            peak = Peak(dealer.pid)
            peak.start()
            socks = unread_status_flood(port, 20, 1000, ctx)
            time.sleep(20)
            for s in socks:
                s.close()
            time.sleep(3)
            after = rss_mb(dealer.pid)
            print(
                f"20 connections x 1000 status never read (a page of"
                f" {size // 1000} KB): dealer {before:.0f} MB -> peak {peak.stop():.0f} MB,"
                f" {after:.0f} MB after they closed"
            )
            t0 = threads(dealer.pid)
            idle = idle_http(http, 259)
            time.sleep(2)
            print(f"259 idle dashboard connections: dealer threads {t0} -> {threads(dealer.pid)}")
            for s in idle:
                s.close()
        finally:
            dealer.kill()
            dealer.wait()
            ctx.destroy(linger=0)
    finally:
        shutil.rmtree(cwd, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
