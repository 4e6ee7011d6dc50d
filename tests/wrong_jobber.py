"""A dishonest jobber, written from docs/protocol.md alone.

It speaks the borednet wire with nothing but zmq and msgpack: it learns the
dealer's key (from `#KEY` in the address, or by `hello` on the plaintext port
next to it), makes its own CurveZMQ key pairs, asks for work with `bored` and
answers every job with the same wrong result (status "ok", output b"13\\n",
fuel 1) without running anything. End-to-end tests run it beside honest
jobbers to check what one dishonest party can and cannot do.

    python tests/wrong_jobber.py DEALER [--name NAME] [--max-idle S] [--count N]
        [--identities K] [--source IP] [--want N] [--fuel F] [--output-bytes B]
        [--hoard]

DEALER is `host`, `host:port`, `tcp://host:port` or `[v6addr]:port` (port 7117
by default), optionally followed by `#` and the dealer's key in hex. With
--identities K it is K jobbers at once, each with its own key (a Sybil); with
--hoard it makes a new identity for every `bored`, asks for --want jobs and
never answers. --fuel and --output-bytes change the wrong result it sends.
It stops, with exit status 0, after --max-idle seconds without jobs or once
--count wrong results are acknowledged, once the dealer says `finished`, and
on Ctrl-C. It never says `alive`, so a dealer takes it as gone once its lease
runs out. Referrals are not followed: a referral is taken as "ask again soon".
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from typing import Any

import msgpack
import zmq
from zmq.utils import z85

VERSION = 2
DEFAULT_PORT = 7117
MAX_FRAME_BYTES = 64 * 1024 * 1024
MAX_CACHED = 4096
MAX_BATCH = 256  # results per message

WRONG_OUTPUT = b"13\n"
WRONG_FUEL = 1
WANT = 4  # jobs asked for at once
MEMORY_MB = 65536  # claim room for any job, so no dealer turns us away for memory
REQUEST_TIMEOUT_S = 5.0  # no reply by then: a failed contact
# Backoff after failed contacts: short, because this jobber lives for one test.
# No jitter: there is only one of it.
MIN_BACKOFF_S = 0.25
MAX_BACKOFF_S = 8.0
REFERRAL_WAIT_S = 1.0


# --- messages (docs/protocol.md, sections 2 to 5) ----------------------------


def _frame(body: dict[str, Any]) -> bytes:
    return msgpack.packb({"v": VERSION, **body}, use_bin_type=True)


def hello(rid: int) -> bytes:
    return _frame({"type": "hello", "id": rid})


def bored(
    rid: int,
    name: str,
    want: int,
    cached: list[str],
    platform: str | None = None,
    nan_fuel: str | None = None,
) -> bytes:
    host: dict[str, Any] = {
        "cpus": 1,
        "memory_mb": MEMORY_MB,
        "slots": 1,
        "cached": cached[:MAX_CACHED],
    }
    if platform is not None:  # claim to vote with the honest jobbers of that platform
        host["platform"] = platform
    if nan_fuel is not None:  # ... or, with canonical NaNs, with those counting fuel so
        host["nan_fuel"] = nan_fuel
    return _frame({"type": "bored", "id": rid, "jobber": name, "host": host, "want": want})


def wrong_result(tag: str, fuel: int = WRONG_FUEL, output: bytes = WRONG_OUTPUT) -> dict[str, Any]:
    return {"tag": tag, "status": "ok", "output": output, "fuel": fuel, "detail": ""}


def results(rid: int, name: str, batch: list[dict[str, Any]]) -> bytes:
    return _frame({"type": "results", "id": rid, "jobber": name, "results": batch})


def parse_reply(frame: bytes) -> dict[str, Any] | None:
    """The reply as a map, or None if it is not a version 1 reply at all."""
    try:
        body = msgpack.unpackb(frame, raw=False)
    except Exception:  # msgpack raises many types for bad bytes
        return None
    if not isinstance(body, dict) or type(body.get("v")) is not int or body["v"] != VERSION:
        return None
    if not isinstance(body.get("type"), str) or type(body.get("re")) is not int:
        return None
    return body


def address(text: str) -> tuple[str, str | None]:
    """(endpoint, key in hex or None) for a dealer address (docs/protocol.md, section 1)."""
    text, sep, key = text.strip().partition("#")
    if sep and (len(key) != 64 or any(c not in "0123456789abcdefABCDEF" for c in key)):
        raise argparse.ArgumentTypeError("the key after # must be 64 hex digits")
    return endpoint(text), (key.lower() if sep else None)


def endpoint(text: str) -> str:
    """The ZeroMQ endpoint for a dealer address without its key."""
    text = text.strip()
    if text.startswith(("ipc://", "inproc://")) and not text.endswith("://"):
        return text
    if "://" in text:
        scheme, text = text.split("://", 1)
        if scheme != "tcp":
            raise argparse.ArgumentTypeError(f"unknown scheme {scheme!r}")
    if text.startswith("["):  # [v6addr] or [v6addr]:port
        host, bracket, rest = text.partition("]")
        host += bracket
        if not bracket or host == "[]" or (rest and not rest.startswith(":")):
            raise argparse.ArgumentTypeError(f"bad IPv6 address in {text!r}")
        port = rest[1:]
    else:
        host, _, port = text.partition(":")
        if not host or any(c.isspace() or c == "/" for c in host) or ":" in port:
            raise argparse.ArgumentTypeError(f"bad host in {text!r}")
    if not port:
        return f"tcp://{host}:{DEFAULT_PORT}"
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise argparse.ArgumentTypeError(f"bad port in {text!r}")
    return f"tcp://{host}:{int(port)}"


# --- talking to the dealer -----------------------------------------------------


def log(name: str, text: str) -> None:
    print(f"wrong_jobber {name}: {text}", file=sys.stderr, flush=True)


def learn_key(ctx: zmq.Context, endpoint_: str, source: str | None, timeout_s: float) -> str:
    """The dealer's public key, asked with `hello` on its plaintext port (work port + 1)."""
    host, _, port = endpoint_.rpartition(":")
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(with_source(f"{host}:{int(port) + 1}", source))
        sock.send(hello(1))
        if not sock.poll(int(timeout_s * 1000)):
            raise SystemExit(f"no answer to hello from {endpoint_}")
        reply = parse_reply(sock.recv())
    finally:
        sock.close()
    if reply is None or reply["type"] != "hello_reply" or not isinstance(reply.get("key"), str):
        raise SystemExit(f"{endpoint_} did not answer hello with its key")
    return reply["key"]


