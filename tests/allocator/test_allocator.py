"""The allocator's core (allocator._core) over a real SQLite file: roles, projects,
pools, machines, credit; then its shell on real sockets, spoken to as documented."""

from __future__ import annotations

import pytest
import zmq

import protocol as p
from allocator._core import (
    ALLOCATOR_ADMIN,
    PERMITTED,
    ROOT,
    SUPPLIER_ADMIN,
    Allocator,
    AllocatorError,
    Forbidden,
)
from protocol._alloc import MAX_PROJECTS
from tests.helpers import CurveClient, raw

ROOT_KEY = "0" * 64
ADMIN = "a" * 64
PHYSICS = "b" * 64
CHEMISTRY = "c" * 64
NOBODY = "d" * 64
MACHINE_1, MACHINE_2 = "1" * 64, "2" * 64
DEALER = "tcp://127.0.0.1:7117#" + "e" * 64
HOST = p.HostFacts(4, 1024, 4)


@pytest.fixture
def alloc(tmp_path):
    a = Allocator(tmp_path / "org.sqlite", refresh_s=10.0)
    a.make_root(ROOT_KEY, 0.0)
    a.admin(ROOT_KEY, "grant", {"key": ADMIN, "role": ALLOCATOR_ADMIN}, 1.0)
    for key, supplier in ((PHYSICS, "physics"), (CHEMISTRY, "chemistry")):
        a.admin(ROOT_KEY, "grant", {"key": key, "role": SUPPLIER_ADMIN, "supplier": supplier}, 1)
    yield a
    a.close()


def test_roles_are_what_whoami_says(alloc):
    assert alloc.admin(PHYSICS, "whoami", {}, 2)[1] == {
        "role": SUPPLIER_ADMIN,
        "supplier": "physics",
    }
    assert alloc.admin(ADMIN, "whoami", {}, 2)[1] == {"role": ALLOCATOR_ADMIN, "supplier": None}
    assert alloc.admin(NOBODY, "whoami", {}, 2)[1] == {"role": None}


def test_a_supplier_admin_is_refused_on_another_suppliers_pool_and_nothing_changes(alloc):
    alloc.admin(PHYSICS, "pool_add", {"name": "physics-lab", "prefs": {"max_cpus": 2}}, 2)
    serial = alloc.serial
    for op, args in (
        ("pool_prefs", {"name": "physics-lab", "prefs": {"max_cpus": 1}}),
        ("pool_remove", {"name": "physics-lab"}),
        ("machines", {"pool": "physics-lab"}),
        ("stats", {"pool": "physics-lab"}),
        ("pool_add", {"name": "chem-2", "supplier": "physics"}),
    ):
        with pytest.raises(Forbidden, match="physics|chemistry"):
            alloc.admin(CHEMISTRY, op, args, 3)
    assert alloc.serial == serial
    listed = alloc.admin(PHYSICS, "list", {}, 4)[1]["pools"]
    assert [(x["name"], x["prefs"]) for x in listed] == [("physics-lab", {"max_cpus": 2})]
    # and the other supplier sees none of it
    assert alloc.admin(CHEMISTRY, "list", {}, 4)[1]["pools"] == []


def test_who_may_do_what(alloc):
    alloc.admin(ROOT_KEY, "pool_add", {"name": "lab", "supplier": "physics"}, 2)
    allowed = {
        ROOT_KEY: set(PERMITTED),
        ADMIN: {"whoami", "project_add", "project_remove", "project_share", "list", "stats"},
        PHYSICS: {"whoami", "pool_add", "pool_remove", "pool_prefs", "list", "machines", "stats"}
        | {"admit", "dismiss", "join_token"},
        NOBODY: {"whoami"},
    }
    for key, ops in allowed.items():
        for op in PERMITTED:
            if op in ("grant", "revoke", "pool_remove", "project_remove", "pool_add"):
                continue  # changes that would disturb the next rounds; checked elsewhere
            try:
                alloc.admin(key, op, _args(op), 3)
            except Forbidden:
                assert op not in ops, (key[:1], op)
            except AllocatorError:
                assert op in ops, (key[:1], op)  # allowed, then refused on its arguments
            else:
                assert op in ops, (key[:1], op)
    for key in (ADMIN, PHYSICS, NOBODY):
        with pytest.raises(Forbidden):
            alloc.admin(key, "grant", {"key": NOBODY, "role": ROOT}, 4)
    for key in (ADMIN, NOBODY):
        with pytest.raises(Forbidden):
            alloc.admin(key, "pool_add", {"name": "x", "supplier": "physics"}, 4)
    with pytest.raises(Forbidden):
        alloc.admin(PHYSICS, "project_add", {"name": "x", "dealer": DEALER}, 4)


