"""The jobber shell's local control socket (jobber._control: suspend, resume, quit,
status) and the status it answers with.
"""

from __future__ import annotations

import time
from dataclasses import asdict, fields
from pathlib import Path

import zmq

import protocol as p
from jobber import _control


class Control:
    """The control socket, for the shell (jobber._client.Jobber, a mixin: the state is its)."""

    def _serve_control(self) -> None:
        assert self._control is not None
        while True:
            try:
                data = self._control.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                req = _control.parse_request(data)
            except ValueError as e:
                reply = {"ok": False, "error": str(e)}
            else:
                reply = self._command(req)
            self._control.send(_control.encode_reply(reply))

    def _command(self, req: dict) -> dict:
        """Carry out one request of the owner's; the reply (the status, or the error)."""
        if req["cmd"] == "quit":
            self.stop()
        else:
            error = self._owner_command(req)  # jobber._lender
            if error:
                return {"ok": False, "error": error}
        self._tell_owner(time.monotonic())
        return {"ok": True, **self.status()}

    def status(self) -> dict:
        now = time.monotonic()
        core = self.core
        return {
            "name": self.name,
            "key": self.keys.public_hex,
            "slots": self.cfg.slots,
            "suspended": core.why_suspended or None,
            "stopping": self._stopping,
            "dealers": [
                {
                    "address": link.address,
                    "key": link.key,
                    "refused": link.refused or None,
                    "pinned": link.pinned,
                    "failures": link.backoff.failures,
                    "backoff_s": max(0.0, link.backoff.until - now),
                    "finished": link.finished,
                    "problem": link.problem or None,
                    "unasked": link.unasked,
                }
                | _told(link)
                for link in core.links.values()
            ],
            "running": [self._running(h, now) for h in core.running.values()],
            "buffered": len(core.buffer),
            "buffered_by_dealer": _count(h.dealer for h in core.buffer),
            "spooled": self.spool.count(),
            "disk_trouble": core.disk_trouble or None,
            "trust": sorted(self.trusted()),
            "refused_payloads": dict(core.refused_payloads),
            # results waiting for a dealer: kept until it acknowledges them; those for a
            # dealer gone for good stay here, listed, until the data directory is cleared
            "spooled_by_dealer": {d: len(r) for d, r in core.unacked.items() if r},
            "done": core.done,
            "files": self._files_status(),
            # pinned language runtimes heard of: fetching, preparing, ready, or why not
            "runtimes": core.runtimes_status(),
            "settings": {f.name: _plain(getattr(self.cfg, f.name)) for f in fields(self.cfg)},
            "slots_in_use": self._eff.slots,
            "effective": _plain(asdict(self._eff)),
            "allocator": self._allocator_status(now),
        } | self._lender_status(now)

    def _running(self, h, now: float) -> dict:
        """A running job: its task, how long it has run (suspended time apart), and what
        is left of its time limit (the time a state it resumed from used counted)."""
        core = self.core
        link = core.links.get(h.dealer)
        paused = h.paused_s + (now - max(core.suspended_at, h.started) if core.suspended else 0)
        ran = max(0.0, now - h.started - paused)
        before = self._offsets.get(h.key, (0, 0.0))[1]
        return {
            "tag": h.spec.tag,
            "dealer": h.dealer,
            "task": None if link is None or link.about is None else link.about.task,
            "elapsed_s": now - h.started,
            "run_s": ran,
            "left_s": max(0.0, h.spec.limits.time_s - before - ran),
        } | self._last_save(h.key, now)

    def _last_save(self, key: str, now: float) -> dict:
        """A running job's last checkpoint (sandbox._scratch): how long ago, how big."""
        at, size = self._saved.get(key, (None, None))
        return {"saved_s_ago": None if at is None else now - at, "saved_bytes": size}

    def _files_status(self) -> dict:
        """Input files: those held whole (most recently used first, those jobs in hand
        read marked), those coming with their chunks in, and the fetches out."""
        core = self.core
        pinned = core.held_files()
        fetching: dict[str, list[int]] = {}
        by: dict[str, str] = {}
        for link in core.links.values():
            for sha, index in link.fetches.values():
                if index < 0:  # STALE: asked before the file started over
                    continue
                fetching.setdefault(sha, []).append(index)
                by[sha] = link.address
        return {
            "held": [
                {"hash": sha, "size": size, "in_use": sha in pinned}
                for sha, size in core.files_held.items()
            ],
            "coming": [
                {
                    "hash": sha,
                    "size": part.size,
                    "chunks": p.chunk_count(part.size),
                    "have": len(part.have),
                    "fetching": sorted(fetching.get(sha, [])),
                    "dealer": by.get(sha),
                }
                for sha, part in core.partials.items()
            ],
            "fetches_out": sum(len(x) for x in fetching.values()),
            "bytes": self.files.total(),
        }


def _told(link) -> dict:
    """A dealer as its lender sees it: what it says of its batch and of this jobber's
    account there, what it recorded in this run, why it gives no work, the owner's
    pause, a key mismatch and the command that accepts the new key."""
    about, account, mismatch = link.about, link.account, link.mismatch
    return {
        "task": None if about is None else about.task,
        "contact": None if about is None else about.contact,
        "done": link.done,
        "account": None if account is None else asdict(account),
        "credit": None if account is None else account.credit,
        "reason": link.no_work or None,
        "paused": link.paused,
        "key_mismatch": None
        if mismatch is None
        else {
            "pinned": mismatch[0],
            "presented": mismatch[1],
            "accept": f"python -m jobber accept-key {link.address}#{mismatch[1]}",
        },
    }


def _plain(v):
    """A setting as the control socket's msgpack carries it (paths as text)."""
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, list | tuple | frozenset):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out
