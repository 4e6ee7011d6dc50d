"""The borednet wire: every message a dealer and a jobber exchange.

Theory of operation
-------------------
A jobber holds a ZeroMQ DEALER socket connected to each dealer's ROUTER
socket. Every message is one ZeroMQ frame holding one msgpack map::

    {"v": 1, "type": "<name>", ...fields}

The work socket is CurveZMQ-encrypted: a jobber's identity is the public key
its handshake proved, never a name it writes (``jobber`` fields are labels for
people). A dealer also answers a plaintext socket on the next port up with
its public key (``hello``) and its status, for jobbers that trust on first use.

Requests (``bored``, ``results``, ``status``, ``hello``, ``deny``, ``alive``,
``work_query``) carry an
``id`` chosen by the sender; the reply to a request carries ``re`` equal to
that id, so a late reply to a request that already timed out is recognised
and dropped.

    jobber                          dealer
    bored(id, want=n)      ->
                           <-  jobs(re) | referral(re) | retry_later(re) | error(re)
    results(id, [r...])    ->
                           <-  ack(re, tags, rejected) | error(re)
    status(id)             ->
                           <-  status_reply(re, info) | error(re)
    hello(id)              ->  (plaintext socket)
                           <-  hello_reply(re, key)
    deny(id, key)          ->  (admin key only)
                           <-  admin_reply(re, text) | error(re)

    dealer                          peer dealer (either port)
    work_query(id)         ->
                           <-  work_offer(re, jobs, limits, left, finished)

``jobs`` carries several jobs and ``results`` several results: batching is how
one dealer goes past the message rate of one Python event loop.

This module is the codec, and the only place that trusts nothing: ``decode``
checks the version, the type, every field's type and every size cap, and raises
:class:`ProtocolError` (never anything else) for bytes that are not a valid
message. The records are declared in protocol._records and protocol._messages,
in the schema language of protocol._schema, from which their checks follow.
docs/protocol.md is the description for other implementations; keep the two in
step.
"""

from __future__ import annotations

import msgpack

from protocol._messages import MESSAGES, Message
from protocol._records import (
    MAX_ARGS,
    MAX_MESSAGE_BYTES,
    MAX_OUTPUT_BYTES,
    MAX_ROTATIONS,
    MAX_STDIN_BYTES,
    Rotation,
)
from protocol._schema import MAX_U64, ProtocolError, VersionError, _Bad, _show

__all__ = [
    "MESSAGES",
    "VERSION",
    "Message",
    "ProtocolError",
    "VersionError",
    "decode",
    "encode",
    "request_id",
    # where modules that read them here before the split (dealer, relay, net) still
    # find them; their home is protocol._records
    "MAX_ARGS",
    "MAX_OUTPUT_BYTES",
    "MAX_ROTATIONS",
    "MAX_STDIN_BYTES",
    "Rotation",
]

VERSION = 2  # 2: CurveZMQ identities, hello, deny; see docs/protocol.md


def encode(msg: Message) -> bytes:
    """The single frame that carries `msg`; ProtocolError if `decode` would refuse it."""
    body = msg._to_wire()
    # the same checks decode applies, so nothing leaves that the peer must refuse
    try:
        type(msg)._valid(body)
    except _Bad as e:
        raise e.at(msg.TYPE) from None
    body["v"] = VERSION
    body["type"] = msg.TYPE
    try:
        data = msgpack.packb(body, use_bin_type=True)
    except (ValueError, TypeError, OverflowError) as e:  # e.g. lone surrogates
        raise ProtocolError(f"{msg.TYPE}: cannot encode: {e}") from e
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"{msg.TYPE} message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return data


def decode(data: bytes) -> Message:
    """Parse one frame; raise ProtocolError for anything that is not a valid message."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"expected bytes, got {type(data).__name__}")
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        body = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
        )
    except Exception as e:  # msgpack raises many types (ExtraData, FormatError, ...)
        raise ProtocolError(f"not msgpack: {type(e).__name__}: {e}") from e
    if type(body) is not dict:
        raise ProtocolError(f"expected a msgpack map, got {type(body).__name__}")
    version = body.get("v")
    if type(version) is not int or version != VERSION:
        raise VersionError(f"protocol version {_show(version)} is not {VERSION}")
    kind = body.get("type")
    cls = MESSAGES.get(kind) if type(kind) is str else None
    if cls is None:
        raise ProtocolError(f"unknown message type {_show(kind)}")
    return cls._from_wire(body, kind)


def request_id(data: bytes) -> int:
    """Best effort: the `id` of a request that failed to decode, else 0."""
    try:
        body = msgpack.unpackb(data, raw=False)
        rid = body.get("id") if type(body) is dict else None
    except Exception:
        return 0
    return rid if type(rid) is int and 0 <= rid <= MAX_U64 else 0
