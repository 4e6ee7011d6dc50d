"""Who owns what at the allocator (allocator._core), over a real SQLite file: a pool is
its supplier's, a removed name stays reserved for it, projects are the allocator
admins', a pool's instructions go only to admitted keys (by hand or by the pool's
join token), and strangers cost no rows (issue 21, items 3 and 5)."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

import protocol as p
from allocator._core import (
    ALLOCATOR_ADMIN,
    ROOT,
    SUPPLIER_ADMIN,
    Allocator,
    AllocatorError,
    Forbidden,
)
from protocol._alloc import allocator_address
from tests.helpers import CurveClient, raw

ROOT_KEY = "0" * 64
ADMIN = "a" * 64
PHYSICS = "b" * 64
CHEMISTRY = "c" * 64
LAB_PC = "1" * 64  # a chemistry machine
STRANGER = "9" * 64
DEALER = "tcp://127.0.0.1:7117#" + "e" * 64
HOST = p.HostFacts(4, 1024, 4)


@pytest.fixture
def alloc(tmp_path):
    a = Allocator(tmp_path / "org.sqlite", refresh_s=10.0, max_per_address=5)
    a.make_root(ROOT_KEY, 0.0)
    a.admin(ROOT_KEY, "grant", {"key": ADMIN, "role": ALLOCATOR_ADMIN}, 1.0)
    for key, supplier in ((PHYSICS, "physics"), (CHEMISTRY, "chemistry")):
        a.admin(ROOT_KEY, "grant", {"key": key, "role": SUPPLIER_ADMIN, "supplier": supplier}, 1)
    a.admin(ADMIN, "project_add", {"name": "climate", "dealer": DEALER}, 1)
    yield a
    a.close()


def ask(alloc: Allocator, key: str, pool: str, join: str | None = None, address="10.0.0.1"):
    return alloc.instruct(key, address, p.Instruct(1, "pc", pool, HOST, None, join), 5.0)


def rows(alloc: Allocator, table: str) -> int:
    return alloc.db.execute(f"select count(*) from {table}").fetchone()[0]


def test_a_supplier_cannot_take_over_recreate_or_read_another_suppliers_pool(alloc):
    """The issue's chem-new / chem-lab attack: physics's admin claims chemistry's names."""
    alloc.admin(CHEMISTRY, "pool_add", {"name": "chem-lab", "prefs": {"max_cpus": 8}}, 2)
    alloc.admin(CHEMISTRY, "admit", {"pool": "chem-lab", "key": LAB_PC}, 2)
    assert ask(alloc, LAB_PC, "chem-lab").prefs == p.Prefs(slots=8)
    # while it lives: physics may not change, remove, re-create, admit to or read it
    for op, args in (
        ("pool_prefs", {"name": "chem-lab", "prefs": {"start_hour": 9, "end_hour": 17}}),
        ("pool_remove", {"name": "chem-lab"}),
        ("pool_add", {"name": "chem-lab"}),
        ("admit", {"pool": "chem-lab", "key": PHYSICS}),
        ("join_token", {"pool": "chem-lab"}),
        ("machines", {"pool": "chem-lab"}),
    ):
        with pytest.raises(Forbidden, match="belongs to supplier 'chemistry'"):
            alloc.admin(PHYSICS, op, args, 3)
    # removed by chemistry: the name stays chemistry's
    alloc.admin(CHEMISTRY, "pool_remove", {"name": "chem-lab"}, 4)
    serial = alloc.serial
    with pytest.raises(Forbidden, match="belongs to supplier 'chemistry'"):
        alloc.admin(PHYSICS, "pool_add", {"name": "chem-lab", "prefs": {"max_cpus": 1}}, 5)
    with pytest.raises(Forbidden, match="administers supplier 'physics', not 'chemistry'"):
        alloc.admin(PHYSICS, "pool_add", {"name": "chem-lab", "supplier": "chemistry"}, 5)
    assert alloc.serial == serial
    # its machines are no longer admitted anywhere (they keep their last instructions)
    with pytest.raises(Forbidden, match="not admitted"):
        ask(alloc, LAB_PC, "chem-lab")
    # a new name physics makes up is physics's, but chemistry's machines are not in it:
    # they get nothing from it and physics sees nothing of them
    alloc.admin(PHYSICS, "pool_add", {"name": "chem-new", "prefs": {"max_cpus": 1}}, 6)
    with pytest.raises(Forbidden, match="not admitted"):
        ask(alloc, LAB_PC, "chem-new")
    assert alloc.admin(PHYSICS, "machines", {}, 7)[1]["machines"] == []
    # chemistry re-creates its own name; root may too, for the same supplier by default
    alloc.admin(CHEMISTRY, "pool_add", {"name": "chem-lab"}, 8)
    assert [x["name"] for x in alloc.admin(CHEMISTRY, "list", {}, 8)[1]["pools"]] == ["chem-lab"]
    alloc.admin(CHEMISTRY, "pool_remove", {"name": "chem-lab"}, 9)
    alloc.admin(ROOT_KEY, "pool_add", {"name": "chem-lab"}, 10)
    pools = {x["name"]: x["supplier"] for x in alloc.admin(ROOT_KEY, "list", {}, 10)[1]["pools"]}
    assert pools == {"chem-lab": "chemistry", "chem-new": "physics"}
    # root gives the removed name to physics, explicitly: chemistry's machines do not go
    # with it
    assert rows(alloc, "machines") == 1
    alloc.admin(ROOT_KEY, "pool_remove", {"name": "chem-lab"}, 11)
    alloc.admin(ROOT_KEY, "pool_add", {"name": "chem-lab", "supplier": "physics"}, 12)
    assert alloc.admin(PHYSICS, "machines", {"pool": "chem-lab"}, 12)[1]["machines"] == []
    assert rows(alloc, "machines") == 0


