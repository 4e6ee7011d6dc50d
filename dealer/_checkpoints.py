"""Saved states on the dealer's disk: the `save` requests that bring them, a chunk at a
time, and the folder that keeps them, by hash, beside the journal. No sockets, no clock:
the service (dealer._service) hands it each `save` with the time and the sender, and
what the core says of it (dealer._saves decides whose state it is and records it).

A state comes in order, one chunk after another, at most CHUNK_BYTES each; the chunks
of a state coming are held in memory (at most MAX_COMING bytes of all states coming:
past that, `busy`) until the last, when the whole is checked against its hash, written
to `<journal>-checkpoints/<hash>` (a temporary name, fsync, rename) and only then
recorded in the journal: a Checkpointed record always names a file on disk. A state
not continued within STALE_S is dropped. The folder keeps the states the core may still
start a replica from (`prune`); the files are served to jobbers as input files are
(`lookup`, dealer._fileserver), each read checked against the digests taken here.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import protocol as p
from dealer._replicas import Rejected
from net._files import write_atomic
from tasks import InputFile, InputFileError

log = logging.getLogger(__name__)

MAX_COMING = 256 * 1024 * 1024  # bytes of states coming, held in memory, in all
STALE_S = 600.0  # a state coming and not continued this long is dropped
BUSY_S = 5.0  # what `busy` says to wait when MAX_COMING is held


@dataclass
class _Coming:
    sha: str
    size: int
    fuel: int
    time_s: float
    at: float
    data: bytearray = field(default_factory=bytearray)
    next: int = 0


class Checkpoints:
    """The saved states of one batch: on disk under `folder`, and those coming."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._coming: dict[tuple[str, str], _Coming] = {}  # (jobber, tag) -> its state
        self._files: dict[str, InputFile] = {}  # hash -> the file, as served
        self.received = 0  # states recorded in this run
        self.received_bytes = 0

    def save(
        self,
        msg: p.Save,
        jobber: str,
        now: float,
        may: Callable[[], Rejected | None],
        record: Callable[[], Rejected | None],
    ) -> p.Message:
        """One chunk of a saved state. `may`: why the sender may not send this state (the
        core's may_save), checked with the first chunk and the last; `record`: records
        it (the core's checkpointed), called once it is whole, checked and on disk."""
        why = may()
        if why is not None:
            self._coming.pop((jobber, msg.tag), None)
            return p.Error(msg.id, why.code, why.text)
        key = (jobber, msg.tag)
        up = self._coming.get(key)
        if up is None or up.sha != msg.hash:
            if msg.chunk != 0:  # a state not begun here (or another one): from chunk 0
                return p.Saved(msg.id, msg.hash, 0)
            self._coming.pop(key, None)
            held = sum(u.size for u in self._coming.values())
            if held + msg.size > MAX_COMING:
                text = f"busy: {held:,} bytes of saved states are coming; ask again in {BUSY_S:g} s"
                return p.Error(msg.id, p.ErrorCode.BUSY, text, retry_s=BUSY_S)
            up = self._coming[key] = _Coming(msg.hash, msg.size, msg.fuel, msg.time_s, now)
        if msg.chunk != up.next or msg.size != up.size:
            return p.Saved(msg.id, msg.hash, up.next)
        start = msg.chunk * p.CHUNK_BYTES
        want = min(p.CHUNK_BYTES, up.size - start)
        if len(msg.data) != want:
            del self._coming[key]
            text = (
                f"chunk {msg.chunk} of a state of {up.size} bytes holds {want}, not {len(msg.data)}"
            )
            return p.Error(msg.id, p.ErrorCode.UNEXPECTED, text)
        up.data += msg.data
        up.next += 1
        up.at = now
        count = p.chunk_count(up.size)
        if up.next < count:
            return p.Saved(msg.id, msg.hash, up.next)
        del self._coming[key]
        data = bytes(up.data)
        got = hashlib.sha256(data).hexdigest()
        if got != up.sha:
            text = f"the saved state's bytes hash to {got}, not {up.sha}"
            return p.Error(msg.id, p.ErrorCode.UNEXPECTED, text)
        try:
            self._keep(up.sha, data)
        except OSError as e:
            log.error("cannot keep a saved state: %s", e)
            return p.Error(msg.id, p.ErrorCode.INTERNAL, f"cannot keep the state: {e}"[:1000])
        why = record()
        if why is not None:
            return p.Error(msg.id, why.code, why.text)
        self.received += 1
        self.received_bytes += up.size
        return p.Saved(msg.id, msg.hash, count)

    def _keep(self, sha: str, data: bytes) -> None:
        path = self.folder / sha
        if sha not in self._files:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data, durable=True)
        digests = tuple(
            hashlib.sha256(data[i * p.CHUNK_BYTES : (i + 1) * p.CHUNK_BYTES]).digest()
            for i in range(p.chunk_count(len(data)))
        )
        self._files[sha] = InputFile(sha, len(data), digests, path=path)

    def lookup(self, sha: str) -> InputFile | None:
        """The saved state `sha` as a file to serve, or None if it is not here whole
        (a file damaged on disk is not served: the jobber starts the job over)."""
        f = self._files.get(sha)
        if f is not None:
            return f
        path = self.folder / sha
        if len(sha) != 64 or not path.is_file():
            return None
        try:
            f = InputFile.from_path(path)
        except InputFileError as e:
            log.warning("saved state %s unreadable: %s", sha[:12], e)
            return None
        if f.sha256 != sha:
            log.warning("saved state %s is damaged on disk: not served", sha[:12])
            return None
        self._files[sha] = f
        return f

    def damaged(self, sha: str) -> bool:
        """A saved state read back is not what was hashed: dropped (the jobber that asked
        runs its job from the beginning). False if `sha` is no saved state here."""
        if sha not in self._files:
            return False
        del self._files[sha]
        log.warning("saved state %s is damaged on disk: dropped", sha[:12])
        try:
            (self.folder / sha).unlink(missing_ok=True)
        except OSError as e:
            log.warning("cannot remove saved state %s: %s", sha[:12], e)
        return True

    def tick(self, now: float) -> None:
        """Drop states coming that were not continued for STALE_S."""
        for key in [k for k, u in self._coming.items() if now - u.at > STALE_S]:
            del self._coming[key]

    def prune(self, keep: Iterable[str]) -> None:
        """Remove every saved state on disk but those in `keep` (what unsettled jobs may
        still use: the core's checkpoint_hashes)."""
        kept = set(keep)
        self._files = {sha: f for sha, f in self._files.items() if sha in kept}
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return
        for name in names:
            if name not in kept:
                try:
                    (self.folder / name).unlink()
                except OSError as e:
                    log.warning("cannot remove saved state %s: %s", name[:12], e)

    def status(self) -> dict:
        return {
            "checkpoints_received": self.received,
            "checkpoints_bytes": self.received_bytes,
            "checkpoints_coming": len(self._coming),
        }
