"""The jobber core's holdings: jobs taken (each counted against the owner's limits
before it is), results kept until their dealer acknowledges them, the spool and
the disk, the payloads in hand. Part of the core (jobber._core.JobberCore, whose
theory of operation this follows), kept apart so each part reads alone; it shares
the core's state and logs as the core.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Collection, Iterable, Mapping

import protocol as p
from jobber._actions import (
    BadHash,
    ProbeDisk,
    Screened,
    Spool,
    Start,
    Stop,
    Store,
    Unspool,
    Untrusted,
)
from jobber._state import (
    DISK_PROBE_S,
    MAX_PAYLOADS_PER_SLOT,
    PIPELINE_DEPTH,
    REFUSED_PAYLOAD_WAIT_S,
    RESULT_OVERHEAD_BYTES,
    Held,
    Link,
    _weight,
)

log = logging.getLogger("jobber._core")  # the core's log, whichever part of it speaks


class Holdings:
    """The holdings' half of JobberCore (a mixin: the state is the core's)."""

    def disk_failed(self, why: str, dealer: str | None = None, tag: str | None = None) -> None:
        """A write to the data directory failed; `dealer`/`tag`: the result not spooled."""
        if dealer is not None and tag is not None and tag in self.unacked.get(dealer, {}):
            self._unspooled[(dealer, tag)] = self.unacked[dealer][tag]
            self._undurable.discard((dealer, tag))  # delivered from memory meanwhile
        if not self.disk_trouble:
            log.warning(
                "%s; keeping finished results in memory and asking for no work until "
                "the disk takes them again",
                why,
            )
        self.disk_trouble = why

    def disk_ok(self) -> None:
        """The disk probe succeeded."""
        if self.disk_trouble and not self._unspooled:
            log.warning("the disk takes writes again: asking for work again")
            self.disk_trouble = ""

    def _take_jobs(
        self, link: Link, msg: p.Jobs, now: float, unusable: Mapping[str, tuple[p.Status, str]]
    ) -> None:
        """Take the jobs of a `jobs` that answers our ask, each only if what it makes us
        hold fits the owner's limits (Settings: input_budget, cache_bytes, the spool's
        share and spool_budget) with everything held already; the others are given back
        unrun (abandoned: the dealer reissues them at once), or, when even that result
        would not fit the dealer's spool share, dropped (its next `holding` says so)."""
        s = self.s
        host = self.host_facts()
        inputs = sum(h.input for h in self._in_hand())
        pinned = self.held_payloads()
        # input files of jobs in hand take the cache too, at the size their jobs name
        files = self._files_in_hand()
        cache = sum(self._payload_bytes(sha) for sha in pinned) + sum(files.values())
        spool = self._spool_in_all()
        mine = self._spool_of(link.address)
        refused = unfit = dropped = never = took = 0
        for spec in msg.jobs:
            h = Held(link.address, spec, now + spec.deadline_s)
            link.output_hint = h.may_write
            link.input_hint = h.input
            bad = unusable.get(spec.payload) or self._refuses_files(spec)
            why = None if bad is None else bad[1]
            too_much = host.refuses(spec.limits) or host.refuses_inputs(spec.input_bytes())
            owner = why is None and too_much is not None
            if owner:  # the owner's limits win, no fault
                log.warning("job %s from %s asks for %s: refused", spec.tag, h.dealer, too_much)
                why = f"refused: it asks for {too_much}"
            new_payload = 0
            if spec.payload not in pinned:
                wasm = msg.payloads.get(spec.payload)
                new_payload = self._payload_bytes(spec.payload, wasm)
            new_files: dict[str, int] = {}  # file -> the bytes it adds to those in hand
            for ref in spec.fetched():
                more = ref.size - max(files.get(ref.hash, 0), new_files.get(ref.hash, 0))
                if more > 0:
                    new_files[ref.hash] = new_files.get(ref.hash, 0) + more
            new_bytes = new_payload + sum(new_files.values())
            if why is None and inputs + h.input > s.input_budget():
                why = (
                    f"refused: its input ({h.input:,} bytes) does not fit what this jobber "
                    f"holds ({s.input_budget():,} bytes of job input in hand at most)"
                )
            elif (
                why is None
                and s.cache_bytes is not None
                and (new_bytes and cache + new_bytes > s.cache_bytes)
            ):
                what = "its payload" if not new_files else "what its payload and input files take"
                why = (
                    f"refused: {what} ({new_bytes:,} bytes) does not fit the cache "
                    f"({s.cache_bytes:,} bytes, {cache:,} in use by jobs in hand)"
                )
            elif why is None and new_payload and len(pinned) >= self._max_payloads():
                why = f"refused: jobs of {len(pinned)} payloads in hand already"
            elif why is None and (
                mine + h.may_hold > s.spool_share_bytes or spool + h.may_hold > s.spool_budget()
            ):
                why = (
                    f"refused: its result may take {h.may_hold:,} bytes; the spool holds "
                    f"{s.spool_share_bytes:,} per dealer, {s.spool_budget():,} in all"
                )
            if why is None:
                took += 1
                self._owe(h, +1)
                self.buffer.append(h)
                inputs += h.input
                mine += h.may_hold
                spool += h.may_hold
                if spec.payload not in pinned:
                    pinned.add(spec.payload)
                    cache += new_payload
                    self._coming[spec.payload] = new_payload
                for sha, more in new_files.items():
                    files[sha] = files.get(sha, 0) + more
                cache += sum(new_files.values())
                continue
            status = p.Status.ABANDONED if bad is None else bad[0]
            result = p.Result(spec.tag, status, b"", 0, why[: p.MAX_STR])
            weight = _weight(result)
            if mine + weight > s.spool_share_bytes or spool + weight > s.spool_budget():
                dropped += 1  # not even its refusal fits: the next `holding` says it
                continue
            mine += weight
            spool += weight
            self._owe(h, +1)
            self._finish(h, result)
            if bad is not None:
                refused += status is p.Status.ABANDONED
            elif owner:
                unfit += 1
            else:
                unfit += 1
                # alone bigger than what the owner allows: it can never be taken here
                never += (
                    h.input > s.input_budget()
                    or (s.cache_bytes is not None and new_bytes > s.cache_bytes)
                    or h.may_hold > min(s.spool_share_bytes, s.spool_budget())
                )
        if took or not msg.jobs:
            link.no_work = ""  # work came (or none was sent: the reason, if any, is said)
        else:  # every job given back: the latest reason is this machine's own
            last = self.unacked.get(link.address, {})
            why = next(reversed(last.values())).detail if last else "they did not fit"
            link.no_work = f"its jobs were given back unrun: {why}"
        if (refused or never) and not self.disk_trouble:  # jobs we will not run: ask less
            link.ask_after = max(link.ask_after, now + REFUSED_PAYLOAD_WAIT_S)
        elif unfit or dropped:  # they may fit once what is held is done: not every turn
            link.ask_after = max(link.ask_after, now + self.s.min_backoff_s)
        taken = {h.spec.payload for h in self.buffer if h.dealer == link.address}
        keep = tuple((sha, wasm) for sha, wasm in msg.payloads.items() if sha in taken)
        if keep:
            self._actions.append(Store(link.address, keep))
        if unfit or dropped:
            self._repeats.warn(
                now,
                f"unfit {link.address}",
                lambda: (
                    f"dealer {link.address}: {unfit + dropped} of {len(msg.jobs)} jobs "
                    "given back unrun: they do not fit the owner's limits beside what is "
                    "held (docs/jobber.md, 'What a dealer can make this machine hold')"
                ),
            )
        if msg.jobs:
            self._last_busy = now
            log.debug("%d jobs from %s", len(msg.jobs), link.address)

    def payload_lost(self, sha: str, status: p.Status, why: str) -> None:
        """Payload `sha` could not be kept (a full disk): its buffered jobs go back unrun."""
        kept: deque[Held] = deque()
        for h in self.buffer:
            if h.spec.payload == sha:
                self._finish(h, p.Result(h.spec.tag, status, b"", 0, why[: p.MAX_STR]))
            else:
                kept.append(h)
        self.buffer = kept
        self._coming.pop(sha, None)

    def _in_hand(self) -> list[Held]:
        """Jobs buffered or running (those cancelled too, until their slot ends them)."""
        return [*self.buffer, *self.running.values()]

    def _max_payloads(self) -> int:
        return MAX_PAYLOADS_PER_SLOT * self.s.slots

    def _payload_bytes(self, sha: str, wasm: bytes | None = None) -> int:
        """What payload `sha` takes in the cache: its bytes and compiled forms as the
        shell last saw them, else what was sent (its compiled form counts once built)."""
        wasm_bytes, compiled = self.sizes.get(sha, (0, 0))
        sent = len(wasm) if wasm is not None else self._coming.get(sha, 0)
        return max(wasm_bytes + compiled, sent)

    def _spool_of(self, dealer: str) -> int:
        """Results of `dealer` unacknowledged, and what its jobs in hand may add."""
        held = sum(h.may_hold for h in self._in_hand() if h.dealer == dealer)
        return self._unacked_bytes.get(dealer, 0) + held

    def _spool_in_all(self) -> int:
        held = sum(h.may_hold for h in self._in_hand())
        return sum(self._unacked_bytes.values()) + held

    def cache_updated(
        self, sizes: Mapping[str, tuple[int, int]], runtimes: Collection[str] = ()
    ) -> None:
        """The shell's cache as it is now: payload hash -> (bytes, compiled forms' bytes),
        and the runtimes in it compiled for every engine."""
        self.sizes = sizes
        self.cached = tuple(self._runtimes_cached(sizes, set(runtimes)))
        held = self.held_payloads()
        self._coming = {sha: n for sha, n in self._coming.items() if sha in held}

    def _owe(self, h: Held, sign: int) -> None:
        self._owed[h.dealer] = self._owed.get(h.dealer, 0) + sign * h.may_write

    def _finish(self, h: Held, result: p.Result) -> None:
        self._owe(h, -1)
        self._forget_state(h)
        self._summary[result.status.value] = self._summary.get(result.status.value, 0) + 1
        if not self.done:
            log.info("first job done: %s from %s, %s", result.tag, h.dealer, result.status.value)
        self.done += 1
        self._hold_result(h.dealer, result)
        self._undurable.add((h.dealer, result.tag))
        self._actions.append(Spool(h.dealer, result))

    def spooled(self, keys: Iterable[tuple[str, str]]) -> None:
        """These (dealer, tag) results are on disk now: they may be sent."""
        for key in keys:
            self._undurable.discard(key)

    def _hold_result(self, dealer: str, result: p.Result) -> None:
        results = self.unacked.setdefault(dealer, {})
        old = results.get(result.tag)
        results[result.tag] = result
        self._unacked_bytes[dealer] = (
            self._unacked_bytes.get(dealer, 0)
            + _weight(result)
            - (0 if old is None else _weight(old))
        )

    def _release_result(self, dealer: str, tag: str) -> None:
        results = self.unacked.get(dealer, {})
        old = results.pop(tag, None)
        if old is not None:
            self._unacked_bytes[dealer] -= _weight(old)
            self._actions.append(Unspool(dealer, tag))
        self._unspooled.pop((dealer, tag), None)
        self._undurable.discard((dealer, tag))
        if not results:
            self.unacked.pop(dealer, None)
            self._unacked_bytes.pop(dealer, None)

    def _retry_spool(self, now: float) -> None:
        """While the disk refuses, spool the results kept in memory again, and probe it."""
        if now - self._probe_at < DISK_PROBE_S:
            return
        self._probe_at = now
        retry, self._unspooled = self._unspooled, {}
        for (dealer, tag), result in retry.items():
            if tag in self.unacked.get(dealer, {}):
                self._actions.append(Spool(dealer, result))  # a failure puts it back
        self._actions.append(ProbeDisk())

    def _cancel(self, dealer: str, tags: tuple[str, ...]) -> None:
        """The dealer settled these jobs elsewhere: drop them, stop them, send nothing."""
        gone = set(tags)
        kept: deque[Held] = deque()
        n = 0
        for h in self.buffer:
            if h.dealer == dealer and h.spec.tag in gone:
                self._owe(h, -1)
                self._forget_state(h)
                n += 1
            else:
                kept.append(h)
        self.buffer = kept
        for key, h in self.running.items():
            if h.dealer == dealer and h.spec.tag in gone and key not in self._cancelled:
                self._owe(h, -1)
                self._forget_state(h)
                self._cancelled.add(key)
                self._actions.append(Stop(key))
                n += 1
        for tag in gone:
            h = self.parked.pop((dealer, tag), None)
            if h is not None:
                self._forget_state(h)
                n += 1
        for tag in gone & set(self.unacked.get(dealer, {})):
            self._release_result(dealer, tag)
            n += 1
        if n:
            log.info("dealer %s: %d jobs cancelled (settled without them)", dealer, n)

    def _acked(self, dealer: str, msg: p.Ack, now: float) -> None:
        for tag in msg.tags:
            self._release_result(dealer, tag)
        if dealer in self.links:
            self.links[dealer].done += len(msg.tags)
        late = 0
        for rej in msg.rejected:
            if rej.code is p.ErrorCode.SETTLED:  # a backup or late replica: nothing wrong
                late += 1
                self._release_result(dealer, rej.tag)
                continue
            self._repeats.warn(
                now,
                f"refused {dealer} {rej.code.value}",
                lambda rej=rej: (
                    f"dealer {dealer} refused result {rej.tag}: {rej.code.value}: {rej.text}"
                ),
            )
            self._release_result(dealer, rej.tag)
        if late:
            log.info("dealer %s: %d results not needed (their jobs were settled)", dealer, late)
        link = self.links.get(dealer)
        one = 0 if link is None else link.output_hint + RESULT_OVERHEAD_BYTES
        if link is not None and link.flooded and not self._over_share(dealer, one):
            link.flooded = False
        if link is not None and link.retired:
            self._drop_retired(link)

    def _delivering(self) -> bool:
        """Results wait for a dealer that is answering: finish delivering them first."""
        return any(
            results and addr in self.links and self.links[addr].backoff.failures == 0
            for addr, results in self.unacked.items()
        )

    def _over_share(self, dealer: str, one: int = RESULT_OVERHEAD_BYTES) -> bool:
        """Its unacknowledged results leave no room in its share for `one` more result."""
        return self._unacked_bytes.get(dealer, 0) + one > self.s.spool_share_bytes

    def stop(self, now: float) -> None:
        """Wind down: buffered jobs are given back unstarted, running ones may finish,
        no more work is asked for; results are still delivered."""
        if self.stopping:
            return
        self.stopping = True
        self._park()
        log.info(
            "stopping: %d running, %d not started, %d results to deliver",
            len(self.running),
            len(self.buffer),
            self.count_unacked(),
        )
        while self.buffer:
            h = self.buffer.popleft()
            self._finish(
                h,
                p.Result(
                    h.spec.tag, p.Status.ABANDONED, b"", 0, "jobber stopped before starting it"
                ),
            )

    def job_done(self, key: str, result: p.Result, wall_s: float, now: float) -> None:
        """A slot finished the job started as `key` (or it could not be started)."""
        h = self.running.pop(key, None)
        if key in self._cancelled:  # stopped because the dealer settled it elsewhere
            self._cancelled.discard(key)
            return
        if h is None:
            log.warning("slot reported unknown job %s", key)
            return
        # the slot's own clock is coarse (10 ms ticks) and leaves out the pipe to the
        # worker: the time from start to outcome on ours is what buffering must cover
        took = max(wall_s, (now - h.started) / h.depth, 1e-6)
        if result.status is not p.Status.ABANDONED:  # given back unrun: no job's length
            self._job_s = took if not self._job_s else 0.8 * self._job_s + 0.2 * took
        if self.shares is not None:  # what the job ran, compiling left out (Outcome.wall_s)
            self.shares.charge(h.dealer, wall_s if wall_s > 0 else took, self.eligible(now))
        self._finish(h, result)
        link = self.links.get(h.dealer)
        if result.status is p.Status.ABANDONED and result.detail.startswith("refused") and link:
            # this machine cannot run that dealer's payload (compiling it needs more than
            # the owner allows): the dealer sends the job elsewhere; ask it less
            if link.ask_after < now + REFUSED_PAYLOAD_WAIT_S:
                log.warning("job %s from %s given back: %s", result.tag, h.dealer, result.detail)
            link.ask_after = max(link.ask_after, now + REFUSED_PAYLOAD_WAIT_S)
        log.debug(
            "job %s from %s: %s, %d fuel, %.3f s",
            result.tag,
            h.dealer,
            result.status.value,
            result.fuel,
            wall_s,
        )

    def _unusable(
        self, dealer: str, screened: Iterable[Screened], now: float
    ) -> dict[str, tuple[p.Status, str]]:
        """The payloads of a `jobs` whose jobs go back unrun, with their status and why: one
        not signed by a trusted key is ABANDONED (no fault of the job's: another jobber may
        run it); one whose bytes are not what it names is INVALID (as if it was not sent).
        Each is logged once in a while per dealer."""
        out: dict[str, tuple[p.Status, str]] = {}
        facts = list(screened)
        for f in facts:
            if isinstance(f, Untrusted):
                why = f"refused: payload {f.sha[:12]}: {f.reason}"
                out[f.sha] = (p.Status.ABANDONED, why)
                self.refused_payloads[dealer] = why
                self._repeats.warn(
                    now, f"unsigned {dealer}", lambda why=why: f"dealer {dealer}: {why}"
                )
        for f in facts:
            if isinstance(f, BadHash) and f.sha not in out:
                self._repeats.warn(
                    now,
                    f"badhash {dealer}",
                    lambda f=f: (
                        f"dealer {dealer} sent payload {f.sha[:12]} "
                        f"whose bytes hash to {f.got[:12]}; ignored"
                    ),
                )
                out[f.sha] = (p.Status.INVALID, f"payload {f.sha[:12]} was not sent")
        return out

    def _start_jobs(self, now: float) -> None:
        host = self.host_facts()
        depth = PIPELINE_DEPTH if self.pipelined else 1
        waiting: deque[Held] = deque()  # jobs whose input files are still coming
        while self.buffer and len(self.running) < self.s.slots * depth:
            h = self.buffer.popleft()
            if not self._files_ready(h):
                waiting.append(h)
                continue
            too_much = host.refuses(h.spec.limits)
            if too_much is not None:  # the owner's limits win: given back unrun, no fault
                log.warning("job %s from %s asks for %s: refused", h.spec.tag, h.dealer, too_much)
                why = f"refused: it asks for {too_much}"
                self._finish(h, p.Result(h.spec.tag, p.Status.ABANDONED, b"", 0, why))
                continue
            h.key = f"{self._next_key:x}"
            self._next_key += 1
            h.started, h.depth = now, depth
            self.running[h.key] = h
            for ref in h.spec.fetched():
                self._used_file(ref.hash)
            local = h.saved is not None  # its own state, from an earlier run's spool
            resume = h.saved if local else h.spec.resume
            self._actions.append(Start(h.key, h.dealer, h.spec, depth, resume, local))
        if waiting:  # they keep their place, ahead of the jobs not looked at
            waiting.extend(self.buffer)
            self.buffer = waiting