def test_projects_are_the_allocator_admins_alone(alloc):
    for op, args in (
        ("project_add", {"name": "mine", "dealer": DEALER}),
        ("project_remove", {"name": "climate"}),
        ("project_share", {"name": "climate", "share": 100}),
    ):
        with pytest.raises(Forbidden, match="needs the role"):
            alloc.admin(PHYSICS, op, args, 2)
    alloc.admin(ADMIN, "project_remove", {"name": "climate"}, 3)
    with pytest.raises(Forbidden, match="needs the role"):  # nor re-create a removed one
        alloc.admin(PHYSICS, "project_add", {"name": "climate", "dealer": DEALER}, 4)
    assert alloc.projects() == []


def test_a_stranger_learns_nothing_and_costs_no_row(alloc):
    alloc.admin(PHYSICS, "pool_add", {"name": "lab", "prefs": {"max_cpus": 2}}, 2)
    before = {t: rows(alloc, t) for t in ("machines", "admitted", "tokens")}
    texts = []
    for pool in ("lab", "no-such-pool"):
        for join in (None, "guessed-token"):
            with pytest.raises(Forbidden) as e:
                ask(alloc, STRANGER, pool, join)
            texts.append(str(e.value).replace(repr(pool), "POOL"))
    # the same words whether or not the pool exists: a pool's name reveals nothing
    assert len(set(texts)) == 1 and "not admitted" in texts[0] and "lab" not in texts[0]
    assert {t: rows(alloc, t) for t in before} == before
    # a key with a role is no member either: roles are for admin requests
    with pytest.raises(Forbidden, match="not admitted"):
        ask(alloc, PHYSICS, "lab")


def test_a_join_token_admits_once_is_replaced_revoked_and_used_up(alloc, tmp_path):
    alloc.admin(PHYSICS, "pool_add", {"name": "lab"}, 2)
    token = alloc.admin(PHYSICS, "join_token", {"pool": "lab", "uses": 2}, 2)[1]["token"]
    assert len(token) >= 32
    with pytest.raises(Forbidden, match="not admitted"):
        ask(alloc, "1" * 64, "lab", token + "x")
    assert ask(alloc, "1" * 64, "lab", token).pool == "lab"
    assert ask(alloc, "1" * 64, "lab").pool == "lab"  # admitted: no token needed again
    alloc.admin(PHYSICS, "pool_add", {"name": "other"}, 3)
    with pytest.raises(Forbidden, match="not admitted"):  # a token is for its pool alone
        ask(alloc, "2" * 64, "other", token)
    assert ask(alloc, "2" * 64, "lab", token).pool == "lab"
    with pytest.raises(Forbidden, match="used up"):
        ask(alloc, "3" * 64, "lab", token)
    # a new token replaces the old; revoked, none admits; those admitted stay
    new = alloc.admin(PHYSICS, "join_token", {"pool": "lab"}, 4)[1]["token"]
    with pytest.raises(Forbidden, match="not admitted"):
        ask(alloc, "4" * 64, "lab", token)
    assert ask(alloc, "4" * 64, "lab", new).pool == "lab"
    alloc.admin(PHYSICS, "join_token", {"pool": "lab", "revoke": True}, 5)
    with pytest.raises(Forbidden, match="not admitted"):
        ask(alloc, "5" * 64, "lab", new)
    assert ask(alloc, "2" * 64, "lab").pool == "lab"
    # dismissed: out, and no longer listed
    alloc.admin(PHYSICS, "dismiss", {"pool": "lab", "key": "2" * 64}, 6)
    with pytest.raises(Forbidden, match="not admitted"):
        ask(alloc, "2" * 64, "lab")
    listed = {m["key"][:1] for m in alloc.admin(PHYSICS, "machines", {}, 6)[1]["machines"]}
    assert listed == {"1", "4"}
    # the database keeps digests, never a token
    alloc.db.execute("pragma wal_checkpoint(truncate)")
    raw = (tmp_path / "org.sqlite").read_bytes()
    assert new.encode() not in raw and token.encode() not in raw
    with pytest.raises(AllocatorError, match="uses"):
        alloc.admin(PHYSICS, "join_token", {"pool": "lab", "uses": 0}, 7)


