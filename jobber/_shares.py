"""Resource shares among dealers: BOINC's debt scheduling, pure (no clock, no I/O).

Theory of operation
-------------------
An allocator gives each project (dealer) a resource share s_P. This jobber
keeps, per project, a *debt*: the seconds of work it owes that project. Every
job that finishes is a period of accounting, of length w seconds (its running
time, compiling left out), and over the projects eligible in it (those that have work for us,
or could: see JobberCore.eligible):

    debt_P += w * s_P / S        for every eligible P  (S: their shares' sum)
    debt_Q -= w                  for the project Q the work was for

then the debts of the eligible projects are shifted to mean zero and clamped
to +-MAX_DEBT_S. A project is owed what it was not given; the dealer with the
largest debt is asked for work first. Debts are carried from period to period
(and across restarts: the shell saves them with its instructions), which is
what makes the split converge on the shares over time, rather than draw each
ask from a weighted coin. A project with no work accrues nothing (it is not
eligible), so it does not come back owed the whole machine; the clamp bounds
what one that was away long may claim.

Work in hand (buffered and running, not yet finished) is counted when
ranking, as if done: `rank` orders by the debt each project would have once
the work in hand is done, so a jobber with a deep buffer of one project's jobs
does not ask that project again for being owed work it already holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# A project cannot be owed (or owe) more than this many seconds of work: one that
# was away a long time gets at most this much of catching up when it returns
MAX_DEBT_S = 3600.0


class Shares:
    def __init__(self, shares: Mapping[str, float] | None = None) -> None:
        self.share: dict[str, float] = {}
        self.debt: dict[str, float] = {}
        self.done_s: dict[str, float] = {}  # work charged per project, for status
        if shares:
            self.set(shares)

    def set(self, shares: Mapping[str, float], debts: Mapping[str, float] | None = None) -> None:
        """New shares (from the allocator); debts of projects still listed are kept, a
        new project starts at 0, one no longer listed is forgotten. `debts`: saved ones."""
        if any(s < 0 for s in shares.values()):
            raise ValueError("a share is at least 0")
        self.share = dict(shares)
        saved = dict(debts or {})
        self.debt = {d: _clamp(self.debt.get(d, saved.get(d, 0.0))) for d in shares}
        self.done_s = {d: self.done_s.get(d, 0.0) for d in shares}

    def fraction(self, dealer: str, among: Iterable[str]) -> float:
        """`dealer`'s share of the shares of `among` (0 if they sum to nothing)."""
        among = [d for d in among if d in self.share]
        total = sum(self.share[d] for d in among)
        if dealer not in self.share or total <= 0 or dealer not in among:
            return 0.0
        return self.share[dealer] / total

    def charge(self, dealer: str, work_s: float, eligible: Iterable[str]) -> None:
        """`work_s` seconds of work were done for `dealer`; `eligible`: the projects that
        had work for us meanwhile (the one the work was for counts as eligible)."""
        if work_s <= 0 or dealer not in self.share:
            return
        among = [d for d in dict.fromkeys([*eligible, dealer]) if d in self.share]
        total = sum(self.share[d] for d in among)
        self.done_s[dealer] += work_s
        if total > 0:
            for d in among:
                self.debt[d] += work_s * self.share[d] / total
        self.debt[dealer] -= work_s
        mean = sum(self.debt[d] for d in among) / len(among)
        for d in among:
            self.debt[d] = _clamp(self.debt[d] - mean)

    def rank(self, dealers: Iterable[str], in_hand_s: Mapping[str, float]) -> list[str]:
        """`dealers` most owed first, counting the work in hand (`in_hand_s`, seconds by
        project) as done; dealers that are not projects last, in the order given."""
        dealers = list(dealers)
        projects = [d for d in dealers if d in self.share and self.share[d] > 0]
        pending = sum(in_hand_s.get(d, 0.0) for d in projects)

        def projected(d: str) -> float:
            return self.debt[d] - in_hand_s.get(d, 0.0) + pending * self.fraction(d, projects)

        # equal debts (to a rounding error) go to the larger share: it is owed more of
        # every period to come; then the order given (sorted is stable)
        ranked = sorted(projects, key=lambda d: (-round(projected(d), 9), -self.share[d]))
        return ranked + [d for d in dealers if d not in ranked]


def _clamp(x: float) -> float:
    return max(-MAX_DEBT_S, min(MAX_DEBT_S, x))
