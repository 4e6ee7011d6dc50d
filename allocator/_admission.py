"""Admission to a pool by its join token: a key its admin did not admit by hand joins
once, with the token, bounded per source machine (an IPv4 address, an IPv6 /64) and
by the token's uses (see allocator._core, "Admission"). Over the allocator's SQLite
connection, inside the caller's transaction.
"""

from __future__ import annotations

import hmac
import json
import logging
import sqlite3

from allocator._rules import Forbidden, _digest
from protocol._addr import machine_of
from protocol._alloc import Instruct

log = logging.getLogger(__name__)


def admitted(
    db: sqlite3.Connection,
    key: str,
    address: str,
    msg: Instruct,
    now: float,
    max_per_address: int,
) -> bool:
    """`key` may read `msg.pool`'s instructions: admitted before, or by the join token
    it presents now (bounded per source machine and by the token's uses)."""
    if db.execute("select 1 from admitted where pool = ? and key = ?", (msg.pool, key)).fetchone():
        return True
    if msg.join is None:
        return False
    token = db.execute(
        "select digest, uses_left from tokens where pool = ?", (msg.pool,)
    ).fetchone()
    if token is None or not hmac.compare_digest(token[0], _digest(msg.join)):
        log.debug("pool %s: key %s presented a wrong join token", msg.pool, key[:12])
        return False
    if token[1] <= 0:
        raise Forbidden(
            f"the join token of pool {msg.pool!r} is used up; ask its admin for a new one"
        )
    source = machine_of(address) if address else ""
    joined = db.execute(
        "select count(*) from admitted where pool = ? and source = ? and via = 'token'",
        (msg.pool, source),
    ).fetchone()[0]
    if joined >= max_per_address:
        raise Forbidden(
            f"{joined} machines joined pool {msg.pool!r} from {source or 'this source'} "
            "already, the most one source may; ask its admin to admit this key"
        )
    db.execute(
        "insert into admitted (pool, key, via, source, added) values (?, ?, 'token', ?, ?)",
        (msg.pool, key, source, now),
    )
    db.execute("update tokens set uses_left = uses_left - 1 where pool = ?", (msg.pool,))
    log.info("pool %s: key %s joined with the pool's token from %s", msg.pool, key[:12], source)
    return True


def seen(
    db: sqlite3.Connection, key: str, address: str, msg: Instruct, now: float, every_s: float
) -> None:
    """Record that an admitted machine asked (its pool, name, address, host facts, the
    time). An ask with nothing new within `every_s` of the last record writes nothing: a
    jobber checking often for a change costs the allocator reads only."""
    h = msg.host
    host = json.dumps(
        {"cpus": h.cpus, "memory_mb": h.memory_mb, "slots": h.slots, "platform": h.platform}
    )
    last = db.execute(
        "select pool, name, address, host, last_seen from machines where key = ?", (key,)
    ).fetchone()
    same = last is not None and tuple(last[:4]) == (msg.pool, msg.jobber, address, host)
    if same and now - last[4] < every_s:
        return
    db.execute(
        "insert into machines (key, pool, name, address, host, first_seen, last_seen) "
        "values (?, ?, ?, ?, ?, ?, ?) on conflict (key) do update set pool = excluded.pool, "
        "name = excluded.name, address = excluded.address, host = excluded.host, "
        "last_seen = excluded.last_seen",
        (key, msg.pool, msg.jobber, address, host, now, now),
    )