def test_token_joins_are_bounded_per_source_an_ipv6_64_counting_as_one(alloc):
    alloc.admin(PHYSICS, "pool_add", {"name": "lab"}, 2)
    token = alloc.admin(PHYSICS, "join_token", {"pool": "lab"}, 2)[1]["token"]
    for i in range(5):  # max_per_address=5
        ask(alloc, f"{i:064x}", "lab", token, address="10.0.0.1")
    with pytest.raises(Forbidden, match="5 machines joined pool 'lab' from 10.0.0.1"):
        ask(alloc, f"{99:064x}", "lab", token, address="10.0.0.1")
    ask(alloc, f"{99:064x}", "lab", token, address="10.0.0.2")  # another source
    for i in range(5):
        ask(alloc, f"{100 + i:064x}", "lab", token, address=f"2001:db8:1:2::{i + 1}")
    with pytest.raises(Forbidden, match="2001:db8:1:2::/64"):
        ask(alloc, f"{200:064x}", "lab", token, address="2001:db8:1:2:ffff::9")
    # the admin may still admit by hand past the bound: a key named is a choice
    alloc.admin(PHYSICS, "admit", {"pool": "lab", "key": f"{200:064x}"}, 3)
    ask(alloc, f"{200:064x}", "lab", address="2001:db8:1:2:ffff::9")
    assert rows(alloc, "machines") == 12


def test_thousands_of_fake_machines_cost_no_rows_and_the_page_stays_the_same(alloc, tmp_path):
    """The issue's 12,420 fake machines: unadmitted keys store nothing; with a leaked token
    one source adds at most max_per_address; the page lists at most MAX_MACHINE_ROWS."""
    alloc.admin(PHYSICS, "pool_add", {"name": "lab"}, 2)
    token = alloc.admin(PHYSICS, "join_token", {"pool": "lab"}, 2)[1]["token"]
    alloc.admin(PHYSICS, "admit", {"pool": "lab", "key": LAB_PC}, 2)
    ask(alloc, LAB_PC, "lab")
    db = tmp_path / "org.sqlite"

    def size() -> int:
        alloc.db.execute("pragma wal_checkpoint(truncate)")
        return os.path.getsize(db)

    page_before = len(json.dumps(alloc.snapshot(10.0)))
    db_before = size()
    refused = 0
    for i in range(5000):
        try:
            ask(alloc, f"{i:064x}", "lab", None if i % 2 else "wrong", address=f"10.{i % 250}.0.1")
        except Forbidden:
            refused += 1
    assert refused == 5000
    assert rows(alloc, "machines") == 1 and rows(alloc, "admitted") == 1
    db_after, page_after = size(), len(json.dumps(alloc.snapshot(11.0)))
    print(f"5000 unadmitted keys: db {db_before} -> {db_after} B,", end=" ")
    print(f"page {page_before} -> {page_after} B")
    assert db_after == db_before and page_after == page_before
    # a leaked token, used from one source: max_per_address rows, then refused
    joined = 0
    for i in range(2000):
        try:
            ask(alloc, f"{10_000 + i:064x}", "lab", token, address="10.9.9.9")
            joined += 1
        except Forbidden:
            pass
    assert joined == 5 and rows(alloc, "machines") == 6
    print(f"2000 keys with a leaked token from one source: {joined} admitted")


