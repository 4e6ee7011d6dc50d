"""Control of a running jobber from another machine, over CurveZMQ: what the manager page
uses when its owner opens it elsewhere.

The jobber, started with `--control-remote HOST:PORT`, serves a REP socket there as a
CurveZMQ server with its identity key (DATA_DIR/identity.key, the key dealers know it
by). A ZAP authenticator (pyzmq's zmq.auth, in a thread of its own, on a ZeroMQ
context of its own) admits only a client whose public key is in a certificate in
DATA_DIR/managers/ (`*.key`, zmq.auth's format, as `python -m dealer keygen` writes
them); the folder is read at each handshake, so a key put there is admitted at once and
one removed is refused from the next connection on. Each admitted request is relayed as
it came to the jobber's local control socket (jobber._control.ask), which checks it, and
the reply goes back: this thread, like the page's, never touches the jobber's loop.

The owner's side, `python -m jobber manager --remote HOST:PORT#KEY --key MINE`, serves
the page on their own loopback with `client` in place of the local control socket.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import zmq
from zmq.auth.thread import ThreadAuthenticator

from jobber import _control
from net._http import parse_http
from net._keys import KeyPair, hex_of_z85, load_key_pair, load_public_keys, z85_of_hex
from protocol._addr import dealer_address, split_key

log = logging.getLogger(__name__)

MANAGERS_DIR = "managers"
POLL_MS = 500  # how soon the relay's thread sees it is to stop
MAX_REPLY_BYTES = 16 << 20  # a status, however many dealers and files it lists


class _Admitted:
    """zmq.auth's credentials provider: the keys in DATA_DIR/managers/, read each time."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def callback(self, domain: str, key: bytes) -> bool:
        try:
            admitted = hex_of_z85(key) in load_public_keys(self.directory)
        except ValueError as e:  # an unreadable folder admits no one
            log.warning("remote control: %s", e)
            return False
        if not admitted:
            log.info("remote control: refused key %s (not in %s)", hex_of_z85(key), self.directory)
        return admitted


class RemoteControl:
    """The relay: CurveZMQ REP on `address`, admitted requests to the local control socket."""

    def __init__(self, data_dir: Path, address: str, keys: KeyPair) -> None:
        host, port = parse_http(address)
        host = f"[{host}]" if ":" in host else host
        managers = data_dir / MANAGERS_DIR
        managers.mkdir(mode=0o700, exist_ok=True)
        self.data_dir = data_dir
        self._ctx = zmq.Context()
        self._auth = ThreadAuthenticator(self._ctx, log=logging.getLogger(f"{__name__}.zap"))
        self._auth.start()
        self._auth.configure_curve_callback("*", _Admitted(managers))
        sock = self._ctx.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, _control.MAX_REQUEST_BYTES)
        sock.curve_server = True
        sock.curve_publickey, sock.curve_secretkey = keys.public, keys.secret
        try:
            sock.bind(f"tcp://{host}:{port or '*'}")
        except zmq.ZMQError as e:
            sock.close()
            self._auth.stop()
            self._ctx.term()
            raise OSError(f"--control-remote {address}: {e}") from e
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.address = f"{endpoint}#{keys.public_hex}"
        self._sock = sock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="remote-control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if self._sock.poll(POLL_MS):
                data = self._sock.recv()
                self._sock.send(_control.encode_reply(self._relay(data)))
        self._sock.close()

    def _relay(self, data: bytes) -> dict[str, Any]:
        try:
            body = msgpack.unpackb(data, raw=False)
        except Exception as e:  # whatever a peer sends: it is told, nothing breaks
            return {"ok": False, "error": f"not msgpack: {e}"}
        if not isinstance(body, dict):
            return {"ok": False, "error": "expected a msgpack map {'cmd': ...}"}
        try:
            return _control.ask(self.data_dir, body)
        except (ConnectionError, TimeoutError) as e:
            return {"ok": False, "error": str(e)}

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._auth.stop()
        self._ctx.term()


def start(data_dir: Path, address: str, keys: KeyPair) -> RemoteControl:
    """`--control-remote HOST:PORT`: serve the relay; its address (with the key) logged."""
    relay = RemoteControl(data_dir, address, keys)
    log.info("remote control on %s: admits the keys in %s", relay.address, data_dir / MANAGERS_DIR)
    return relay


def client(address: str, key_file: Path, timeout_s: float = 5.0) -> Callable[[str | dict], dict]:
    """`ask` for the manager page, to the jobber at `address` (HOST:PORT#KEY, as its
    remote control logs it) with the owner's key pair `key_file` (PATH.key_secret)."""
    endpoint, server_key = split_key(dealer_address(address))
    if server_key is None:
        raise ValueError(f"--remote {address}: end it in #KEY, as the jobber's log gives it")
    mine = load_key_pair(key_file)
    ctx = zmq.Context.instance()

    def ask(cmd: str | dict) -> dict:
        sock = ctx.socket(zmq.REQ)  # one per request: a lost reply leaves nothing stuck
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY_BYTES)
        sock.curve_serverkey = z85_of_hex(server_key)
        sock.curve_publickey, sock.curve_secretkey = mine.public, mine.secret
        silent = (
            f"the jobber at {endpoint} did not answer within {timeout_s:g} s (is "
            f"{mine.public_hex} admitted in its {MANAGERS_DIR}/ folder?)"
        )
        return _control.request(sock, endpoint, cmd, timeout_s, silent)

    return ask
