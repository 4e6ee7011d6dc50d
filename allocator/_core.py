"""The allocator's state and rules, over one SQLite file: no sockets, no clock of its own.

Theory of operation
-------------------
An organisation's departments (suppliers) lend pools of machines once; one
allocator decides how their time is divided among research projects (dealers),
as BOINC's OrgGrid does with its account-manager mechanism. This module keeps,
in SQLite (WAL, every change committed before it is answered):

=============  ================================================================
table          what
=============  ================================================================
``meta``       schema version, the serial of the instructions (bumped by every
               change a jobber must hear of)
``roles``      admin keys: ``root``, ``allocator_admin``, ``supplier_admin`` (of
               one supplier)
``projects``   name, dealer address, resource share
``pools``      name, supplier, preferences (protocol.Prefs, as JSON by field name);
               a removed pool keeps its row (``removed`` set): the name stays its
               supplier's
``admitted``   per pool, the jobber keys that may read its instructions: admitted
               by an admin, or by the pool's join token (with the source they
               joined from)
``tokens``     per pool, the digest of its join token, its uses left
``machines``   each admitted jobber key that asked, its pool, name, address, host
               facts, when first and last seen
``credit``     per project and jobber key: the credit (fuel of accepted outputs)
               and valid results its dealer's runs reported, summed (allocator._stats)
``history``    per poll, per pool and project: credit, jobs, machines active (a
               point only when one of them changed)
=============  ================================================================

Who may do what is a table (``PERMITTED``), checked before anything changes; an
identity is the CurveZMQ key its connection proved, passed in by the shell.

Ownership. A pool belongs to the supplier that created it. A supplier admin
acts only on pools of their own supplier: naming another's pool (to change,
remove, re-create, admit to or read it) is refused (``Forbidden``) and changes
nothing. Removing a pool keeps its name reserved for its supplier: only that
supplier's admins (or root) may create it again. Projects are the allocator
admins' (and root's) alone.

Admission. A pool's instructions (its dealers and preferences) go only to keys
its admin admitted: by key (``admit``), or by the pool's join token
(``join_token``), which a jobber presents once in ``instruct.join``. Any other
key is told only that it is not admitted, in the same words whether or not the
pool exists, and nothing about it is stored: a stranger costs no row. Joins by
token are bounded per source machine (``max_per_address``, an IPv6 /64 counted
as one) and by the token's uses, so a leaked token admits a bounded number of
machines; and the page and replies list at most ``MAX_MACHINE_ROWS`` machines.

Modules: this one holds the database and carries out each request; the roles,
bounds and argument checks are allocator._rules', admission by token
allocator._admission's, the credit and its history allocator._stats'.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import protocol as p
from allocator import _admission, _stats
from allocator._rules import (
    ACTIVE_REFRESHES,
    ALLOCATOR_ADMIN,
    MAX_MACHINE_ROWS,
    MAX_NAME,
    MAX_PER_ADDRESS,
    MAX_TOKEN_USES,
    PERMITTED,
    REFRESH_S,
    ROLES,
    ROOT,
    SEEN_EVERY_S,
    SUPPLIER_ADMIN,
    TOKEN_USES,
    AllocatorError,
    Forbidden,
    Role,
    _digest,
    _is_map,
    _key,
    _name,
    _share,
    not_admitted,
    prefs_json,
    prefs_of,
)
from protocol._alloc import MAX_PROJECTS, Instruct, Instructions, Project

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: pools kept when removed (reserved names), admission, join tokens

_TABLES = """
create table if not exists meta (k text primary key, v text not null);
create table if not exists roles (
    key text primary key, role text not null, supplier text, granted real not null);
create table if not exists projects (
    name text primary key, dealer text not null, share real not null, added real not null);
create table if not exists pools (
    name text primary key, supplier text not null, prefs text not null, added real not null,
    removed real);
create table if not exists admitted (
    pool text not null, key text not null, via text not null, source text not null,
    added real not null, primary key (pool, key));
