"""The allocator's statistics: the credit its projects' dealers report for the pools'
machines, kept per project and jobber key, and a history point per pool and project
whenever one of them changes. Over the allocator's SQLite connection; the caller
(allocator._core) holds the transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping

from allocator._rules import ACTIVE_REFRESHES, HISTORY_ROWS

_TABLES = """
create table if not exists credit_seen (
    project text not null, key text not null, credit integer not null,
    valid integer not null, primary key (project, key));
create table if not exists dealer_runs (
    project text primary key, dealer text not null, accepted integer not null);
"""


def make_tables(db: sqlite3.Connection) -> None:
    """`credit_seen`: per project and key, the figures the dealer's current run reported
    when last polled; `dealer_runs`: per project, what tells its dealer's run. A file made
    before them held the dealers' figures as last polled in `credit`: they are what was
    seen, so the next poll adds only what is new."""
    fresh = not db.execute("select 1 from sqlite_master where name = 'credit_seen'").fetchone()
    db.executescript(_TABLES)
    if fresh:
        db.execute(
            "insert or ignore into credit_seen select project, key, credit, valid from credit"
        )


def stats(db: sqlite3.Connection, refresh_s: float, pools: Iterable[str], now: float) -> dict:
    """Per pool and project: credit, jobs (valid results), machines; and the history."""
    pools = list(pools)
    active_after = now - ACTIVE_REFRESHES * refresh_s
    out_pools = []
    for pool in pools:
        total, active = db.execute(
            "select count(*), coalesce(sum(last_seen >= ?), 0) from machines where pool = ?",
            (active_after, pool),
        ).fetchone()
        by_project = {
            project: {"credit": credit, "jobs": jobs}
            for project, credit, jobs in db.execute(
                "select c.project, sum(c.credit), sum(c.valid) from credit c "
                "join machines m on m.key = c.key where m.pool = ? group by c.project",
                (pool,),
            )
        }
        out_pools.append(
            {"pool": pool, "machines": total, "active": active, "projects": by_project}
        )
    marks = ",".join("?" * len(pools))
    by_project = {}
    for project, credit, jobs in db.execute(
        "select c.project, sum(c.credit), sum(c.valid) from credit c join machines m "
        f"on m.key = c.key where m.pool in ({marks}) group by c.project",
        pools,
    ):
        by_project[project] = {"credit": credit, "jobs": jobs}
    history = [
        {"t": t, "pool": pool, "project": project, "credit": c, "jobs": j, "machines": m}
        for t, pool, project, c, j, m in db.execute(
            "select t, pool, project, credit, jobs, machines from history "
            f"where pool in ({marks}) "
            "order by t desc limit ?",
            (*pools, HISTORY_ROWS),
        )
    ]
    return {"pools": out_pools, "projects": by_project, "history": history, "t": now}


def record_credit(
    db: sqlite3.Connection,
    refresh_s: float,
    polled: Mapping[str, list[dict]],
    now: float,
    runs: Mapping[str, tuple[str, int]] | None = None,
) -> None:
    """Dealers' jobber rows (status_reply `jobbers`), by project name, as just polled, and
    what tells the dealer's run (`runs`: its key and `accepted`, by project); then one
    history point per pool and project. The caller holds the transaction.

    A dealer's figures are its running totals for its run (its journal): what a key
    gained since the last poll of the run is added to the key's credit here, so the
    batches of one project, each a dealer run starting from zero, add up. A new run is
    told by the dealer's key or its `accepted` changing to another key or a smaller
    count, or a key's credit going down."""
    for project, rows in polled.items():
        run = None if runs is None else runs.get(project)
        if run is not None:
            last = db.execute(
                "select dealer, accepted from dealer_runs where project = ?", (project,)
            ).fetchone()
            if last is not None and (last[0] != run[0] or run[1] < last[1]):
                db.execute("delete from credit_seen where project = ?", (project,))
            db.execute(
                "insert or replace into dealer_runs (project, dealer, accepted) values (?, ?, ?)",
                (project, run[0], run[1]),
            )
        for r in rows:
            try:
                key, credit, valid = str(r["key"]), int(r["credit"]), int(r["valid"])
            except (KeyError, TypeError, ValueError):
                continue  # a dealer's status is for people: skip what does not fit
            seen = db.execute(
                "select credit, valid from credit_seen where project = ? and key = ?",
                (project, key),
            ).fetchone()
            if seen is None or credit < seen[0] or valid < seen[1]:
                seen = (0, 0)  # a new run of the dealer: its figures start from zero
            gained, more = credit - seen[0], valid - seen[1]
            db.execute(
                "insert or replace into credit_seen (project, key, credit, valid) "
                "values (?, ?, ?, ?)",
                (project, key, credit, valid),
            )
            db.execute(
                "insert into credit (project, key, credit, valid, polled) values (?, ?, ?, ?, ?) "
                "on conflict (project, key) do update set credit = credit + excluded.credit, "
                "valid = valid + excluded.valid, polled = excluded.polled",
                (project, key, gained, more, now),
            )
    active_after = now - ACTIVE_REFRESHES * refresh_s
    for pool, project, credit, jobs in db.execute(
        "select m.pool, c.project, sum(c.credit), sum(c.valid) from credit c "
        "join machines m on m.key = c.key group by m.pool, c.project"
    ).fetchall():
        active = db.execute(
            "select count(*) from machines where pool = ? and last_seen >= ?",
            (pool, active_after),
        ).fetchone()[0]
        last = db.execute(
            "select credit, jobs, machines from history where pool = ? and project = ? "
            "order by t desc limit 1",
            (pool, project),
        ).fetchone()
        if last == (credit, jobs, active):
            continue  # nothing changed: the history grows only with activity
        db.execute(
            "insert into history (t, pool, project, credit, jobs, machines) "
            "values (?, ?, ?, ?, ?, ?)",
            (now, pool, project, credit, jobs, active),
        )
