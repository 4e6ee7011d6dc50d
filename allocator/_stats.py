"""The allocator's statistics: the credit its projects' dealers report for the pools'
machines, kept per project and jobber key, and a history point per pool and project
whenever one of them changes. Over the allocator's SQLite connection; the caller
(allocator._core) holds the transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping

from allocator._rules import ACTIVE_REFRESHES, HISTORY_ROWS


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
    db: sqlite3.Connection, refresh_s: float, polled: Mapping[str, list[dict]], now: float
) -> None:
    """Dealers' jobber rows (status_reply `jobbers`), by project name, as just polled;
    then one history point per pool and project. The caller holds the transaction."""
    if True:
        for project, rows in polled.items():
            for r in rows:
                try:
                    key, credit, valid = str(r["key"]), int(r["credit"]), int(r["valid"])
                except (KeyError, TypeError, ValueError):
                    continue  # a dealer's status is for people: skip what does not fit
                db.execute(
                    "insert or replace into credit (project, key, credit, valid, polled) "
                    "values (?, ?, ?, ?, ?)",
                    (project, key, credit, valid, now),
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
