"""The jobber shell's signed payloads (--trust): the author keys the owner trusts, those
learnt by rotations they signed (kept in `trusted_keys` in the data directory), and
what a `jobs` message's payloads are found to be (unsigned, or bytes that do not hash
to their name). The core decides what follows (jobber._core: Untrusted, BadHash).
"""

from __future__ import annotations

import hashlib
import logging

import protocol as p
from jobber import _core as c
from jobber._settings import JobberError
from net._author_keys import load_trusted_key
from net._files import write_atomic

log = logging.getLogger("jobber._client")  # the shell's log, whichever part of it speaks


class Trust:
    """Signed payloads, for the shell (jobber._client.Jobber, a mixin: the state is its)."""

    @staticmethod
    def _load_trust(paths) -> frozenset[str]:
        keys = set()
        for path in paths:
            try:
                keys.add(load_trusted_key(path))
            except ValueError as e:
                raise JobberError(f"--trust: {e}") from None
        return frozenset(keys)

    def _load_learnt(self) -> dict[str, str]:
        """Keys learnt through rotations signed by a trusted key, as `KEY ROOT` lines;
        only those whose root is trusted now count."""
        out: dict[str, str] = {}
        try:
            text = self._learnt_path.read_text()
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] in self._roots:
                out[parts[0]] = parts[1]
        return out

    def trusted(self) -> frozenset[str]:
        return self._roots | frozenset(self._learnt)

    def _verdicts(self, msg: p.Jobs) -> list[c.Screened]:
        """With --trust: the payloads of `msg` not signed by a trusted key, and why (a
        rotation a trusted key signed is learnt on the way)."""
        refused: list[c.Screened] = []
        if not self._roots:
            return refused
        signatures = msg.signatures or {}
        for sha in sorted({spec.payload for spec in msg.jobs} | set(msg.payloads)):
            verdict = p.verify_payload(sha, signatures.get(sha), self.trusted())
            if not verdict.accepted:
                refused.append(c.Untrusted(sha, verdict.reason))
            elif verdict.learned:
                self._learn(signatures[sha], verdict.learned)
        return refused

    def _learn(self, signature: p.Signature, keys: tuple[str, ...]) -> None:
        trusted = self.trusted()
        start = next((x.old for x in signature.chain if x.old in trusted), signature.key)
        root = start if start in self._roots else self._learnt.get(start, start)
        for key in keys:
            if key not in self._learnt and key not in self._roots:
                self._learnt[key] = root
                log.warning("author key %s trusted from now on: a rotation from %s", key, root)
        body = "".join(f"{k} {r}\n" for k, r in sorted(self._learnt.items()))
        try:
            write_atomic(
                self._learnt_path, ("# author keys learnt by rotation: KEY ROOT\n" + body).encode()
            )
        except OSError as e:
            self.core.disk_failed(f"cannot write {self._learnt_path}: {e.strerror or e}")

    def _screen_payloads(self, msg: p.Jobs) -> list[c.Screened]:
        """What the core must know of a `jobs` message's payloads: those not signed by a
        trusted key (--trust), and those whose bytes do not hash to their name. The core
        decides what follows; nothing is stored here."""
        found = self._verdicts(msg)
        untrusted = {f.sha for f in found}
        for sha, wasm in msg.payloads.items():
            if sha in untrusted:
                continue
            got = hashlib.sha256(wasm).hexdigest()
            if got != sha:
                found.append(c.BadHash(sha, got))
        return found
