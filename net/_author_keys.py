"""A task author's signing key on disk: create, load, rotate (the files protocol/_signing.py
describes)."""

from __future__ import annotations

import os
from pathlib import Path

import nacl.signing

from net._files import write_atomic
from protocol._signing import (
    _HEX64,
    _HEX_SIG,
    PUBLIC_SUFFIX,
    ROTATIONS_SUFFIX,
    SECRET_SUFFIX,
    AuthorKey,
    _public_hex,
    chain_problem,
    sign_rotation,
)
from protocol._wire import MAX_ROTATIONS, Rotation


def _base(path: str | os.PathLike[str]) -> Path:
    """PATH for PATH, PATH.sign_secret, PATH.sign or PATH.rotations."""
    path = Path(path)
    for suffix in (SECRET_SUFFIX, PUBLIC_SUFFIX, ROTATIONS_SUFFIX):
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.with_name(path.name[: -len(suffix)])
    return path


def secret_path(path: str | os.PathLike[str]) -> Path:
    base = _base(path)
    return base.with_name(base.name + SECRET_SUFFIX)


def public_path(path: str | os.PathLike[str]) -> Path:
    base = _base(path)
    return base.with_name(base.name + PUBLIC_SUFFIX)


def rotations_path(path: str | os.PathLike[str]) -> Path:
    base = _base(path)
    return base.with_name(base.name + ROTATIONS_SUFFIX)


def _lines(path: Path) -> list[str]:
    text = path.read_text(encoding="ascii", errors="replace")
    return [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]


def _public_text(key: str) -> bytes:
    return (
        "# borednet payload signing key (ed25519 public key, hex).\n"
        "# Jobbers given it (--trust FILE) run payloads signed by it.\n"
        f"{key}\n"
    ).encode()


def create_author_key(path: str | os.PathLike[str]) -> AuthorKey:
    """Make a new key at PATH.sign_secret (mode 0600) and PATH.sign; refuse to overwrite."""
    secret, public = secret_path(path), public_path(path)
    for f in (secret, public):
        if f.exists():
            raise FileExistsError(f"{f} exists already; refusing to replace a key")
    secret.parent.mkdir(parents=True, exist_ok=True)
    key = nacl.signing.SigningKey.generate()
    pub = _public_hex(key)
    body = (
        "# borednet payload signing key: SECRET, for the task author alone.\n"
        "# Give jobbers the public key beside it (.sign), never this file.\n"
        f"public {pub}\nsecret {bytes(key).hex()}\n"
    )
    # the secret is written with its final mode before any byte of it is
    write_atomic(secret, body.encode(), mode=0o600)
    write_atomic(public, _public_text(pub), mode=0o644)
    return AuthorKey(key)


def load_author_key(path: str | os.PathLike[str]) -> AuthorKey:
    """Read PATH.sign_secret and PATH.rotations (if there is one).

    ValueError, naming the file, if the key is unreadable, readable by others, does not
    match its public half, or the rotations do not form a good chain ending at it.
    """
    secret = secret_path(path)
    try:
        lines = _lines(secret)
        mode = os.stat(secret).st_mode
    except OSError as e:
        raise ValueError(f"{secret}: cannot read the signing key: {e}") from e
    if mode & 0o077:
        raise ValueError(f"{secret} can be read by other users; chmod 600 it")
    fields = dict(ln.split(None, 1) for ln in lines if len(ln.split()) == 2)
    pub, seed = fields.get("public", "").lower(), fields.get("secret", "").lower()
    if not _HEX64.match(pub) or not _HEX64.match(seed):
        raise ValueError(f"{secret}: not a borednet signing key (want 'public HEX', 'secret HEX')")
    key = nacl.signing.SigningKey(bytes.fromhex(seed))
    if _public_hex(key) != pub:
        raise ValueError(f"{secret}: its public key does not match its secret key")
    chain = load_rotations(path, pub)
    return AuthorKey(key, chain)


def load_rotations(path: str | os.PathLike[str], end: str) -> tuple[Rotation, ...]:
    """The links in PATH.rotations (none if there is no such file), checked to end at `end`."""
    rotations = rotations_path(path)
    try:
        lines = _lines(rotations)
    except FileNotFoundError:
        return ()
    except OSError as e:
        raise ValueError(f"{rotations}: cannot read: {e}") from e
    chain = []
    for n, ln in enumerate(lines, 1):
        words = ln.lower().split()
        if (
            len(words) != 3
            or not _HEX64.match(words[0])
            or not _HEX64.match(words[1])
            or not _HEX_SIG.match(words[2])
        ):
            raise ValueError(f"{rotations}: link {n} is not 'OLD NEW SIGNATURE' in hex")
        chain.append(Rotation(words[0], words[1], bytes.fromhex(words[2])))
    problem = chain_problem(chain, end)
    if problem is not None:
        raise ValueError(f"{rotations}: {problem}")
    return tuple(chain)


def load_trusted_key(path: str | os.PathLike[str]) -> str:
    """The public key (hex) in a key file given to a jobber with --trust.

    PATH may be the .sign file itself, or the name without the suffix. A .sign_secret
    file is refused: the secret stays with the author.
    """
    path = Path(path)
    if path.name.endswith(SECRET_SUFFIX):
        raise ValueError(f"{path} is a secret key; trust its public half, {public_path(path)}")
    if not path.exists() and public_path(path).exists():
        path = public_path(path)
    try:
        lines = _lines(path)
    except OSError as e:
        raise ValueError(f"{path}: cannot read the trusted key: {e}") from e
    if len(lines) != 1 or not _HEX64.match(lines[0].lower()):
        raise ValueError(f"{path}: not a borednet public signing key (one line of 64 hex digits)")
    return lines[0].lower()


def write_rotation(
    old: str | os.PathLike[str], new: str | os.PathLike[str]
) -> tuple[Rotation, ...]:
    """Hand the author key OLD over to NEW: write NEW.rotations, OLD's chain plus one link.

    Needs OLD.sign_secret and NEW's public key (NEW.sign; NEW's secret may live
    elsewhere). Keeps the newest MAX_ROTATIONS links. Refuses to replace an existing
    NEW.rotations. Returns the chain written.
    """
    old_key = load_author_key(old)
    new_pub = load_trusted_key(public_path(new))
    if new_pub == old_key.public:
        raise ValueError(f"{public_path(new)} is the same key as {secret_path(old)}")
    if any(link.old == new_pub for link in old_key.chain):
        raise ValueError(f"{public_path(new)} was rotated away from already; make a new key")
    target = rotations_path(new)
    if target.exists():
        raise FileExistsError(f"{target} exists already; refusing to replace it")
    chain = (*old_key.chain, sign_rotation(old_key.signing, new_pub))[-MAX_ROTATIONS:]
    text = "# borednet key rotations, oldest first: OLD NEW SIGNATURE (hex)\n" + "".join(
        f"{link.old} {link.new} {link.sig.hex()}\n" for link in chain
    )
    write_atomic(target, text.encode(), mode=0o644)
    return chain