def _args(op: str) -> dict:
    return {
        "project_add": {"name": "proj", "dealer": DEALER, "share": 2},
        "project_share": {"name": "proj", "share": 5},
        "pool_prefs": {"name": "lab", "prefs": {"max_cpus": 3}},
        "machines": {"pool": "lab"},
        "admit": {"pool": "lab", "key": MACHINE_1},
        "dismiss": {"pool": "lab", "key": MACHINE_1},
        "join_token": {"pool": "lab"},
    }.get(op, {})


def test_bad_requests_are_refused_with_a_reason_and_change_nothing(alloc):
    serial = alloc.serial
    for op, args, why in (
        ("nonsense", {}, "unknown op"),
        ("project_add", {"name": "", "dealer": DEALER}, "project name"),
        ("project_add", {"name": "p", "dealer": "tcp://h:x"}, "dealer"),
        ("project_add", {"name": "p", "dealer": DEALER, "share": -1}, "share"),
        ("project_add", {"name": "p", "dealer": DEALER, "share": True}, "share"),
        ("project_share", {"name": "absent", "share": 1}, "no project"),
        ("pool_add", {"name": "lab"}, "supplier"),
        ("pool_add", {"name": "lab", "supplier": "s", "prefs": {"max_cpus": 0}}, "max_cpus"),
        ("pool_add", {"name": "lab", "supplier": "s", "prefs": {"bogus": 1}}, "unknown pref"),
        ("pool_add", {"name": "lab", "supplier": "s", "prefs": {"start_hour": 8}}, "together"),
        ("pool_prefs", {"name": "absent", "prefs": {}}, "no pool"),
        ("grant", {"key": "xyz", "role": ROOT}, "key"),
        ("grant", {"key": NOBODY, "role": "emperor"}, "role"),
        ("grant", {"key": NOBODY, "role": SUPPLIER_ADMIN}, "supplier"),
        ("revoke", {"key": ROOT_KEY}, "last root"),
        ("grant", {"key": ROOT_KEY, "role": ALLOCATOR_ADMIN}, "last root"),
    ):
        with pytest.raises(AllocatorError, match=why):
            alloc.admin(ROOT_KEY, op, args, 2)
    assert alloc.serial == serial
    assert alloc.projects() == []
    assert alloc.role_of(ROOT_KEY).role == ROOT


def test_no_more_projects_than_instructions_carry(alloc):
    for i in range(MAX_PROJECTS):
        alloc.admin(ADMIN, "project_add", {"name": f"p{i}", "dealer": f"127.0.0.1:{7200 + i}"}, 2)
    with pytest.raises(AllocatorError, match="the most instructions carry"):
        alloc.admin(ADMIN, "project_add", {"name": "one-too-many", "dealer": DEALER}, 3)
    assert len(alloc.projects()) == MAX_PROJECTS
    alloc.admin(PHYSICS, "pool_add", {"name": "lab"}, 4)
    alloc.admin(PHYSICS, "admit", {"pool": "lab", "key": MACHINE_1}, 4)
    reply = alloc.instruct(MACHINE_1, "10.0.0.1", p.Instruct(1, "pc-1", "lab", HOST), 5)
    assert len(p.decode(p.encode(reply)).projects) == MAX_PROJECTS  # still sendable


