"""What `python -m dealer status` prints: a dealer's, a referrer's or a relay's status."""

from __future__ import annotations

import sys
import time


def print_jobbers(rows: list[dict], file=sys.stdout) -> None:
    if not rows:
        return
    head = f"{'jobber':24} {'key':12} {'machine':18} {'valid':>6} {'invalid':>7} {'errors':>6}"
    print(f"{head} {'credit':>16}", file=file)
    for r in rows:
        name = r["name"] + (" (denied)" if r.get("denied") else "")
        machine = r["machine"] or "-"  # (a jobber known from the journal alone: not seen)
        print(
            f"{name[:24]:24} {r['key'][:12]:12} {machine[:18]:18} {r['valid']:6} "
            f"{r['invalid']:7} {r['errors']:6} {r['credit']:16}",
            file=file,
        )


def print_peers(rows: list, now: float | None = None) -> None:
    """What each peer last said of its work, when, and how its link fares."""
    now = time.time() if now is None else now
    for r in rows:
        if isinstance(r, str):  # a referrer that predates work offers names peers only
            print(f"peer {r}")
            continue
        if r.get("said_at") is None:
            said = "never answered"
        elif r.get("finished"):
            said = "finished"
        else:
            lim = r.get("limits")
            needs = f", {lim['memory_mb']} MiB per job" if lim else ", hands out no jobs itself"
            left = "" if r.get("left") is None else f" ({r['left']} left)"
            said = f"{r.get('jobs')} jobs{left}{needs}"
        if r.get("said_at") is not None:
            said += f", said {max(0.0, now - r['said_at']):.0f} s ago"
            said += " (stale: not referred)" if r.get("stale") else ""
        link = ""
        if r.get("failures"):
            link = f"; {r['failures']} failed contacts ({r.get('error')})"
            link += f", next try in {max(0.0, r['next_try'] - now):.0f} s"
        print(f"peer {r.get('address')}: {said}{link}")


def print_long_jobs(rows: list[dict]) -> None:
    """Replicas of jobs that save their state: how long each has run, where it started,
    how old its latest state at the dealer is."""
    for r in rows:
        run = "?" if r.get("run_s") is None else f"{r['run_s']:.0f} s"
        start = (
            "" if r.get("resumed_fuel") is None else f" from a state at fuel {r['resumed_fuel']}"
        )
        last = "no state yet"
        if r.get("saved_s_ago") is not None:
            last = f"{r['saves']} states, the last {r['saved_s_ago']:.0f} s ago"
        print(
            f"long job {r['job']} ({r['tag']} on {r['jobber'][:12]}): running {run}{start}; {last}"
        )


def print_status(info: dict) -> None:
    if info.get("relay"):
        print_relay_status(info)
        return
    if info.get("task") is None:
        print("refers jobbers to the peers with work they can run:")
        print_peers(info.get("peers", []))
        return
    total = info.get("total")
    own = info.get("failed_own")  # of the failed, by their own bug (counted on no jobber)
    failed = f"{info.get('failed')} failed" + (f" ({own} by their own bug)" if own else "")
    print(
        f"task {info.get('task')}: {info.get('accepted')} accepted, {failed}, "
        f"{info.get('in_flight')} in flight, {info.get('drawn')} drawn"
        + (f" of {total}" if total is not None else "")
    )
    print(
        f"key {info.get('key')}; replicas on distinct {info.get('distinct')}s"
        + ("; closed pool" if info.get("closed") else "")
    )
    if info.get("signer"):
        print(f"payload signed by author key {info['signer']}")
    for why in info.get("waiting", []):
        print(f"waiting: {why}")
    if info.get("disputed"):
        print(f"{info['disputed']} disagreements; latest:")
        for d in info.get("disputes", []):
            groups = "; ".join(
                f"{'won' if g['won'] else 'lost'} {g['output']} by "
                f"{', '.join(k[:12] for k in g.get('jobbers', [])) or '?'}"
                for g in d["groups"]
            )
            print(f"  job {d['job']}{' (late)' if d.get('late') else ''}: {groups}")
    print_long_jobs(info.get("long_jobs") or [])
    print_peers(info.get("peers", []))
    print_jobbers(info.get("jobbers", []))
    if info.get("pages", 1) > 1:
        print(
            f"page {info['page'] + 1} of {info['pages']} ({info['jobbers_total']} jobbers); "
            "--page N for more"
        )


def print_relay_status(info: dict, now: float | None = None) -> None:
    """`python -m dealer status` of a relay."""
    now = time.time() if now is None else now
    up = info.get("upstream", {})
    heard = up.get("last_reply")
    when = "never heard from" if heard is None else f"heard from {max(0.0, now - heard):.0f} s ago"
    print(
        f"relay of {info.get('relay')} ({when}"
        + (f"; {up['failures']} failed contacts" if up.get("failures") else "")
        + ("; its task is finished" if up.get("finished") else "")
        + ")"
    )
    print(
        f"{info.get('queued')} jobs queued, {info.get('out')} out, {info.get('done')} results "
        f"waiting to go upstream; {up.get('delivered')} delivered; buffer target "
        f"{info.get('target')} at {info.get('rate')} results/s"
    )
    print(f"key {info.get('key')}")
    for j in info.get("jobbers", []):
        gone = " (gone)" if j.get("gone") else ""
        denied = f" (denied: {j['denied']})" if j.get("denied") else ""
        name, key, machine = j.get("name", "")[:24], j.get("key", "")[:12], j.get("machine", "")
        print(
            f"{name:24} {key:12} {machine[:18]:18} "
            f"{j.get('results'):6} results, holding {j.get('holding')}, votes won "
            f"{j.get('valid', 0)} lost {j.get('invalid', 0)}{gone}{denied}"
        )
