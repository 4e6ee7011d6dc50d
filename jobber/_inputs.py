"""The jobber core's input files: which it holds whole and which are coming, what a
job with files needs before it may start, the `fetch` requests out to each dealer and
the checks every `chunk` passes before it is kept. Part of the core
(jobber._core.JobberCore, whose theory of operation this follows), kept apart so each
part reads alone; it shares the core's state and logs as the core.

A job with input files is taken only if its files fit the owner's cap
(`Settings.input_files_mb`, said to dealers as `host.input_mb`) and, beside the payloads
and files of the jobs in hand, the cache (`cache_bytes`): each file in hand counts at
the size its jobs name (the largest, if they differ) from the moment a job naming it is
taken, whether or not a chunk of it has come. Its guest paths must not nest (`/a` and
`/a/b`: INVALID). It then waits in the buffer (held: counted, its deadline running)
until each file is held whole; the others start past it. A waiting job is given back
ABANDONED, with the reason, once its deadline passes, when its dealer is dropped, or
when that dealer answers `denied` to DENIED_GIVE_UP fetches in a row.

Each file a buffered job lacks is fetched from one dealer at a time, chosen among the
dealers whose buffered jobs read it (in the buffer's order): the one whose digests the
file is being checked against first, then the first that can be asked now (its key
known, not refused, not backed off), one that has failed no contact before one that
has. So a file two dealers' jobs read comes from the other when the first is backed
off, keyless, refused or silent. Chunk 0 comes first (it carries every chunk's digest),
then the missing chunks, up to p.MAX_FETCHES requests out to a dealer at once, each a
request of its own kind (jobber._state.FETCHES) in the dealer's Lazy Pirate link, so a
fetch times out, fails and backs off as any request does. An `error` of code `busy` (the
dealer's ration) is an answer, no failure: no fetch goes to that dealer for the `retry_s`
it says (BUSY_WAIT_S if none), its asks for work go on, and its chunks are then asked of
it again; a dealer busy for ever holds its waiting jobs only until their deadlines.

A chunk is kept only if it is the one asked (hash, index), of the size the job named,
of the right length, and hashes to its digest. Anything else from the dealer whose
chunk 0 brought the digests (`Partial.source`) is dropped and counts one failure in
its backoff (the socket answered: it and the other requests on it stay), and the chunk
is asked again once the backoff ends. A chunk from *another* dealer that fails those
digests (or brings others) blames neither: one of the two lies, and which cannot be
told, so the partial file is dropped (DropFile: the store drops it too), the fetches
out for it are left to answer for nothing (STALE), and it starts over from chunk 0,
asked first of the dealer whose chunk disagreed. The shell writes a kept chunk to the
file store (`KeepChunk`) and, once every chunk is in, checks the whole file against
its name: FileKept, or FileBad. A file that fails whole was made by the dealer(s)
whose digests and chunks were kept (`Partial.source`, `Partial.senders`): their jobs
that read it are given back ABANDONED and they are asked again only after
REFUSED_PAYLOAD_WAIT_S; the other dealers' jobs wait on while it starts over from
chunk 0. `error unknown_file` from the dealer gives back its jobs that read that file,
ABANDONED.

The core and the store never differ on a partial file: whenever the core forgets one
the store holds (no job in hand reads it any more, or it starts over), it says so
(DropFile); the shell tells it what the store holds (`files_updated`), and the store
refuses a chunk it holds already or digests other than those it keeps.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import replace

import protocol as p
from jobber._actions import DropFile, FileBad, FileKept, FileStoreFailed, KeepChunk
from jobber._state import (
    BUSY_WAIT_S,
    DENIED_GIVE_UP,
    FETCHES,
    REFUSED_PAYLOAD_WAIT_S,
    STALE,
    Held,
    Link,
    Partial,
)

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
        recently used first, and partial ones with their digests and chunks kept. Who
        sent a partial file's digests and chunks is the core's own record, kept while
        the digests are the same."""
        old = self.partials
        self.files_held = dict(whole)
        self.partials = {}
        for sha, part in partials.items():
            mine = old.get(sha)
            same = mine is not None and mine.digests == part.digests
            self.partials[sha] = Partial(
                part.size,
                part.digests,
                set(part.have),
                mine.source if same else None,
                set(mine.senders) if same else set(),
            )

    def held_files(self) -> set[str]:
        """Input files of jobs buffered or running: the store must keep these."""
        return set(self._files_in_hand())

    def _files_in_hand(self) -> dict[str, int]:
        """Input files of jobs buffered or running, each at the size its jobs name (the
        largest): what they take in the cache, whether a chunk of them came or not."""
        sizes: dict[str, int] = {}
        for h in self._in_hand():
            for ref in h.spec.fetched():
                sizes[ref.hash] = max(sizes.get(ref.hash, 0), ref.size)
        for sha, (size, _) in self._runtime_files().items():  # runtimes being prepared
            sizes[sha] = max(sizes.get(sha, 0), size)
        return sizes

    def files_allowance(self) -> int | None:
        """What the file store may take on disk: the cache less what the payloads of jobs
        in hand take (input files may take what those leave); None: no bound."""
        if self.s.cache_bytes is None:
            return None
        held = self.held_payloads()
        in_use = sum(a + b for sha, (a, b) in self.sizes.items() if sha in held)
        return max(0, self.s.cache_bytes - in_use)

    def payloads_allowance(self, files_bytes: int) -> int | None:
        """What the payload cache may take once the file store takes `files_bytes`: what
        the input files leave; None: no bound."""
        if self.s.cache_bytes is None:
            return None
        return max(0, self.s.cache_bytes - files_bytes)

    def _files_ready(self, h: Held) -> bool:
        return all(ref.hash in self.files_held for ref in h.spec.fetched())

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

    # --- jobs that wait -------------------------------------------------------------

    def _give_up_waiting(self, now: float) -> None:
        """Jobs still waiting for their files past their deadline are given back: the
        dealer has reissued them by now, and they would hold room (and asks) for ever."""
        if not any(h.deadline <= now and not self._files_ready(h) for h in self.buffer):
            return
        self._give_back(
            lambda h: h.deadline <= now and not self._files_ready(h),
            "its input files did not come before its deadline",
        )

    def _dealer_gone(self, dealer: str, why: str) -> None:
        """`dealer` is dropped (or serves us no file): its jobs waiting for files are given
        back (their results wait in the spool for it), not held for ever."""
        self._give_back(lambda h: h.dealer == dealer and not self._files_ready(h), why)
        self._runtime_dealer_gone(dealer)

    def _give_back(self, which, why: str) -> None:
        """Buffered jobs `which` picks are given back unrun, ABANDONED (no fault of the
        job's), and the partial files no job reads then forgotten."""
        kept: deque[Held] = deque()
        shas: set[str] = set()
        for h in self.buffer:
            if which(h):
                self._finish(h, p.Result(h.spec.tag, p.Status.ABANDONED, b"", 0, why[: p.MAX_STR]))
                shas |= {ref.hash for ref in h.spec.fetched()}
            else:
                kept.append(h)
        self.buffer = kept
        if shas:
            read = self.held_files()
            for sha in shas - read:
                self._forget_partial(sha)

    def _forget_partial(self, sha: str) -> None:
        """The core forgets partial file `sha`; so does the store (DropFile)."""
        self.fetch_first.pop(sha, None)
        if self.partials.pop(sha, None) is not None:
            self._actions.append(DropFile(sha))

    # --- fetching ---------------------------------------------------------------------

    def _send_fetches(self, now: float) -> None:
        """For each file a buffered job lacks, in the buffer's order: `fetch` its missing
        chunks from one dealer whose jobs read it (`_fetch_link`), up to MAX_FETCHES out
        per dealer."""
        if self.disk_trouble:
            return
        readers: dict[str, tuple[int, list[str]]] = {}  # file -> (size, dealers), in order
        for h in self.buffer:
            for ref in h.spec.fetched():
                if ref.hash in self.files_held:
                    continue
                _, dealers = readers.setdefault(ref.hash, (ref.size, []))
                if h.dealer not in dealers:
                    dealers.append(h.dealer)
        for sha, (size, asked) in self._runtime_files(from_dealers=True).items():  # after jobs' own
            if sha not in self.files_held:
                _, dealers = readers.setdefault(sha, (size, []))
                dealers.extend(d for d in asked if d not in dealers)
        if not readers:
            return
        flying: dict[str, set[int]] = {}
        for link in self.links.values():
            for sha, index in link.fetches.values():
                flying.setdefault(sha, set()).add(index)
        for sha, (size, dealers) in readers.items():
            link = self._fetch_link(sha, dealers, now)
            if link is None or link.fetch_after > now:
                continue  # none to ask, or it said `busy`: the same dealer, once it may
            part = self.partials.get(sha) or Partial(size)
            for index in part.missing():
                if index in flying.get(sha, ()):
                    continue
                lane = next((k for k in FETCHES if link.req.may_send(k, now)), None)
                if lane is None:
                    break  # all its lanes busy
                rid = self._rid()
                self._send(link, p.Fetch(rid, sha, index))
                link.sent(lane, rid, now)
                link.fetches[lane] = (sha, index)

    def _fetch_link(self, sha: str, dealers: list[str], now: float) -> Link | None:
        """The dealer to fetch file `sha` from now, among `dealers` (those whose buffered
        jobs read it, in the buffer's order): the one whose digests judge it (or, before
        chunk 0, the one it starts over from) first; then the first that can be asked now,
        one that has failed no contact before one that has. A dealer whose key is not
        known (or is in doubt) is asked for it meanwhile."""
        part = self.partials.get(sha)
        first = part.source if part is not None else self.fetch_first.get(sha)
        order = sorted(dealers, key=lambda d: d != first)  # stable: the buffer's order
        ready: list[Link] = []
        for addr in order:
            link = self.links.get(addr)
            if link is None or link.refused or link.retired or link.denied >= DENIED_GIVE_UP:
                continue
            if link.key is None or link.check_key:
                self._hello(link, now)  # its key first (re-checked after a failure)
                continue
            if link.backoff.ready(now):
                ready.append(link)
        return next((x for x in ready if not x.backoff.failures), ready[0] if ready else None)

    def _fetch_lane(self, link: Link, re_: int | None) -> str | None:
        """The kind of the fetch out to `link` that a reply naming `re_` answers, or None."""
        request = link.req.match(re_, FETCHES)
        return None if request is None else request.kind

    def _wanted_size(self, sha: str) -> int | None:
        """The size of input file `sha` as a job in hand names it; None if none does."""
        for h in self._in_hand():
            for ref in h.spec.fetched():
                if ref.hash == sha:
                    return ref.size
        wanted = self._runtime_files().get(sha)
        return None if wanted is None else wanted[0]

    def _chunk(self, link: Link, msg: p.Chunk, now: float) -> None:
        """A `chunk` answering one of our fetches: kept if it passes every check; else
        dropped as a failure of that dealer's (asked again after its backoff), or, when
        it disagrees with digests another dealer sent, the file starts over."""
        lane = self._fetch_lane(link, msg.re)
        assert lane is not None  # _unanswered let only answers to our fetches through
        sha, index = link.fetches.pop(lane)
        link.denied = 0
        size = self._wanted_size(sha)
        part = self.partials.get(sha)
        if (
            index == STALE  # asked before the file started over
            or size is None  # no job needs it now
            or sha in self.files_held
            or (part is None and index != 0)  # its digests were dropped since it was asked
        ):
            link.req.answered(msg.re, now, FETCHES)
            return
        why = _misshapen(msg, sha, index, size, with_digests=part is None)
        digests = tuple(msg.digests or ()) if part is None else part.digests
        assert why or digests is not None
        if not why:
            if msg.digests is not None and tuple(msg.digests) != digests:
                why = "its digests differ from chunk 0's"
            elif hashlib.sha256(msg.data).digest() != digests[index]:
                why = "its bytes do not match its digest"
            if why and part is not None and part.source != link.address:
                link.req.answered(msg.re, now, FETCHES)
                self._start_over(sha, link, why)
                return
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
        new = None
        if part is None:
            part = self.partials[sha] = Partial(size, digests, source=link.address)
            new = digests
            self.fetch_first.pop(sha, None)
        if index in part.have:
            return  # a duplicate (asked twice across a reset): kept already
        part.have.add(index)
        part.senders.add(link.address)
        self._actions.append(KeepChunk(sha, size, index, msg.data, new))

    def _start_over(self, sha: str, link: Link, why: str) -> None:
        """A chunk from `link` disagrees with the digests another dealer sent for file
        `sha`: one of them lies, and which cannot be told from here, so neither is
        blamed. The file is dropped (core and store) and fetched again from chunk 0,
        first from `link`: if its digests and chunks then make a file that is not its
        name, it is blamed for that; the fetches out for it answer for nothing."""
        part = self.partials.get(sha)
        log.warning(
            "input file %s: chunk from dealer %s %s (sent by %s): starting it over",
            sha[:12],
            link.address,
            why,
            None if part is None else part.source,
        )
        self._forget_partial(sha)
        self.fetch_first[sha] = link.address
        for other in self.links.values():
            for lane, (s, _) in other.fetches.items():
                if s == sha:
                    other.fetches[lane] = (sha, STALE)

    def _fetch_error(self, link: Link, msg: p.Error, now: float) -> None:
        """An `error` answering a fetch. `busy`: the dealer's ration, no failure (an
        answer, as `retry_later` is): no fetch goes to it for `retry_s` (BUSY_WAIT_S if
        it says none), then the chunk is asked of it again; its asks for work go on.
        Any other: a failure of that dealer's (its backoff counts one); `unknown_file`:
        its jobs that read the file cannot run here; `denied` DENIED_GIVE_UP times in a
        row: none of its jobs waiting for files can."""
        lane = self._fetch_lane(link, msg.re)
        assert lane is not None
        sha, index = link.fetches.pop(lane)
        if msg.code is p.ErrorCode.BUSY:
            link.req.answered(msg.re, now, FETCHES)
            link.denied = 0
            wait = BUSY_WAIT_S if msg.retry_s is None else msg.retry_s
            link.fetch_after = max(link.fetch_after, now + wait)
            return
        link.req.error_answer(msg.re, now, FETCHES)
        if index == STALE:
            return
        if msg.code is p.ErrorCode.UNKNOWN_FILE:
            why = f"input file {sha[:12]}: dealer {link.address} serves no such file"
            self._files_lost(sha, why, dealers={link.address})
            self._runtime_dealer_gone(link.address, sha)
        if msg.code is p.ErrorCode.DENIED:
            link.denied += 1
            if link.denied == DENIED_GIVE_UP:
                self._dealer_gone(
                    link.address, f"dealer {link.address} denies this jobber its input files"
                )

    def _files_event(self, event: FileKept | FileBad | FileStoreFailed, now: float) -> None:
        part = self.partials.pop(event.sha, None)
        self.fetch_first.pop(event.sha, None)
        if isinstance(event, FileKept):
            self.files_held = {event.sha: event.size, **self.files_held}
            log.info("input file %s held whole (%d bytes)", event.sha[:12], event.size)
            self._runtimes_fetched()
        elif isinstance(event, FileBad):
            blamed = set() if part is None else {part.source, *part.senders} - {None}
            why = f"input file {event.sha[:12]}: its bytes hash to {event.got[:12]}"
            log.warning(
                "%s: dropped; the jobs of %s that read it given back, others fetch it again",
                why,
                ", ".join(sorted(blamed)) or "no dealer (it was begun by an earlier run)",
            )
            self._files_lost(event.sha, why, dealers=blamed)
            for dealer in blamed:
                self._runtime_dealer_gone(dealer, event.sha)  # nor a runtime from it
                # it served a file that is not what its jobs name (each chunk matched the
                # digests it sent): ask it less, as a dealer whose payloads we refuse
                link = self.links.get(dealer)
                if link is not None:
                    link.ask_after = max(link.ask_after, now + REFUSED_PAYLOAD_WAIT_S)
        else:
            self.disk_failed(f"cannot store an input file: {event.why}")
            self._files_lost(event.sha, "the jobber's disk is full or read-only")

    def _files_lost(self, sha: str, why: str, dealers: set[str] | None = None) -> None:
        """Buffered jobs that read file `sha` (those of `dealers` alone, if given) cannot
        run here: given back unrun, ABANDONED (no fault of the job's)."""

        def reads(h: Held) -> bool:
            return (dealers is None or h.dealer in dealers) and any(
                ref.hash == sha for ref in h.spec.fetched()
            )

        for h in self.buffer:  # a saved state it cannot have: the job starts from the top
            if reads(h) and h.spec.resume is not None and h.spec.resume.hash == sha:
                log.warning("job %s: %s; it runs from the beginning", h.spec.tag, why)
                h.spec = replace(h.spec, resume=None)
        self._give_back(reads, why)


def _misshapen(msg: p.Chunk, sha: str, index: int, size: int, with_digests: bool) -> str:
    """Why a `chunk` answering our fetch of chunk `index` of file `sha` (of `size` bytes,
    as the job named it) is not what was asked, whoever's digests judge it ("" if it
    is): docs/protocol.md, `chunk`. `with_digests`: it must bring every chunk's."""
    if msg.hash != sha or msg.chunk != index:
        return f"it is chunk {msg.chunk} of {msg.hash[:12]}, not the one asked"
    if msg.size != size:
        return f"it says the file is {msg.size:,} bytes, not {size:,}"
    n = p.chunk_count(size)
    length = p.CHUNK_BYTES if index < n - 1 else size - (n - 1) * p.CHUNK_BYTES
    if len(msg.data) != length:
        return f"{len(msg.data):,} bytes, not {length:,}"
    if with_digests and (msg.digests is None or len(msg.digests) != n):
        return f"no digests for its {n} chunks"
    return ""
