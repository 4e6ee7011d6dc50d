"""The lender's word in the jobber shell: the preferences (jobber._prefs) and the state
the owner set (suspended, dealers paused), kept across restarts, carried out each
turn, and changed through the control socket (`python -m jobber suspend|resume|pause|
unpause|prefs|accept-key`, the manager page). A part of jobber._client.Jobber (the
`Lender` mixin), over the state the shell keeps.

Each turn the shell reads what the preferences depend on (the hour, the power
supply, the idle detector, the disk's free space, today's traffic) and tells the
core: a reason that holds the jobs (`Owner.held`), whether work may be asked for,
and the memory per job and cache the machine gives now (`Resized`, when that
changes). The core decides the rest, as it does for the pool's preferences.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import protocol as p
from jobber import _core as c
from jobber import _instructions, _prefs
from jobber._idle import read_host
from jobber._settings import MIB, JobberError

log = logging.getLogger("jobber._client")

PREF_FIELDS = tuple(_prefs.Prefs.__dataclass_fields__)  # Config fields of the same names
DISK_EVERY_S = 5.0  # how often the disk's free space is read (max_disk_pct)


def _local_hour() -> float:
    t = time.localtime()
    return t.tm_hour + t.tm_min / 60 + t.tm_sec / 3600


def _today() -> str:
    return time.strftime("%Y-%m-%d")


class Lender:
    """The owner's preferences and state, for the shell (a mixin: the state is its)."""

    def _load_owner(self, data_dir: Path) -> None:
        """What the owner set before, with what the command line and --config set now
        (the newest word: kept from now on)."""
        self.owner = _prefs.load(data_dir)
        given = {name: getattr(self.cfg, name) for name in PREF_FIELDS if name in self.cfg.explicit}
        try:
            self.owner.prefs = self.owner.prefs.changed(given)
        except ValueError as e:
            raise JobberError(str(e)) from None
        self.user_suspended = self.owner.suspended
        for dealer in self.owner.paused:  # those not known now: paused once they are
            self.core.pause(dealer, True)
        if self.owner.suspended:
            log.warning("jobs stay suspended, as the owner left them: `python -m jobber resume`")
        s = self.core.s
        self._sized = (self._eff.slots, s.memory_mb, self._eff.cache_mb)
        self._disk_at = float("-inf")
        self._disk_free: int | None = None
        self._held = 0  # bytes the cache and input files took at the last reading
        self._battery: bool | None = None
        self._in_use = False
        self._net_saved = 0
        self._keep_owner()

    def _keep_owner(self) -> None:
        self.owner.suspended = self.user_suspended
        self.owner.paused = sorted(self.core_paused())
        try:
            _prefs.save(self.cfg.data_dir, self.owner)
        except OSError as e:
            log.warning("cannot keep the owner's settings on disk: %s", e.strerror or e)
        self._net_saved = self.owner.net_bytes

    def core_paused(self) -> set[str]:
        return set(self.core.owner_paused)

    def _count_traffic(self, n: int) -> None:
        self.owner.count(n, _today())

    # --- each turn ----------------------------------------------------------------

    def _tell_owner(self, now: float) -> None:
        """Tell the core what the owner and the machine are doing; it decides whether jobs
        are suspended (and asks for it with Suspend or Resume)."""
        hour = _local_hour()
        prefs = self.owner.prefs
        running = 0 if self.core.suspended else len(self.core.running)
        hours = prefs.hours()
        mine = hours is None or _instructions.in_window(hour, *hours)
        computes = self._eff.computes_at(hour)
        held = ""
        if computes and not mine:
            held = f"outside the owner's compute hours ({prefs.compute_hours})"
        if prefs.no_battery:
            self._battery = _prefs.on_battery()
            if self._battery and not held:
                held = "on batteries"
        # the idle detector is read only when its answer can matter: while a shutdown, the
        # owner or the hours hold the jobs, it learns nothing (its history of input and
        # load decides when "machine in use" ends)
        watch = self._eff.idle_only or prefs.memory_in_use_mb is not None
        if watch and not (self._stopping or self.user_suspended or not computes or held):
            self._in_use = not self._idle.update(read_host(), running, now)
        in_use = self._eff.idle_only and self._in_use
        memory = self._resize(now)
        if not held and self._in_use and prefs.memory_in_use_mb is not None:
            big = [h for h in self.core.running.values() if h.spec.limits.memory_mb > memory]
            if big:
                held = (
                    f"machine in use: {len(big)} running job{'s' if len(big) != 1 else ''} "
                    f"may use more than the {memory} MiB allowed while it is in use"
                )
        day = _today()
        over = self.owner.over_budget(day)
        if over and self.owner.net_bytes - self._net_saved > MIB:
            self._keep_owner()  # the day's count, kept for a restart
        self.core.handle(
            c.Owner(
                suspended=self.user_suspended,
                stopping=self._stopping,
                computes=computes,
                asks=self._eff.asks_at(hour) and not over,
                in_use=in_use,
                cpu_off=not self._throttle.running(now),
                held=held,
            ),
            now,
        )
        self._carry_out()

    def _resize(self, now: float) -> int:
        """Tell the core the memory per job and the cache this machine gives now (the
        pool's, within the owner's preferences), if that changed; the memory per job."""
        prefs, eff = self.owner.prefs, self._eff
        memory = prefs.memory_mb(eff.memory_mb, self._in_use)
        cache = eff.cache_mb
        if prefs.max_disk_mb is not None or prefs.max_disk_pct is not None:
            if now - self._disk_at >= DISK_EVERY_S:  # the disk read, and the cache sized, so often
                held = self.files.total() + sum(s for s, _ in self.cache.sizes().values())
                self._disk_at, self._disk_free = now, _prefs.disk_free(self.cfg.data_dir)
                self._held = held
            cache = prefs.cache_mb(eff.cache_mb, self._disk_free, self._held)
        sized = (eff.slots, memory, cache)
        if sized != self._sized:
            if self._sized is not None:
                log.info("jobs may now use %d MiB each, the cache %d MiB", memory, cache)
            self._sized = sized
            self.core.handle(c.Resized(eff.slots, memory, cache * MIB), now)
        return memory

    # --- the owner's commands ------------------------------------------------------

    def _owner_command(self, req: dict) -> str:
        """Carry out one command of the owner's (control socket); "" or why it was refused."""
        cmd = req["cmd"]
        if cmd in ("suspend", "resume"):
            self.user_suspended = cmd == "suspend"
        elif cmd in ("pause", "unpause"):
            try:
                dealer = p.split_key(p.dealer_address(str(req.get("dealer", ""))))[0]
            except ValueError as e:
                return str(e)
            known = dealer in self.core.links or dealer in self.core.owner_paused
            if not known:
                return f"no dealer {dealer} is known to this jobber"
            self.core.pause(dealer, cmd == "pause")
        elif cmd == "prefs":
            updates = req.get("set") or {}
            if not isinstance(updates, dict):
                return "prefs: `set` must be a map of preference names to values"
            try:
                self.owner.prefs = self.owner.prefs.changed(updates)
            except (ValueError, TypeError) as e:
                return str(e)
            self._disk_at = float("-inf")
        elif cmd == "accept_key":
            try:
                dealer, key = p.split_key(p.dealer_address(str(req.get("dealer", ""))))
            except ValueError as e:
                return str(e)
            key = req.get("key") or key
            if not isinstance(key, str) or len(key) != 64:
                return "accept_key: give the dealer as ADDRESS#KEY (the key as 64 hex digits)"
            if not self.core.accept_key(dealer, key):
                self.pins.put(dealer, key)  # not asked now: pinned for when it is
        if cmd != "status":
            self._keep_owner()
        return ""

    def _lender_status(self, now: float) -> dict:
        """What the status adds for the lender: the preferences and what they read."""
        prefs = self.owner.prefs
        return {
            "prefs": prefs.named(),
            "owner": {"suspended": self.user_suspended, "paused": sorted(self.core_paused())},
            "on_battery": self._battery,
            "net_today_mb": round(self.owner.net_bytes / MIB, 3)
            if self.owner.net_day == _today()
            else 0.0,
            "memory_mb_now": None if self._sized is None else self._sized[1],
            "cache_mb_now": None if self._sized is None else self._sized[2],
            "idle": self._idle.figures(now) if self._in_use or self._eff.idle_only else None,
        }