def with_source(endpoint_: str, source: str | None) -> str:
    """Connect from `source` (docs/protocol.md: one machine, many source addresses)."""
    return endpoint_ if source is None else f"tcp://{source}:0;{endpoint_[len('tcp://') :]}"


class Dealer:
    """One DEALER socket under one identity (key pair), rebuilt after every failed
    contact (Lazy Pirate)."""

    def __init__(self, ctx: zmq.Context, address: str, key: str, source: str | None) -> None:
        self.ctx = ctx
        self.address = address
        self.server_key = z85.encode(bytes.fromhex(key))
        self.source = source
        self.public, self.secret = zmq.curve_keypair()  # this identity
        self.sock: zmq.Socket | None = None
        self.failures = 0  # failed contacts in a row

    def ask(self, frame: bytes, rid: int, timeout_s: float) -> dict[str, Any] | None:
        """Send one request; its reply, or None after a failed contact."""
        if self.sock is None:
            self.sock = self.ctx.socket(zmq.DEALER)
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
            self.sock.curve_publickey, self.sock.curve_secretkey = self.public, self.secret
            self.sock.curve_serverkey = self.server_key
            self.sock.connect(with_source(self.address, self.source))
        try:
            self.sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            return self._failed()
        deadline = time.monotonic() + timeout_s
        while (left_s := deadline - time.monotonic()) > 0:
            if not self.sock.poll(max(1, int(left_s * 1000))):
                break
            reply = parse_reply(self.sock.recv())
            if reply is not None and reply["re"] == rid:  # else malformed or stale
                if reply["type"] == "error":
                    return self._failed()
                self.failures = 0
                return reply
        return self._failed()

    def _failed(self) -> None:
        self.failures += 1
        self.close()
        return None

    def backoff_s(self) -> float:
        return min(MAX_BACKOFF_S, MIN_BACKOFF_S * 2.0 ** (self.failures - 1))

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None


