"""The jobber's saved states: the latest state of each running job that saves one
(limits.checkpoint_kb), in memory and on disk, so that a job stopped by `quit`, a crash
or a reboot runs on from it when the jobber starts again (jobber._saving decides; this
is the shell's part, the files).

One file per job, `<dir>/<key>.state`, `key` a digest of the dealer and the tag:
a msgpack map of the schema version, the dealer, the job (its JobSpec as the wire
has it), when its deadline falls (seconds since the epoch), the state, its SHA-256,
and the fuel and running time the job had used when it saved it. Each save replaces
the file (a temporary name and a rename, no fsync: a state is a hint, and one torn
by a power cut is caught by its hash). A file that cannot be read, of another schema,
whose state does not hash to its name or is bigger than its job's
`limits.checkpoint_kb`, is removed and its job not resumed (its dealer sends it
again, from the state it holds or from the beginning).

A state on its way to the dealer (`save`) is the one held when its chunk 0 went:
later saves do not change what the dealer is sent chunk by chunk.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import msgpack

import protocol as p
from jobber._actions import StateSaved
from net._files import write_atomic

log = logging.getLogger(__name__)

SCHEMA = 1


@dataclass(frozen=True, slots=True)
class State:
    sha: str
    data: bytes
    fuel: int
    time_s: float


def _name(dealer: str, tag: str) -> str:
    return hashlib.sha256(f"{dealer}\0{tag}".encode()).hexdigest()[:32] + ".state"


class States:
    """The latest saved state of each job that saves, and of those an earlier run left."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._latest: dict[tuple[str, str], State] = {}
        self._sending: dict[tuple[str, str], State] = {}

    def load(self) -> list[tuple[str, p.JobSpec, float, p.Resume]]:
        """The jobs an earlier run left with a saved state: (dealer, job, seconds left to
        its deadline, the state); their states are held from now on."""
        out = []
        if not self.root.is_dir():
            return out
        for path in sorted(self.root.glob("*.state")):
            try:
                body = msgpack.unpackb(path.read_bytes(), raw=False)
                if type(body) is not dict or body.get("schema") != SCHEMA:
                    raise ValueError("not a saved state of this jobber's")
                dealer = body["dealer"]
                spec = p.JobSpec._from_wire(body["spec"], "saved state")
                data, fuel, time_s = body["state"], body["fuel"], body["time_s"]
                sha = hashlib.sha256(data).hexdigest()
                if sha != body["sha"]:
                    raise ValueError("its bytes are not the state it names (torn or damaged)")
                limit = (spec.limits.checkpoint_kb or 0) * 1024
                if len(data) > limit:
                    raise ValueError(f"{len(data)} bytes, over its job's {limit}")
                if not (0 <= fuel <= spec.limits.fuel and time_s >= 0.0):
                    raise ValueError(f"fuel {fuel} or time {time_s} out of its job's range")
            except Exception as e:  # noqa: BLE001 - whatever is wrong, it is not resumed
                log.warning("saved state %s refused (%s): removed", path.name, e)
                path.unlink(missing_ok=True)
                continue
            self._latest[(dealer, spec.tag)] = State(sha, data, fuel, time_s)
            left = float(body["deadline"]) - time.time()
            out.append((dealer, spec, left, p.Resume(sha, len(data), fuel, time_s)))
        for tmp in self.root.glob(".*.part"):
            tmp.unlink(missing_ok=True)
        return out

    def saved(
        self,
        dealer: str,
        spec: p.JobSpec,
        left_s: float,
        data: bytes,
        fuel: int,
        time_s: float,
    ) -> StateSaved:
        """A running job saved `data` (`fuel` and `time_s` counted from its beginning;
        `left_s`: seconds to its deadline): held, and written over its last one.
        OSError if the disk refuses (the state is still held, and sent)."""
        sha = hashlib.sha256(data).hexdigest()
        self._latest[(dealer, spec.tag)] = State(sha, data, fuel, time_s)
        body = {
            "schema": SCHEMA,
            "dealer": dealer,
            "spec": spec._to_wire(),
            "deadline": time.time() + left_s,
            "state": data,
            "sha": sha,
            "fuel": fuel,
            "time_s": time_s,
        }
        event = StateSaved(dealer, spec.tag, sha, len(data), fuel, time_s)
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / _name(dealer, spec.tag), msgpack.packb(body, use_bin_type=True))
        return event

    def latest(self, dealer: str, tag: str) -> State | None:
        return self._latest.get((dealer, tag))

    def chunk(self, dealer: str, tag: str, index: int) -> tuple[State, bytes] | None:
        """Chunk `index` of the state going to the dealer (the latest, at chunk 0)."""
        key = (dealer, tag)
        if index == 0 or key not in self._sending:
            latest = self._latest.get(key)
            if latest is None:
                return None
            self._sending[key] = latest
        state = self._sending[key]
        start = index * p.CHUNK_BYTES
        return state, state.data[start : start + p.CHUNK_BYTES]

    def forget(self, dealer: str, tag: str) -> None:
        """The job ended: its state goes, from memory and from the disk."""
        self._latest.pop((dealer, tag), None)
        self._sending.pop((dealer, tag), None)
        try:
            (self.root / _name(dealer, tag)).unlink(missing_ok=True)
        except OSError as e:
            log.warning("cannot remove a saved state: %s", e.strerror or e)


