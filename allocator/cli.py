"""`python -m allocator serve|whoami|grant|revoke|project-add|...`: the allocator.

`serve` runs it on a SQLite file; every other command is an admin request,
sent over the allocator's encrypted port with the admin's own key pair (the
key the handshake proves is who the admin is; allocator._core decides what
that key may do).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import zmq

import protocol as p
from allocator._core import Allocator
from allocator._page import AllocatorPage
from allocator._rules import ROLES, TOKEN_USES, AllocatorError
from allocator._server import AllocatorServer, serve
from allocator._settings import ASK_TIMEOUT_S, DEFAULT_ADMIN_KEY, Settings
from net._ask import admin_ask, parse_settings
from net._http import parse_http
from net._keys import KeyPair, load_key_pair, load_or_create_key_pair
from protocol._alloc import AllocAdmin, AllocReply, allocator_address

log = logging.getLogger("dealer.allocator")

ALLOCATOR_ENV = "BOREDNET_ALLOCATOR"  # the admin commands' --allocator when it is not given


def key_paths(db: Path) -> tuple[Path, Path]:
    """The allocator's own key pair and the root's, beside the database."""
    stem = db.with_suffix("") if db.suffix in (".sqlite", ".db") else db
    return stem.with_name(stem.name + ".server"), stem.with_name(stem.name + ".root")


def run_serve(cfg: Settings) -> int:
    level = logging.WARNING if cfg.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server_path, root_path = key_paths(cfg.db)
    try:
        cfg.db.parent.mkdir(parents=True, exist_ok=True)  # a new folder is made, as the file is
        alloc = Allocator(
            cfg.db,
            refresh_s=cfg.refresh_s,
            max_per_address=cfg.max_per_address,
            check_s=min(cfg.check_s, cfg.refresh_s),
        )
        keys, _ = load_or_create_key_pair(server_path)
        if not alloc.has_root():
            root, made = load_or_create_key_pair(root_path)
            alloc.make_root(root.public_hex, time.time())
            print(
                f"root key {root_path}.key_secret ({'made now' if made else 'existing'}): "
                "keep it; grant roles with it",
                flush=True,
            )
        page = None
        if cfg.http is not None:
            page = AllocatorPage(*parse_http(cfg.http))
        server = AllocatorServer(cfg.bind, alloc, keys, poll_s=cfg.poll_s, page=page)
    except (AllocatorError, ValueError, OSError, sqlite3.Error, zmq.ZMQError) as e:
        print(
            f"error: {cfg.db}: {e}" if isinstance(e, sqlite3.Error) else f"error: {e}",
            file=sys.stderr,
        )
        return 2
    print(f"allocator at {server.address}", flush=True)
    if page is not None:
        print(f"statistics page at {page.url}", flush=True)

    def on_signal(signum: int, frame: object) -> None:
        server.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        serve(server)
    finally:
        server.close()
        alloc.close()
    return 0


def ask(
    address: str, admin: KeyPair, op: str, args: dict, timeout_s: float = ASK_TIMEOUT_S
) -> AllocReply:
    """One admin request, speaking as `admin`; RuntimeError with the allocator's refusal."""
    endpoint, server_key = p.split_key(allocator_address(address))
    reply = admin_ask(endpoint, server_key, AllocAdmin(1, op, args), admin, address, timeout_s)
    if not isinstance(reply, AllocReply):
        raise RuntimeError(f"{address} answered with {reply.TYPE}")
    return reply


def _print_stats(data: dict) -> None:
    for pool in data.get("pools", []):
        print(f"pool {pool['pool']}: {pool['active']} of {pool['machines']} machines active")
        for project, x in sorted(pool.get("projects", {}).items()):
            print(f"  {project}: credit {x['credit']}, {x['jobs']} jobs")
    total = sum(x["credit"] for x in data.get("projects", {}).values()) or 0
    for project, x in sorted(data.get("projects", {}).items()):
        share = f" ({100 * x['credit'] / total:.1f} %)" if total else ""
        print(f"project {project}: credit {x['credit']}{share}, {x['jobs']} jobs")