def test_a_schema_1_database_admits_the_machines_it_had(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        """
        create table meta (k text primary key, v text not null);
        create table roles (key text primary key, role text not null, supplier text,
            granted real not null);
        create table projects (name text primary key, dealer text not null,
            share real not null, added real not null);
        create table pools (name text primary key, supplier text not null,
            prefs text not null, added real not null);
        create table machines (key text primary key, pool text not null, name text not null,
            address text not null, host text not null, first_seen real not null,
            last_seen real not null);
        insert into meta values ('schema', '1'), ('serial', '7');
        insert into pools values ('lab', 'physics', '{"max_cpus": 2}', 1.0);
        """
    )
    db.execute(
        "insert into machines values (?, 'lab', 'pc', '10.0.0.1', '{}', 1.0, 2.0)", (LAB_PC,)
    )
    db.commit()
    db.close()
    again = Allocator(path)
    try:
        assert again.serial == 7
        assert ask(again, LAB_PC, "lab").prefs == p.Prefs(slots=2)
        with pytest.raises(Forbidden, match="not admitted"):
            ask(again, STRANGER, "lab")
        again.make_root(ROOT_KEY, 3.0)
        again.admin(ROOT_KEY, "pool_remove", {"name": "lab"}, 4)  # the new column works
        assert again.admin(ROOT_KEY, "list", {}, 4)[1]["pools"] == []
        assert again.role_of(ROOT_KEY).role == ROOT
    finally:
        again.close()


def test_the_join_token_on_the_wire_is_optional_and_bounded():
    plain = p.Instruct(1, "pc", "lab", HOST)
    assert b"join" not in p.encode(plain)  # an old allocator sees the message it knew
    with_token = p.Instruct(1, "pc", "lab", HOST, None, "t" * 32)
    assert p.decode(p.encode(with_token)).join == "t" * 32
    with pytest.raises(p.ProtocolError, match="join"):
        p.encode(p.Instruct(1, "pc", "lab", HOST, None, "t" * 257))


def test_an_allocator_printed_by_a_dual_stack_socket_is_one_address_with_its_ipv4_spelling():
    key = "ab" * 32
    assert allocator_address(f"tcp://[::ffff:127.0.0.1]:7000#{key}") == (
        f"tcp://127.0.0.1:7000#{key}"
    )
    assert allocator_address("127.0.0.1:7000") == "tcp://127.0.0.1:7000"
    assert allocator_address("[::1]:7000") == "tcp://[::1]:7000"  # real IPv6 stays
    assert allocator_address("[::ffff:1:2]:7000") == "tcp://[::ffff:1:2]:7000"


def test_admission_on_the_wire_as_documented(served):
    """Section 10 spoken with raw msgpack maps: join_token, then instruct with `join`."""
    server, root = served
    admin = CurveClient(server.address, keys=(root.public, root.secret))
    machine, stranger = CurveClient(server.address), CurveClient(server.address)
    host = {"cpus": 2, "memory_mb": 512, "slots": 2, "cached": []}
    try:
        raw(admin, {"type": "alloc_admin", "id": 1, "op": "pool_add",
                    "args": {"name": "lab", "supplier": "physics"}})  # fmt: skip
        got = raw(admin, {"type": "alloc_admin", "id": 2, "op": "join_token",
                          "args": {"pool": "lab", "uses": 1}})  # fmt: skip
        token = got["data"]["token"]
        assert got["type"] == "alloc_reply" and got["data"]["uses"] == 1
        ask_ = {"type": "instruct", "jobber": "pc", "pool": "lab", "host": host}
        got = raw(stranger, {**ask_, "id": 3})
        assert (got["type"], got["re"], got["code"]) == ("error", 3, "forbidden")
        assert "not admitted" in got["text"] and "pool" not in got
        got = raw(machine, {**ask_, "id": 4, "join": token})
        assert (got["type"], got["re"], got["pool"]) == ("instructions", 4, "lab")
        got = raw(machine, {**ask_, "id": 5})  # admitted: no token again
        assert got["type"] == "instructions"
        got = raw(stranger, {**ask_, "id": 6, "join": token})  # its one use is spent
        assert got["code"] == "forbidden" and "used up" in got["text"]
        got = raw(stranger, {**ask_, "id": 7, "join": 7})  # not a string: malformed
        assert got["code"] == "malformed" and "join" in got["text"]
    finally:
        for c in (admin, machine, stranger):
            c.close()
