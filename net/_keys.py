"""CurveZMQ key pairs on disk, and the hex form the addresses and the wire use.

Keys are made by libzmq (`zmq.curve_keypair`) and stored in zmq.auth's
certificate format (`NAME.key` holds the public key, `NAME.key_secret` both),
so they can be read and made by any ZeroMQ tool. Outside ZeroMQ's own calls a
key is written as 64 lowercase hexadecimal digits: the raw 32 bytes of a
Curve25519 public key.

A process serving on a key pair holds its lock (`KeyLock`, `NAME.lock` beside
`NAME.key_secret`), so that two servers never run on one key at once by accident:
to jobbers and allocators they would be one dealer.
"""

from __future__ import annotations

import fcntl
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

from net._files import write_atomic

KEY_HEX_LEN = 64
HOLDER_MAX = 500  # characters of the lock file shown to the process refused


@functools.lru_cache(maxsize=65536)  # the dealer converts every message's User-Id
def hex_of_z85(key: bytes | str) -> str:
    """The 64 hex digits of a 40-character Z85 key."""
    if isinstance(key, str):
        key = key.encode("ascii")
    raw = z85.decode(key)
    if len(raw) != 32:
        raise ValueError("a CurveZMQ key is 32 bytes")
    return raw.hex()


def z85_of_hex(key: str) -> bytes:
    """The Z85 form (what libzmq's socket options take) of a 64-hex-digit key."""
    raw = bytes.fromhex(key)
    if len(raw) != 32:
        raise ValueError(f"a CurveZMQ key is {KEY_HEX_LEN} hexadecimal digits")
    return z85.encode(raw)


@dataclass(frozen=True, slots=True)
class KeyPair:
    public: bytes  # Z85, for socket options
    secret: bytes  # Z85

    @property
    def public_hex(self) -> str:
        return hex_of_z85(self.public)


def secret_path(path: Path) -> Path:
    """The secret certificate: PATH if it ends in .key_secret, else PATH.key_secret."""
    path = Path(path)
    return path if path.name.endswith(".key_secret") else path.with_name(path.name + ".key_secret")


def public_key_path(path: Path) -> Path:
    """The public certificate: PATH.key, beside PATH.key_secret."""
    secret = secret_path(path)
    return secret.with_name(secret.name.removesuffix("_secret"))


def load_public_key(path: Path) -> str:
    """The hex public key in PATH.key (no secret is read); ValueError naming the file if
    it is not a readable certificate."""
    public = public_key_path(path)
    try:
        pub, _ = zmq.auth.load_certificate(public)
        return hex_of_z85(pub)
    except (OSError, ValueError) as e:
        raise ValueError(f"{public}: not a readable CurveZMQ certificate: {e}") from e


def create_key_pair(path: Path) -> KeyPair:
    """Make a new key pair at PATH.key_secret (mode 0600) and PATH.key; refuse to overwrite."""
    secret, public = secret_path(path), public_key_path(path)
    if secret.exists():
        raise FileExistsError(f"{secret} exists already; refusing to replace a key")
    secret.parent.mkdir(parents=True, exist_ok=True)
    pub, sec = zmq.curve_keypair()
    when = "made by borednet"
    body = f'#   {when}\ncurve\n    public-key = "{pub.decode()}"\n'
    # the secret is written with its final mode before any byte of it is
    write_atomic(secret, (body + f'    secret-key = "{sec.decode()}"\n').encode(), mode=0o600)
    write_atomic(public, body.encode(), mode=0o644)
    return KeyPair(pub, sec)


def load_key_pair(path: Path) -> KeyPair:
    """Read PATH.key_secret; ValueError names the file if it is not a usable secret key."""
    secret = secret_path(path)
    try:
        pub, sec = zmq.auth.load_certificate(secret)
    except (OSError, ValueError) as e:
        raise ValueError(f"{secret}: not a readable CurveZMQ certificate: {e}") from e
    if sec is None:
        raise ValueError(f"{secret} holds no secret key")
    if os.stat(secret).st_mode & 0o077:
        raise ValueError(f"{secret} can be read by other users; chmod 600 it")
    try:
        if z85.decode(zmq.curve_public(sec)) != z85.decode(pub):
            raise ValueError(f"{secret}: its public key does not match its secret key")
    except (ValueError, zmq.ZMQError) as e:
        raise ValueError(f"{secret}: not a valid CurveZMQ key pair: {e}") from e
    return KeyPair(pub, sec)


def load_or_create_key_pair(path: Path) -> tuple[KeyPair, bool]:
    """The key pair at PATH, made on first use. Returns (pair, made_now)."""
    if secret_path(path).exists():
        return load_key_pair(path), False
    return create_key_pair(path), True


def load_public_keys(directory: Path) -> frozenset[str]:
    """The hex public keys of every `*.key` certificate in DIRECTORY (zmq.auth's format)."""
    try:
        keys = zmq.auth.load_certificates(directory)
    except (OSError, ValueError) as e:
        raise ValueError(f"{directory}: cannot read certificates: {e}") from e
    return frozenset(hex_of_z85(k) for k in keys)


class KeyInUse(Exception):
    """Another process holds the lock of a key pair."""


def lock_path(path: Path) -> Path:
    """The lock of the key pair at PATH: PATH.lock, beside PATH.key_secret."""
    secret = secret_path(path)
    return secret.with_name(secret.name.removesuffix(".key_secret") + ".lock")


class KeyLock:
    """An exclusive hold of the key pair at PATH for as long as this is open (or the
    process lives): `flock` on PATH.lock, which the kernel lets go when the process
    ends however it ends, so a lock file left behind holds nothing. The file says who
    holds it (`holder`), for the message of the process refused. Take it before making
    or reading the key, so that two processes starting at once cannot both make one.
    Raises KeyInUse naming the key file and its holder."""

    def __init__(self, path: Path, holder: str) -> None:
        secret = secret_path(path)
        self.path = lock_path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            said = os.pread(fd, HOLDER_MAX, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise KeyInUse(f"{secret} is in use by {said or 'another process'}") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()}, {holder}\n".encode(), 0)
        self._fd: int | None = fd

    def close(self) -> None:
        """Let go (closing the file releases the flock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> KeyLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