create index if not exists admitted_source on admitted (pool, source, via);
create table if not exists tokens (
    pool text primary key, digest text not null, uses_left integer not null,
    made real not null);
create table if not exists machines (
    key text primary key, pool text not null, name text not null, address text not null,
    host text not null, first_seen real not null, last_seen real not null);
create table if not exists credit (
    project text not null, key text not null, credit integer not null,
    valid integer not null, polled real not null, primary key (project, key));
create table if not exists history (
    t real not null, pool text not null, project text not null, credit integer not null,
    jobs integer not null, machines integer not null);
create index if not exists history_t on history (t);
create index if not exists history_pair on history (pool, project, t);
"""


class Allocator:
    """The allocator's database and its rules. `refresh_s`: how often jobbers ask again."""

    def __init__(
        self,
        path: Path,
        *,
        refresh_s: float = REFRESH_S,
        max_per_address: int = MAX_PER_ADDRESS,
        check_s: float | None = None,
    ) -> None:
        self.path = Path(path)
        self.refresh_s = refresh_s
        self.check_s = check_s  # jobbers ask again this soon to hear of a change (None: refresh)
        self.max_per_address = max_per_address
        # one thread at a time uses it, not always the one that opened it (a server run in
        # a thread of its own, as tests do)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("pragma journal_mode=wal")
        self.db.execute("pragma synchronous=normal")
        self.db.executescript(_TABLES)  # new tables; an old file's pools gain a column below
        _stats.make_tables(self.db)
        got = self._meta("schema")
        if got == "1":
            self._from_schema_1()
            got = str(SCHEMA_VERSION)
        if got is None:
            self._set_meta("schema", str(SCHEMA_VERSION))
            self._set_meta("serial", "1")
        elif got != str(SCHEMA_VERSION):
            raise AllocatorError(
                f"{self.path}: allocator schema {got}, this code reads {SCHEMA_VERSION}"
            )

    def close(self) -> None:
        self.db.close()

    def _from_schema_1(self) -> None:
        """Schema 1 admitted every key: the machines that had asked are admitted to their
        pools, so that an upgrade cuts no lab off; removed pools were deleted then."""
        with self._tx():
            self.db.execute("alter table pools add column removed real")
            self.db.execute(
                "insert or ignore into admitted (pool, key, via, source, added) "
                "select m.pool, m.key, 'schema 1', m.address, m.first_seen from machines m "
                "join pools p on p.name = m.pool"
            )
            self._set_meta("schema", str(SCHEMA_VERSION))
        log.info("%s: allocator schema 1 read as %d (machines admitted)", self.path, SCHEMA_VERSION)

    # --- meta -------------------------------------------------------------------

    def _meta(self, k: str) -> str | None:
        row = self.db.execute("select v from meta where k = ?", (k,)).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, k: str, v: str) -> None:
        self.db.execute("insert or replace into meta (k, v) values (?, ?)", (k, v))

    @property
    def serial(self) -> int:
        return int(self._meta("serial") or 1)

    def _bump(self) -> None:
        self._set_meta("serial", str(self.serial + 1))

    # --- roles ------------------------------------------------------------------

    def role_of(self, key: str) -> Role | None:
        row = self.db.execute("select role, supplier from roles where key = ?", (key,)).fetchone()
        return None if row is None else Role(row[0], row[1])

    def has_root(self) -> bool:
        return self.db.execute("select 1 from roles where role = ?", (ROOT,)).fetchone() is not None

    def make_root(self, key: str, now: float) -> None:
        """The root key, given at creation (the shell writes its key pair beside the db)."""
        with self._tx():
            self.db.execute(
                "insert or replace into roles (key, role, supplier, granted) "
                "values (?, ?, null, ?)",
                (key, ROOT, now),
            )

    # --- admin requests -----------------------------------------------------------

    def admin(self, key: str, op: str, args: Mapping[str, Any], now: float) -> tuple[str, dict]:
        """Carry out `op` for the identity `key`: (text, data), or AllocatorError."""
        allowed = PERMITTED.get(op)
        if allowed is None:
            raise AllocatorError(f"unknown op {op!r} (known: {', '.join(sorted(PERMITTED))})")
        role = self.role_of(key)
        if allowed and (role is None or role.role not in allowed):
            held = "no role" if role is None else f"role {role.role}"
            raise Forbidden(
                f"{op} needs the role {' or '.join(allowed)}; key {key[:12]} has {held}"
            )
        handler = getattr(self, f"_op_{op}")
        with self._tx():
            return handler(role, dict(args), now)

    @contextlib.contextmanager
    def _tx(self):
        """One transaction: committed whole, or rolled back whole on any exception."""
        self.db.execute("begin immediate")
        try:
            yield
        except BaseException:
            self.db.execute("rollback")
            raise
        self.db.execute("commit")

    def _own_pool(self, role: Role | None, pool: str) -> sqlite3.Row | tuple:
        """The live pool `pool` (name, supplier, prefs), if `role` may act on it."""
        row = self.db.execute(
            "select name, supplier, prefs from pools where name = ? and removed is null", (pool,)
        ).fetchone()
        if row is None:
            raise AllocatorError(f"no pool {pool!r}")
        self._check_supplier(role, pool, row[1])
        return row

    @staticmethod
    def _check_supplier(role: Role | None, pool: str, supplier: str) -> None:
        if role is not None and role.role == SUPPLIER_ADMIN and supplier != role.supplier:
            raise Forbidden(
                f"pool {pool!r} belongs to supplier {supplier!r}; "
                f"this key administers {role.supplier!r}"
            )

    def _op_whoami(self, role: Role | None, args: dict, now: float) -> tuple[str, dict]:
        if role is None:
            return "no role", {"role": None}
        text = role.role + (f" of supplier {role.supplier}" if role.supplier else "")
        return text, {"role": role.role, "supplier": role.supplier}

    def _op_grant(self, role: Role | None, args: dict, now: float) -> tuple[str, dict]:
        key = _key(args.get("key"))
        what = args.get("role")
        if what not in ROLES:
            raise AllocatorError(f"role must be one of {', '.join(ROLES)}")
        supplier = args.get("supplier")
        if what == SUPPLIER_ADMIN:
            supplier = _name(supplier, "supplier")
        elif supplier is not None:
            raise AllocatorError(f"only a {SUPPLIER_ADMIN} has a supplier")
        self._check_last_root(key, what)
        self.db.execute(
            "insert or replace into roles (key, role, supplier, granted) values (?, ?, ?, ?)",
            (key, what, supplier, now),
        )
        log.info("granted %s%s to %s", what, f" of {supplier}" if supplier else "", key)
        return f"{key[:12]} is {what}" + (f" of supplier {supplier}" if supplier else ""), {}

    def _check_last_root(self, key: str, new_role: str | None) -> None:
        old = self.role_of(key)
        if old is not None and old.role == ROOT and new_role != ROOT:
            n = self.db.execute("select count(*) from roles where role = ?", (ROOT,)).fetchone()[0]
            if n <= 1:
                raise AllocatorError("that is the last root key; grant root to another first")

    def _op_revoke(self, role: Role | None, args: dict, now: float) -> tuple[str, dict]:
        key = _key(args.get("key"))
        if self.role_of(key) is None:
            raise AllocatorError(f"key {key[:12]} has no role")
        self._check_last_root(key, None)
        self.db.execute("delete from roles where key = ?", (key,))
        return f"{key[:12]} has no role now", {}

    def _op_project_add(self, role: Role | None, args: dict, now: float) -> tuple[str, dict]:
        name = _name(args.get("name"), "project name")
        dealer = args.get("dealer")
        try:
            address = p.dealer_address(dealer) if isinstance(dealer, str) else None
        except ValueError as e:
            raise AllocatorError(f"dealer: {e}") from None
        if address is None or len(address) > MAX_NAME:
            raise AllocatorError("dealer: give its address, host:port#key")
        share = _share(args.get("share", 1.0))
        if self.db.execute("select 1 from projects where name = ?", (name,)).fetchone():
            raise AllocatorError(f"project {name!r} exists; project_share changes its share")
        count = self.db.execute("select count(*) from projects").fetchone()[0]
        if count >= MAX_PROJECTS:  # instructions name every project, and carry at most these
            raise AllocatorError(f"there are {count} projects already, the most instructions carry")
        self.db.execute(
            "insert into projects (name, dealer, share, added) values (?, ?, ?, ?)",
            (name, address, share, now),
        )
        self._bump()
        return f"project {name} ({address}) added with share {share:g}", {}

    def _op_project_remove(self, role: Role | None, args: dict, now: float) -> tuple[str, dict]:
        name = _name(args.get("name"), "project name")
        if self.db.execute("delete from projects where name = ?", (name,)).rowcount == 0:
            raise AllocatorError(f"no project {name!r}")
        self._bump()
        return f"project {name} removed", {}

    def _op_project_share(self, role: Role | None, args: dict, now: float) -> tuple[str, dict]:
        name = _name(args.get("name"), "project name")
        share = _share(args.get("share"))
        if (
            self.db.execute("update projects set share = ? where name = ?", (share, name)).rowcount
            == 0
        ):
            raise AllocatorError(f"no project {name!r}")
        self._bump()
        return f"project {name}: share {share:g}", {}

    def _op_pool_add(self, role: Role | None, args: dict, now: float) -> tuple[str, dict]:
        name = _name(args.get("name"), "pool name")
        supplier = args.get("supplier")
        if role is not None and role.role == SUPPLIER_ADMIN:
            if supplier not in (None, role.supplier):
                raise Forbidden(
                    f"this key administers supplier {role.supplier!r}, not {supplier!r}"
                )
            supplier = role.supplier
        old = self.db.execute(
            "select supplier, removed from pools where name = ?", (name,)
        ).fetchone()
        if old is not None:
            # the name is its supplier's, live or removed: only they (or root) re-create it
            self._check_supplier(role, name, old[0])
            if old[1] is None:
                raise AllocatorError(f"pool {name!r} exists")
            if supplier is None:
                supplier = old[0]  # root re-creating a removed pool: the same supplier's
            elif supplier != old[0]:  # root may give a name to another supplier, explicitly
                log.warning("pool %s: re-created for supplier %s, was %s's", name, supplier, old[0])
                # the old supplier's machines and their history are not the new one's to see
                self.db.execute("delete from machines where pool = ?", (name,))
                self.db.execute("delete from history where pool = ?", (name,))
        supplier = _name(supplier, "supplier")
        given = args.get("prefs") or {}
        if not _is_map(given):
            raise AllocatorError("prefs: expected a map of preference: value")
        try:
            prefs = prefs_of(given)
        except ValueError as e:
            raise AllocatorError(str(e)) from None
        self.db.execute(
            "insert or replace into pools (name, supplier, prefs, added, removed) "
            "values (?, ?, ?, ?, null)",
            (name, supplier, json.dumps(prefs_json(prefs)), now),
        )
        self._bump()
        again = " again" if old is not None else ""
        return f"pool {name} of supplier {supplier} added{again}", {}

    def _op_pool_remove(self, role: Role | None, args: dict, now: float) -> tuple[str, dict]:
        name = _name(args.get("name"), "pool name")
        self._own_pool(role, name)
        # the row stays: its name is reserved for its supplier; whom it admitted is not
        self.db.execute("update pools set removed = ? where name = ?", (now, name))
        self.db.execute("delete from admitted where pool = ?", (name,))
        self.db.execute("delete from tokens where pool = ?", (name,))
        self._bump()
        return (
            f"pool {name} removed (its machines keep their last instructions; the name "
            "stays reserved for its supplier)",
            {},
        )

    def _op_admit(self, role: Role | None, args: dict, now: float) -> tuple[str, dict]:
        name = _name(args.get("pool"), "pool")
        self._own_pool(role, name)
        key = _key(args.get("key"))
        self.db.execute(
            "insert or ignore into admitted (pool, key, via, source, added) "
            "values (?, ?, 'admin', '', ?)",
            (name, key, now),
        )
        return f"key {key[:12]} admitted to pool {name}", {}

    def _op_dismiss(self, role: Role | None, args: dict, now: float) -> tuple[str, dict]:
        name = _name(args.get("pool"), "pool")
        self._own_pool(role, name)
        key = _key(args.get("key"))
        if not self.db.execute(
            "delete from admitted where pool = ? and key = ?", (name, key)
        ).rowcount:
            raise AllocatorError(f"key {key[:12]} is not admitted to pool {name}")
        self.db.execute("delete from machines where pool = ? and key = ?", (name, key))
        return f"key {key[:12]} no longer admitted to pool {name}", {}

    def _op_join_token(self, role: Role | None, args: dict, now: float) -> tuple[str, dict]:
        """A new join token for the pool (the old one stops working), or none (`revoke`)."""
        name = _name(args.get("pool"), "pool")
        self._own_pool(role, name)
        self.db.execute("delete from tokens where pool = ?", (name,))
        if args.get("revoke"):
            return f"pool {name}: no join token now", {"token": None}
        uses = args.get("uses", TOKEN_USES)
        if isinstance(uses, bool) or not isinstance(uses, int) or not 1 <= uses <= MAX_TOKEN_USES:
            raise AllocatorError(f"uses: expected a whole number from 1 to {MAX_TOKEN_USES}")
        token = secrets.token_urlsafe(24)  # 192 random bits
        self.db.execute(
            "insert into tokens (pool, digest, uses_left, made) values (?, ?, ?, ?)",
            (name, _digest(token), uses, now),
        )
        return (
            f"pool {name}: join token {token} (for {uses} machines; a new token replaces it)",
            {"token": token, "uses": uses},
        )

    def _op_pool_prefs(self, role: Role | None, args: dict, now: float) -> tuple[str, dict]:
        name = _name(args.get("name"), "pool name")
        row = self._own_pool(role, name)
        change = args.get("prefs")
        if not _is_map(change):
            raise AllocatorError("prefs: expected a map of preference: value (nil clears one)")
        merged = {**json.loads(row[2]), **change}
        try:
            prefs = prefs_of(merged)
        except ValueError as e:
            raise AllocatorError(str(e)) from None
        self.db.execute(
            "update pools set prefs = ? where name = ?", (json.dumps(prefs_json(prefs)), name)
        )
        self._bump()
        shown = ", ".join(f"{k}={v}" for k, v in prefs_json(prefs).items()) or "none"
        return f"pool {name} preferences: {shown}", {"prefs": prefs_json(prefs)}

    def _visible_pools(self, role: Role | None) -> list[tuple]:
        rows = self.db.execute(
            "select name, supplier, prefs from pools where removed is null order by name"
        ).fetchall()
        if role is not None and role.role == SUPPLIER_ADMIN:
            rows = [r for r in rows if r[1] == role.supplier]
        return rows

    def _op_list(self, role: Role | None, args: dict, now: float) -> tuple[str, dict]:
        projects = [
            {"name": n, "dealer": d, "share": s}
            for n, d, s in self.db.execute("select name, dealer, share from projects order by name")
        ]
        pools = [
            {"name": n, "supplier": s, "prefs": json.loads(pr), "machines": self._count_machines(n)}
            for n, s, pr in self._visible_pools(role)
        ]
        if role is not None and role.role == ALLOCATOR_ADMIN:
            pools = [
                {"name": x["name"], "supplier": x["supplier"], "machines": x["machines"]}
                for x in pools
            ]
        return f"{len(projects)} projects, {len(pools)} pools", {
            "projects": projects,
            "pools": pools,
            "serial": self.serial,
        }

    def _count_machines(self, pool: str) -> int:
        return self.db.execute("select count(*) from machines where pool = ?", (pool,)).fetchone()[
            0
        ]

    def _pools_asked(self, role: Role | None, args: dict) -> list[str]:
        pool = args.get("pool")
        if pool is not None:
            self._own_pool(role, _name(pool, "pool"))
            return [pool]
        return [r[0] for r in self._visible_pools(role)]

    def _op_machines(self, role: Role | None, args: dict, now: float) -> tuple[str, dict]:
        pools = self._pools_asked(role, args)
        active_after = now - ACTIVE_REFRESHES * self.refresh_s
        marks = ",".join("?" * len(pools))
        total = self.db.execute(
            f"select count(*) from machines where pool in ({marks})", pools
        ).fetchone()[0]
        rows = []
        # at most MAX_MACHINE_ROWS, chosen in SQL: a reply's (and the page's) cost does not
        # grow with the machines
        for pool, key, name, address, host, first, last in self.db.execute(
            "select pool, key, name, address, host, first_seen, last_seen from machines "
            f"where pool in ({marks}) order by pool, name, key limit ?",
            (*pools, MAX_MACHINE_ROWS),
        ):
            rows.append(
                {
                    "pool": pool,
                    "key": key,
                    "name": name,
                    "address": address,
                    "host": json.loads(host),
                    "first_seen": first,
                    "last_seen": last,
                    "active": last >= active_after,
                }
            )
        return f"{total} machines", {"machines": rows, "total": total}

    def _op_stats(self, role: Role | None, args: dict, now: float) -> tuple[str, dict]:
        pools = self._pools_asked(role, args)
        return f"statistics of {len(pools)} pools", self.stats(pools, now)

    # --- statistics ---------------------------------------------------------------

    def stats(self, pools: Iterable[str], now: float) -> dict:
        """Per pool and project: credit, jobs (valid results), machines; and the history."""
        return _stats.stats(self.db, self.refresh_s, pools, now)

    def snapshot(self, now: float) -> dict:
        """Everything, as root sees it: for the operator's web page (allocator._page)."""
        root = Role(ROOT)
        pools = [r[0] for r in self._visible_pools(root)]
        machines = self._op_machines(root, {}, now)[1]
        return {
            "now": now,
            "serial": self.serial,
            "list": self._op_list(root, {}, now)[1],
            "machines": machines["machines"],  # at most MAX_MACHINE_ROWS
            "machines_total": machines["total"],
            "stats": self.stats(pools, now),
        }

    def projects(self) -> list[tuple[str, str, float]]:
        return list(self.db.execute("select name, dealer, share from projects order by name"))

    def record_credit(
        self,
        polled: Mapping[str, list[dict]],
        now: float,
        runs: Mapping[str, tuple[str, int]] | None = None,
    ) -> None:
        """Dealers' jobber rows (status_reply `jobbers`), by project name, as just polled,
        and their runs (the dealer's key and `accepted`); then one history point per pool
        and project (allocator._stats.record_credit)."""
        with self._tx():
            _stats.record_credit(self.db, self.refresh_s, polled, now, runs)

    # --- jobbers ------------------------------------------------------------------

    def instruct(self, key: str, address: str, msg: Instruct, now: float) -> Instructions:
        """A machine asks for its pool's instructions: answered if its key is admitted (or
        its join token admits it now) and recorded; else refused and nothing is stored."""
        row = self.db.execute(
            "select prefs from pools where name = ? and removed is null", (msg.pool,)
        ).fetchone()
        with self._tx():
            if row is None or not _admission.admitted(
                self.db, key, address, msg, now, self.max_per_address
            ):
                raise not_admitted(msg.pool, key)
            _admission.seen(self.db, key, address, msg, now, min(SEEN_EVERY_S, self.refresh_s))
        projects = tuple(Project(n, d, s) for n, d, s in self.projects())
        prefs = prefs_of(json.loads(row[0]))
        return Instructions(
            msg.id, msg.pool, self.serial, projects, prefs, self.refresh_s, self.check_s
        )
