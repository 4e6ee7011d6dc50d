"""Signed payloads: a task author's ed25519 key, its rotations, and the jobber's verifier.

What is signed
--------------
A payload signature is the author key's ed25519 signature (PyNaCl, libsodium)
of ``PAYLOAD_DOMAIN + sha256 digest`` (the 32 raw bytes of the payload's
SHA-256); a rotation link is the old key's signature of ``ROTATION_DOMAIN +
the new key's 32 bytes``. The two prefixes differ, so neither signature can be
passed off as the other, nor as anything else signed with the same key.

Rotation, as BOINC does it
--------------------------
An author who moves to a new key signs the new public key with the old one
(``python -m dealer rotate OLD NEW``). The links are kept beside the new key
(``NEW.rotations``, oldest first) and sent with every signature, so a jobber
that trusts only an older key accepts the new one, and from then on trusts it
(``Verdict.learned``). A chain is at most MAX_ROTATIONS links long.

Files
-----
``PATH.sign_secret`` (mode 0600): the author's key pair, as two lines
``public HEX`` and ``secret HEX`` (the 32-byte ed25519 seed). ``PATH.sign``:
the public key, one line of 64 hex digits, the file a jobber is given with
``--trust``. ``PATH.rotations``: one link a line, ``OLD NEW SIGNATURE`` in
hex. Lines starting with ``#`` are comments.

``verify_payload`` is pure (no files, no clock) and never raises: whatever it
is given, it says accepted or refused, and why.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import nacl.exceptions
import nacl.signing

from protocol._records import MAX_ROTATIONS, SIGNATURE_BYTES, Rotation, Signature

PAYLOAD_DOMAIN = b"borednet payload v1\0"
ROTATION_DOMAIN = b"borednet key rotation v1\0"
SECRET_SUFFIX = ".sign_secret"
PUBLIC_SUFFIX = ".sign"
ROTATIONS_SUFFIX = ".rotations"

_HEX64 = re.compile(r"\A[0-9a-f]{64}\Z")
_HEX_SIG = re.compile(r"\A[0-9a-f]{128}\Z")


def payload_message(sha256: str) -> bytes:
    """The bytes a payload signature signs: PAYLOAD_DOMAIN + the 32-byte digest."""
    if type(sha256) is not str or not _HEX64.match(sha256):
        raise ValueError(f"not a sha256 in lowercase hex: {sha256!r:.80}")
    return PAYLOAD_DOMAIN + bytes.fromhex(sha256)


def rotation_message(new_key: str) -> bytes:
    """The bytes a rotation link signs: ROTATION_DOMAIN + the new key's 32 bytes."""
    if type(new_key) is not str or not _HEX64.match(new_key):
        raise ValueError(f"not an ed25519 public key in lowercase hex: {new_key!r:.80}")
    return ROTATION_DOMAIN + bytes.fromhex(new_key)


def _public_hex(key: nacl.signing.SigningKey) -> str:
    return bytes(key.verify_key).hex()


def _verifies(key: Any, message: bytes, sig: Any) -> bool:
    """True if `sig` is the ed25519 signature of `message` by the hex public key `key`."""
    if type(key) is not str or not _HEX64.match(key):
        return False
    if type(sig) is not bytes or len(sig) != SIGNATURE_BYTES:
        return False
    try:
        nacl.signing.VerifyKey(bytes.fromhex(key)).verify(message, sig)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False  # BadSignatureError is a CryptoError; a bad point is one too
    return True


def sign_rotation(old: nacl.signing.SigningKey, new_key: str) -> Rotation:
    """The link by which the key `old` hands over to the public key `new_key` (hex)."""
    old_key = _public_hex(old)
    if new_key == old_key:
        raise ValueError("a key cannot rotate to itself")
    sig = old.sign(rotation_message(new_key)).signature
    return Rotation(old_key, new_key, sig)


def chain_problem(chain: Any, end: Any) -> str | None:
    """Why `chain` is not a good rotation chain ending at the key `end`, or None if it is.

    Good: at most MAX_ROTATIONS Rotation links, oldest first, each signed by its old
    key, each link's new key the next one's old key, and the last one's new key `end`.
    An empty chain is good (it ends wherever it starts).
    """
    if type(chain) not in (tuple, list):
        return "the rotation chain is not a list of links"
    if len(chain) > MAX_ROTATIONS:
        return f"the rotation chain has {len(chain)} links, more than {MAX_ROTATIONS}"
    for i, link in enumerate(chain, 1):
        if type(link) is not Rotation:
            return f"rotation link {i} is not a rotation"
        if type(link.new) is not str or not _HEX64.match(link.new):
            return f"rotation link {i} names no valid new key"
        if not _verifies(link.old, rotation_message(link.new), link.sig):
            return f"rotation link {i} (to {_short(link.new)}) is not signed by its old key"
        if i > 1 and link.old != chain[i - 2].new:
            return f"rotation link {i} starts at {_short(link.old)}, not where link {i - 1} ends"
    if chain and chain[-1].new != end:
        return f"the rotation chain ends at {_short(chain[-1].new)}, not at the signer"
    return None


