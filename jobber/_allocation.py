"""The jobber shell's side of an allocator: its link (jobber._allocator_link, a thread),
its instructions kept on disk and taken in without a restart (dealers and shares for
the core, the pool's preferences merged with the owner's limits: jobber._instructions).
"""

from __future__ import annotations

import logging
import os
import queue
import time
from dataclasses import asdict, replace

import protocol as p
from jobber import _instructions
from jobber._allocator_link import AllocatorLink, InstructionsCame, KeyLearnt
from jobber._idle import IdleDetector, Throttle
from jobber._settings import Config, JobberError, physical_memory_mb
from net._backoff import Backoff
from protocol._alloc import allocator_address

log = logging.getLogger("jobber._client")  # the shell's log, whichever part of it speaks


def owner_of(cfg: Config) -> _instructions.Owner:
    """The owner's limits, as jobber._instructions merges them with a pool's preferences:
    what the jobber uses without a pool, and which of it its owner set."""
    return _instructions.Owner(
        slots=cfg.slots,
        cpus=os.cpu_count() or 1,
        memory_mb=cfg.memory_mb or max(1, physical_memory_mb() // cfg.slots),
        cpu_limit=cfg.cpu_limit,
        cache_mb=cfg.cache_mb,
        idle_only=cfg.idle_only,
        idle_after_s=cfg.idle_after_s,
        explicit=frozenset(cfg.explicit),
    )


class Allocation:
    """An allocator, for the shell (jobber._client.Jobber, a mixin: the state is its)."""

    def _start_allocator(self, address: str, pool: str) -> None:
        try:
            text = allocator_address(address)
        except ValueError as e:
            raise JobberError(f"--allocator: {e}") from None
        endpoint, key = p.split_key(text)
        try:
            kept = _instructions.load(self.cfg.data_dir)
        except ValueError as e:
            log.warning("last instructions not used: %s", e)
            kept = None
        try:
            kept_at = None if kept is None else p.split_key(allocator_address(kept.allocator))[0]
        except ValueError:
            kept_at = None
        if kept is not None and (kept.pool, kept_at) == (pool, endpoint):
            log.info(
                "using the last instructions (serial %d) until allocator %s answers",
                kept.serial,
                endpoint,
            )
            self._apply(kept)
        elif kept is not None:
            log.info("the last instructions are for another pool or allocator: not used")
        if key is not None:
            self.pins.put(endpoint, key)
        self._alink = AllocatorLink(
            self._ctx,
            text,
            pool,
            self.keys,
            name=self.name,
            pinned_key=self.pins.get(endpoint),
            connect=self._connect_to,
            backoff=Backoff(self.cfg.min_backoff_s, self.cfg.max_backoff_s),
            timeout_s=self.cfg.request_timeout_s,
            join=self.cfg.join,
        )
        self._alink.facts = self.core.host_facts()
        self._alink.serial = None if self._kept is None else self._kept.serial
        self._alink.start()

    def _allocator_events(self, now: float) -> None:
        assert self._alink is not None
        if now - self._facts_at >= 1.0:
            self._alink.facts = self.core.host_facts()
            self._facts_at = now
        while True:
            try:
                event = self._alink.events.get_nowait()
            except queue.Empty:
                return
            if isinstance(event, KeyLearnt):
                try:
                    self.pins.put(event.endpoint, event.key)
                except OSError as e:
                    self.core.disk_failed(f"cannot write {self.pins.path}: {e.strerror or e}")
            elif isinstance(event, InstructionsCame):
                msg = event.msg
                kept = _instructions.from_message(
                    self._alink.endpoint, msg, time.time(), self._debts()
                )
                if self._kept is None or self._kept.serial != msg.serial:
                    log.info(
                        "instructions %d from the allocator: %s; preferences %s",
                        msg.serial,
                        ", ".join(f"{x.name} (share {x.share:g})" for x in msg.projects)
                        or "no projects",
                        _instructions.prefs_text(msg.prefs),
                    )
                self._apply(kept)
                self._save_instructions()

    def _debts(self) -> dict[str, float]:
        return dict(self.core.shares.debt) if self.core.shares is not None else {}

    def _save_instructions(self) -> None:
        if self._kept is None:
            return
        try:
            _instructions.save(self.cfg.data_dir, replace(self._kept, debts=self._debts()))
        except OSError as e:
            log.warning("cannot keep the instructions on disk: %s", e.strerror or e)

    def _apply(self, kept: _instructions.Kept) -> None:
        """Take instructions in, without a restart: dealers and shares, the pool's prefs."""
        eff = _instructions.effective(self._owner, kept.prefs)
        projects: dict[str, float] = {}
        for x in kept.projects:
            try:
                projects[p.dealer_address(x.dealer)] = x.share
            except ValueError as e:
                log.warning("allocator project %s: bad dealer address: %s", x.name, e)
        self.core.set_projects(projects, kept.debts)
        self.slots.in_use = eff.slots
        self.slots.compile_memory_mb = self._compile_memory_mb(eff.memory_mb)
        if eff.cpu_limit != self._eff.cpu_limit:
            self._throttle = Throttle(eff.cpu_limit)
        if eff.idle_after_s != self._eff.idle_after_s:
            self._idle = IdleDetector(
                os.cpu_count() or 1,
                load_threshold=self.cfg.load_threshold,
                idle_after_s=eff.idle_after_s,
            )
        self._eff = eff
        self._kept = kept
        self._resize(time.monotonic())  # jobber._lender: within the owner's preferences

    def _allocator_status(self, now: float) -> dict | None:
        a, k = self._alink, self._kept
        if a is None:
            return None
        shares = self.core.shares
        return {
            "address": a.endpoint,
            "pool": self.cfg.pool,
            "serial": None if k is None else k.serial,
            "received": None if k is None else k.received,
            "failures": a.backoff.failures,
            "problem": a.problem or None,
            "answered_s_ago": None if a.ok_at is None else now - a.ok_at,
            "projects": [] if k is None else [asdict(x) for x in k.projects],
            "prefs": {} if k is None else _instructions.prefs_dict(k.prefs),
            "debts_s": {} if shares is None else dict(shares.debt),
            "work_s": {} if shares is None else dict(shares.done_s),
        }
