"""A hostile dealer, written from docs/protocol.md alone: it tries to make a jobber hold
more than its owner allows (issue 20). Run as its own process:

    python -m tests.hostile_dealer MODE [--period S] [--output-mb N]

It binds a CurveZMQ ROUTER on a free loopback port, prints its address
(`tcp://127.0.0.1:PORT#KEY`) on a line of stdout, and serves until killed. It answers
`alive` (so it keeps its jobs' leases), never acknowledges a result, and every
`--period` seconds pushes the message its MODE makes to the last few connections
it heard from (any message), unasked: half of them with the `re` of that
connection's last `bored` (a replay of an answered ask), half with `re` 0.
Asked (`bored`), it answers as a dealer may: with `want` jobs of the same kind,
their payloads sent; and right after, on the same connection, it sends the flood as
a second answer to that `bored` (the flood is built ahead, so it arrives before the
jobber could give up on the connection).

=========  =================================================================
MODE       the message
=========  =================================================================
stdin      4 jobs of a module that does nothing, each with 15 MiB of stdin
payloads   60 jobs, each naming its own distinct 1 MiB payload, all 60 sent
output     4 jobs of a module writing `--output-mb` MiB to stdout (its
           `output_kb` just that), never acknowledged
=========  =================================================================

Its own send queue is short (SNDHWM): a jobber that stops reading costs this process
little, and what it pushes beyond is dropped, not queued here.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import itertools
import sys
import time
from pathlib import Path

import wasmtime
import zmq

# run as a script, tests/ comes first on the path, and tests/protocol would be `protocol`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import protocol as p  # noqa: E402
from net._keys import hex_of_z85  # noqa: E402

STDIN_MIB = 15
PAYLOADS = 60
SEND_HWM = 4  # frames queued per jobber here at most: the rest of a flood is dropped
PUSH_TO = 4  # connections pushed to: the newest that spoke

NOOP = bytes(wasmtime.wat2wasm('(module (memory (export "memory") 1) (func (export "_start")))'))


def writer(mib: int) -> bytes:
    """A WASI command writing `mib` MiB of zeros to stdout, 64 KiB a call."""
    return bytes(
        wasmtime.wat2wasm(
            f"""
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start") (local $i i32)
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 65536))
    (loop $more
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $more (i32.lt_u (local.get $i) (i32.const {mib * 16}))))))
"""
        )
    )


def _leb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def padded(i: int, size: int = 1024 * 1024) -> bytes:
    """NOOP with a custom section (id 0, ignored when run) making it `size` bytes of its
    own: a distinct, valid payload for each `i`."""
    name = b"pad"
    body = _leb(len(name)) + name + i.to_bytes(8, "little") * (size // 8)
    return NOOP + b"\x00" + _leb(len(body)) + body


class Hostile:
    def __init__(self, mode: str, output_mb: int) -> None:
        self.mode = mode
        self.output_mb = output_mb
        self.tags = itertools.count()
        self.fresh = itertools.count()
        self.noop_sha = hashlib.sha256(NOOP).hexdigest()
        self.wasm = writer(output_mb) if mode == "output" else NOOP
        self.sha = hashlib.sha256(self.wasm).hexdigest()
        self.stdin = b"\x07" * (STDIN_MIB * 1024 * 1024)

    def message(self, re: int, n: int | None = None) -> p.Jobs:
        """The mode's `jobs`: `n` jobs (default: the mode's flood, 4 or PAYLOADS)."""
        if self.mode == "stdin":
            limits = p.Limits(memory_mb=16, time_s=5.0, output_kb=1)
            jobs = tuple(
                p.JobSpec(f"h.{next(self.tags)}", self.sha, (), self.stdin, limits, 60.0)
                for _ in range(4 if n is None else n)
            )
            return p.Jobs(re, jobs, {self.sha: self.wasm} if jobs else {})
        if self.mode == "payloads":
            limits = p.Limits(memory_mb=16, time_s=5.0, output_kb=1)
            payloads = {}
            jobs = []
            for _ in range(PAYLOADS if n is None else n):
                wasm = padded(next(self.fresh))
                sha = hashlib.sha256(wasm).hexdigest()
                payloads[sha] = wasm
                jobs.append(p.JobSpec(f"h.{next(self.tags)}", sha, (), b"", limits, 60.0))
            return p.Jobs(re, tuple(jobs), payloads)
        limits = p.Limits(memory_mb=16, time_s=30.0, output_kb=self.output_mb * 1024)
        jobs = tuple(
            p.JobSpec(f"h.{next(self.tags)}", self.sha, (), b"", limits, 60.0)
            for _ in range(4 if n is None else n)
        )
        return p.Jobs(re, jobs, {self.sha: self.wasm} if jobs else {})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.hostile_dealer")
    ap.add_argument("mode", choices=["stdin", "payloads", "output"])
    ap.add_argument("--period", type=float, default=0.5)
    ap.add_argument("--output-mb", type=int, default=32)
    args = ap.parse_args(argv)
    hostile = Hostile(args.mode, args.output_mb)
    ctx = zmq.Context()
    public, secret = zmq.curve_keypair()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.SNDHWM, SEND_HWM)
    router.curve_server = True
    router.curve_publickey, router.curve_secretkey = public, secret
    port = router.bind_to_random_port("tcp://127.0.0.1")
    print(f"tcp://127.0.0.1:{port}#{hex_of_z85(public)}", flush=True)
    last_bored: dict[bytes, int] = {}  # connection -> the id of its last `bored`, or 0
    pushed = 0
    flood = hostile.message(0)  # the next flood, built ahead
    next_push = time.monotonic() + args.period
    while True:
        wait_ms = max(1, int((next_push - time.monotonic()) * 1000))
        if router.poll(wait_ms):
            ident, frame = router.recv_multipart()
            try:
                msg = p.decode(frame)
            except p.ProtocolError:
                continue
            last_bored[ident] = last_bored.pop(ident, 0)  # the newest last
            if len(last_bored) > PUSH_TO:  # connections gone: push to the newest few only
                del last_bored[next(iter(last_bored))]
            if isinstance(msg, p.Bored):
                last_bored[ident] = msg.id
                reply = hostile.message(msg.id, min(msg.want, 2 * max(1, msg.host.slots)))
                router.send_multipart([ident, p.encode(reply)])
                with contextlib.suppress(zmq.Again):  # the replay: a second answer
                    again = p.encode(dataclasses.replace(flood, re=msg.id))
                    router.send_multipart([ident, again], zmq.NOBLOCK)
                pushed += 1
                flood = hostile.message(0)
            elif isinstance(msg, p.Alive):
                router.send_multipart([ident, p.encode(p.AliveAck(msg.id, 60.0))])
            # results are never acknowledged
        if time.monotonic() >= next_push:
            next_push = time.monotonic() + args.period
            for ident, rid in list(last_bored.items()):
                re = rid if pushed % 2 == 0 else 0
                pushed += 1
                frame = p.encode(dataclasses.replace(flood, re=re))
                with contextlib.suppress(zmq.Again):  # its queue is full: dropped
                    router.send_multipart([ident, frame], zmq.NOBLOCK)
            flood = hostile.message(0)
            print(f"pushed {pushed}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