def test_projects_shares_and_prefs_reach_the_instructions(alloc):
    alloc.admin(ADMIN, "project_add", {"name": "a", "dealer": DEALER, "share": 3}, 2)
    alloc.admin(ADMIN, "project_add", {"name": "b", "dealer": "127.0.0.1:7200"}, 2)
    alloc.admin(PHYSICS, "pool_add", {"name": "lab"}, 2)
    alloc.admin(PHYSICS, "admit", {"pool": "lab", "key": MACHINE_1}, 2)
    ask = p.Instruct(7, "pc-1", "lab", HOST)
    first = alloc.instruct(MACHINE_1, "10.0.0.1", ask, 3)
    assert first.re == 7 and first.pool == "lab" and first.refresh_s == 10.0
    assert [(x.name, x.dealer, x.share) for x in first.projects] == [
        ("a", DEALER, 3.0),
        ("b", "tcp://127.0.0.1:7200", 1.0),
    ]
    assert first.prefs == p.Prefs()
    change = {"start_hour": 18, "end_hour": 8, "max_cpus": 2, "idle_only": True}
    alloc.admin(PHYSICS, "pool_prefs", {"name": "lab", "prefs": change}, 4)
    alloc.admin(ADMIN, "project_share", {"name": "b", "share": 0.5}, 4)
    second = alloc.instruct(MACHINE_1, "10.0.0.1", ask, 5)
    assert second.serial > first.serial
    assert second.prefs == p.Prefs(start_hour=18, end_hour=8, slots=2, idle_only=True)
    assert [x.share for x in second.projects] == [3.0, 0.5]
    # nil clears one preference; the rest stay
    alloc.admin(PHYSICS, "pool_prefs", {"name": "lab", "prefs": {"idle_only": None}}, 6)
    third = alloc.instruct(MACHINE_1, "10.0.0.1", ask, 7)
    assert third.prefs == p.Prefs(start_hour=18, end_hour=8, slots=2)
    assert third.serial > second.serial
    with pytest.raises(Forbidden, match="not admitted"):
        alloc.instruct(MACHINE_1, "10.0.0.1", p.Instruct(8, "pc-1", "attic", HOST), 8)


def test_machines_are_recorded_and_credit_is_attributed_to_their_pools(alloc):
    alloc.admin(ADMIN, "project_add", {"name": "a", "dealer": DEALER}, 1)
    alloc.admin(PHYSICS, "pool_add", {"name": "phys"}, 1)
    alloc.admin(CHEMISTRY, "pool_add", {"name": "chem"}, 1)
    alloc.admin(PHYSICS, "admit", {"pool": "phys", "key": MACHINE_1}, 1)
    alloc.admin(CHEMISTRY, "admit", {"pool": "chem", "key": MACHINE_2}, 1)
    alloc.instruct(MACHINE_1, "10.0.0.1", p.Instruct(1, "pc-1", "phys", HOST), 100.0)
    alloc.instruct(MACHINE_2, "10.0.0.2", p.Instruct(1, "pc-2", "chem", HOST), 100.0)
    alloc.instruct(MACHINE_1, "10.0.0.9", p.Instruct(2, "pc-1b", "phys", HOST), 130.0)
    rows = [
        {"key": MACHINE_1, "credit": 3000, "valid": 3},
        {"key": MACHINE_2, "credit": 1000, "valid": 1},
        {"key": NOBODY, "credit": 99, "valid": 9},  # not a machine of any pool: not counted
        {"key": "bad"},  # a row that does not fit: skipped
    ]
    alloc.record_credit({"a": rows}, 131.0)
    machines = alloc.admin(PHYSICS, "machines", {}, 131.0)[1]["machines"]
    assert [
        (m["key"], m["name"], m["address"], m["first_seen"], m["last_seen"]) for m in machines
    ] == [(MACHINE_1, "pc-1b", "10.0.0.9", 100.0, 130.0)]
    assert machines[0]["host"]["cpus"] == 4 and machines[0]["active"]
    phys = alloc.admin(PHYSICS, "stats", {}, 131.0)[1]
    assert phys["projects"] == {"a": {"credit": 3000, "jobs": 3}}
    assert phys["pools"] == [
        {"pool": "phys", "machines": 1, "active": 1, "projects": {"a": {"credit": 3000, "jobs": 3}}}
    ]
    everything = alloc.admin(ADMIN, "stats", {}, 131.0)[1]
    assert everything["projects"] == {"a": {"credit": 4000, "jobs": 4}}
    # a later poll replaces the dealer's figures (its credit is a running total) and adds
    # history; long silence makes a machine inactive (three refresh intervals: 30 s)
    alloc.record_credit({"a": [{"key": MACHINE_1, "credit": 5000, "valid": 5}]}, 150.0)
    alloc.record_credit({"a": [{"key": MACHINE_1, "credit": 5000, "valid": 5}]}, 160.0)  # same
    phys = alloc.admin(ROOT_KEY, "stats", {"pool": "phys"}, 200.0)[1]
    assert phys["pools"][0]["projects"] == {"a": {"credit": 5000, "jobs": 5}}
    assert phys["pools"][0]["active"] == 0
    assert [(h["t"], h["credit"]) for h in phys["history"]] == [(150.0, 5000), (131.0, 3000)]


