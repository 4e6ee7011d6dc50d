"""Blame: whether a failed replica is its machine's fault or its job's. A part of
dealer._core.Core (the `Blame` mixin), over the tables Core.__init__ makes.

A researcher's bug is not the lender's fault. The sandbox makes every status but
`time`, `crash` and `abandoned` the same on every machine for the same job
(dealer._replicas.DETERMINISTIC), so a failure that a quorum of machines agree on is
the job's own: it counts against the job (it fails, dealer._votes), never against the
jobbers that ran it.

A replica's *failure* is what deterministic failures are compared on (`failure_of`):
its status, for `exit` its exit code, its output (what it wrote before it failed) and
the fuel it used (nothing for jobs that save their state, whose fuel depends on where
a replica resumed: dealer._saves). A trap's message is not compared: the fuel and the
output already say where it trapped, and the message's words are the engine's.

Whose fault a replica's failure is (its `fault`):

- overdue (no result by the deadline), `time`, `crash`, an implausible result, or one
  from a denied identity: the machine's, counted at once;
- a deterministic status: not judged until its job settles. Until then it holds room
  in its identity's and its machine's quotas as an OK result not yet compared does
  (`unchecked`): a machine that fails every job it gets holds no more than its quota
  of them before it is judged. When the job settles:
  - failed because `quorum` distinct machines (of one platform) agree on one failure:
    each replica with that failure, on any platform, is the job's (`fault` "job"),
    counted against nobody; one with another failure on the quorum's platform is
    the machine's;
  - accepted: a failure on the platform of the machines that agreed on the output is
    the machine's (it disagreed with a quorum);
  - failed with no quorum (more than `max_errors` errors, or `max_replicas` sent): the
    machine's; only a quorum says a failure is the job's;
  - a failure on another platform than the quorum's, other than the quorum's own, was
    not compared (as an OK output of another platform is not): nobody's.

The machine's fault is what it always was: the identity's `errors` grows by one and
both its allowance and its machine's halve. A replica that went overdue was counted
then, whatever it returns later. Like everything in the core, blame is decided by
applying records, so a replay reaches the same counts.
"""

from __future__ import annotations

import re

from dealer._policy import Policy
from dealer._replicas import DETERMINISTIC, _Replica
from protocol import Status

# a replica's fault
PENDING = "pending"  # a deterministic failure whose job is not settled yet
JOB = "job"  # the job's own failure, the same on a quorum of machines: nobody's fault
MACHINE = "machine"  # counted against its jobber (errors) and its machine

SAME_FAILURE = "the same failure on"  # how the reason of a job's own failure begins
Failure = tuple[str, str, bytes, int]  # (status, exit code or "", output, fuel)

_EXIT = Status.EXIT.value
_EXIT_CODE = re.compile(rf"{_EXIT}: exit code (\d+)")


def failure_of(r: _Replica) -> Failure:
    """What a deterministic failure is compared on: (status, exit code for `exit` else
    "", output, fuel). The exit code is read from the sandbox's detail ("exit code 3")."""
    code = ""
    if r.status == _EXIT:
        m = _EXIT_CODE.match(r.detail)
        code = m.group(1) if m else ""
    return (r.status, code, r.output, r.fuel)


class Blame:
    """Core's blame for failures (a mixin: the state is the core's). It uses Standings'
    `_jobber` and `_machine`."""

    policy: Policy
    # jobs failed by their own bug: the same failure on a quorum of machines (a class
    # default; the core's own count once it has one)
    failed_own: int = 0

    def _charge(self, r: _Replica) -> None:
        """`r`'s failure is its machine's: one error on its identity; both allowances halve."""
        me = self._jobber(r.jobber)
        me.errors += 1
        me.bad()
        self._machine(r.machine).bad()
        r.fault = MACHINE

    def _failed_replica(self, r: _Replica, was_overdue: bool) -> None:
        """`r` just came back failed (its status and detail set): charge it now, or hold
        it for judging when its job settles (a deterministic failure)."""
        if was_overdue:  # the machine's already (it went overdue): counted once
            return
        if r.status in DETERMINISTIC:
            r.fault = PENDING
            self._jobber(r.jobber).unchecked += 1
            self._machine(r.machine).unchecked += 1
        else:
            self._charge(r)

    def _judge(self, r: _Replica, quorum: bool, platform: str | None, own: Failure | None) -> None:
        """`r` holds a deterministic failure and its job just settled: with `quorum`,
        because machines of `platform` agreed (on the failure `own`, or, `own` None, on
        an output); without, for too many errors or replicas."""
        self._jobber(r.jobber).unchecked -= 1
        self._machine(r.machine).unchecked -= 1
        if own is not None and failure_of(r) == own:
            r.fault = JOB
        elif quorum and r.platform != platform:
            r.fault = ""  # not compared: another platform's failure
            r.detail += f" (not compared: platform {r.platform}, the quorum's {platform})"
        else:
            self._charge(r)
