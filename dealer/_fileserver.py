"""Serving input files (`fetch`): each chunk read from its file when asked, checked
against the digest taken when the task was built, and rationed, so that a flood of
fetches costs the dealer what other floods do (docs/dealer.md, "Input files"). No
sockets, no clock: the service (dealer._service) hands it each `fetch` with the time and
the sender, and how to find a file by hash (the core's `input_file`). A pinned runtime's
module (docs/protocol.md, "Runtimes"), too big for any `jobs`, is served the same way
by its hash, to jobbers preparing it (docs/dealer.md, "Runtimes").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import protocol as p
from net._gate import Ration, source_of
from protocol import Peer
from tasks import InputFile, InputFileError, Payload

log = logging.getLogger(__name__)

# `fetch` (4 MiB read, hashed and sent for a 60-byte request): per source address,
# SERVE_MIB_S (128 MiB/s, 32 chunks a second: about a gigabit link) after a burst of 16
# chunks (two jobbers' 8 fetches out); in all, ALL_SOURCES times that after a burst of 64:
# what serving files can cost, whoever asks. The dealer's --serve-mib-s sets SERVE_MIB_S.
SERVE_MIB_S = 128.0
FETCH_BURST, ALL_FETCH_BURST, ALL_SOURCES = 16.0, 64.0, 4
# chunks served in one turn of the loop: a turn's replies are all held until its commit
# (net._router), so this bounds what they hold (64 MiB) and how long the turn reads
FETCH_PER_TURN = 16


class FileServer:
    """The chunks of a batch's input files, and of its runtime's module (`module`, if its
    payload is a pinned runtime), served; what was served, counted."""

    def __init__(self, module: InputFile | None = None, serve_mib_s: float = SERVE_MIB_S) -> None:
        """`serve_mib_s`: what one source address may fetch, in MiB a second (after a
        burst); all sources together may fetch ALL_SOURCES times that."""
        if not serve_mib_s > 0:
            raise ValueError(f"--serve-mib-s must be above 0, not {serve_mib_s:g}")
        self.module = module
        self.fetches = 0  # chunks of input files served
        self.busy = 0  # fetches answered `busy` (the ration, or the turn's share)
        self.served_bytes = 0
        # chunks a second per source address, and in all
        self.per_s = serve_mib_s * (1 << 20) / p.CHUNK_BYTES
        burst = max(FETCH_BURST, self.per_s / 2)
        all_burst = max(ALL_FETCH_BURST, ALL_SOURCES * burst)
        self.ration = Ration(self.per_s, burst, ALL_SOURCES * self.per_s, all_burst)
        self._this_turn = 0  # chunks read this turn (see FETCH_PER_TURN)
        # file hash -> the chunks found right, with the file's identity then (read_chunk)
        self._checked: dict[str, dict[int, tuple]] = {}

    def turn(self) -> None:
        """A new turn of the loop: it may serve FETCH_PER_TURN chunks again."""
        self._this_turn = 0

    def status(self) -> dict:
        """For status: chunks served, their bytes, and fetches answered `busy`."""
        return {
            "fetches": self.fetches,
            "files_served_bytes": self.served_bytes,
            "fetches_busy": self.busy,
        }

    def fetch(
        self,
        msg: p.Fetch,
        now: float,
        peer: Peer,
        lookup: Callable[[str], InputFile | None],
        denied: bool = False,
        damaged: Callable[[str], bool] | None = None,
    ) -> p.Message:
        """One chunk of an input file a job of this batch reads, read from its file now
        (one pread; the first time, and whenever the file's identity changed since, one
        SHA-256 of at most CHUNK_BYTES, checked against the digest taken when the task
        was built). Rationed per source address and in all, as
        `status` is (net._router): past the ration, an error of code `busy` whose
        `retry_s` says when to ask again (the jobber counts it no failure). `damaged`:
        told of a file whose bytes are no longer those hashed; True if it is dropped (a
        saved state: dealer._checkpoints), and then served as no file."""
        if denied:
            return p.Error(msg.id, p.ErrorCode.DENIED, "this identity is denied by the dealer")
        module = self.module
        f = module if module is not None and msg.hash == module.sha256 else lookup(msg.hash)
        if f is None:
            return p.Error(msg.id, p.ErrorCode.UNKNOWN_FILE, f"no input file {msg.hash} here")
        chunks = len(f.digests)
        if msg.chunk >= chunks:
            why = f"chunk {msg.chunk} is past the end: the file has {chunks} chunks"
            return p.Error(msg.id, p.ErrorCode.UNEXPECTED, why)
        if self._this_turn >= FETCH_PER_TURN:
            wait_s, what = 0.05, f"{FETCH_PER_TURN} chunks are served a turn"
        else:
            wait_s = self.ration.take(source_of(peer.address), now)
            what = f"fetch is rationed to {self.per_s:g} chunks a second per address"
        if wait_s > 0:
            self.busy += 1
            wait_s = max(wait_s, 0.05)
            why = f"busy: {what}; ask again in {wait_s:.2f} s"
            return p.Error(msg.id, p.ErrorCode.BUSY, why, retry_s=wait_s)
        self._this_turn += 1
        try:
            data = f.read_chunk(msg.chunk, self._checked.setdefault(f.sha256, {}))
        except (OSError, InputFileError) as e:
            if damaged is not None and damaged(msg.hash):
                self._checked.pop(msg.hash, None)
                return p.Error(msg.id, p.ErrorCode.UNKNOWN_FILE, f"no file {msg.hash} here")
            log.error("cannot serve input file %s: %s", msg.hash[:12], e)
            return p.Error(msg.id, p.ErrorCode.INTERNAL, f"cannot read input file: {e}"[:1000])
        self.fetches += 1
        self.served_bytes += len(data)
        digests = f.digests if msg.chunk == 0 else None
        return p.Chunk(msg.id, msg.hash, msg.chunk, f.size, data, digests)


def runtime_module(payload: Payload, files: Mapping[str, InputFile]) -> InputFile:
    """A pinned runtime's module as a file to serve by `fetch` (the payload's
    `module_file`, else its bytes), once the payload is seen to carry at their guest paths
    the files every job of the runtime reads (`files`: tasks._files.shared_files), so that
    a jobber can prepare the runtime from this dealer alone. ValueError if it does not."""
    runtime = payload.runtime
    if runtime is None:
        raise ValueError(f"payload {payload.name} is no pinned runtime")
    for path, (sha, size) in runtime.files.items():
        f = files.get(path)
        if f is None or (f.sha256, f.size) != (sha, size):
            raise ValueError(
                f"a {runtime.name} payload without its file {path} ({sha[:12]}...): "
                "build it with Payload.python"
            )
    module = payload.module_file
    if module is None:  # a Payload made by hand of the runtime's bytes
        return InputFile.from_bytes(payload.wasm)
    if module.sha256 != runtime.sha256:
        raise ValueError(f"payload {payload.name}: its module_file is not its module")
    return module
