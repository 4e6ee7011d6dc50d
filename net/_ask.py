"""One-shot asks from a command line: a server's status or key on its plaintext port, an
admin's request on its encrypted one. Each asks once and waits at most its timeout.

Each ask is one request on a link of its own (net._link: its id, its deadline, and
the reply that answers it); the socket is fresh for each ask and closed after it,
so a failed ask leaves nothing behind to reset."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

import zmq

import protocol as p
from net._keys import KeyPair, z85_of_hex
from net._link import Link


def _ask(sock: zmq.Socket, msg: p.Message, address: str, timeout_s: float) -> p.Message:
    line = Link(timeout_s)
    request = line.sent(msg.TYPE, time.monotonic(), msg.id)
    sock.send(p.encode(msg))
    while True:
        left_ms = int((request.deadline - time.monotonic()) * 1000)
        if left_ms < 0 or not sock.poll(left_ms):
            raise TimeoutError(f"no answer from {address} within {timeout_s:g} s")
        reply = p.decode(sock.recv())
        # an error answers even when it names no id of ours (a server that could not read
        # the request says re 0); on a fresh socket no other reply can come, and one that
        # does is not taken for the answer
        if line.answered(getattr(reply, "re", None), time.monotonic()) or isinstance(
            reply, p.Error
        ):
            break
    if isinstance(reply, p.Error):
        raise RuntimeError(f"{address} refused: {reply.code.value}: {reply.text}")
    return reply


def public_ask(address: str, msg: p.Message, timeout_s: float) -> p.Message:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IPV6, 1)  # the dealer may be IPv6
    try:
        sock.connect(p.public_endpoint(p.dealer_address(address)))
        return _ask(sock, msg, address, timeout_s)
    finally:
        sock.close()


def query_status(address: str, timeout_s: float = 5.0, page: int = 0) -> dict:
    """A dealer's status, asked on its plaintext port (no key needed). A dealer that says
    it is busy (status is rationed per address) is asked again when it says, within
    `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = max(0.05, deadline - time.monotonic())
        try:
            reply = public_ask(address, p.StatusQuery(1, page), left)
        except RuntimeError as e:
            busy = _BUSY.search(str(e))
            if busy is None or time.monotonic() + float(busy.group(1)) >= deadline:
                raise
            time.sleep(float(busy.group(1)))
            continue
        if not isinstance(reply, p.StatusReply):
            raise RuntimeError(f"{address} answered with {reply.TYPE}")
        return reply.info


_BUSY = re.compile(r"busy: .*ask again in ([0-9.]+) s")  # the dealer's ration (docs/protocol.md)


def admin_ask(
    endpoint: str,
    server_key: str | None,
    msg: p.Message,
    admin: KeyPair,
    address: str,
    timeout_s: float,
) -> p.Message:
    """One request to a server's encrypted port, speaking as `admin` (its key pair is the
    proof of who asks); the server's key is learnt on its plaintext port when not given."""
    if server_key is None:  # learn it now; the admin's own key still authenticates us
        hello = public_ask(endpoint, p.Hello(1), timeout_s)
        if not isinstance(hello, p.HelloReply):
            raise RuntimeError(f"{address} answered hello with {hello.TYPE}")
        server_key = hello.key
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IPV6, 1)  # the dealer may be IPv6
    sock.curve_secretkey, sock.curve_publickey = admin.secret, admin.public
    sock.curve_serverkey = z85_of_hex(server_key)
    try:
        sock.connect(endpoint)
        return _ask(sock, msg, address, timeout_s)
    finally:
        sock.close()


def parse_value(text: str) -> Any:
    """A setting's value as typed on a command line: empty, `none` or `null` for none;
    true/false (yes/no, on/off); a whole number; a number; else the text itself."""
    low = text.strip().lower()
    if low in ("", "none", "null"):
        return None
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def parse_settings(items: Sequence[str]) -> dict[str, Any]:
    """`NAME=VALUE` words as {name: value} (dashes in names read as underscores; `NAME=`
    clears it); ValueError names a word that is not one."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"{item!r}: write a setting as NAME=VALUE (NAME= clears it)")
        out[name.strip().replace("-", "_")] = parse_value(value)
    return out
