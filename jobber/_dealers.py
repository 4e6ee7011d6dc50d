"""The jobber core's dealers: which it knows and with which key (referrals, pins,
drops), what it asks of them and when (bored, results, alive, hello), timeouts and
backoff, and an allocator's projects. Part of the core (jobber._core.JobberCore, whose
theory of operation this follows), kept apart so each part reads alone; it shares
the core's state and logs as the core.

Under an allocator (``set_projects``) the jobber asks only the dealers its
instructions list, and the dealers they referred it to (at any depth) only while
the listed dealer at the root of that referral chain (``Link.via``) is listed: a
project removed, its referred dealers are asked for nothing more at once, and
forgotten as soon as they hold nothing of ours.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import protocol as p
from jobber._actions import Hello, Pin, Reset, Send
from jobber._shares import Shares
from jobber._state import (
    AHEAD_S,
    ALIVE,
    BORED,
    DROP_REFERRED_AFTER,
    DROP_UNREACHED_AFTER,
    FETCH_PATIENCE_S,
    FETCHES,
    MAX_DEALERS,
    MAX_PAYLOADS_PER_SLOT,
    MAX_SHUNNED,
    PROBE_EVERY_S,
    RESULT_OVERHEAD_BYTES,
    RESULTS,
    SAVE,
    SHUN_DROPPED_S,
    Link,
    _batch,
)
from net._backoff import Backoff
from net._link import HELLO
from net._link import Link as NetLink

log = logging.getLogger("jobber._core")  # the core's log, whichever part of it speaks


class Dealers:
    """The dealers' half of JobberCore (a mixin: the state is the core's)."""

    def wake_at(self, now: float) -> float:
        """The earliest time after `now` at which a backoff, retry-later or busy wait ends."""
        wake = float("inf")
        for link in self.links.values():
            w = max(link.backoff.until, link.ask_after)
            if link.bored_id is None and w > now:
                wake = min(wake, w)
            if link.fetch_after > now:
                wake = min(wake, link.fetch_after)
            if now < link.probe_at < wake:
                wake = link.probe_at
        return wake

    def add_dealer(
        self, text: str, depth: int, *, via: str | None = None, referrer: str = ""
    ) -> None:
        """Know the dealer `text` (`endpoint` or `endpoint#key`); depth 0: from its owner (the
        command line, an allocator's instructions). `referrer`: the dealer whose referral
        named it, `via`: the depth-0 dealer at the root of that referral chain."""
        addr, key = p.split_key(text)
        link = self.links.get(addr)
        if link is None and key is not None:  # the same dealer under another spelling
            twin = next((x for x in self.links.values() if x.key == key), None)
            if twin is not None:
                log.debug("dealer %s is %s (the same key): not added twice", addr, twin.address)
                return
        if link is None:
            if len(self.links) >= MAX_DEALERS and not (depth == 0 and self._evict_referred()):
                return
            backoff = Backoff(self.s.min_backoff_s, self.s.max_backoff_s, rng=self._rng)
            req = NetLink(self.s.request_timeout_s, backoff)
            link = self.links[addr] = Link(addr, depth == 0, depth, req, via=via)
            link.paused = addr in self.owner_paused
            self._rr.append(addr)
            if depth:
                log.info("dealer %s added by referral (depth %d)", addr, depth)
            pinned = self._pins.get(addr)
            if pinned is not None and (key is None or depth > 0):
                link.key, link.key_from_hello = pinned, True
        elif depth == 0 and not link.pinned:  # the owner names a dealer known by referral
            link.pinned, link.depth, link.via, link.retired = True, 0, None, False
            if link.key_referred_by:  # a referral's key: the owner's only if the owner gives it
                # the owner's key, pinned, else learnt on first use (no key is pinned for an
                # address a referral gave a key: it would have been used instead)
                referred, referrer = link.key, link.key_referred_by
                link.key, link.key_referred_by, link.key_from_hello = key, "", False
                if key is not None:
                    self._pin(addr, key)
                if key != referred:
                    link.forget_requests()
                    link.req.reset_due = True  # requests under the other key: gone with its socket
                    self._reset(link)
                    self._claim(link, referred, referrer)  # after: it names the key now held
        elif depth > 0 and link.depth > 0 and link.retired and via is not None:
            link.via, link.retired = via, False  # referred again, by a listed project
        if key is None or key == link.key:
            return
        if depth > 0:
            # a referral's key is for an entry that referral made, and only while the
            # jobber knows no key for the address
            if link.key is None and not link.pinned:
                link.key, link.key_referred_by = key, referrer or "a referral"
            else:
                self._claim(link, key, referrer or "a referral")
            return
        if link.key is None:
            link.key = key
            if self._pins.get(addr) not in (None, key):
                log.warning("dealer %s: using the key given, not the one pinned before", addr)
            self._pin(addr, key)

    def _claim(self, link: Link, key: str, referrer: str) -> None:
        """A referral named `key` for `link`, and it is not used: a key mismatch if the jobber
        holds another key, else noted until the dealer's own key is learnt."""
        if link.claims is None:
            link.claims = {}
        if key in link.claims or len(link.claims) >= 4:  # said once; a few kept
            return
        link.claims[key] = referrer
        if link.key is not None:
            log.warning(
                "dealer %s: key mismatch: %s referred to it with key %s, but it is %s (%s); "
                "the referral's key is not used",
                link.address,
                referrer,
                key,
                link.key,
                "learnt from it" if link.key_from_hello else "given by the owner",
            )
        else:
            log.info(
                "dealer %s: %s referred to it with key %s; its key is learnt from it, not "
                "from a referral, since its owner named it",
                link.address,
                referrer,
                key,
            )

    def _evict_referred(self) -> bool:
        """Room for a dealer the owner names: a referred one that holds nothing goes."""
        for link in self.links.values():
            if link.depth > 0 and not self.holds_from(link.address):
                log.info("dealer %s dropped: room for a dealer named by the owner", link.address)
                self._drop(link, float("-inf"))  # not shunned: it did nothing wrong
                return True
        return False

    def _pin(self, addr: str, key: str) -> None:
        self._pins[addr] = key
        self._actions.append(Pin(addr, key))

    def _reset(self, link: Link) -> None:
        """Close the dealer's sockets if its link asks it (net._link: after a failed contact,
        a refusal, or a key replaced): whatever was in flight on them is gone."""
        if link.req.take_reset():
            self._actions.append(Reset(link.address))

    def _drop(self, link: Link, now: float) -> None:
        """Forget a dealer; its jobs still waiting for input files are given back (no
        file of theirs comes from it now)."""
        self._dealer_gone(link.address, f"dealer {link.address} dropped before its files came")
        self._shunned[link.address] = now + SHUN_DROPPED_S
        if len(self._shunned) > MAX_SHUNNED:
            del self._shunned[min(self._shunned, key=self._shunned.__getitem__)]
        del self.links[link.address]
        self._rr.remove(link.address)
        self._actions.append(Reset(link.address))

    def contact_failed(self, dealer: str, now: float, why: str, problem: str = "") -> None:
        """A message could not go to `dealer`, or the transport says it cannot be reached
        (refused, our key refused): a failed contact if a request is out, else noted."""
        link = self.links.get(dealer)
        if link is None:
            return
        if problem:
            link.problem = problem
        out = (link.bored_id, link.results_id, link.hello_id, link.alive_id)
        if any(x is not None for x in out) or link.fetches:
            self._failed(link, now, why)

    def problem(self, dealer: str, text: str) -> None:
        """What the transport says about a dealer's connection ("" once it connects)."""
        link = self.links.get(dealer)
        if link is not None:
            link.problem = text

    def _rid(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    def _hello(self, link: Link, now: float) -> None:
        if not link.req.may_send(HELLO, now):
            return
        rid = self._rid()
        link.sent(HELLO, rid, now)
        self._actions.append(Hello(link.address, p.Hello(rid)))

    def _probe_keys(self, now: float) -> None:
        """A dealer whose key is in doubt after a failed contact is asked for it inside its
        backoff, at once and then every PROBE_EVERY_S: a dealer that now presents another
        key (its batch started again elsewhere) shows as a key mismatch in seconds, not
        after minutes, and a dead one costs no more failures (a probe's silence counts
        none; its answer resets no backoff: the plaintext port is not the work port)."""
        for link in self.links.values():
            if link.probe_at > now:
                continue
            if link.refused or not link.check_key or link.backoff.ready(now):
                link.probe_at = float("inf")  # nothing in doubt, or the hello goes anyway
                continue
            if link.req.busy(HELLO):
                continue
            link.probe_at = now + PROBE_EVERY_S
            rid = self._rid()
            link.sent(HELLO, rid, now)
            link.probing = True
            self._actions.append(Hello(link.address, p.Hello(rid)))

    def _hello_reply(self, link: Link, msg: p.HelloReply, now: float) -> None:
        self.reached = True
        if link.probing:  # the plaintext port answered; the work port's failure stands
            link.probing = False
            link.req.forget(HELLO)
        else:
            link.answered_by(HELLO, now)
        link.check_key, link.key_checked = False, True
        pinned = self._pins.get(link.address)
        if link.key_referred_by and link.key != msg.key:  # only a referral said otherwise
            log.error(
                "dealer %s: key mismatch: it presents key %s, not the key %s that %s referred "
                "to it with; not used",
                link.address,
                msg.key,
                link.key,
                link.key_referred_by,
            )
            if self.unacked.get(link.address):  # results for it: kept, listed, never sent
                link.req.refuse(f"key mismatch: it presents key {msg.key}, not {link.key}")
                link.forget_requests()
                self._reset(link)
            else:
                self._drop(link, now)
            return
        if pinned is not None and pinned != msg.key:
            link.mismatch = (pinned, msg.key)
            link.req.refuse(
                f"key mismatch: it now presents key {msg.key}, not the pinned {pinned}. If the "
                f"change is expected, give it as {link.address}#{msg.key} or remove its line "
                "from the known_dealers file in the data directory"
            )
            log.error("dealer %s: %s", link.address, link.refused)
            link.forget_requests()
            self._reset(link)
            return
        for claimed, referrer in (link.claims or {}).items():
            if claimed != msg.key:
                log.warning(
                    "dealer %s: key mismatch: it presents key %s; %s referred to it with key "
                    "%s, which was not used",
                    link.address,
                    msg.key,
                    referrer,
                    claimed,
                )
        link.claims = None
        if link.key is None:
            twin = next((x for x in self.links.values() if x.key == msg.key), None)
            if twin is not None and not link.pinned and not self.unacked.get(link.address):
                log.info("dealer %s is %s (the same key): dropped", link.address, twin.address)
                self._drop(link, now)
                return
            log.warning(
                "dealer %s: trusting its key %s on first use (pinned in known_dealers)",
                link.address,
                msg.key,
            )
            link.key, link.key_from_hello = msg.key, True
            self._pin(link.address, msg.key)

    def _send(self, link: Link, msg: p.Message) -> None:
        self._actions.append(Send(link.address, msg))

    def _fetch(self, now: float) -> None:
        if self.disk_trouble:  # no new work while finished work cannot be kept safely
            return
        have = len(self.buffer) + len(self.running) - len(self._cancelled)
        # what asks still out to dealers that answer may bring (nothing, not less, while
        # more than the high water is held: it falls as jobs get longer)
        hi_water = self.hi_water()
        coming = sum(
            max(0, hi_water - have)
            for link in self.links.values()
            if link.bored_id is not None
            and link.answered
            and now - link.bored_at < FETCH_PATIENCE_S
        )
        # ask below the low-water mark, for the difference: a few large asks, not one
        # per finished job (with one slot and long jobs: as soon as one job is missing).
        # Checked first: most turns stop here, before the checks that walk the buffer.
        low = hi_water - max(1, (hi_water - self.s.slots) // 2)
        if have + coming > low:
            return
        ready = [h for h in self.buffer if self._files_ready(h)]
        if ready and self._job_s:
            # never hold more than the buffered jobs' deadlines allow: the last one
            # starts after about len(buffer) / slots job lengths (a job still waiting
            # for its input files starts when they come, and holds no other back)
            start_in = (len(ready) / self.s.slots + 1) * self._job_s
            if now + start_in > min(h.deadline for h in ready):
                return
        payloads = {h.spec.payload for h in self.buffer}
        payloads |= {h.spec.payload for h in self.running.values()}
        if len(payloads) >= MAX_PAYLOADS_PER_SLOT * self.s.slots:
            return  # jobs of many payloads: no deep buffer (see MAX_PAYLOADS_PER_SLOT)
        want = min(p.MAX_BATCH, hi_water - have - coming)
        if want <= 0:
            return
        # dealers that answered before first, round robin among equals
        order = sorted(self._rr, key=lambda a: not self.links[a].answered)
        if self.shares is not None:  # the allocator's: the most owed first
            order = self._by_debt(order)
        inputs = None  # jobs' inputs in hand, counted once a dealer's jobs bring any
        for addr in order:
            link = self.links[addr]
            if not link.may_ask(now):
                continue
            if link.key is None or link.check_key:
                self._hello(link, now)
                continue  # the key first; others may still be asked
            # what its results and jobs in hand may take of its share of the spool, and
            # what one more job's result may (its output limit as last seen, tag, detail)
            owed = self._spool_of(addr)
            one = link.output_hint + RESULT_OVERHEAD_BYTES
            full = owed + one > self.s.spool_share_bytes
            if full and not self._over_share(addr, one):
                continue  # its jobs in hand may fill its share: no more until they are done
            if full:
                if not link.flooded:
                    link.flooded = True
                    log.warning(
                        "dealer %s has not acknowledged %d results (%d MiB): asking it for "
                        "no more work until it does",
                        addr,
                        len(self.unacked.get(addr, {})),
                        self._unacked_bytes.get(addr, 0) // (1024 * 1024),
                    )
                continue
            # no more than its share of the spool could take
            n = min(want, max(1, (self.s.spool_share_bytes - owed) // one))
            if link.input_hint:  # no more than the jobs' inputs room left holds
                if inputs is None:
                    inputs = sum(h.input for h in self._in_hand())
                room = self.s.input_budget() - inputs
                if room < link.input_hint and inputs:
                    continue  # its jobs wait for room: asked once jobs in hand are done
                n = min(n, max(1, room // link.input_hint))
            # `holding` lets a dealer release what we lost (a restart); `alive` says it
            # too, so a bored names it only when that is not said already
            holding = None
            if now - link.holding_at >= p.ALIVE_INTERVAL_S:
                holding = self.holding(addr)
                link.holding_at = now
            rid = self._rid()
            host = self.host_facts()
            self._send(link, p.Bored(rid, self.s.name, host, n, holding))
            link.sent(BORED, rid, now)
            link.bored_want, link.bored_cached = n, frozenset(host.cached)
            self._rr.remove(addr)  # to the back of the round
            self._rr.append(addr)
            if link.answered:
                return  # one live dealer at a time; dealers that never answered hold none back

    def set_projects(self, projects: Mapping[str, float], debts: Mapping[str, float] = {}) -> None:
        """The allocator's dealers (`endpoint#key` or `endpoint`) and their shares. Dealers
        no longer listed get no more asks (their results and alives still go); `debts`:
        saved ones, by address, for dealers new to this run."""
        shares: dict[str, float] = {}
        for text, share in projects.items():
            self.add_dealer(text, depth=0)
            addr = p.split_key(text)[0]
            if addr in self.links:
                shares[addr] = share
        if self.shares is None:
            self.shares = Shares()
        self.shares.set(shares, debts)
        for link in list(self.links.values()):  # referred by a project no longer listed
            if link.depth > 0 and link.via is not None and link.via not in shares:
                if not link.retired:
                    log.info(
                        "dealer %s: asked for nothing more (%s, which referred to it, is not "
                        "listed now)",
                        link.address,
                        link.via,
                    )
                link.retired = True
                self._drop_retired(link)

    def _drop_retired(self, link: Link) -> None:
        """A retired dealer is forgotten once it holds nothing of ours."""
        if link.retired and link.address in self.links and not self.holds_from(link.address):
            self._drop(link, float("-inf"))  # not shunned: it did nothing wrong

    def eligible(self, now: float) -> list[str]:
        """Projects that have work for us, or may: they count in the debts' accounting."""
        assert self.shares is not None
        out = []
        for addr in self.shares.share:
            link = self.links.get(addr)
            if link is None or not link.usable() or link.finished or link.backoff.failures:
                continue
            if now >= link.ask_after or self.holds_from(addr):
                out.append(addr)
        return out

    def _by_debt(self, order: list[str]) -> list[str]:
        assert self.shares is not None
        job_s = self._job_s or AHEAD_S
        in_hand: dict[str, float] = {}
        for h in (*self.buffer, *self.running.values()):
            in_hand[h.dealer] = in_hand.get(h.dealer, 0.0) + job_s
        ranked = self.shares.rank(order, in_hand)
        # a dealer from the allocator that it no longer lists is asked for nothing more, nor
        # are those it referred to, nor dealers from an earlier run's spool
        share = self.shares.share
        return [a for a in ranked if a in share or self.links[a].via in share]

    def _send_results(self, now: float) -> None:
        for addr, results in self.unacked.items():
            link = self.links.get(addr)
            if not results or link is None or link.results_id is not None or link.refused:
                continue
            if not link.backoff.ready(now):
                continue
            if link.key is None or link.check_key:
                self._hello(link, now)
                continue
            ready = [r for r in results.values() if (addr, r.tag) not in self._undurable]
            if not ready:
                continue  # on its way to disk: sent once it is there
            batch = _batch(ready)
            rid = self._rid()
            self._send(link, p.Results(rid, self.s.name, batch))
            link.sent(RESULTS, rid, now)
            link.results_tags = tuple(r.tag for r in batch)

    def _send_alive(self, now: float) -> None:
        """Tell each dealer whose work we hold that we are alive, every few seconds, even
        while every slot is busy: a dealer takes a silent jobber as gone (docs/protocol.md)."""
        for addr, link in self.links.items():
            if not link.usable() or link.alive_id is not None:
                continue
            if now - link.alive_at < link.alive_every_s or not link.backoff.ready(now):
                continue
            if not self.holds_from(addr):
                continue
            rid = self._rid()
            # `holding` only while no `jobs` reply can be in flight: tags the dealer has
            # just sent us would otherwise read as lost (docs/protocol.md, section 6)
            holding = self.holding(addr) if link.bored_id is None else None
            if holding is not None:
                link.holding_at = now
            self._send(link, p.Alive(rid, self.s.name, holding))
            link.sent(ALIVE, rid, now)
            link.alive_at = now

    def _check_timeouts(self, now: float) -> None:
        limit = self.s.request_timeout_s
        for link in list(self.links.values()):
            if link.req.late(now):  # past the deadline: one failed contact (net._link)
                self._failed(link, now, f"no answer within {limit:g} s")

    def _failed(self, link: Link, now: float, why: str) -> None:
        # a key learnt on first use: before asking again, has it changed? A key a referral
        # gave that never worked in this run: is it the dealer's, or a key mismatch? (Not
        # if asking for the key failed.)
        if link.probing and set(link.req.out) <= {HELLO}:  # the probe alone: no failure
            link.probing = False
            link.req.forget(HELLO)
            link.req.reset_due = True
            self._reset(link)
            log.debug("dealer %s: its plaintext port did not answer either (%s)", link.address, why)
            return
        link.probing = False
        unproven = bool(link.key_referred_by) and not link.answered and not link.key_checked
        wait = link.req.failed(now, recheck=unproven)
        # a key learnt (or pinned) before: asked at once, not only after the backoff
        if link.check_key and link.key_from_hello and not link.key_referred_by:
            link.probe_at = now
        link.forget_requests()
        self._reset(link)
        log.info(
            "dealer %s: %s; failure %d, backed off for %.2f s%s",
            link.address,
            why,
            link.backoff.failures,
            wait,
            f"; {link.problem}" if link.problem else "",
        )
        limit = DROP_REFERRED_AFTER if link.answered else DROP_UNREACHED_AFTER
        if (
            not link.pinned
            and link.backoff.failures >= limit
            and not self.unacked.get(link.address)
        ):
            log.info(
                "dealer %s dropped after %d failed contacts", link.address, link.backoff.failures
            )
            self._drop(link, now)

    def _referred(self, link: Link, dealers: tuple[str, ...], now: float) -> None:
        via = link.via if link.depth else link.address
        if self.shares is not None and via not in self.shares.share:
            log.debug("dealer %s: its referral not followed (not listed by the allocator)", via)
            return
        for text in dealers:
            try:
                addr = p.dealer_address(text)
            except ValueError as e:
                log.warning("dealer %s referred to a bad address: %s", link.address, e)
                continue
            if not addr.startswith("tcp://"):  # a remote dealer names no local sockets
                log.warning("dealer %s referred to %s: only tcp is followed", link.address, addr)
                continue
            if self._shunned.get(p.split_key(addr)[0], 0.0) > now:
                continue  # dropped a moment ago: not again so soon
            self.add_dealer(addr, link.depth + 1, via=via, referrer=link.address)

    def _unanswered(self, link: Link, msg: p.Message) -> str:
        """Why `msg` is no answer to a request of ours out to `link` ("" if it is one).
        A `jobs` must also carry what that ask asked for and nothing else: at most its
        `want` jobs, payloads only for those jobs, and for each job a payload sent with
        it or one we hold (or said we held: it may have been evicted since)."""
        re_ = getattr(msg, "re", None)
        if isinstance(msg, p.Jobs | p.RetryLater | p.Referral | p.Finished):
            if link.bored_id is None or re_ != link.bored_id:
                return (
                    "it answers no ask of ours"
                    if link.bored_id is None
                    else (f"it answers ask {re_}, not the ask out ({link.bored_id})")
                )
        elif isinstance(msg, p.Ack):
            if link.results_id is None or re_ != link.results_id:
                return "it acknowledges no results we sent"
        elif isinstance(msg, p.AliveAck):
            if link.alive_id is None or re_ != link.alive_id:
                return "it answers no alive of ours"
        elif isinstance(msg, p.Chunk):
            if link.req.match(re_, FETCHES) is None:
                return "it answers no fetch of ours"
        elif isinstance(msg, p.Saved):
            if re_ is None or re_ != link.req_id(SAVE):
                return "it answers no save of ours"
        elif isinstance(msg, p.Error):
            mine = (link.bored_id, link.results_id, link.alive_id, link.req_id(SAVE))
            if re_ is None or (re_ not in mine and link.req.match(re_, FETCHES) is None):
                return "an error about no request of ours"
        else:
            return f"a {msg.TYPE} is no reply a jobber asks for"
        if not isinstance(msg, p.Jobs):
            return ""
        if len(msg.jobs) > link.bored_want:
            return f"{len(msg.jobs)} jobs for an ask of {link.bored_want}"
        named = {spec.payload for spec in msg.jobs}
        extra = set(msg.payloads) - named
        if extra:
            return f"{len(extra)} payloads no job of it names"
        known = link.bored_cached | set(self.sizes) | set(self.cached)
        missing = named - set(msg.payloads) - known
        if missing:
            return f"jobs of payload {min(missing)[:12]}, neither sent nor held here"
        return ""

    def _unasked(self, link: Link, msg: p.Message, now: float, why: str) -> None:
        """A reply to nothing we asked (or a `jobs` carrying more than asked): it changes
        nothing; logged once with a count. A `jobs` is refused whole (nothing of it is
        kept: the dealer learns from the next `holding` that we hold none of it) and is a
        failed contact: the dealer is backed off and its sockets, with whatever else it
        queued to us, closed."""
        link.unasked += 1
        self._repeats.warn(
            now,
            f"unasked {link.address}",
            lambda: (
                f"dealer {link.address} sent a {msg.TYPE} we did not ask for ({why}): "
                f"refused, {link.unasked} such so far"
            ),
        )
        if isinstance(msg, p.Jobs):
            self._failed(link, now, f"an unasked {msg.TYPE} refused")