def test_the_database_keeps_everything_across_a_restart(tmp_path):
    path = tmp_path / "again.sqlite"
    first = Allocator(path)
    first.make_root(ROOT_KEY, 0.0)
    first.admin(ROOT_KEY, "project_add", {"name": "a", "dealer": DEALER, "share": 3}, 1)
    first.admin(ROOT_KEY, "grant", {"key": PHYSICS, "role": SUPPLIER_ADMIN, "supplier": "ph"}, 1)
    first.admin(PHYSICS, "pool_add", {"name": "lab", "prefs": {"max_cpus": 2}}, 1)
    first.admin(PHYSICS, "admit", {"pool": "lab", "key": MACHINE_1}, 1)
    serial = first.serial
    first.close()
    again = Allocator(path)
    try:
        assert again.serial == serial and again.has_root()
        assert again.projects() == [("a", DEALER, 3.0)]
        assert again.role_of(PHYSICS).supplier == "ph"
        got = again.instruct(MACHINE_1, "x", p.Instruct(1, "pc", "lab", HOST), 2)
        assert got.prefs == p.Prefs(slots=2)
    finally:
        again.close()


# --- the shell on real sockets, spoken to as docs/protocol.md section 10 says --------


def test_the_wire_as_documented(served):
    server, root = served
    admin = CurveClient(server.address, keys=(root.public, root.secret))
    machine = CurveClient(server.address)
    try:
        got = raw(admin, {"type": "alloc_admin", "id": 1, "op": "pool_add",
                          "args": {"name": "lab", "supplier": "physics"}})  # fmt: skip
        assert (got["type"], got["re"]) == ("alloc_reply", 1) and "lab" in got["text"]
        got = raw(admin, {"type": "alloc_admin", "id": 2, "op": "project_add",
                          "args": {"name": "a", "dealer": DEALER, "share": 3}})  # fmt: skip
        assert got["type"] == "alloc_reply"
        got = raw(admin, {"type": "alloc_admin", "id": 3, "op": "admit",
                          "args": {"pool": "lab", "key": machine.key}})  # fmt: skip
        assert got["type"] == "alloc_reply" and "admitted" in got["text"]
        host = {"cpus": 2, "memory_mb": 512, "slots": 2, "cached": []}
        got = raw(
            machine, {"type": "instruct", "id": 7, "jobber": "pc", "pool": "lab", "host": host}
        )
        assert got == {
            "v": 2,
            "type": "instructions",
            "re": 7,
            "pool": "lab",
            "serial": got["serial"],
            "projects": [{"name": "a", "dealer": DEALER, "share": 3.0}],
            "prefs": {},
            "refresh_s": 5.0,
        }
        # a key without a role: forbidden; an unknown pool, a wrong message, garbage: errors
        got = raw(machine, {"type": "alloc_admin", "id": 8, "op": "list", "args": {}})
        assert (got["type"], got["re"], got["code"]) == ("error", 8, "forbidden")
        got = raw(machine, {"type": "instruct", "id": 9, "jobber": "pc", "pool": "x", "host": host})
        assert (got["type"], got["code"]) == ("error", "forbidden")
        assert "not admitted" in got["text"]
        got = raw(machine, {"type": "hello", "id": 10})
        assert (got["type"], got["code"]) == ("error", "unexpected")
        machine.send(b"\x93garbage")
        got = p.decode(machine.sock.recv() if machine.sock.poll(5000) else b"")
        assert isinstance(got, p.Error) and got.code is p.ErrorCode.MALFORMED
        listed = raw(admin, {"type": "alloc_admin", "id": 11, "op": "machines", "args": {}})
        assert [(m["name"], m["key"], m["address"]) for m in listed["data"]["machines"]] == [
            ("pc", machine.key, "127.0.0.1")
        ]
    finally:
        admin.close()
        machine.close()
    # the plaintext port: its key and a status for anyone
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.public_endpoint.replace("0.0.0.0", "127.0.0.1"))
    try:
        sock.send(p.encode(p.Hello(1)))
        assert sock.poll(5000) and p.decode(sock.recv()) == p.HelloReply(1, server.keys.public_hex)
        sock.send(p.encode(p.StatusQuery(2)))
        assert sock.poll(5000)
        info = p.decode(sock.recv()).info
        assert info["allocator"] is True and info["projects"] == 1
    finally:
        sock.close()
