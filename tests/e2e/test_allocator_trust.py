"""Issue 21's allocator and referral attacks, with real processes on loopback: an allocator,
dealers serving a real wasm task, jobbers started with --allocator; clients written from
docs/protocol.md section 10 play the strangers; a dealer played by hand refers."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
import time
import urllib.request

import pytest
import zmq

import protocol as p
from allocator.cli import ask
from jobber._core import MAX_BUFFER_PER_SLOT
from net._keys import create_key_pair, hex_of_z85, load_key_pair
from tests.e2e.test_allocator import SPIN, start_allocator, start_dealer, status, wait_jobber
from tests.helpers import (
    PY,
    CurveClient,
    by_hand,
    fake_dealer,
    free_port,
    routine,
    wait_for,
)

HOST = p.HostFacts(2, 512, 2)


def rows(db, table: str) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return c.execute(f"select count(*) from {table}").fetchone()[0]


def page(url: str) -> bytes:
    with urllib.request.urlopen(url + "stats.json", timeout=10) as r:
        return r.read()


def test_a_stranger_learns_nothing_and_a_jobber_with_the_join_token_works(procs):
    alloc, address = start_allocator(
        procs, free_port(), "--http", "127.0.0.1:0", "--max-per-address", "3"
    )
    url = alloc.wait_for(r"statistics page at (\S+)", 60, stream="stdout").group(1)
    root = load_key_pair(procs.cwd / "org.root")
    _, dealer = start_dealer(procs, "d", 100000)
    ask(address, root, "project_add", {"name": "d", "dealer": dealer})
    ask(address, root, "pool_add", {"name": "lab", "supplier": "physics"})
    db = procs.cwd / "org.sqlite"

    # a jobber that knows the pool's name and nothing else: refused, it says why
    procs.jobber("stranger", extra=("--allocator", address, "--pool", "lab"))
    procs.all[-1].wait_for(r"not admitted: key [0-9a-f]{12} may not read", 30)
    s = wait_jobber(procs, "stranger", lambda s: s["allocator"]["failures"] >= 1, 30, "refused")
    assert s["allocator"]["serial"] is None and s["dealers"] == [] and s["done"] == 0

    # a client written from the doc, by hand: an error, no pool data, nothing stored
    # the page as it is with the pool in it (a snapshot is published once a second)
    before_page = wait_for(
        lambda: (b := page(url)) and json.loads(b).get("list", {}).get("pools") and b,
        60,
        "the pool on the page",
    )
    strangers = 0
    t0 = time.monotonic()
    for i in range(300):
        c = CurveClient(address, source=f"127.0.1.{i % 200 + 1}")
        try:
            got = c.ask(p.Instruct(1, f"fake-{i}", "lab", HOST, None, "guess" if i % 2 else None))
        finally:
            c.close()
        assert isinstance(got, p.Error) and got.code is p.ErrorCode.FORBIDDEN, got
        assert "not admitted" in got.text and dealer.split("#")[1] not in got.text
        strangers += 1
    took = time.monotonic() - t0
    assert rows(db, "machines") == 0 and rows(db, "admitted") == 0
    # the page is rebuilt once a second: the next snapshot was taken after the strangers
    then = json.loads(page(url))["now"]
    after_page = wait_for(
        lambda: (b := page(url)) and json.loads(b)["now"] > then and b,
        60,
        "a snapshot taken after the strangers",
    )
    snap = json.loads(after_page)
    assert snap["machines"] == [] and snap["machines_total"] == 0
    assert abs(len(after_page) - len(before_page)) <= 16  # the clock's digits, no more
    print(
        f"{strangers} fake machines in {took:.1f} s: machines rows 0 -> 0, "
        f"page {len(before_page)} -> {len(after_page)} bytes"
    )

    # the pool's join token, as its admin prints it: the jobber presents it once, is
    # admitted, and works
    out = subprocess.run(
        [
            PY, "-m", "dealer", "allocator", "join-token", "lab",
            "--allocator", address, "--key", procs.cwd / "org.root",
        ],
        cwd=procs.cwd, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0 and "join token TOKEN" in out.stderr, out
    token = out.stdout.strip()
    assert len(token) >= 32 and token not in out.stderr
    procs.jobber("pc", extra=("--allocator", address, "--pool", "lab", "--join", token))
    wait_jobber(procs, "pc", lambda s: s["done"] >= 2, 60, "work through the pool")
    procs.all[-1].wait_for(r"admitted to pool lab", 10)
    machines = ask(address, root, "machines", {}).data["machines"]
    assert [m["name"] for m in machines] == ["pc"]

    # a leaked token, used from one source address: at most --max-per-address machines
    joined = 0
    for i in range(40):
        c = CurveClient(address, source="127.0.2.1")
        try:
            got = c.ask(p.Instruct(1, f"leak-{i}", "lab", HOST, None, token))
        finally:
            c.close()
        joined += isinstance(got, p.Instructions)
    assert joined == 3 and rows(db, "machines") == 4
    print(f"40 keys with a leaked token from one address: {joined} admitted")
    # and the stranger is still a stranger
    s = status(procs, "stranger")
    assert s is not None and s["allocator"]["serial"] is None and s["done"] == 0


def test_a_supplier_admin_cannot_recreate_another_suppliers_removed_pool(procs):
    """The issue's chem-lab takeover, over the wire with the admins' own keys."""
    _, address = start_allocator(procs, free_port())
    root = load_key_pair(procs.cwd / "org.root")
    admins = {s: create_key_pair(procs.cwd / s) for s in ("physics", "chemistry")}
    for supplier, key in admins.items():
        grant = {"key": key.public_hex, "role": "supplier_admin", "supplier": supplier}
        ask(address, root, "grant", grant)
    ask(address, admins["chemistry"], "pool_add", {"name": "chem-lab"})
    ask(address, admins["chemistry"], "pool_remove", {"name": "chem-lab"})
    with pytest.raises(RuntimeError, match="forbidden: pool 'chem-lab' belongs to supplier"):
        ask(address, admins["physics"], "pool_add", {"name": "chem-lab", "prefs": {"max_cpus": 1}})
    with pytest.raises(RuntimeError, match="forbidden"):
        ask(address, admins["physics"], "project_add", {"name": "x", "dealer": "127.0.0.1:7117"})
    assert ask(address, root, "list", {}).data["pools"] == []
    ask(address, admins["chemistry"], "pool_add", {"name": "chem-lab"})  # its own: again
    pools = ask(address, root, "list", {}).data["pools"]
    assert [(x["name"], x["supplier"]) for x in pools] == [("chem-lab", "chemistry")]


def test_a_referral_cannot_pin_a_key_for_an_address_the_owner_gave(procs):
    """D2 given as plain host:port (trust on first use) and down at start; another dealer
    refers the jobber to D2#<made-up key>. Once D2 is up, the jobber works for it with its
    real key, and its log names the mismatch."""
    router, d1 = fake_dealer()
    d2_port = free_port()
    d2 = f"127.0.0.1:{d2_port}"
    fake_key = hex_of_z85(zmq.curve_keypair()[0])
    j = procs.jobber("pc", d1, d2)
    referred = 0
    results: dict = {}
    for ident, msg in by_hand(router, j, 60):
        if routine(router, ident, msg, results):
            continue
        if isinstance(msg, p.Bored):
            router.send_multipart(
                [ident, p.encode(p.Referral(msg.id, (f"tcp://{d2}#{fake_key}",)))]
            )
            referred += 1
            if referred >= 2:
                break
    j.wait_for(rf"referred to it with key {fake_key}", 30)
    s = status(procs, "pc")
    link = next(x for x in s["dealers"] if x["address"] == f"tcp://{d2}")
    assert link["key"] is None and link["pinned"]  # the referral's key was not taken

    proc = procs.start(
        "d2",
        [
            PY, SPIN, "--jobs", "40", "--iters", "2000000",
            "--bind", f"tcp://127.0.0.1:{d2_port}", "--db", procs.cwd / "d2.sqlite",
            "--key", procs.cwd / "d2", "--quiet",
        ],
    )  # fmt: skip
    real_key = proc.wait_for(r"listening on \S+#([0-9a-f]{64})", 30).group(1)
    up_at = time.monotonic()
    assert real_key != fake_key
    line = j.wait_for(rf"dealer tcp://{d2}: key mismatch: it presents key ([0-9a-f]{{64}})", 60)
    assert line.group(1) == real_key
    assert fake_key in j.wait_for(r"key mismatch: .*", 1).group(0)
    wait_jobber(
        procs,
        "pc",
        lambda s: (
            any(x["address"] == f"tcp://{d2}" and x["key"] == real_key for x in s["dealers"])
            and s["done"] >= 3
        ),
        60,
        "work for D2 with its real key",
    )
    print(f"D2 up to 3 jobs done for it with its real key: {time.monotonic() - up_at:.1f} s")
    known = (procs.cwd / "data-pc" / "known_dealers").read_text()
    assert real_key in known and fake_key not in known
    router.close()


def test_dealers_a_removed_project_referred_the_pool_to_get_no_more_work(procs):
    """The issue's referral after removal: a listed project refers the lab's machines to
    another dealer (D3); the project is removed; D3 gets nothing more than what the
    machine held then, and is forgotten."""
    alloc, address = start_allocator(procs, free_port())
    root = load_key_pair(procs.cwd / "org.root")
    router, referrer = fake_dealer()
    _, d3 = start_dealer(procs, "d3", 100000, iters="2000000")
    d3_port = d3.split("#")[0].rsplit(":", 1)[1]
    stop = threading.Event()

    def play_referrer() -> None:  # a project whose dealer has no work, only a referral
        results: dict = {}
        while not stop.is_set():
            if not router.poll(100):
                continue
            ident, frame = router.recv_multipart()
            msg = p.decode(frame)
            if not routine(router, ident, msg, results) and isinstance(msg, p.Bored):
                router.send_multipart([ident, p.encode(p.Referral(msg.id, (d3,)))])

    thread = threading.Thread(target=play_referrer, daemon=True)
    thread.start()
    try:
        ask(address, root, "project_add", {"name": "p", "dealer": referrer})
        ask(address, root, "pool_add", {"name": "lab", "supplier": "physics"})
        token = ask(address, root, "join_token", {"pool": "lab"}).data["token"]
        procs.jobber("pc", extra=("--allocator", address, "--pool", "lab", "--join", token))

        def at_d3(s: dict) -> bool:
            return any(x["address"].endswith(f":{d3_port}") for x in s["dealers"])

        wait_jobber(procs, "pc", lambda s: at_d3(s) and s["done"] >= 5, 120, "work from D3")
        ask(address, root, "project_remove", {"name": "p"})
        serial = ask(address, root, "list", {}).data["serial"]
        s = wait_jobber(
            procs, "pc", lambda s: s["allocator"]["serial"] == serial, 30, "the removal"
        )
        removed_at = s["done"]
        s = wait_jobber(procs, "pc", lambda s: not at_d3(s), 30, "D3 forgotten")
        forgotten_at = s["done"]
        time.sleep(3.0)  # a window in which a D3 still asked would hand out many jobs
        s = status(procs, "pc")
        assert s is not None and not at_d3(s) and s["done"] == forgotten_at
        # at most what it held then and what an ask already out brought: the most a one-slot
        # jobber holds, twice
        held = 2 * (1 + MAX_BUFFER_PER_SLOT)
        assert forgotten_at - removed_at <= held, (removed_at, forgotten_at)
        print(f"after the project's removal: {forgotten_at - removed_at} jobs (those in hand)")
    finally:
        stop.set()
        thread.join(5)
        router.close()
