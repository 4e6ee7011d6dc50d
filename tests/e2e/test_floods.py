"""End to end, against floods: a real dealer process, honest jobbers, and flooding clients
written from docs/protocol.md (tests/flood.py). Each test is one row of docs/security.md,
"What a flood can cost", and asserts what the flood may cost (memory, threads,
connections), not how fast anything goes: the times are printed for the record.
"""

from __future__ import annotations

import time
import urllib.request

import pytest
import zmq

import protocol as p
from net._router import ALL_STATUS_BURST, ALL_STATUS_PER_S, PER_SOURCE_CONNECTIONS
from tests import flood
from tests.helpers import CHUNK, LINE, N, free_port, wait_for, wait_status

# what a status page of 120 long names (~120 KB) may cost 20 connections that never read:
# (SNDHWM + 1) replies queued each is 13 MB; the rest is room for malloc's own slack.
# Without a send bound the same flood took the dealer from 53 MB to 2,310 MB.
UNREAD_FLOOD_MB = 64
HANDSHAKE_FLOOD = 200  # connections one address opens at once


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def _dealer(procs, port: int, *extra: str):
    return procs.dealer("dealer", "factoring.py", str(N), "--chunk", CHUNK, *extra, port=port)


def _address(port: int) -> str:
    return f"tcp://127.0.0.1:{port}#{wait_status(port, lambda s: True)['key']}"


def test_status_replies_nobody_reads_are_dropped_not_buffered(procs, factor_wasm, ctx):
    port = free_port()
    dealer = _dealer(procs, port)
    address = _address(port)
    flood.identities(address, 120, ctx)
    page = wait_status(port, lambda s: s["jobbers_total"] >= 120)
    assert len(p.encode(p.StatusReply(1, page))) > 100_000  # the amplifier: long names
    before = flood.rss_mb(dealer.pid)
    peak = flood.Peak(dealer.pid)
    peak.start()
    socks = flood.unread_status_flood(port, 20, 1000, ctx)  # 20,000 requests, none read
    try:
        # the dealer has read them (most refused by the ration: 20 sources, 5 a second each)
        shown = wait_status(port, lambda s: s["connections"]["status_refused"] >= 15_000, 120)
        grown = peak.stop() - before
    finally:
        for s in socks:
            s.close()
    print(f"\n20 x 1000 status never read: {before:.0f} MB + {grown:.0f} MB at the peak")
    assert grown < UNREAD_FLOOD_MB
    # (whether any reply is dropped depends on the kernel: on loopback its socket buffers
    # may take every reply the ration lets through; the bound is what this asserts)
    print(f"replies dropped: {shown['connections']['replies_dropped']}")
    assert flood.rss_mb(dealer.pid) < before + UNREAD_FLOOD_MB
    # still serving: an honest jobber finishes the batch
    honest = procs.jobber("h", f"127.0.0.1:{port}", extra=("--max-idle", "5"))
    assert dealer.wait(120) == 0, dealer.stderr
    assert dealer.stdout.strip() == LINE
    assert honest.wait(60) == 0


def test_an_honest_batch_finishes_beside_a_status_flood_that_reads(procs, factor_wasm, ctx):
    port = free_port()
    dealer = _dealer(procs, port)
    flood.identities(_address(port), 120, ctx)
    wait_status(port, lambda s: s["jobbers_total"] >= 120)
    asking = flood.ReadFlood(port, 20, ctx)
    asking.start()
    try:
        started = time.monotonic()
        honest = [
            procs.jobber(f"h{i}", f"127.0.0.1:{port}", extra=("--max-idle", "5")) for i in (1, 2)
        ]
        assert dealer.wait(120) == 0, dealer.stderr
        took = time.monotonic() - started
    finally:
        asking.stop()
    print(
        f"\nbatch beside a status flood: {took:.1f} s, {asking.replies} pages, {asking.busy} busy"
    )
    assert dealer.stdout.strip() == LINE
    # the flood was rationed: told "busy" past the ration, or (a busy machine slowing the
    # flood's own threads) never past it: the ration of all sources, burst and rate
    assert asking.busy > 0 or asking.replies <= ALL_STATUS_BURST + ALL_STATUS_PER_S * took, (
        asking.replies,
        took,
    )
    assert asking.replies > 0  # ...not shut out
    for j in honest:
        assert j.wait(60) == 0


@pytest.mark.parametrize("cap", [PER_SOURCE_CONNECTIONS, 8], ids=["default", "option"])
def test_a_handshake_flood_from_one_address_is_capped(procs, factor_wasm, ctx, cap):
    port = free_port()
    extra = () if cap == PER_SOURCE_CONNECTIONS else ("--max-per-address", str(cap))
    dealer = _dealer(procs, port, *extra)
    address = _address(port)
    before = flood.rss_mb(dealer.pid)
    peak = flood.Peak(dealer.pid)
    peak.start()
    clients = flood.handshake_flood(address, "127.0.6.1", HANDSHAKE_FLOOD, ctx)
    try:
        shown = wait_status(port, lambda s: s["connections"]["refused"] >= HANDSHAKE_FLOOD - cap)
        assert shown["connections"]["per_source"] == cap
        # our own status connection may be open beside the flood's
        assert shown["connections"]["open"] <= cap + 2
        # each connection kept has its status answered (a page, or busy); no other is
        poller = zmq.Poller()
        for c in clients:
            poller.register(c.sock, zmq.POLLIN)
        wait_for(lambda: len(poller.poll(0)) >= cap, 30, "the kept connections answered")
        assert len(poller.poll(0)) == cap
        # the flood gone, its slots come back (no count leaks)...
        for c in clients:
            c.close()
        wait_status(port, lambda s: s["connections"]["open"] <= 2)
        # ...and flooding again keeps no machine elsewhere out: the batch finishes beside it
        clients = flood.handshake_flood(address, "127.0.6.1", HANDSHAKE_FLOOD, ctx)
        honest = procs.jobber("h", f"127.0.0.1:{port}", extra=("--max-idle", "5"))
        assert dealer.wait(120) == 0, dealer.stderr
        grown = peak.stop() - before
    finally:
        for c in clients:
            c.close()
    assert dealer.stdout.strip() == LINE
    assert "connections shut down" in dealer.stderr  # logged once, with a count
    assert honest.wait(60) == 0
    print(f"\nhandshake flood of {HANDSHAKE_FLOOD} from one address: +{grown:.0f} MB at the peak")
    assert grown < UNREAD_FLOOD_MB


def test_idle_dashboard_connections_pin_no_threads(procs, factor_wasm):
    port, http = free_port(), free_port()
    dealer = _dealer(procs, port, "--http", f"127.0.0.1:{http}")
    wait_status(port, lambda s: True)
    url = f"http://127.0.0.1:{http}/status.json"
    wait_for(lambda: urllib.request.urlopen(url, timeout=5).status == 200, 30, "the dashboard")
    threads = flood.threads(dealer.pid)
    idle = flood.idle_http(http, 259)
    try:
        for _ in range(20):  # a second: a thread per connection would show at once
            assert flood.threads(dealer.pid) <= threads
            time.sleep(0.05)
    finally:
        for s in idle:
            s.close()

    def served() -> bool:
        try:
            return urllib.request.urlopen(url, timeout=5).status == 200
        except OSError:
            return False

    wait_for(served, 60, "the dashboard to serve again")
    assert flood.threads(dealer.pid) <= threads
    dealer.kill()