def _print(op: str, reply: AllocReply) -> None:
    data = reply.data
    if op == "list":
        for x in data.get("projects", []):
            print(f"project {x['name']}: share {x['share']:g}, {x['dealer']}")
        for x in data.get("pools", []):
            prefs = ", ".join(f"{k}={v}" for k, v in (x.get("prefs") or {}).items())
            print(
                f"pool {x['name']} of {x['supplier']}: {x['machines']} machines"
                + (f"; {prefs}" if prefs else "")
            )
    elif op == "machines":
        for m in data.get("machines", []):
            ago = time.time() - m["last_seen"]
            print(
                f"{m['pool']:16} {m['name'][:24]:24} {m['key'][:12]} {m['address']:15} "
                f"{m['host'].get('cpus')} cpus, seen {ago:.0f} s ago"
                + ("" if m["active"] else " (inactive)")
            )
        shown, total = len(data.get("machines", [])), data.get("total", 0)
        if total > shown:
            print(f"... and {total - shown} more ({total} machines)")
    elif op == "stats":
        _print_stats(data)
    elif op == "join_token" and data.get("token"):
        print(data["token"])  # alone on its line, for scripts; the rest on stderr
        print(reply.text.replace(data["token"], "TOKEN"), file=sys.stderr)
    else:
        print(reply.text)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m allocator",
        description="An allocator: divides pools of machines lent by suppliers among "
        "projects (dealers) by resource share. `serve` runs it; the other commands are "
        "admin requests, authenticated by the admin's key pair.",
    )
    sub = ap.add_subparsers(dest="command", required=True)
    sv = sub.add_parser("serve", help="run the allocator on a SQLite file (made on first use)")
    sv.add_argument("--db", type=Path, required=True, help="the allocator's SQLite file")
    sv.add_argument("--bind", default=Settings.bind, help=f"address to serve on ({Settings.bind})")
    sv.add_argument(
        "--refresh",
        type=float,
        default=Settings.refresh_s,
        metavar="SECONDS",
        help=f"how often jobbers ask for their instructions again (default {Settings.refresh_s:g})",
    )
    sv.add_argument(
        "--check",
        type=float,
        default=Settings.check_s,
        metavar="SECONDS",
        help="how soon jobbers ask again, to hear of a change to their instructions (a "
        f"project, a share, their pool's preferences) within it (default {Settings.check_s:g})",
    )
    sv.add_argument(
        "--poll",
        type=float,
        default=Settings.poll_s,
        metavar="SECONDS",
        help=f"how often the projects' dealers are asked for credit (default {Settings.poll_s:g})",
    )
    sv.add_argument(
        "--http",
        metavar="[HOST:]PORT",
        help="serve a read-only statistics page (and /stats.json) on this port, on 127.0.0.1 "
        "unless a host is given: it shows every pool's machines",
    )
    sv.add_argument(
        "--max-per-address",
        type=int,
        default=Settings.max_per_address,
        metavar="N",
        help="machines that may join one pool with its token from one source address (an "
        f"IPv6 /64 counts as one; default {Settings.max_per_address}); keys admitted by hand are "
        "not counted",
    )
    sv.add_argument("--quiet", action="store_true", help="warnings only")

    def admin(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.add_argument(
            "--allocator",
            default=os.environ.get(ALLOCATOR_ENV) or None,
            metavar="ADDR",
            help="host[:port] (default port 7127) or tcp://host:port, optionally #KEY; "
            f"default ${ALLOCATOR_ENV}",
        )
        sp.add_argument(
            "--key",
            type=Path,
            default=DEFAULT_ADMIN_KEY,
            metavar="PATH",
            help="your key pair PATH.key_secret (python -m dealer keygen PATH); "
            f"default {DEFAULT_ADMIN_KEY}",
        )
        sp.add_argument("--timeout", type=float, default=ASK_TIMEOUT_S, help="seconds to wait")
        sp.add_argument("--json", action="store_true", help="print the reply's data as JSON")
        return sp

    admin("whoami", help="the role of your key")
    g = admin("grant", help="(root) give a key a role")
    g.add_argument("who", metavar="KEY", help="the admin's public key, 64 hex digits")
    g.add_argument("role", choices=ROLES)
    g.add_argument("--supplier", help="with supplier_admin: the supplier whose pools it runs")
    r = admin("revoke", help="(root) take a key's role away")
    r.add_argument("who", metavar="KEY")
    pa = admin("project-add", help="(allocator admin) add a project: a dealer and its share")
    pa.add_argument("name")
    pa.add_argument("dealer", help="the dealer's address, host:port#KEY")
    pa.add_argument("--share", type=float, default=1.0, help="resource share (default 1)")
    pr = admin("project-remove", help="(allocator admin) remove a project")
    pr.add_argument("name")
    sh = admin("share", help="(allocator admin) set a project's resource share")
    sh.add_argument("name")
    sh.add_argument("share", type=float)
    pl = admin("pool-add", help="(supplier admin) define a pool, optionally with preferences")
    pl.add_argument("name")
    pl.add_argument("prefs", nargs="*", metavar="PREF=VALUE")
    pl.add_argument("--supplier", help="(root) the supplier it belongs to")
    pm = admin("pool-remove", help="(supplier admin) remove one of your pools")
    pm.add_argument("name")
    pf = admin("prefs", help="(supplier admin) change a pool's preferences; PREF= clears one")
    pf.add_argument("pool")
    pf.add_argument("prefs", nargs="+", metavar="PREF=VALUE")
    admit = admin("admit", help="(supplier admin) let a jobber's key read a pool's instructions")
    admit.add_argument("pool")
    admit.add_argument("who", metavar="KEY", help="the jobber's public key (its status shows it)")
    ds = admin("dismiss", help="(supplier admin) take a jobber's key out of a pool")
    ds.add_argument("pool")
    ds.add_argument("who", metavar="KEY")
    jt = admin(
        "join-token",
        help="(supplier admin) print a new join token for a pool (the old one stops working): "
        "jobbers started with --join TOKEN are admitted",
    )
    jt.add_argument("pool")
    jt.add_argument(
        "--uses", type=int, default=TOKEN_USES, help=f"machines it admits (default {TOKEN_USES})"
    )
    jt.add_argument("--revoke", action="store_true", help="no join token for the pool from now")
    admin("list", help="projects and shares; the pools you may see")
    mc = admin("machines", help="(supplier admin) the machines of your pools")
    mc.add_argument("pool", nargs="?")
    st = admin("stats", help="credit, jobs and machines per pool and project")
    st.add_argument("--pool")
    return ap


def request(args: argparse.Namespace) -> tuple[str, dict]:
    """The op and args of an admin command."""
    c = args.command
    if c in ("whoami", "list"):
        return c, {}
    if c == "grant":
        return "grant", {"key": args.who.lower(), "role": args.role, "supplier": args.supplier}
    if c == "revoke":
        return "revoke", {"key": args.who.lower()}
    if c == "project-add":
        return "project_add", {"name": args.name, "dealer": args.dealer, "share": args.share}
    if c == "project-remove":
        return "project_remove", {"name": args.name}
    if c == "share":
        return "project_share", {"name": args.name, "share": args.share}
    if c == "pool-add":
        out = {"name": args.name, "prefs": parse_settings(args.prefs)}
        if args.supplier is not None:
            out["supplier"] = args.supplier
        return "pool_add", out
    if c == "pool-remove":
        return "pool_remove", {"name": args.name}
    if c == "prefs":
        return "pool_prefs", {"name": args.pool, "prefs": parse_settings(args.prefs)}
    if c in ("admit", "dismiss"):
        return c, {"pool": args.pool, "key": args.who.lower()}
    if c == "join-token":
        if args.revoke:
            return "join_token", {"pool": args.pool, "revoke": True}
        return "join_token", {"pool": args.pool, "uses": args.uses}
    if c == "machines":
        return "machines", {} if args.pool is None else {"pool": args.pool}
    if c == "stats":
        return "stats", {} if args.pool is None else {"pool": args.pool}
    raise AssertionError(c)  # pragma: no cover - argparse allows only the commands above


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "serve":
        return run_serve(Settings.from_args(args))
    if not args.allocator:
        print(
            f"error: no allocator: give --allocator ADDR or set ${ALLOCATOR_ENV}", file=sys.stderr
        )
        return 2
    try:
        op, op_args = request(args)
        admin = load_key_pair(args.key)
        reply = ask(args.allocator, admin, op, op_args, args.timeout)
    except (TimeoutError, RuntimeError, ValueError, OSError, p.ProtocolError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(reply.data, indent=2, sort_keys=True))
    else:
        _print(op, reply)
    return 0