class WrongJobber:
    def __init__(
        self,
        dealer: Dealer,
        name: str,
        max_idle_s: float | None,
        count: int | None,
        *,
        want: int = WANT,
        fuel: int = WRONG_FUEL,
        output: bytes = WRONG_OUTPUT,
        platform: str | None = None,
        nan_fuel: str | None = None,
    ):
        self.dealer = dealer
        self.name = name
        self.max_idle_s = max_idle_s
        self.count = count
        self.want = want
        self.fuel = fuel
        self.output = output
        self.platform = platform
        self.nan_fuel = nan_fuel
        self.cached: list[str] = []  # payload hashes received and verified
        self.unacked: dict[str, dict[str, Any]] = {}  # tag -> result
        self.made = 0  # wrong results made
        self.acked = 0  # wrong results the dealer took (acked or rejected)
        self.last_progress = time.monotonic()
        self.next_id = 1
        self.dealer_finished = False

    def run(self) -> int:
        while not self._finished():
            self.step()
        return self.stop()

    def step(self) -> None:
        if self.unacked:
            self._send_results()
        else:
            self._ask_for_work()

    def stop(self) -> int:
        if self.unacked:
            log(self.name, f"{len(self.unacked)} results never acknowledged")
        log(self.name, f"stopping: {self.acked} wrong results delivered")
        return 0

    def _finished(self) -> bool:
        if self.count is not None and self.acked >= self.count:
            return True
        if self.dealer_finished and not self.unacked:
            return True
        idle_s = time.monotonic() - self.last_progress
        return self.max_idle_s is not None and idle_s >= self.max_idle_s

    def _rid(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def _idle_left_s(self) -> float:
        if self.max_idle_s is None:
            return float("inf")
        return max(0.0, self.max_idle_s - (time.monotonic() - self.last_progress))

    def _wait(self, seconds: float) -> None:
        """Sleep, but not past the idle limit."""
        time.sleep(min(seconds, self._idle_left_s()))

    def _ask(self, frame: bytes, rid: int) -> dict[str, Any] | None:
        return self.dealer.ask(frame, rid, min(REQUEST_TIMEOUT_S, self._idle_left_s()))

    def _ask_for_work(self) -> None:
        want = self.want if self.count is None else max(1, min(self.want, self.count - self.made))
        rid = self._rid()
        reply = self._ask(
            bored(rid, self.name, want, self.cached, self.platform, self.nan_fuel), rid
        )
        kind = None if reply is None else reply["type"]
        if kind == "jobs":
            self._take_jobs(reply)
        elif kind == "retry_later":
            seconds = reply.get("seconds")
            ok = type(seconds) in (int, float) and seconds >= 0
            self._wait(seconds if ok else REFERRAL_WAIT_S)
        elif kind == "referral":
            self._wait(REFERRAL_WAIT_S)
        elif kind == "finished":  # no more work there: stop once nothing is held
            self.dealer_finished = True
        else:
            self._wait(self.dealer.backoff_s())

    def _take_jobs(self, reply: dict[str, Any]) -> None:
        payloads = reply.get("payloads")
        for sha, wasm in payloads.items() if isinstance(payloads, dict) else ():
            if isinstance(wasm, bytes) and hashlib.sha256(wasm).hexdigest() == sha:
                if sha not in self.cached:
                    self.cached.append(sha)
            else:
                log(self.name, f"payload {str(sha)[:12]} does not match its hash; ignored")
        jobs = reply.get("jobs")
        for job in jobs if isinstance(jobs, list) else ():
            tag = job.get("tag") if isinstance(job, dict) else None
            if isinstance(tag, str):
                self.unacked[tag] = wrong_result(tag, self.fuel, self.output)
                self.made += 1
        if jobs:
            self.last_progress = time.monotonic()
        else:  # nothing for us (we asked for none, or none fits): not a busy loop
            self._wait(REFERRAL_WAIT_S)

    def _send_results(self) -> None:
        rid = self._rid()
        batch = list(self.unacked.values())[:MAX_BATCH]
        reply = self._ask(results(rid, self.name, batch), rid)
        if reply is None or reply["type"] != "ack":
            self._wait(self.dealer.backoff_s())
            return
        done = [t for t in reply.get("tags", ()) if isinstance(t, str)]
        for rej in reply.get("rejected", ()):
            if isinstance(rej, dict) and isinstance(rej.get("tag"), str):
                log(self.name, f"result {rej['tag']} refused: {rej.get('code')}: {rej.get('text')}")
                done.append(rej["tag"])
        for tag in done:
            if self.unacked.pop(tag, None) is not None:
                self.acked += 1
        self.last_progress = time.monotonic()


def hoard(ctx: zmq.Context, endpoint_: str, key: str, args: argparse.Namespace) -> int:
    """A new identity for every `bored`, asking for --want jobs; never answers any."""
    taken = 0
    idle_since = time.monotonic()
    names = 0
    while args.max_idle is None or time.monotonic() - idle_since < args.max_idle:
        dealer = Dealer(ctx, endpoint_, key, args.source)
        names += 1
        reply = dealer.ask(bored(1, f"{args.name}-{names}", args.want, []), 1, REQUEST_TIMEOUT_S)
        jobs = reply.get("jobs") if reply is not None and reply["type"] == "jobs" else None
        if isinstance(jobs, list) and jobs:
            taken += len(jobs)
            idle_since = time.monotonic()
        else:
            time.sleep(0.2)
        dealer.close()
    log(args.name, f"stopping: took {taken} replicas under {names} names")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A borednet jobber that lies about every job.")
    parser.add_argument("dealer", type=address, help="host, host:port or tcp://host:port[#KEY]")
    parser.add_argument("--name", default="wrong-jobber", help="jobber name sent to the dealer")
    parser.add_argument(
        "--max-idle",
        type=float,
        metavar="SECONDS",
        help="exit after this many seconds without jobs",
    )
    parser.add_argument(
        "--count", type=int, metavar="N", help="exit after N wrong results are delivered"
    )
    parser.add_argument("--identities", type=int, default=1, help="key pairs used at once")
    parser.add_argument("--source", default=None, help="connect from this local address")
    parser.add_argument("--want", type=int, default=WANT, help="jobs asked for at once")
    parser.add_argument("--fuel", type=int, default=WRONG_FUEL, help="fuel claimed per result")
    parser.add_argument(
        "--output-bytes", type=int, default=None, help="send this many bytes of output"
    )
    parser.add_argument("--hoard", action="store_true", help="take jobs, never answer")
    parser.add_argument(
        "--platform", default=None, help="the host.platform to claim (default: none said)"
    )
    parser.add_argument(
        "--nan-fuel", default=None, help="the host.nan_fuel to claim (default: none said)"
    )
    args = parser.parse_args(argv)
    if args.count is not None and args.count < 1:
        parser.error("--count must be at least 1")
    (endpoint_, key) = args.dealer
    ctx = zmq.Context()
    try:
        if key is None:
            key = learn_key(ctx, endpoint_, args.source, REQUEST_TIMEOUT_S)
        if args.hoard:
            return hoard(ctx, endpoint_, key, args)
        output = WRONG_OUTPUT if args.output_bytes is None else b"7" * args.output_bytes
        liars = [
            WrongJobber(
                Dealer(ctx, endpoint_, key, args.source),
                args.name if args.identities == 1 else f"{args.name}-{i}",
                args.max_idle,
                args.count,
                want=args.want,
                fuel=args.fuel,
                output=output,
                platform=args.platform,
                nan_fuel=args.nan_fuel,
            )
            for i in range(args.identities)
        ]
        while not all(liar._finished() for liar in liars):
            for liar in liars:
                if not liar._finished():
                    liar.step()
        for liar in liars:
            liar.stop()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        ctx.destroy(linger=0)


if __name__ == "__main__":
    sys.exit(main())
