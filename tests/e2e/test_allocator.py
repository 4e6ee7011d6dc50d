"""The allocator with real processes on loopback: an allocator, dealers serving a real
wasm task, and jobbers started once with --allocator and --pool."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request

from allocator.cli import ask
from net._keys import create_key_pair, load_key_pair
from tests.helpers import PY, ROOT, free_port, jobber_status, wait_for

SPIN = ROOT / "tests" / "task_files" / "spin.py"
# a job of some tens of milliseconds: a few hundred make a batch of seconds
ITERS = "20000000"


def start_allocator(procs, port: int, *extra: str, log: str = "allocator"):
    proc = procs.start(
        log,
        [
            # its own program (the admin commands below use the older spelling,
            # python -m dealer allocator, which execs it)
            PY, "-m", "allocator", "serve", "--db", procs.cwd / "org.sqlite",
            "--bind", f"tcp://127.0.0.1:{port}", "--refresh", "0.5", "--poll", "0.5", *extra,
        ],
    )  # fmt: skip
    address = proc.wait_for(r"allocator at (\S+)", 30, stream="stdout").group(1)
    return proc, address


def start_dealer(procs, name: str, jobs: int, iters: str = ITERS, port: int = 0, run: str = ""):
    proc = procs.start(
        name + run,
        [
            PY, SPIN, "--jobs", jobs, "--iters", iters,
            "--bind", f"tcp://127.0.0.1:{port or free_port()}",
            "--db", procs.cwd / f"{name}{run}.sqlite", "--key", procs.cwd / name, "--quiet",
        ],
    )  # fmt: skip
    return proc, proc.wait_for(r"listening on (\S+)", 30).group(1)


def start_jobber(procs, name: str, allocator: str, *extra: str):
    return procs.jobber(name, slots=1, extra=("--allocator", allocator, "--pool", "lab", *extra))


def status(procs, name: str) -> dict | None:
    try:
        return jobber_status(procs.cwd / f"data-{name}")
    except (ConnectionError, TimeoutError, OSError):
        return None


def wait_jobber(procs, name: str, pred, timeout: float, what: str) -> dict:
    return wait_for(lambda: (s := status(procs, name)) and pred(s) and s, timeout, what)


def test_two_dealers_with_shares_3_to_1_get_validated_work_close_to_3_to_1(procs):
    alloc, address = start_allocator(procs, free_port(), "--http", "127.0.0.1:0")
    page = alloc.wait_for(r"statistics page at (\S+)", 60, stream="stdout").group(1)
    root = load_key_pair(procs.cwd / "org.root")
    dealers = {name: start_dealer(procs, name, 2000)[1] for name in ("a", "b")}
    ask(address, root, "project_add", {"name": "a", "dealer": dealers["a"], "share": 3})
    ask(address, root, "project_add", {"name": "b", "dealer": dealers["b"], "share": 1})
    ask(address, root, "pool_add", {"name": "lab", "supplier": "physics"})
    token = ask(address, root, "join_token", {"pool": "lab"}).data["token"]
    for i in range(2):
        start_jobber(procs, f"pc{i}", address, "--join", token)

    def credit_after(jobs: int):
        got = ask(address, root, "stats", {}).data["projects"]
        done = sum(x["jobs"] for x in got.values())
        return {k: x["credit"] for k, x in got.items()} if done >= jobs and len(got) == 2 else None

    # the split over the batch so far, and between two moments: a jobber's jobs in hand
    # (fetched by the shares, not yet validated) lag the first; they cancel in the second
    early = wait_for(lambda: credit_after(100), 40, "100 jobs validated", every_s=0.25)
    late = wait_for(lambda: credit_after(360), 40, "360 jobs validated", every_s=0.25)
    whole = late["a"] / late["b"]
    steady = (late["a"] - early["a"]) / (late["b"] - early["b"])
    print(f"validated work a:b = {late['a']}:{late['b']} = {whole:.2f}:1 over the batch so far,")
    print(f"{steady:.2f}:1 between 100 and 360 jobs")
    assert 2.4 <= steady <= 3.75, (early, late)
    assert 2.2 <= whole <= 3.9, late
    # the pool's statistics say the same, and both machines are seen
    pool = ask(address, root, "stats", {"pool": "lab"}).data["pools"][0]
    assert pool["machines"] == 2 and pool["active"] == 2
    assert set(pool["projects"]) == {"a", "b"}
    # and the operator's page, as the dealer's dashboard is built
    with urllib.request.urlopen(page, timeout=5) as r:
        assert b"allocator" in r.read()
    with urllib.request.urlopen(page + "stats.json", timeout=5) as r:
        snap = json.load(r)
    assert [(x["name"], x["share"]) for x in snap["list"]["projects"]] == [("a", 3.0), ("b", 1.0)]
    assert len(snap["machines"]) == 2 and snap["stats"]["projects"]["a"]["credit"] > 0
    chart = snap["chart"]  # what the page draws: both projects' credit, up to now
    assert sorted(chart["projects"]) == ["a", "b"] and chart["t1"] - chart["t0"] >= 600
    assert chart["projects"]["a"][-1] == [chart["t1"], snap["stats"]["projects"]["a"]["credit"]]


def test_preferences_apply_to_running_jobbers_who_go_on_without_the_allocator(procs):
    port = free_port()
    alloc, address = start_allocator(procs, port)
    root = load_key_pair(procs.cwd / "org.root")
    physics = create_key_pair(procs.cwd / "physics")
    chemistry = create_key_pair(procs.cwd / "chemistry")
    for key, supplier in ((physics, "physics"), (chemistry, "chemistry")):
        grant = {"key": key.public_hex, "role": "supplier_admin", "supplier": supplier}
        ask(address, root, "grant", grant)
    # jobs too long to be queued in a slot's worker (jobber._core.PIPELINE_BELOW_S), so
    # that jobs running are slots busy
    _, dealer = start_dealer(procs, "d", 100000, iters="60000000")
    ask(address, root, "project_add", {"name": "d", "dealer": dealer})
    ask(address, physics, "pool_add", {"name": "lab"})
    token = ask(address, physics, "join_token", {"pool": "lab"}).data["token"]
    j = procs.jobber(
        "pc", slots=2, extra=("--allocator", address, "--pool", "lab", "--join", token)
    )
    s = wait_jobber(procs, "pc", lambda s: len(s["running"]) == 2, 30, "two jobs at once")
    assert s["slots_in_use"] == 2

    # the other supplier's admin may not touch the pool: refused, nothing changed
    out = subprocess.run(
        [
            PY, "-m", "dealer", "allocator", "prefs", "lab", "max_cpus=1",
            "--allocator", address, "--key", procs.cwd / "chemistry",
        ],
        cwd=procs.cwd, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 1 and "forbidden" in out.stderr, out
    assert "belongs to supplier 'physics'" in out.stderr
    assert ask(address, root, "list", {}).data["pools"][0]["prefs"] == {}

    # max CPUs: taken in by the running jobber, no restart
    ask(address, physics, "pool_prefs", {"name": "lab", "prefs": {"max_cpus": 1}})
    serial = ask(address, physics, "list", {}).data["serial"]
    wait_jobber(
        procs, "pc", lambda s: s["allocator"]["serial"] == serial, 10, "the new instructions"
    )
    s = wait_jobber(procs, "pc", lambda s: len(s["running"]) <= 1, 10, "one job at a time")
    assert s["slots_in_use"] == 1
    for _ in range(20):  # from now on never two
        s = status(procs, "pc")
        assert s is not None and len(s["running"]) <= 1 and s["slots_in_use"] == 1

    # hours of day: a window that is not now suspends the jobs; cleared, they resume
    h = time.localtime().tm_hour
    window = {"start_hour": (h + 12) % 24, "end_hour": (h + 13) % 24}
    ask(address, physics, "pool_prefs", {"name": "lab", "prefs": window})
    wait_jobber(
        procs, "pc", lambda s: s["suspended"] == "outside the pool's hours", 10, "suspended"
    )
    clear = {"start_hour": None, "end_hour": None}
    ask(address, physics, "pool_prefs", {"name": "lab", "prefs": clear})
    done = wait_jobber(procs, "pc", lambda s: not s["suspended"], 10, "resumed")["done"]
    wait_jobber(procs, "pc", lambda s: s["done"] > done, 10, "jobs done after resuming")

    # the machine and its credit, as its supplier sees them
    me = s["key"]
    machines = ask(address, physics, "machines", {}).data["machines"]
    assert [(m["pool"], m["key"], m["name"]) for m in machines] == [("lab", me, "pc")]
    wait_for(
        lambda: ask(address, physics, "stats", {}).data["projects"].get("d", {}).get("credit"),
        60,
        "credit for the pool's work",
    )

    # the allocator killed: the jobber works on; restarted without it, it uses the
    # instructions it kept on disk
    alloc.kill()
    done = wait_jobber(procs, "pc", lambda s: s["allocator"]["failures"] >= 1, 15, "a failure")[
        "done"
    ]
    wait_jobber(procs, "pc", lambda s: s["done"] > done, 10, "work without the allocator")
    j.signal(signal.SIGTERM)
    assert j.wait(40) == 0
    # (the allocator spelt otherwise: the same one, its key pinned on the first start)
    spelt = f"127.0.0.1:{port}"
    procs.jobber("pc", slots=2, extra=("--allocator", spelt, "--pool", "lab"), log="pc-2")
    s = wait_jobber(procs, "pc", lambda s: s["done"] >= 2, 30, "work with no allocator")
    assert s["allocator"]["serial"] is not None and s["slots_in_use"] == 1
    assert s["allocator"]["answered_s_ago"] is None  # never heard from it in this run

    # the allocator back on its database and port: changes reach the jobber again
    start_allocator(procs, port, log="allocator-2")
    ask(address, physics, "pool_prefs", {"name": "lab", "prefs": {"max_cpus": 2}})
    wait_jobber(procs, "pc", lambda s: s["slots_in_use"] == 2, 15, "the change after the return")
    wait_jobber(procs, "pc", lambda s: len(s["running"]) == 2, 15, "two jobs at once again")


def test_batches_that_begin_and_end_between_two_full_polls_are_all_counted(procs):
    # full polls never come (--poll 3600): what is counted is read between them
    alloc, address = start_allocator(procs, free_port(), "--poll", "3600")
    root = load_key_pair(procs.cwd / "org.root")
    port = free_port()
    batch, dealer = start_dealer(procs, "a", 150, port=port, run="-1")  # some seconds
    ask(address, root, "project_add", {"name": "a", "dealer": dealer})
    ask(address, root, "pool_add", {"name": "lab", "supplier": "physics"})
    token = ask(address, root, "join_token", {"pool": "lab"}).data["token"]
    start_jobber(procs, "pc", address, "--join", token)
    assert batch.wait(120) == 0
    first = ask(address, root, "stats", {}).data["projects"]["a"]
    # every job of it: the dealer, watched, stayed to be asked its final figures
    assert first["jobs"] == 150, first
    # the project's next batch: the same dealer (address and key) on a new journal, whose
    # figures start from zero again; they add to the first batch's, not replace them
    batch, again = start_dealer(procs, "a", 150, port=port, run="-2")
    assert again == dealer
    assert batch.wait(120) == 0
    both = ask(address, root, "stats", {}).data["projects"]["a"]
    print(first, both)
    assert both["jobs"] == 300 and both["credit"] == 2 * first["credit"]


def test_a_change_reaches_the_jobbers_within_the_check_not_the_refresh(procs):
    # jobbers refresh once an hour, and check every half second for a new serial
    _, address = start_allocator(procs, free_port(), "--refresh", "3600", "--check", "0.5")
    root = load_key_pair(procs.cwd / "org.root")
    ask(address, root, "pool_add", {"name": "lab", "supplier": "physics"})
    token = ask(address, root, "join_token", {"pool": "lab"}).data["token"]
    start_jobber(procs, "pc", address, "--join", token)
    first = ask(address, root, "list", {}).data["serial"]
    wait_jobber(procs, "pc", lambda s: s["allocator"]["serial"] == first, 30, "instructions")
    ask(address, root, "pool_prefs", {"name": "lab", "prefs": {"memory_mb": 256}})
    serial = ask(address, root, "list", {}).data["serial"]
    assert serial != first
    s = wait_jobber(
        procs, "pc", lambda s: s["allocator"]["serial"] == serial, 10, "the new instructions"
    )
    assert s["effective"]["memory_mb"] <= 256, s["effective"]
