"""Signed payloads (protocol/_signing.py): signing, rotation chains, the verifier, key files
and the author's command lines (`python -m dealer keygen --sign`, `rotate`).

The verifier's contract, checked with hypothesis: a good signature by a trusted key, or
by a key a good chain leads to from a trusted one, is accepted (and the chain's new keys
are learned); anything tampered, for another payload, broken anywhere in its chain,
rooted in no trusted key or longer than the bound is refused with a reason; and nothing
it is given makes it raise.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol as p
from net import _author_keys as keyfiles
from protocol import _signing as s
from tests.helpers import PY, ROOT

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DOC = ROOT / "docs" / "protocol.md"


def key_of(seed: bytes) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(seed)


def pub(key: nacl.signing.SigningKey) -> str:
    return bytes(key.verify_key).hex()


def chain_of(keys: list[nacl.signing.SigningKey]) -> tuple[p.Rotation, ...]:
    """The rotation links keys[0] -> keys[1] -> ... -> keys[-1]."""
    return tuple(s.sign_rotation(a, pub(b)) for a, b in zip(keys, keys[1:], strict=False))


def signed(key: nacl.signing.SigningKey, sha: str, chain=()) -> p.Signature:
    return s.AuthorKey(key, tuple(chain)).sign_payload(sha)


def flip(data: bytes, i: int, bit: int) -> bytes:
    b = bytearray(data)
    b[i % len(b)] ^= 1 << (bit % 8)
    return bytes(b)


seeds = st.binary(min_size=32, max_size=32)
shas = st.binary(max_size=16).map(lambda b: hashlib.sha256(b).hexdigest())
# 2 to 5 distinct keys: a root, zero or more rotations, the signer last
key_lists = st.lists(seeds, min_size=2, max_size=5, unique=True).map(
    lambda ss: [key_of(x) for x in ss]
)

SHA = hashlib.sha256(b"the payload").hexdigest()
A, B, C, D = (key_of(bytes([i]) * 32) for i in range(1, 5))


# --- what is signed -------------------------------------------------------------------


def test_a_signature_signs_the_domain_and_the_raw_digest() -> None:
    sig = signed(A, SHA)
    assert sig.key == pub(A) and len(sig.sig) == 64 and sig.chain == ()
    message = b"borednet payload v1\0" + hashlib.sha256(b"the payload").digest()
    assert s.payload_message(SHA) == message
    A.verify_key.verify(message, sig.sig)  # plain ed25519: any libsodium can check it
    link = s.sign_rotation(A, pub(B))
    A.verify_key.verify(b"borednet key rotation v1\0" + bytes(B.verify_key), link.sig)


def test_the_doc_spells_the_signed_texts_as_the_code_does() -> None:
    doc = DOC.read_text()
    assert " ".join(f"{b:02x}" for b in s.PAYLOAD_DOMAIN) in doc
    assert f"the {len(s.PAYLOAD_DOMAIN)} bytes `borednet payload v1` and a zero byte" in doc
    assert f"the {len(s.ROTATION_DOMAIN)} bytes `borednet key rotation v1` and a zero byte" in doc
    assert f"| rotation links in one `Signature.chain` | {p.MAX_ROTATIONS} |" in doc


def test_a_rotation_link_is_no_payload_signature_and_the_other_way_round() -> None:
    # a "new key" whose 32 bytes are the payload's digest: the same 32 bytes signed
    digest_as_key = SHA
    link = s.sign_rotation(A, digest_as_key)
    forged = p.Signature(pub(A), link.sig)
    verdict = p.verify_payload(SHA, forged, {pub(A)})
    assert not verdict.accepted and "does not verify" in verdict.reason
    # and a payload signature of a digest equal to B's key is no rotation link to B
    sig = signed(A, pub(B))
    bogus = p.Rotation(pub(A), pub(B), sig.sig)
    assert s.chain_problem((bogus,), pub(B)) == (
        f"rotation link 1 (to {pub(B)[:16]}) is not signed by its old key"
    )


# --- the verifier: accepted -----------------------------------------------------------


@FAST
@given(seeds, shas)
def test_a_trusted_key_s_signature_is_accepted(seed: bytes, sha: str) -> None:
    key = key_of(seed)
    verdict = p.verify_payload(sha, signed(key, sha), {pub(key)})
    assert verdict == p.Verdict(True, verdict.reason, pub(key), ())
    assert "signed by trusted key" in verdict.reason


@FAST
@given(key_lists, shas)
def test_a_chain_from_a_trusted_root_is_accepted_and_its_keys_learned(keys, sha: str) -> None:
    chain = chain_of(keys)
    sig = signed(keys[-1], sha, chain)
    verdict = p.verify_payload(sha, sig, {pub(keys[0])})
    assert verdict.accepted, verdict.reason
    assert verdict.signer == pub(keys[-1])
    assert verdict.learned == tuple(pub(k) for k in keys[1:])
    # a jobber that learned them trusts the signer outright next time
    again = p.verify_payload(sha, sig, {pub(keys[0]), *verdict.learned})
    assert again.accepted and again.learned == ()


@FAST
@given(key_lists, shas, st.data())
def test_a_jobber_trusting_a_middle_key_learns_only_the_newer_ones(keys, sha, data) -> None:
    i = data.draw(st.integers(0, len(keys) - 2))
    sig = signed(keys[-1], sha, chain_of(keys))
    verdict = p.verify_payload(sha, sig, {pub(keys[i])})
    assert verdict.accepted, verdict.reason
    assert verdict.learned == tuple(pub(k) for k in keys[i + 1 :])


def test_trusted_keys_may_be_any_collection_in_either_case() -> None:
    sig = signed(A, SHA)
    for trusted in ([pub(A)], (pub(A).upper(),), frozenset({pub(A), "junk"}), {pub(A): 1}):
        assert p.verify_payload(SHA, sig, trusted).accepted


# --- the verifier: refused --------------------------------------------------------------


def refused(verdict: p.Verdict, pattern: str) -> None:
    assert not verdict.accepted
    assert verdict.learned == ()
    assert re.search(pattern, verdict.reason), verdict.reason


@FAST
@given(seeds, shas, st.integers(0, 63), st.integers(0, 7))
def test_a_tampered_signature_is_refused(seed: bytes, sha: str, i: int, bit: int) -> None:
    key = key_of(seed)
    good = signed(key, sha)
    bad = p.Signature(good.key, flip(good.sig, i, bit))
    refused(p.verify_payload(sha, bad, {pub(key)}), r"does not verify")


@FAST
@given(seeds, shas, shas)
def test_a_signature_of_another_payload_is_refused(seed: bytes, sha: str, other: str) -> None:
    key = key_of(seed)
    if sha == other:
        return
    refused(p.verify_payload(other, signed(key, sha), {pub(key)}), r"does not verify")


@FAST
@given(seeds, seeds, shas)
def test_a_signature_under_another_key_s_name_is_refused(s1: bytes, s2: bytes, sha: str) -> None:
    signer, named = key_of(s1), key_of(s2)
    if s1 == s2:
        return
    lie = p.Signature(pub(named), signed(signer, sha).sig)
    refused(p.verify_payload(sha, lie, {pub(named), pub(signer)}), r"does not verify")


@FAST
@given(key_lists, shas, st.data())
def test_a_chain_with_a_broken_link_is_refused(keys, sha: str, data) -> None:
    chain = list(chain_of(keys))
    n = data.draw(st.integers(0, len(chain) - 1))
    how = data.draw(st.sampled_from(["sig", "new", "old", "drop", "swap", "extra"]))
    link = chain[n]
    stranger = pub(key_of(data.draw(seeds)))
    if how == "sig":
        chain[n] = p.Rotation(link.old, link.new, flip(link.sig, data.draw(st.integers()), 3))
    elif how == "new":  # the old key signed some other key
        chain[n] = p.Rotation(link.old, stranger, link.sig)
    elif how == "old":  # a link claimed for a key that did not sign it
        chain[n] = p.Rotation(stranger, link.new, link.sig)
    elif how == "drop":  # (dropping the first link leaves a good, shorter chain)
        if n == 0:
            return
        del chain[n]
    elif how == "swap":
        if len(chain) < 2:
            return
        m = (n + 1) % len(chain)
        chain[n], chain[m] = chain[m], chain[n]
    else:  # a good link from a stranger's key, spliced in (before the first: a longer chain)
        extra = key_of(data.draw(seeds))
        if n == 0 or pub(extra) == link.old:
            return
        chain.insert(n, s.sign_rotation(extra, link.old))
    if [(x.old, x.new, x.sig) for x in chain] == [(x.old, x.new, x.sig) for x in chain_of(keys)]:
        return  # the mutation changed nothing (a stranger equal to a chain key)
    sig = signed(keys[-1], sha, chain)
    # refused even by a jobber trusting every key involved: a broken chain is no chain
    trusted = {pub(k) for k in keys} | {stranger}
    refused(p.verify_payload(sha, sig, trusted), r"rotation (link|chain)")


@FAST
@given(key_lists, seeds, shas)
def test_a_chain_from_an_unknown_root_is_refused(keys, other: bytes, sha: str) -> None:
    stranger = key_of(other)
    if pub(stranger) in {pub(k) for k in keys}:
        return
    sig = signed(keys[-1], sha, chain_of(keys))
    verdict = p.verify_payload(sha, sig, {pub(stranger)})
    refused(verdict, r"which is not trusted nor any key of its \d-link rotation chain")
    assert verdict.signer == pub(keys[-1])  # who signed it, for the log
    refused(p.verify_payload(sha, sig, set()), r"no key is trusted")


@FAST
@given(seeds, seeds, shas)
def test_an_untrusted_signer_without_a_chain_is_refused(s1: bytes, s2: bytes, sha: str) -> None:
    if s1 == s2:
        return
    refused(
        p.verify_payload(sha, signed(key_of(s1), sha), {pub(key_of(s2))}),
        rf"signed by {pub(key_of(s1))}, which is not trusted$",
    )


def test_a_chain_longer_than_the_bound_is_refused() -> None:
    keys = [key_of(bytes([i + 10]) * 32) for i in range(p.MAX_ROTATIONS + 2)]
    at_bound = chain_of(keys[: p.MAX_ROTATIONS + 1])
    assert len(at_bound) == p.MAX_ROTATIONS
    ok = p.verify_payload(SHA, signed(keys[p.MAX_ROTATIONS], SHA, at_bound), {pub(keys[0])})
    assert ok.accepted and len(ok.learned) == p.MAX_ROTATIONS
    too_long = chain_of(keys)
    refused(
        p.verify_payload(SHA, signed(keys[-1], SHA, too_long), {pub(keys[0])}),
        rf"has {p.MAX_ROTATIONS + 1} links, more than {p.MAX_ROTATIONS}",
    )
    # nor can it be sent: the wire refuses it too
    with pytest.raises(p.ProtocolError, match=r"chain: expected a list of at most 8"):
        p.encode(p.Jobs(1, (), signatures={SHA: signed(keys[-1], SHA, too_long)}))


def test_a_missing_signature_and_a_bad_hash_are_refused() -> None:
    refused(p.verify_payload(SHA, None, {pub(A)}), r"payload [0-9a-f]{12} is not signed")
    sig = signed(A, SHA)
    for bad in (SHA.upper(), SHA[:63], "", None, 5, bytes.fromhex(SHA)):
        refused(p.verify_payload(bad, sig, {pub(A)}), r"is not a payload hash")  # type: ignore[arg-type]


junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(max_size=70),
    st.binary(max_size=70),
    st.sampled_from([pub(A), "0" * 64, "f" * 64, pub(A).upper()]),
    st.lists(st.integers(), max_size=3),
)
junk_links = st.builds(
    p.Rotation,
    old=junk | st.just(pub(A)),
    new=junk | st.just(pub(B)),
    sig=junk | st.binary(min_size=64, max_size=64),
)
junk_records = st.one_of(
    junk,
    st.builds(
        p.Signature,
        key=junk,
        sig=junk | st.binary(min_size=64, max_size=64),
        chain=junk | st.lists(junk_links | junk, max_size=3).map(tuple),
    ),
)


@settings(FAST, max_examples=300)
@given(st.one_of(junk, shas, st.just(SHA)), junk_records, st.one_of(junk, st.lists(junk)))
def test_nothing_makes_the_verifier_raise(sha: Any, record: Any, trusted: Any) -> None:
    verdict = p.verify_payload(sha, record, trusted)
    assert type(verdict) is p.Verdict and verdict.reason
    assert not verdict.accepted  # none of these is a good signature of anything


def test_every_refusal_is_refused_in_words_a_lender_can_act_on() -> None:
    """The reasons a jobber will log, one of each, in full."""
    b_chain = chain_of([A, B])
    cases = {
        "unsigned": p.verify_payload(SHA, None, {pub(A)}),
        "untrusted": p.verify_payload(SHA, signed(C, SHA), {pub(A)}),
        "rotated": p.verify_payload(SHA, signed(B, SHA, b_chain), {pub(A)}),
        "broken": p.verify_payload(SHA, signed(C, SHA, b_chain), {pub(A)}),
    }
    assert cases["unsigned"].reason == f"payload {SHA[:12]} is not signed"
    assert (
        cases["untrusted"].reason == f"payload {SHA[:12]} signed by {pub(C)}, which is not trusted"
    )
    assert cases["rotated"].accepted and cases["rotated"].reason == (
        f"payload {SHA[:12]} signed by {pub(B)[:16]}, trusted through 1 key rotation(s) "
        f"from trusted key {pub(A)[:16]}"
    )
    assert cases["broken"].reason == (
        f"payload {SHA[:12]} signed by {pub(C)[:16]}: the rotation chain ends at "
        f"{pub(B)[:16]}, not at the signer"
    )


# --- key files ----------------------------------------------------------------------------


def test_an_author_key_is_made_once_and_read_back(tmp_path: Path) -> None:
    made = keyfiles.create_author_key(tmp_path / "keys" / "author")
    secret, public = tmp_path / "keys" / "author.sign_secret", tmp_path / "keys" / "author.sign"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(public).st_mode) == 0o644
    assert bytes(made.signing).hex() not in repr(made)
    assert bytes(made.signing).hex() not in public.read_text()
    for name in ("author", "author.sign_secret"):
        back = keyfiles.load_author_key(tmp_path / "keys" / name)
        assert back.public == made.public and back.chain == ()
    for name in ("author", "author.sign"):
        assert keyfiles.load_trusted_key(tmp_path / "keys" / name) == made.public
    with pytest.raises(FileExistsError, match="refusing to replace a key"):
        keyfiles.create_author_key(tmp_path / "keys" / "author")
    with pytest.raises(ValueError, match=r"is a secret key; trust its public half"):
        keyfiles.load_trusted_key(secret)


def test_a_bad_author_key_file_is_refused_naming_it(tmp_path: Path) -> None:
    keyfiles.create_author_key(tmp_path / "k")
    secret = tmp_path / "k.sign_secret"
    os.chmod(secret, 0o644)
    with pytest.raises(ValueError, match=r"k\.sign_secret can be read by other users"):
        keyfiles.load_author_key(tmp_path / "k")
    os.chmod(secret, 0o600)
    text = secret.read_text()
    other = pub(B)
    secret.write_text(re.sub(r"public [0-9a-f]{64}", f"public {other}", text))
    with pytest.raises(ValueError, match=r"its public key does not match its secret key"):
        keyfiles.load_author_key(tmp_path / "k")
    secret.write_text("nonsense\n")
    with pytest.raises(ValueError, match=r"k\.sign_secret: not a borednet signing key"):
        keyfiles.load_author_key(tmp_path / "k")
    with pytest.raises(ValueError, match=r"nope\.sign_secret: cannot read"):
        keyfiles.load_author_key(tmp_path / "nope")
    (tmp_path / "t.sign").write_text("# two keys\n" + pub(A) + "\n" + pub(B) + "\n")
    with pytest.raises(ValueError, match=r"t\.sign: not a borednet public signing key"):
        keyfiles.load_trusted_key(tmp_path / "t.sign")


def test_rotations_are_written_beside_the_new_key_and_checked_when_read(tmp_path: Path) -> None:
    keys = [keyfiles.create_author_key(tmp_path / name) for name in ("a", "b", "c")]
    assert keyfiles.write_rotation(tmp_path / "a", tmp_path / "b") == chain_of(
        [k.signing for k in keys[:2]]
    )
    chain = keyfiles.write_rotation(tmp_path / "b", tmp_path / "c")  # b's link is carried along
    assert [(x.old, x.new) for x in chain] == [
        (keys[0].public, keys[1].public),
        (keys[1].public, keys[2].public),
    ]
    c = keyfiles.load_author_key(tmp_path / "c")
    assert c.chain == chain
    verdict = p.verify_payload(SHA, c.sign_payload(SHA), {keys[0].public})
    assert verdict.accepted and verdict.learned == (keys[1].public, keys[2].public)
    with pytest.raises(FileExistsError, match=r"c\.rotations exists already"):
        keyfiles.write_rotation(tmp_path / "b", tmp_path / "c")
    with pytest.raises(ValueError, match=r"is the same key as"):
        keyfiles.write_rotation(tmp_path / "c", tmp_path / "c")
    with pytest.raises(ValueError, match=r"was rotated away from already"):
        keyfiles.write_rotation(tmp_path / "c", tmp_path / "a")
    # a damaged rotations file stops the author's dealer before it sends anything
    rot = tmp_path / "c.rotations"
    lines = rot.read_text().splitlines()
    lines[-1] = lines[-1][:-1] + ("0" if lines[-1][-1] != "0" else "1")
    rot.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"c\.rotations: rotation link 2 .* not signed"):
        keyfiles.load_author_key(tmp_path / "c")
    rot.write_text("just words\n")
    with pytest.raises(ValueError, match=r"c\.rotations: link 1 is not 'OLD NEW SIGNATURE'"):
        keyfiles.load_author_key(tmp_path / "c")


def test_rotation_keeps_only_the_newest_links(tmp_path: Path) -> None:
    n = p.MAX_ROTATIONS + 2
    keys = [keyfiles.create_author_key(tmp_path / f"k{i}") for i in range(n)]
    for i in range(1, n):
        chain = keyfiles.write_rotation(tmp_path / f"k{i - 1}", tmp_path / f"k{i}")
    assert len(chain) == p.MAX_ROTATIONS
    assert chain[0].old == keys[n - 1 - p.MAX_ROTATIONS].public
    last = keyfiles.load_author_key(tmp_path / f"k{n - 1}")
    assert p.verify_payload(SHA, last.sign_payload(SHA), {chain[0].old}).accepted
    assert not p.verify_payload(SHA, last.sign_payload(SHA), {keys[0].public}).accepted


# --- the author's command lines -----------------------------------------------------------


def dealer_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, "-m", "dealer", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_keygen_sign_and_rotate_on_the_command_line(tmp_path: Path) -> None:
    made = dealer_cli("keygen", "--sign", "old", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    old = made.stdout.strip()
    assert keyfiles.load_trusted_key(tmp_path / "old.sign") == old
    assert not (tmp_path / "old.key_secret").exists()  # a signing key, not a CurveZMQ one
    assert dealer_cli("keygen", "--sign", "new", cwd=tmp_path).returncode == 0
    again = dealer_cli("keygen", "--sign", "old", cwd=tmp_path)
    assert again.returncode == 1 and "refusing to replace a key" in again.stderr
    rotated = dealer_cli("rotate", "old", "new", cwd=tmp_path)
    assert rotated.returncode == 0, rotated.stderr
    assert "wrote new.rotations (1 rotation link(s)" in rotated.stdout
    new = keyfiles.load_author_key(tmp_path / "new")
    assert p.verify_payload(SHA, new.sign_payload(SHA), {old}).learned == (new.public,)
    curve = dealer_cli("keygen", "plain", cwd=tmp_path)  # unchanged without --sign
    assert curve.returncode == 0 and (tmp_path / "plain.key_secret").exists()
    missing = dealer_cli("rotate", "new", "nowhere", cwd=tmp_path)
    assert missing.returncode == 1 and "nowhere.sign: cannot read the trusted key" in missing.stderr