def resumed(
    spec: p.JobSpec, resume: p.Resume | None, data: bytes | None
) -> tuple[bytes | None, p.Limits, int, float]:
    """How job `spec` starts from `resume` (whose bytes are `data`: None if they could
    not be had): the state it gets, the limits it runs with (the job's, less what it used
    before the state was saved), and the fuel and time already used. A state that is not
    there, not the one named, bigger than the job's `checkpoint_kb`, or that used all of
    a limit, is dropped: the job starts from the beginning with its whole limits."""
    limits = spec.limits
    if resume is None:
        return None, limits, 0, 0.0
    why = ""
    if data is None:
        why = "its bytes are not here"
    elif len(data) != resume.size or hashlib.sha256(data).hexdigest() != resume.hash:
        why = "its bytes are not the state named"
    elif len(data) > (limits.checkpoint_kb or 0) * 1024:
        why = f"{len(data)} bytes, over the job's checkpoint_kb of {limits.checkpoint_kb}"
    elif resume.fuel >= limits.fuel or resume.time_s >= limits.time_s:
        why = "it used all of the job's fuel or time"
    if why:
        log.warning(
            "job %s: saved state %s refused (%s): it runs from the beginning",
            spec.tag,
            resume.hash[:12],
            why,
        )
        return None, limits, 0, 0.0
    left = replace(
        limits, fuel=limits.fuel - resume.fuel, time_s=max(0.001, limits.time_s - resume.time_s)
    )
    return data, left, resume.fuel, resume.time_s


class Saves:
    """The shell's part of saved states: a mixin of jobber._client.Jobber (its state is
    the jobber's: `states`, `_offsets`, `core`, `files`)."""

    def _resume(self, a) -> tuple[bytes | None, p.Limits, int, float]:
        """The state job `a` (a Start) starts from, its limits, the fuel and time used."""
        if a.resume is None:
            return resumed(a.spec, None, None)
        if a.local:
            state = self.states.latest(a.dealer, a.spec.tag)
            data = None if state is None else state.data
        else:
            try:
                data = self.files.path(a.resume.hash).read_bytes()
            except OSError:
                data = None
        return resumed(a.spec, a.resume, data)

    def _state_saved(self, s) -> None:
        """A running job saved its state (s: sandbox.Saved): kept, and the core told."""
        h = self.core.running.get(s.key)
        if h is None:
            return
        fuel, time_s = self._offsets.get(s.key, (0, 0.0))
        left = h.deadline - time.monotonic()
        try:
            event = self.states.saved(
                h.dealer, h.spec, left, s.state, fuel + s.fuel, time_s + s.wall_s
            )
        except OSError as e:  # held in memory all the same: it still goes to the dealer
            log.warning("cannot keep job %s's saved state on disk: %s", h.spec.tag, e)
            state = self.states.latest(h.dealer, h.spec.tag)
            assert state is not None
            event = StateSaved(
                h.dealer, h.spec.tag, state.sha, len(state.data), state.fuel, state.time_s
            )
        self.core.handle(event, time.monotonic())

    def _send_save(self, a) -> None:
        """Chunk `a.chunk` of job `a.tag`'s state to its dealer (a SendSave)."""
        got = self.states.chunk(a.dealer, a.tag, a.chunk)
        if got is None:  # forgotten meanwhile: the reply, if any, changes nothing
            return
        state, data = got
        msg = p.Save(
            a.rid,
            self.name,
            a.tag,
            state.sha,
            len(state.data),
            a.chunk,
            data,
            state.fuel,
            state.time_s,
        )
        self._send(a.dealer, msg)