def _short(key: Any) -> str:
    return key[:16] if type(key) is str else repr(key)[:16]


# --- the verifier -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """What verify_payload found.

    accepted: run the payload (True) or refuse it (False).
    reason:   one line for a log, saying who signed it or why it is refused.
    signer:   the key (hex) whose good signature of this payload the record holds, even
              when refused (say, for not being trusted); None if there is none.
    learned:  accepted through a rotation chain: the keys, newest last, that the chain
              vouches for and that were not trusted yet; trust them from now on. Empty
              otherwise (and always empty when refused).
    """

    accepted: bool
    reason: str
    signer: str | None = None
    learned: tuple[str, ...] = ()


def _trusted_set(trusted: Any) -> frozenset[str]:
    if trusted is None or isinstance(trusted, str | bytes):
        return frozenset()  # a lone key string is a mistake, not a set of one
    try:
        items = list(trusted)
    except TypeError:
        return frozenset()
    return frozenset(k.lower() for k in items if type(k) is str and _HEX64.match(k.lower()))


def verify_payload(sha256: str, signature: Signature | None, trusted: Collection[str]) -> Verdict:
    """May a jobber that trusts the keys `trusted` (hex) run the payload with this hash?

    `signature` is `jobs.signatures[sha256]` as decoded (None: there was none). Accepted
    when its `sig` is a good signature of this payload by its `key`, its chain is good
    (chain_problem), and either `key` is trusted or some link of the chain starts at a
    trusted key; then `learned` holds the keys after the last trusted one. Refused, with
    the reason, otherwise. Never raises.
    """
    if type(sha256) is not str or not _HEX64.match(sha256):
        return Verdict(False, f"{sha256!r:.80} is not a payload hash (64 lowercase hex digits)")
    what = f"payload {sha256[:12]}"
    if signature is None:
        return Verdict(False, f"{what} is not signed")
    if type(signature) is not Signature:
        return Verdict(False, f"{what}: its signature is not a signature record")
    key = signature.key
    if type(key) is not str or not _HEX64.match(key):
        return Verdict(False, f"{what}: its signature names no valid key")
    if not _verifies(key, payload_message(sha256), signature.sig):
        return Verdict(
            False,
            f"{what}: the signature by {_short(key)} does not verify "
            "(tampered, or made for another payload)",
        )
    problem = chain_problem(signature.chain, key)
    if problem is not None:
        return Verdict(False, f"{what} signed by {_short(key)}: {problem}", key)
    keys = _trusted_set(trusted)
    if key in keys:
        return Verdict(True, f"{what} signed by trusted key {_short(key)}", key)
    chain: Sequence[Rotation] = signature.chain
    for i in range(len(chain) - 1, -1, -1):  # from the newest trusted key: the shortest path
        if chain[i].old in keys:
            learned = tuple(link.new for link in chain[i:])
            return Verdict(
                True,
                f"{what} signed by {_short(key)}, trusted through {len(learned)} key "
                f"rotation(s) from trusted key {_short(chain[i].old)}",
                key,
                learned,
            )
    if not keys:
        return Verdict(False, f"{what} signed by {key}: no key is trusted", key)
    via = f" nor any key of its {len(chain)}-link rotation chain" if chain else ""
    return Verdict(False, f"{what} signed by {key}, which is not trusted{via}", key)


@dataclass(frozen=True)
class AuthorKey:
    """A task author's signing key, with the rotation links that lead to it."""

    signing: nacl.signing.SigningKey
    chain: tuple[Rotation, ...] = ()

    @property
    def public(self) -> str:
        """The public key, 64 lowercase hex digits: what jobbers are told to trust."""
        return _public_hex(self.signing)

    def sign_payload(self, sha256: str) -> Signature:
        """The signature record of the payload with this hash, chain included."""
        sig = self.signing.sign(payload_message(sha256)).signature
        return Signature(self.public, sig, self.chain)

    def __repr__(self) -> str:  # never the secret
        return f"AuthorKey({self.public}, {len(self.chain)} rotations)"
