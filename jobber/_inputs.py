"""The jobber core's input files: which it holds whole and which are coming, what a
job with files needs before it may start, the `fetch` requests out to each dealer and
the checks every `chunk` passes before it is kept. Part of the core
(jobber._core.JobberCore, whose theory of operation this follows), kept apart so each
part reads alone; it shares the core's state and logs as the core.

A job with input files is taken only if its files fit the owner's cap
(`Settings.input_files_mb`, said to dealers as `host.input_mb`) and, beside the payloads
and files of the jobs in hand, the cache (`cache_bytes`); its guest paths must not nest
(`/a` and `/a/b`: INVALID). It then waits in the buffer (held: counted, its deadline
running) until each file is held whole; the others start past it. Each file it lacks
is fetched from the dealer that sent the job, chunk 0 first (it carries every chunk's
digest), then the missing chunks, up to p.MAX_FETCHES requests out to a dealer at once,
each a request of its own kind (jobber._state.FETCHES) in the dealer's Lazy Pirate link,
so a fetch times out, fails and backs off as any request does.

A chunk is kept only if it is the one asked (hash, index), of the size the job named,
of the right length, and hashes to its digest; anything else is dropped and counts one
failure in the dealer's backoff (the socket answered: it and the other requests on it
stay), and the chunk is asked again once the backoff ends. The shell writes a kept chunk
to the file store (`KeepChunk`) and, once every chunk is in, checks the whole file
against its name: FileKept, or FileBad (the file is dropped whole, its jobs given
back ABANDONED, and their dealers asked again only after REFUSED_PAYLOAD_WAIT_S).
`error unknown_file` from the dealer gives back its jobs that read that file,
ABANDONED.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Iterable, Mapping

import protocol as p
from jobber._actions import FileBad, FileKept, FileStoreFailed, KeepChunk
from jobber._state import FETCHES, REFUSED_PAYLOAD_WAIT_S, Held, Link, Partial

log = logging.getLogger("jobber._core")  # the core's log, whichever part of it speaks


def nested_paths(files: Mapping[str, p.FileRef]) -> str | None:
    """A guest path that is also a directory of another (`/a` and `/a/b`), or None."""
    paths = set(files)
    for path in paths:
        parts = path.split("/")
        for n in range(2, len(parts)):
            parent = "/".join(parts[:n])
            if parent in paths:
                return f"{parent} is a file and the directory of {path}"
    return None


class Inputs:
    """The input files' half of JobberCore (a mixin: the state is the core's)."""

    # --- what the store holds ---------------------------------------------------------

    def files_updated(
        self, whole: Iterable[tuple[str, int]], partials: Mapping[str, Partial]
    ) -> None:
        """The shell's file store as it is now: files held whole (hash, size), most
        recently used first, and partial ones with their digests and chunks kept."""
        self.files_held = dict(whole)
        self.partials = {
            sha: Partial(part.size, part.digests, set(part.have)) for sha, part in partials.items()
        }

    def held_files(self) -> set[str]:
        """Input files of jobs buffered or running: the store must keep these."""
        return {ref.hash for h in self._in_hand() for ref in (h.spec.files or {}).values()}

    def _files_bytes(self, shas: Iterable[str]) -> int:
        return sum(self._file_size(sha) for sha in shas)

    def _file_size(self, sha: str) -> int:
        if sha in self.files_held:
            return self.files_held[sha]
        part = self.partials.get(sha)
        return 0 if part is None else part.size

    def _files_ready(self, h: Held) -> bool:
        return all(ref.hash in self.files_held for ref in (h.spec.files or {}).values())

    def _used_file(self, sha: str) -> None:
        """Most recently used first (host.files; the store evicts the least)."""
        size = self.files_held.pop(sha, None)
        if size is not None:
            self.files_held = {sha: size, **self.files_held}

    def _refuses_files(self, spec: p.JobSpec) -> tuple[p.Status, str] | None:
        """A job whose files are no job's (nested guest paths, or a size that is not the
        file's as held): INVALID, and why; None if its files may be taken."""
        if not spec.files:
            return None
        nested = nested_paths(spec.files)
        if nested is not None:
            return p.Status.INVALID, f"its input files' guest paths nest: {nested}"
        for path, ref in spec.files.items():
            known = self.files_held.get(ref.hash)
            if known is None and ref.hash in self.partials:
                known = self.partials[ref.hash].size
            if known is not None and known != ref.size:
                return p.Status.INVALID, (
                    f"input file {path} ({ref.hash[:12]}) is {known:,} bytes, not {ref.size:,}"
                )
        return None

    # --- fetching ---------------------------------------------------------------------

    def _send_fetches(self, now: float) -> None:
        """For each file a buffered job lacks, in the buffer's order: `fetch` its missing
        chunks from the dealer that sent the job, up to MAX_FETCHES out per dealer."""
        if self.disk_trouble:
            return
        flying: dict[str, set[int]] = {}
        for link in self.links.values():
            for sha, index in link.fetches.values():
                flying.setdefault(sha, set()).add(index)
        seen: set[str] = set()
        for h in self.buffer:
            for ref in (h.spec.files or {}).values():
                if ref.hash in self.files_held or ref.hash in seen:
                    continue
                seen.add(ref.hash)
                link = self.links.get(h.dealer)
                if link is None or link.refused:
                    continue
                if link.key is None or link.check_key:
                    self._hello(link, now)  # its key first (re-checked after a failure)
                    continue
                part = self.partials.get(ref.hash) or Partial(ref.size)
                for index in part.missing():
                    if index in flying.get(ref.hash, ()):
                        continue
                    lane = next((k for k in FETCHES if link.req.may_send(k, now)), None)
                    if lane is None:
                        break  # all its lanes busy (or it is backed off)
                    rid = self._rid()
                    self._send(link, p.Fetch(rid, ref.hash, index))
                    link.sent(lane, rid, now)
                    link.fetches[lane] = (ref.hash, index)
                    flying.setdefault(ref.hash, set()).add(index)

    def _fetch_lane(self, link: Link, re_: int | None) -> str | None:
        """The kind of the fetch out to `link` that a reply naming `re_` answers, or None."""
        request = link.req.match(re_, FETCHES)
        return None if request is None else request.kind

    def _wanted_size(self, sha: str) -> int | None:
        """The size of input file `sha` as a job in hand names it; None if none does."""
        for h in self._in_hand():
            for ref in (h.spec.files or {}).values():
                if ref.hash == sha:
                    return ref.size
        return None

    def _chunk(self, link: Link, msg: p.Chunk, now: float) -> None:
        """A `chunk` answering one of our fetches: kept if it passes every check, else
        dropped as a failure of that dealer's (asked again after its backoff)."""
        lane = self._fetch_lane(link, msg.re)
        assert lane is not None  # _unanswered let only answers to our fetches through
        sha, index = link.fetches.pop(lane)
        size = self._wanted_size(sha)
        if size is None or sha in self.files_held:  # no job needs it now: nothing to keep
            link.req.answered(msg.re, now, FETCHES)
            return
        part = self.partials.get(sha)
        why = _bad_chunk(msg, sha, index, size, None if part is None else part.digests)
        if why:
            wait = link.req.error_answer(msg.re, now, FETCHES)
            self._repeats.warn(
                now,
                f"badchunk {link.address}",
                lambda: (
                    f"dealer {link.address}: chunk {index} of input file {sha[:12]} refused: "
                    f"{why}; failure {link.backoff.failures}, backed off for {wait or 0:.2f} s"
                ),
            )
            return
        link.req.answered(msg.re, now, FETCHES)
        if part is None:
            part = self.partials[sha] = Partial(size)
        digests = None
        if part.digests is None:
            part.digests = digests = tuple(msg.digests or ())
        if index in part.have:
            return  # a duplicate (asked twice across a reset): kept already
        part.have.add(index)
        self._actions.append(KeepChunk(sha, size, index, msg.data, digests))

    def _fetch_error(self, link: Link, msg: p.Error, now: float) -> None:
        """An `error` answering a fetch: a failure of that dealer's (its backoff counts
        one); `unknown_file`: its jobs that read the file cannot run here."""
        lane = self._fetch_lane(link, msg.re)
        assert lane is not None
        sha, _ = link.fetches.pop(lane)
        link.req.error_answer(msg.re, now, FETCHES)
        if msg.code is p.ErrorCode.UNKNOWN_FILE:
            why = f"input file {sha[:12]}: dealer {link.address} serves no such file"
            self._files_lost(sha, why, dealer=link.address)

    def _files_event(self, event: FileKept | FileBad | FileStoreFailed, now: float) -> None:
        part = self.partials.pop(event.sha, None)
        if isinstance(event, FileKept):
            size = part.size if part is not None else self._wanted_size(event.sha) or 0
            self.files_held = {event.sha: size, **self.files_held}
            log.info("input file %s held whole (%d bytes)", event.sha[:12], size)
        elif isinstance(event, FileBad):
            why = f"input file {event.sha[:12]}: its bytes hash to {event.got[:12]}"
            log.warning("%s: dropped; its jobs given back", why)
            for dealer in self._files_lost(event.sha, why):
                # it served a file that is not what its jobs name (each chunk matched the
                # digests it sent): ask it less, as a dealer whose payloads we refuse
                link = self.links.get(dealer)
                if link is not None:
                    link.ask_after = max(link.ask_after, now + REFUSED_PAYLOAD_WAIT_S)
        else:
            self.disk_failed(f"cannot store an input file: {event.why}")
            self._files_lost(event.sha, "the jobber's disk is full or read-only")

    def _files_lost(self, sha: str, why: str, dealer: str | None = None) -> set[str]:
        """Buffered jobs that read file `sha` (those of `dealer` alone, if given) cannot
        run here: given back unrun, ABANDONED (no fault of the job's). Returns their
        dealers."""
        kept: deque[Held] = deque()
        dealers: set[str] = set()
        for h in self.buffer:
            reads = any(ref.hash == sha for ref in (h.spec.files or {}).values())
            if reads and (dealer is None or h.dealer == dealer):
                self._finish(h, p.Result(h.spec.tag, p.Status.ABANDONED, b"", 0, why[: p.MAX_STR]))
                dealers.add(h.dealer)
            else:
                kept.append(h)
        self.buffer = kept
        if sha not in self.held_files():
            self.partials.pop(sha, None)
        return dealers


def _bad_chunk(
    msg: p.Chunk, sha: str, index: int, size: int, digests: tuple[bytes, ...] | None
) -> str:
    """Why a `chunk` answering our fetch of chunk `index` of file `sha` (of `size` bytes,
    as the job named it) must not be kept ("" if it may): docs/protocol.md, `chunk`."""
    if msg.hash != sha or msg.chunk != index:
        return f"it is chunk {msg.chunk} of {msg.hash[:12]}, not the one asked"
    if msg.size != size:
        return f"it says the file is {msg.size:,} bytes, not {size:,}"
    n = p.chunk_count(size)
    length = p.CHUNK_BYTES if index < n - 1 else size - (n - 1) * p.CHUNK_BYTES
    if len(msg.data) != length:
        return f"{len(msg.data):,} bytes, not {length:,}"
    if digests is None:
        if index != 0 or msg.digests is None or len(msg.digests) != n:
            return f"no digests for its {n} chunks"
        digests = msg.digests
    elif msg.digests is not None and tuple(msg.digests) != digests:
        return "its digests differ from chunk 0's"
    if hashlib.sha256(msg.data).digest() != digests[index]:
        return "its bytes do not match its digest"
    return ""
