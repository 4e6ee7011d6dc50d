"""Local control of a running jobber, as BOINC's manager talks to its daemon.

The jobber serves a ZeroMQ REP socket on `ipc://<data dir>/control`; the data
directory is owner-only (0700) and so is the socket file (0600), so only the
user running the jobber (and root) can reach it. A request is a msgpack map:

    {"cmd": "status" | "suspend" | "resume" | "quit"}
    {"cmd": "pause" | "unpause", "dealer": ADDRESS}       asking it for work
    {"cmd": "prefs", "set": {NAME: VALUE or nil, ...}}    jobber._prefs (nil: no limit)
    {"cmd": "accept_key", "dealer": ADDRESS#KEY}          a key mismatch, accepted

The reply is a msgpack map, `{"ok": true, ...the status}` or `{"ok": false,
"error": text}`. What the owner sets is kept in the data directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgpack
import zmq

COMMANDS = ("status", "suspend", "resume", "quit", "pause", "unpause", "prefs", "accept_key")
MAX_SOCKET_PATH = 107  # bytes in a Unix socket's path (Linux: sun_path, 108 with its NUL)
MAX_REQUEST_BYTES = 4096


def control_endpoint(data_dir: Path) -> str:
    return f"ipc://{data_dir.resolve() / 'control'}"


def serve_socket(ctx: zmq.Context, data_dir: Path) -> zmq.Socket:
    os.chmod(data_dir, 0o700)
    path = data_dir.resolve() / "control"
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:  # ZeroMQ's bind would only say "too long"
        raise ValueError(
            f"the data directory's path is too long for the jobber's control socket, "
            f"{path} ({len(os.fsencode(path))} bytes; a Unix socket's path has at most "
            f"{MAX_SOCKET_PATH}): give a shorter --data-dir"
        )
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
    path.unlink(missing_ok=True)  # left by a killed jobber; we hold the data dir's lock
    sock.bind(control_endpoint(data_dir))
    os.chmod(path, 0o600)
    return sock


def parse_request(data: bytes) -> dict[str, Any]:
    """The request (its "cmd" one of COMMANDS); ValueError with a clear text for anything
    else. The fields a command takes are checked where it is carried out."""
    try:
        body = msgpack.unpackb(data, raw=False)
    except Exception as e:
        raise ValueError(f"not msgpack: {e}") from e
    cmd = body.get("cmd") if isinstance(body, dict) else None
    if cmd not in COMMANDS:
        raise ValueError(f"expected {{'cmd': one of {', '.join(COMMANDS)}}}")
    return body


def encode_reply(body: dict[str, Any]) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def ask(data_dir: Path, cmd: str | dict[str, Any], timeout_s: float = 5.0) -> dict[str, Any]:
    """Send one command (a name, or a whole request) to the jobber owning `data_dir`."""
    path = data_dir / "control"
    if not path.exists():
        raise ConnectionError(f"no jobber is running on {data_dir}")
    owner = path.stat().st_uid
    if owner != os.geteuid():  # someone else's socket would hear our commands, and lie
        raise ConnectionError(f"{path} belongs to another user (uid {owner}); not talking to it")
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    silent = f"the jobber on {data_dir} did not answer within {timeout_s:g} s"
    return request(sock, control_endpoint(data_dir), cmd, timeout_s, silent)


def request(
    sock: zmq.Socket, endpoint: str, cmd: str | dict[str, Any], timeout_s: float, silent: str
) -> dict[str, Any]:
    """One request on a fresh REQ socket (a lost reply leaves nothing stuck: it is closed
    after): connect, send, and the reply map; TimeoutError (`silent`) if none comes."""
    try:
        sock.connect(endpoint)
        sock.send(msgpack.packb(cmd if isinstance(cmd, dict) else {"cmd": cmd}))
        if not sock.poll(int(timeout_s * 1000)):
            raise TimeoutError(silent)
        reply = msgpack.unpackb(sock.recv(), raw=False)
    finally:
        sock.close()
    if not isinstance(reply, dict):
        raise ConnectionError("malformed reply from the jobber")
    return reply
