"""The relay's input files: chunks its jobbers fetch, fetched upstream once and kept.

A job the relay holds may read input files (JobSpec.files), and a job of a pinned
runtime (protocol._runtimes) needs that runtime's module and files on the jobber that
runs it. The relay's jobbers fetch them from the relay (`fetch`), as from any dealer;
the relay is a pull-through cache in front of its upstream:

- A `fetch` of a chunk the relay keeps is answered at once (`chunk`; with chunk 0, the
  file's digests).
- A `fetch` of one it lacks is answered `busy`, `retry_s` FETCH_RETRY_S (a jobber counts
  it no failure and asks again after that), and the chunk is wanted: the relay fetches
  it upstream (chunk 0 first, for the digests), at most MAX_FETCHES out at once, each
  checked as a jobber checks it (its hash and index, the file's size, the digests' count,
  the chunk's length and its digest). A chunk that fails a check is dropped and wanted
  again; one the upstream has no file for makes later fetches of that file
  `unknown_file`; a `busy` upstream holds the relay's fetches for its `retry_s`.
- Only files the relay has a reason to serve are fetched or served: those its held jobs
  read, and the module and files of the runtimes its upstream asked for or its held jobs
  run. Any other hash is `unknown_file` at once.
- Chunks are kept in memory, at most `max_bytes` (the relay's --file-cache-mb), least
  recently used first out, so that every jobber behind the relay takes a file's bytes
  from one upstream transfer while they are kept. A want nobody asked again for
  WANT_S is dropped.

Nothing here does I/O: `fetch` answers a jobber, `requests` are what to send upstream
(on the relay's link, each fetch a request kind of its own, FETCHES), `reply` takes the
upstream's answer. A relay's chunks are not journaled: after a restart they are
fetched again.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Iterable

import protocol as p
from net._link import Link
from protocol._runtimes import RUNTIMES

log = logging.getLogger(__name__)

FETCHES = tuple(f"fetch{i}" for i in range(p.MAX_FETCHES))  # the upstream link's fetch lanes
FETCH_RETRY_S = 0.1  # `busy` to a jobber whose chunk is still coming from upstream
WANT_S = 60.0  # a chunk wanted and not asked for again this long is no longer fetched
FILE_CACHE_MB = 512  # chunks kept in memory, MiB (the relay's --file-cache-mb)


class RelayFiles:
    """The chunks the relay keeps and wants, and its fetches out upstream."""

    def __init__(self, line: Link, max_bytes: int = FILE_CACHE_MB << 20) -> None:
        if max_bytes < p.CHUNK_BYTES:
            raise ValueError(
                f"the file cache (--file-cache-mb) must hold one chunk: "
                f"{p.CHUNK_BYTES >> 20} MiB at least, not {max_bytes} bytes"
            )
        self.line = line
        self.max_bytes = max_bytes
        self.chunks: OrderedDict[tuple[str, int], bytes] = OrderedDict()  # LRU order
        self.cached_bytes = 0
        self.digests: dict[str, tuple[bytes, ...]] = {}  # file -> its chunks' digests
        self.wanted: dict[tuple[str, int], float] = {}  # chunk -> when last asked for
        self.out: dict[str, tuple[str, int]] = {}  # fetch lane -> the chunk it asks
        self.unknown: set[str] = set()  # files the upstream serves not
        self.fetch_after = 0.0  # the upstream said `busy`: no fetch before this
        self.served = 0  # chunks served to our jobbers (this process)
        self.served_bytes = 0
        self.fetched = 0  # chunks taken from upstream (this process)
        self.refused = 0  # chunks from upstream that failed a check

    # --- our jobbers ---------------------------------------------------------------

    def fetch(self, msg: p.Fetch, now: float, sizes: dict[str, int]) -> p.Message:
        """A jobber's `fetch`, `sizes` the files the relay may serve (hash -> size)."""
        size = sizes.get(msg.hash)
        if size is None or msg.hash in self.unknown:
            return p.Error(msg.id, p.ErrorCode.UNKNOWN_FILE, f"no input file {msg.hash} here")
        n = p.chunk_count(size)
        if msg.chunk >= n:
            why = f"chunk {msg.chunk} is past the end: the file has {n} chunks"
            return p.Error(msg.id, p.ErrorCode.UNEXPECTED, why)
        key = (msg.hash, msg.chunk)
        data = self.chunks.get(key)
        digests = self.digests.get(msg.hash)
        if data is not None and digests is not None:
            self.chunks.move_to_end(key)
            self.served += 1
            self.served_bytes += len(data)
            return p.Chunk(
                msg.id, msg.hash, msg.chunk, size, data, digests if not msg.chunk else None
            )
        self.wanted[key] = now
        if digests is None:
            self.wanted.setdefault((msg.hash, 0), now)
        wait = max(FETCH_RETRY_S, self.fetch_after - now)
        why = f"busy: chunk {msg.chunk} is coming from upstream; ask again in {wait:.2f} s"
        return p.Error(msg.id, p.ErrorCode.BUSY, why, retry_s=wait)

    # --- upstream --------------------------------------------------------------------

    def requests(self, now: float, sizes: dict[str, int]) -> list[p.Fetch]:
        """The fetches to send upstream now, chunk 0 of a file before its others; each
        recorded as out on the link."""
        for lane in [k for k in self.out if k not in self.line.out]:
            del self.out[lane]  # lost with a failed contact: still wanted, asked again
        for key, at in list(self.wanted.items()):
            sha, index = key
            if now - at > WANT_S or sha not in sizes or sha in self.unknown or key in self.chunks:
                del self.wanted[key]
        if now < self.fetch_after:
            return []
        flying = set(self.out.values())
        out = []
        for sha, index in list(self.wanted):
            if (sha, index) in flying or (index and sha not in self.digests):
                continue  # out already, or its digests are not here yet (chunk 0 is)
            lane = next((k for k in FETCHES if self.line.may_send(k, now)), None)
            if lane is None:
                break
            rid = self.line.sent(lane, now).id
            self.out[lane] = (sha, index)
            out.append(p.Fetch(rid, sha, index))
        return out

    def owns(self, msg: p.Message) -> bool:
        """Whether `msg` answers one of our fetches out."""
        return self.line.match(getattr(msg, "re", None), FETCHES) is not None

    def reply(self, msg: p.Message, now: float, sizes: dict[str, int]) -> None:
        """The upstream's answer to one of our fetches (`owns` said so)."""
        request = self.line.match(msg.re, FETCHES)
        assert request is not None
        sha, index = self.out.pop(request.kind)
        if isinstance(msg, p.Error):
            self.line.answered(msg.re, now, FETCHES)
            if msg.code is p.ErrorCode.BUSY:
                self.fetch_after = now + (msg.retry_s if msg.retry_s is not None else 0.5)
            elif msg.code is p.ErrorCode.UNKNOWN_FILE:
                log.warning("upstream serves no input file %s: its fetches here fail", sha[:12])
                self.unknown.add(sha)
            else:
                log.warning("upstream refused chunk %d of %s: %s", index, sha[:12], msg.text)
            return
        self.line.answered(msg.re, now, FETCHES)
        size = sizes.get(sha)
        if size is None:
            return  # no longer served here
        why = self._misshapen(msg, sha, index, size)
        if why is not None:
            self.refused += 1
            log.warning("chunk %d of input file %s from upstream refused: %s", index, sha[:12], why)
            return
        if index == 0:
            self.digests[sha] = tuple(msg.digests)
        self.wanted.pop((sha, index), None)
        self.fetched += 1
        self._keep((sha, index), msg.data)

    def _misshapen(self, msg: p.Message, sha: str, index: int, size: int) -> str | None:
        """Why a reply to our fetch of chunk `index` of `sha` (of `size` bytes) is not the
        chunk asked for, or None: the checks a jobber makes (jobber._inputs)."""
        if not isinstance(msg, p.Chunk):
            return f"a {msg.TYPE}, not a chunk"
        if msg.hash != sha or msg.chunk != index:
            return f"it is chunk {msg.chunk} of {msg.hash[:12]}"
        if msg.size != size:
            return f"it says the file has {msg.size} bytes, not {size}"
        n = p.chunk_count(size)
        digests = self.digests.get(sha) if index else msg.digests
        if digests is None or len(digests) != n:
            return f"its digests are {len(digests or ())}, not {n}"
        length = p.CHUNK_BYTES if index < n - 1 else size - (n - 1) * p.CHUNK_BYTES
        if len(msg.data) != length:
            return f"{len(msg.data)} bytes, not {length}"
        if hashlib.sha256(msg.data).digest() != digests[index]:
            return "its bytes do not match its digest"
        return None

    def _keep(self, key: tuple[str, int], data: bytes) -> None:
        old = self.chunks.pop(key, None)
        self.cached_bytes -= 0 if old is None else len(old)
        self.chunks[key] = data
        self.cached_bytes += len(data)
        while self.cached_bytes > self.max_bytes:
            _, dropped = self.chunks.popitem(last=False)
            self.cached_bytes -= len(dropped)

    def forget(self, keep: Iterable[str]) -> None:
        """Drop what the relay keeps of files other than `keep` (no job reads them now)."""
        keep = set(keep)
        for key in [k for k in self.chunks if k[0] not in keep]:
            self.cached_bytes -= len(self.chunks.pop(key))
        for sha in [s for s in self.digests if s not in keep]:
            del self.digests[sha]
        self.unknown &= keep

    def status(self) -> dict:
        return {
            "cached_bytes": self.cached_bytes,
            "served": self.served,
            "served_bytes": self.served_bytes,
            "fetched": self.fetched,
            "refused": self.refused,
            "wanted": len(self.wanted),
        }


def runtime_files(shas: Iterable[str]) -> dict[str, int]:
    """The files pinned runtimes `shas` need, module first: hash -> size."""
    out: dict[str, int] = {}
    for sha in shas:
        rt = RUNTIMES.get(sha)
        if rt is not None:
            out[rt.sha256] = rt.size
            out.update(rt.files.values())
    return out
