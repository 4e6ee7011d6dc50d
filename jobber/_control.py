"""Local control of a running jobber, as BOINC's manager talks to its daemon.

The jobber serves a ZeroMQ REP socket on `ipc://<data dir>/control`; the data
directory is owner-only (0700) and so is the socket file (0600), so only the
user running the jobber (and root) can reach it. A request is a msgpack map
`{"cmd": "status" | "suspend" | "resume" | "quit"}`; the reply is a msgpack
map, `{"ok": true, ...}` or `{"ok": false, "error": text}`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgpack
import zmq

COMMANDS = ("status", "suspend", "resume", "quit")
MAX_REQUEST_BYTES = 4096


def control_endpoint(data_dir: Path) -> str:
    return f"ipc://{data_dir.resolve() / 'control'}"


def serve_socket(ctx: zmq.Context, data_dir: Path) -> zmq.Socket:
    os.chmod(data_dir, 0o700)
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
    path = data_dir.resolve() / "control"
    path.unlink(missing_ok=True)  # left by a killed jobber; we hold the data dir's lock
    sock.bind(control_endpoint(data_dir))
    os.chmod(path, 0o600)
    return sock


def parse_request(data: bytes) -> str:
    """The command asked for; ValueError with a clear text for anything else."""
    try:
        body = msgpack.unpackb(data, raw=False)
    except Exception as e:
        raise ValueError(f"not msgpack: {e}") from e
    cmd = body.get("cmd") if isinstance(body, dict) else None
    if cmd not in COMMANDS:
        raise ValueError(f"expected {{'cmd': one of {', '.join(COMMANDS)}}}")
    return cmd


def encode_reply(body: dict[str, Any]) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def ask(data_dir: Path, cmd: str | dict[str, Any], timeout_s: float = 5.0) -> dict[str, Any]:
    """Send one command to the jobber owning `data_dir`: a name ("status"), or a whole
    request map (`{"cmd": "pause", "dealer": ADDR}`)."""
    path = data_dir / "control"
    if not path.exists():
        raise ConnectionError(f"no jobber is running on {data_dir}")
    owner = path.stat().st_uid
    if owner != os.geteuid():  # someone else's socket would hear our commands, and lie
        raise ConnectionError(f"{path} belongs to another user (uid {owner}); not talking to it")
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(control_endpoint(data_dir))
        sock.send(msgpack.packb({"cmd": cmd} if isinstance(cmd, str) else cmd))
        if not sock.poll(int(timeout_s * 1000)):
            raise TimeoutError(f"the jobber on {data_dir} did not answer within {timeout_s:g} s")
        reply = msgpack.unpackb(sock.recv(), raw=False)
    finally:
        sock.close()
    if not isinstance(reply, dict):
        raise ConnectionError("malformed reply from the jobber")
    return reply
