"""The dealer without sockets: decoded messages and the time in, replies out.

A Service owns what one dealer serves: the task, its scheduling core, the
journal, and what people are shown (labels, status). It knows no sockets and
reads no clock: the ZeroMQ server (dealer._server.Dealer) decodes each message,
names the sender (a Peer: the key and address the transport proved) and calls
`handle`; each turn it calls `tick` first and `commit` before sending any reply,
so nothing is acknowledged before it is in the journal; `after_turn` hands
settled jobs to the task and decides whether the batch is done, which
`finished()` then only reads. Tests wire a Service and jobber cores together in
memory with a fake clock (tests/dealer/test_system_machine.py).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sqlite3
from collections import Counter, deque
from collections.abc import Collection, Sequence

import protocol as p
from dealer._checkpoints import Checkpoints
from dealer._core import Assignment, Core
from dealer._figures import FailureGroups, Times
from dealer._fileserver import SERVE_MIB_S, FileServer, runtime_module
from dealer._journal import Journal, task_pins
from dealer._outcomes import Outcomes
from dealer._peers import Peers
from dealer._policy import FILE_ENTRY_BYTES, SOON_S, Policy
from dealer._policy import RETRY_BUSY_S as RETRY_BUSY_S
from dealer._policy import RETRY_IDLE_S as RETRY_IDLE_S
from dealer._policy import RETRY_QUOTA_S as RETRY_QUOTA_S
from dealer._policy import RETRY_RUNTIME_S as RETRY_RUNTIME_S
from dealer._policy import policy_for as policy_for
from dealer._relays import MAX_BEHIND, Relays
from dealer._relays import behind as behind
from dealer._report import STATUS_PAGE as STATUS_PAGE
from dealer._report import Report, about_of
from dealer._retry import redraw_from
from protocol import Peer
from protocol._signing import AuthorKey
from tasks import Task
from tasks._files import shared_files

log = logging.getLogger(__name__)

EVICT_EVERY_S = 60.0  # how often idle strangers are forgotten
REPLAY_DELIVER_EVERY = 4096  # records replayed between handing settled jobs to the task
PACE_WINDOW_S = 0.5  # a jobber's results per second are measured over this (see SOON_S)
DISTINCT = ("host", "subnet", "key")


def _size(a: Assignment, argv: int) -> int:
    """About how many bytes a job takes in a `jobs` message, after the payload's `argv`
    (`argv`: its characters)."""
    job = a.job
    size = 256 + len(job.stdin) + 4 * (argv + sum(map(len, job.args)))
    if a.files:
        size += sum(len(path) + FILE_ENTRY_BYTES for path in a.files)
    return size


class Service(Relays, Report, Outcomes):
    """Serves one task: messages in, replies out, everything journaled first."""

    def __init__(
        self,
        task: Task,
        journal: Journal,
        *,
        now: float,
        policy: Policy | None = None,
        peers: Peers | Sequence[str] = (),
        distinct: str = "host",
        admins: Collection[str] = (),
        signer: AuthorKey | None = None,
        key_hex: str = "",
        closed: bool = False,
        relays: Collection[str] = (),
        serve_mib_s: float = SERVE_MIB_S,
        retry: Collection[int] | None = None,
    ) -> None:
        """`signer`: the task author's key. The payload is signed with it once, here, and
        the signature (with the key's rotation links) goes out in every `jobs`. `now`: the
        time replayed jobbers' leases start from. `key_hex`, `closed`: for status.
        `peers`: what the dealer's peers said of their work (dealer._peers, kept up to
        date by the server); a jobber with nothing here is referred to those with work
        it can run. Addresses alone make a Peers nobody asks: it refers no one.
        `relays`: keys of relays trusted to attribute their jobbers (`Relayed`): each
        jobber behind one is an identity and a machine of its own here; behind any other
        relay, everything is the relay's one identity and machine. A pinned runtime
        (`task.payload.runtime`) is never sent in `jobs`: docs/dealer.md, "Runtimes".
        `serve_mib_s`: see FileServer. `retry`: put these failed jobs back into the
        batch (all of them if empty; None: none), with the task's payload and limits
        even when they changed (dealer._retry)."""
        payload = task.payload
        self.runtime = payload.runtime
        if self.runtime is None and len(payload.wasm) > p.MAX_PAYLOAD_BYTES:
            raise ValueError(
                f"payload of {len(payload.wasm)} bytes is over the {p.MAX_PAYLOAD_BYTES} cap"
            )
        if distinct not in DISTINCT:
            raise ValueError(f"--distinct must be one of {', '.join(DISTINCT)}, not {distinct!r}")
        self.task = task
        self.journal = journal
        self.peers = peers if isinstance(peers, Peers) else Peers(peers)
        self.distinct = distinct
        self.admins = frozenset(admins)
        self.relays = frozenset(relays)  # these four: see dealer._relays
        self._behind: dict[str, dict[str, str]] = {}
        self._told: dict[str, dict[str, tuple[int, int, bool]]] = {}
        self.max_behind = MAX_BEHIND
        self.key_hex, self.closed = key_hex, closed
        self.about = about_of(task)
        policy = policy or policy_for(task)
        # the rules that decide settlement, the payload and the limits must be the ones
        # the journal was written under (the jobs are pinned by its Drawn records)
        changed = journal.pins(
            {
                "voting": (
                    f"redundancy={policy.redundancy} quorum={policy.quorum} "
                    f"max_errors={policy.max_errors} max_replicas={policy.max_replicas} "
                    f"distinct={distinct}",
                    "the voting rules",
                ),
                **task_pins(task),
            },
            changeable=() if retry is None else ("payload", "limits"),
        )
        # the input files every job reads (InputFileError: the task's own mistake)
        files = shared_files(task.files, payload.files)
        # a job that can never be sent with this payload fails as it is drawn (see Core)
        self.core = Core(
            task.jobs(),
            policy,
            journal.tag_prefix,
            payload_bytes=0 if self.runtime is not None else len(payload.wasm),
            files=files,
            argv=payload.argv,
            redraw=redraw_from(task.jobs),
        )
        # `fetch`: the chunks of those files and of a runtime's module (dealer._fileserver)
        self.files = FileServer(self.runtime and runtime_module(payload, files), serve_mib_s)
        # saved states of long jobs, beside the journal (dealer._checkpoints)
        self.saves = Checkpoints(journal.path.with_name(journal.path.name + "-checkpoints"))
        self._payload = payload
        self.signer = None if signer is None else signer.public
        self._signatures = None
        if signer is not None:
            sha = task.payload.sha256
            signature = signer.sign_payload(sha)
            root = signer.chain[0].old if signer.chain else signer.public
            verdict = p.verify_payload(sha, signature, {root})
            if not verdict.accepted:  # what every trusting jobber would say: say it first
                raise ValueError(f"the payload's own signature is refused: {verdict.reason}")
            self._signatures = {sha: signature}
            log.info("payload %s signed by %s", sha[:12], signer.public)
        self.labels: dict[str, str] = {}  # identity -> the name it gave, for people
        self._too_small: dict[str, int] = {}  # identity -> the memory it offered, too little
        self._no_room: dict[str, str] = {}  # identity -> why it takes none of the input files
        self._unprepared: dict[str, None] = {}  # identities asked to prepare the runtime
        self._pace: dict[str, list] = {}  # identity -> [window start, results, last rate]
        self._evicted_at = 0.0
        self.failures = 0
        self.recent_failures: deque[dict] = deque(maxlen=50)  # for the dashboard
        self.failure_groups = FailureGroups()  # ... all of them, by reason (dealer._figures)
        self.times = Times()  # when the batch began, each jobber's results and run times
        self.settled_count = 0  # jobs handed to the task in this process (progress)
        self.done = False
        self._done_raised = False
        self._finished_marked = False
        self._total_failed = False  # the task's total() raised (logged once)
        self._superseded = Counter()  # see dealer._outcomes
        again = None if retry is None else self._retried_now(retry)
        self._replay(now, again or ())
        if again is not None:
            self._retry(again, changed, now)

    def _replay(self, now: float, again: Collection[int] = ()) -> None:
        """Rebuild the batch from the journal; failures of the jobs `again` (about to be
        retried) and those a retry followed are not handed to the task."""
        snapshot = self.journal.finished_summary()
        self._superseded.update(again)
        if snapshot is not None:  # a finished batch: its outcomes, without the replay
            self._restore(snapshot)  # (the settled jobs hold only the latest outcomes)
            return
        self._superseded.update(self.journal.retried())
        n = 0
        for rec in self.journal.records():
            self.times.before(self.core, rec)
            self.core.apply(rec)
            n += 1
            if n % REPLAY_DELIVER_EVERY == 0:  # settled jobs go to the task as they come,
                self._deliver()  # not all held until the end (a million outputs)
        self._deliver()  # before the commit below, which journals what was not delivered
        self.core.take_records()  # already in the journal
        if n:
            log.info(
                "replayed %d journal records: %d jobs accepted, %d failed, %d unsettled",
                n,
                self.core.accepted,
                self.core.failed,
                self.core.in_flight,
            )
        self.core.resume(now)  # jobbers holding work get a full lease to come back
        self.commit()  # a job drawn if none is unsettled (or the generator found empty)
        self._deliver()
        self._decide()

    def _restore(self, snapshot: dict) -> None:
        """The batch was finished: hand the task its outcomes in their order, from the
        journal's settled jobs, and take the rest from the snapshot (seconds for a
        million jobs, where replaying every record takes a minute)."""
        rows = self.journal.settled_rows()
        n = 0

        def counted():
            nonlocal n
            for row in rows:
                n += 1
                if n % REPLAY_DELIVER_EVERY == 0:
                    self._deliver()
                yield row

        try:
            self.core.restore(snapshot, counted())
        finally:  # its cursor ends now, a refused journal's too (not when the db is closed)
            rows.close()
        self._deliver()
        self._finished_marked = True
        log.info(
            "restored the finished batch: %d jobs accepted, %d failed",
            self.core.accepted,
            self.core.failed,
        )
        self._decide()

    # --- each turn ---------------------------------------------------------

    def tick(self, now: float) -> None:
        """Time-driven work: leases, deadlines, forgetting idle strangers. Called at the
        start of every turn (a turn's share of `fetch`es starts again)."""
        self.files.turn()
        self.core.tick(now)
        self.saves.tick(now)
        if now - self._evicted_at >= EVICT_EVERY_S:
            self._evicted_at = now
            self.core.evict(now)
            if self.core.policy.checkpoint_bytes:
                self.saves.prune(self.core.checkpoint_hashes())
            self.labels = {k: v for k, v in self.labels.items() if k in self.core.jobbers}
            self._too_small = {k: v for k, v in self._too_small.items() if k in self.core.jobbers}
            self._no_room = {k: v for k, v in self._no_room.items() if k in self.core.jobbers}
            self._unprepared = {k: v for k, v in self._unprepared.items() if k in self.core.jobbers}
            self._pace = {k: v for k, v in self._pace.items() if k in self.core.jobbers}
            for per_relay in (self._behind, self._told):
                for relay, rows in list(per_relay.items()):
                    kept = {k: v for k, v in rows.items() if k in self.core.jobbers}
                    if kept:
                        per_relay[relay] = kept
                    else:
                        del per_relay[relay]

    def commit(self) -> None:
        """Make the turn's changes durable: call before any reply goes out. If no job is
        unsettled, one is drawn first (the core's refill), so that a batch whose
        generator ran dry is seen to be finished."""
        self.core.refill()
        self.journal.append(self.core.take_records(), self.core.peek_settled_rows())

    def after_turn(self, now: float) -> None:  # noqa: ARG002 - the time, for what may come
        self._deliver()
        self._decide()
        if self.done and not self._finished_marked and self.core.finished():
            self._finished_marked = True  # a restart now restores instead of replaying
            self.journal.mark_finished(self.core.snapshot())

    def finished(self) -> bool:
        """Whether the batch is done (the task said so, or every job is settled and the
        generator is empty), as decided at the end of the last turn. Only reads."""
        return self.done

    def _decide(self) -> None:
        try:
            early = self.task.done()
        except Exception:
            if not self._done_raised:
                log.error("the task's done() raised; taken as not done", exc_info=True)
            self._done_raised = True
            early = False
        self.done = early or self.core.finished()

    def note(self, **values: str | None) -> None:
        """Keep in the journal's meta what no record says and a reader of the journal alone
        shows (dealer._viewer): the task's total and `values` (the dealer's address, the
        summary line as it stops); those None are left as they were."""
        total = self._total()
        notes = {"total": None if total is None else str(total), **values}
        try:
            self.journal.note({k: v for k, v in notes.items() if v is not None})
        except sqlite3.Error as e:  # the batch goes on: its records are what matter
            log.warning("%s: could not note %s: %s", self.journal.path, ", ".join(notes), e)

    def close(self) -> None:
        self.note(summary=self.summary())
        self.journal.close()

    # --- messages ------------------------------------------------------------

    def handle(self, msg: p.Message, now: float, peer: Peer) -> p.Message | None:
        if isinstance(msg, p.Bored | p.Results | p.Alive) and self._speaks_for_others(msg, peer):
            return self._relayed(msg, now, peer)
        if isinstance(msg, p.Bored):
            self._label(peer, msg.jobber)
            return self.told(self._bored(msg, now, peer), peer.key)
        if isinstance(msg, p.Results):
            self._label(peer, msg.jobber)
            return self.told(self._results(msg, now, peer), peer.key)
        if isinstance(msg, p.StatusQuery):
            return p.StatusReply(msg.id, self.status(now, msg.page or 0))
        if isinstance(msg, p.Alive):
            self._label(peer, msg.jobber)
            machine = peer.machine(self.distinct)  # placed from its first message on
            cancel = self.core.alive(peer.key, now, msg.holding, machine)
            return self.told(
                p.AliveAck(msg.id, self.core.policy.lease_s, tuple(cancel), ()), peer.key
            )
        if isinstance(msg, p.Deny):
            return self._deny(msg, now, peer)
        if isinstance(msg, p.WorkQuery):
            return self.work_offer(msg.id)
        if isinstance(msg, p.Fetch):
            denied = self.core.is_denied(peer.key)
            return self.files.fetch(msg, now, peer, self._file, denied, self.saves.damaged)
        if isinstance(msg, p.Save):
            self._label(peer, msg.jobber)
            return self._save(msg, now, peer)
        rid = getattr(msg, "id", getattr(msg, "re", 0))
        return p.Error(rid, p.ErrorCode.UNEXPECTED, f"a dealer does not take {msg.TYPE} messages")

    def _file(self, sha: str):
        """An input file of the batch's jobs, or a saved state of one (dealer._saves); a
        batch whose jobs save none has no folder of states to look in."""
        found = self.core.input_file(sha)
        if found is None and self.core.policy.checkpoint_bytes:
            found = self.saves.lookup(sha)
        return found

    def _save(self, msg: p.Save, now: float, peer: Peer) -> p.Message:
        """A chunk of a long job's saved state (dealer._checkpoints, dealer._saves)."""
        c, key = self.core, peer.key
        return self.saves.save(
            msg,
            key,
            now,
            lambda: c.may_save(key, msg.tag, msg.size),
            lambda: c.checkpointed(key, msg.tag, msg.hash, msg.size, msg.fuel, msg.time_s, now),
        )

    def _label(self, peer: Peer, name: str) -> None:
        if self.labels.get(peer.key) != name:
            self.labels[peer.key] = name

    def _bored(self, msg: p.Bored, now: float, peer: Peer) -> p.Message:
        core = self.core
        if self.done:
            core.alive(peer.key, now, msg.holding, peer.machine(self.distinct))
            # a peer with work for it: pass the jobber on (it delivers what it holds here
            # all the same); else tell it this batch is over
            return (msg.want and self._elsewhere(msg, now)) or p.Finished(msg.id)
        if core.is_denied(peer.key):
            return p.Error(msg.id, p.ErrorCode.DENIED, "this identity is denied by the dealer")
        machine = peer.machine(self.distinct)
        # homogeneous redundancy: a replica votes only with replicas of its platform; with
        # canonical NaNs (a cross-platform task) any platforms agree on the output, and
        # replicas vote with those whose sandboxes count fuel alike (host.nan_fuel)
        canonical = self._job_limits.native_nans is not True
        platform = msg.host.nan_fuel if canonical else msg.host.platform
        # no more than the jobber can run soon: two per slot, or what it ran in SOON_S
        want = min(msg.want, self._soon(peer.key, msg.host.slots))
        sha = self._payload.sha256
        # a runtime is never sent in `jobs`: a jobber without it gets none of its jobs
        unprepared = self.runtime is not None and sha not in msg.host.cached
        send_payload = self.runtime is None and sha not in msg.host.cached
        # Jobs are taken in chunks while the reply stays well under the frame cap (a
        # batch of jobs with large stdin must not make an unsendable reply): each chunk
        # at most half of what is left of the budget, at the size of the jobs so far.
        budget = p.MAX_MESSAGE_BYTES // 2 - (len(self._payload.wasm) if send_payload else 0)
        too_much = msg.host.refuses(self.task.limits)
        if too_much is not None or unprepared:
            want = 0  # this machine cannot run these jobs (yet): only its `holding` is read
        ask = functools.partial(
            core.bored,
            peer.key,
            memory_mb=msg.host.memory_mb,
            now=now,
            machine=machine,
            platform=platform,
            input_mb=msg.host.input_mb,
            files=msg.host.files or (),
        )
        assigned = ask(want=min(want, 1), holding=msg.holding)
        argv = self._payload.argv
        chars = sum(map(len, argv))
        size = sum(_size(a, chars) for a in assigned)
        while assigned and len(assigned) < want and size < budget:
            per_job = max(1, size // len(assigned))
            chunk = min(want - len(assigned), max(1, (budget - size) // (2 * per_job)))
            more = ask(want=chunk)
            if not more:
                break
            assigned += more
            size += sum(_size(a, chars) for a in more)
        if msg.host.memory_mb >= core.policy.memory_mb:  # no longer too small, if it was
            self._too_small.pop(peer.key, None)
        if assigned:
            self.times.sent(now)
            self._no_room.pop(peer.key, None)  # it takes these jobs' files now
            self._unprepared.pop(peer.key, None)  # and holds their runtime
            limits = self._job_limits
            spec = p.JobSpec
            specs = tuple(
                [
                    spec(a.tag, sha, (*argv, *a.job.args), a.job.stdin, limits, a.deadline - now)
                    if not a.files and a.resume is None  # (the common case: no more to make)
                    else spec(
                        a.tag,
                        sha,
                        (*argv, *a.job.args),
                        a.job.stdin,
                        limits,
                        a.deadline - now,
                        {path: f.ref for path, f in a.files.items()} if a.files else None,
                        a.resume
                        and p.Resume(a.resume.hash, a.resume.size, a.resume.fuel, a.resume.time_s),
                    )
                    for a in assigned
                ]
            )
            payloads = {sha: self._payload.wasm} if send_payload else {}
            log.debug("%d jobs to %s", len(specs), peer.key[:12])
            return p.Jobs(msg.id, specs, payloads, self._signatures)
        if msg.want == 0:
            return p.Jobs(msg.id, (), signatures=self._signatures)
        if msg.host.memory_mb < core.policy.memory_mb:
            self._too_small[peer.key] = msg.host.memory_mb
            why = f"jobs need {core.policy.memory_mb} MiB each; you offer {msg.host.memory_mb}"
            return self._elsewhere(msg, now) or p.RetryLater(msg.id, RETRY_IDLE_S, why)
        if too_much is not None:
            why = f"jobs here need {too_much}"
            return self._elsewhere(msg, now) or p.RetryLater(msg.id, RETRY_IDLE_S, why)
        need = core.files_need(msg.host.input_mb)
        if need is not None:  # every job wanting a replica reads more than it takes
            refused = msg.host.refuses_inputs(need) or "input files (this jobber takes none)"
            why = self._no_room[peer.key] = f"jobs here need {refused}"
            return self._elsewhere(msg, now) or p.RetryLater(msg.id, RETRY_IDLE_S, why)
        if not core.has_work():
            referral = self._elsewhere(msg, now)
            if referral is not None:
                return referral
        if unprepared and self.runtime is not None:  # it runs these jobs once it prepares it
            self._unprepared[peer.key] = None
            why = f"jobs here run the runtime {self.runtime.name} ({sha[:12]}...): prepare it"
            return p.RetryLater(msg.id, RETRY_RUNTIME_S, why, runtimes=(sha,))
        if not core.room(peer.key, peer.machine(self.distinct)):
            why = "you hold as many jobs as your quota allows"
            return p.RetryLater(msg.id, RETRY_QUOTA_S, why, more=True)
        why = "no job needs this machine now; all are out"
        return p.RetryLater(msg.id, RETRY_BUSY_S, why, more=True)

    def _elsewhere(self, msg: p.Bored, now: float) -> p.Referral | None:
        """A referral to the peers with work this jobber can run, best first, or None."""
        if not self.peers:
            return None
        dealers = self.peers.referral(msg.host, now)
        return p.Referral(msg.id, dealers) if dealers else None

    def _total(self) -> int | None:
        """The task's total(), or None where it cannot say, or says what is not a count
        (its own bug: logged once, and status and offers go on without it)."""
        try:
            total = self.task.total()
        except Exception:
            if not self._total_failed:
                self._total_failed = True
                log.exception("the task's total() failed; going on without a total")
            return None
        return total if type(total) is int and total >= 0 else None

    def work_offer(self, rid: int) -> p.WorkOffer:
        """What a peer's work_query is told: counters only, nothing per jobber or job."""
        c = self.core
        total = self._total()
        limits = self._job_limits
        if self.done:
            return p.WorkOffer(rid, 0, limits, 0, True)
        left = None if total is None else max(0, total - c.accepted - c.failed)
        return p.WorkOffer(rid, c.offerable(total), limits, left)

    @functools.cached_property
    def _job_limits(self) -> p.Limits:
        """The limits every JobSpec carries: the task's, asking for native NaNs (the fast
        engine: votes stay within a platform) unless the task is cross-platform, whose
        jobs canonicalize them (a task's own native_nans=False is kept)."""
        limits = self.task.limits
        if self.task.cross_platform:
            return dataclasses.replace(limits, native_nans=None)
        if limits.native_nans is None:
            return dataclasses.replace(limits, native_nans=True)
        return limits

    def _results(
        self,
        msg: p.Results,
        now: float,
        peer: Peer,
        *,
        trusted: bool = False,
        attributed: bool = False,
    ) -> p.Message:
        """`attributed`: from a relay, whose `by` names the jobber that ran each one
        (taken if the replica went to that jobber, else the relay's own); the reply then
        tells the relay those jobbers' standing. `trusted`: a relay this dealer trusts."""
        ok: list[str] = []
        rejected: list[p.Rejection] = []
        named: dict[str, str] = {}
        paced: dict[str, int] = {}  # identity -> its good results here
        for r in msg.results:
            who: Peer = peer
            if attributed and r.by is not None:
                who = behind(peer, r.by, trusted=trusted)
            sent = self.core.sent(r.tag)  # its jobber and when it went, for the figures
            why = self.core.result(who.key, r.tag, r.status, r.output, r.fuel, r.detail, now)
            if why is not None and why.code is p.ErrorCode.UNKNOWN_TAG and who is not peer:
                who = peer  # a replica the relay took for itself
                why = self.core.result(who.key, r.tag, r.status, r.output, r.fuel, r.detail, now)
            if who is not peer and r.by is not None:  # its replica: an identity we keep
                self._named(peer, r.by, trusted)
                named[who.key] = r.by.key
            if why is None:
                ok.append(r.tag)
                if r.status is p.Status.OK:
                    paced[who.key] = paced.get(who.key, 0) + 1
                if r.status is not p.Status.ABANDONED and sent is not None:
                    self.times.returned(sent[0], sent[1], now)
            else:
                # a late or backup replica of a settled job is routine, not news
                quiet = why.code is p.ErrorCode.SETTLED and not why.text.endswith("flagged")
                level = logging.DEBUG if quiet else logging.INFO
                log.log(level, "result %s from %s refused: %s", r.tag, peer.key[:12], why.text)
                rejected.append(p.Rejection(r.tag, why.code, why.text))
        for key, n in paced.items():
            self._paced(key, now, n)
        standing = self._standing(peer, named) if attributed else None
        return p.Ack(msg.id, tuple(ok), tuple(rejected), standing)

    def _paced(self, key: str, now: float, n: int = 1) -> None:
        """`n` more good results from `key` (at `now`): its pace (results per second) is
        kept."""
        pace = self._pace.get(key)
        if pace is None:
            pace = self._pace[key] = [now, 0, 0.0]  # window start, count, last rate
        if now - pace[0] >= PACE_WINDOW_S:
            pace[2] = pace[1] / (now - pace[0])
            pace[0], pace[1] = now, 0
        pace[1] += n

    def _soon(self, key: str, slots: int) -> int:
        """How many jobs `key` may ask for at once: what it can run soon."""
        floor = 2 * max(1, slots)
        pace = self._pace.get(key)
        if pace is None:
            return floor
        return min(p.MAX_BATCH, max(floor, int(pace[2] * SOON_S)))

    def _deny(self, msg: p.Deny, now: float, peer: Peer) -> p.Message:
        if peer.key not in self.admins:
            return p.Error(msg.id, p.ErrorCode.FORBIDDEN, "deny needs the dealer's admin key")
        self.core.deny(msg.key, msg.reason or "denied by the admin", now)
        log.warning("identity %s denied: %s", msg.key, msg.reason)
        return p.AdminReply(msg.id, f"{msg.key} denied")
