"""`python -m jobber status` as text: what this machine does, for whom, and why not more.
The same content as `--json` (the control socket's reply), for a person."""

from __future__ import annotations

from typing import Any

from protocol import credit_text


def duration(s: float) -> str:
    s = max(0.0, s)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def render(r: dict[str, Any]) -> list[str]:
    out = [
        f"jobber {r['name']}: {r['slots']} slots, {r['done']} jobs done, "
        f"{len(r['running'])} running, {r['buffered']} buffered, "
        f"{r['spooled']} results spooled" + (", stopping" if r.get("stopping") else "")
    ]
    if r.get("key"):  # what dealers and an allocator know it by (`allocator admit POOL KEY`)
        out.append(f"  key {r['key']}")
    if r.get("suspended"):
        out.append(f"  suspended: {r['suspended']}{_idle(r.get('idle'))}")
    prefs = {k: v for k, v in (r.get("prefs") or {}).items() if v not in (None, False)}
    if prefs:
        out.append("  preferences: " + ", ".join(_pref(k, v) for k, v in prefs.items()))
    if prefs.get("net_mb_day") is not None:
        out.append(f"  traffic today: {r.get('net_today_mb', 0):.1f} of {prefs['net_mb_day']} MB")
    if r.get("on_battery"):
        out.append("  on batteries")
    alloc = r.get("allocator")
    if alloc:
        heard = alloc.get("answered_s_ago")
        out.append(
            f"  allocator {alloc['address']}, pool {alloc['pool']}: instructions "
            + (f"{alloc['serial']}" if alloc.get("serial") is not None else "none yet")
            + (f", heard {heard:.0f} s ago" if heard is not None else ", not heard in this run")
            + (f", {alloc['failures']} failed contacts" if alloc.get("failures") else "")
            + f"; {r.get('slots_in_use', r['slots'])} slots in use"
        )
    for d in r["dealers"]:
        out += _dealer(d)
    for job in r["running"]:
        saved = job.get("saved_s_ago")
        task = f" ({job['task']})" if job.get("task") else ""
        left = job.get("left_s")
        out.append(
            f"  running {job['tag']}{task} from {job['dealer']}: "
            f"{duration(job.get('run_s', job['elapsed_s']))} run"
            + ("" if left is None else f", {duration(left)} left of its time limit")
            + ("" if saved is None else f", last saved {saved:.0f} s ago ({job['saved_bytes']} B)")
        )
    for dealer, n in r.get("buffered_by_dealer", {}).items():
        out.append(f"  {n} buffered from {dealer}")
    for dealer, n in r.get("spooled_by_dealer", {}).items():
        out.append(f"  {n} results spooled for {dealer}")
    files = r.get("files")
    if files and (files["held"] or files["coming"]):
        out.append(
            f"  input files: {len(files['held'])} held, {files['bytes'] / 2**20:.1f} MiB "
            f"on disk, {files['fetches_out']} fetches out"
        )
        for f in files["coming"]:
            out.append(
                f"  fetching {f['hash'][:12]} ({f['size']:,} bytes): {f['have']} of "
                f"{f['chunks']} chunks" + (f" from {f['dealer']}" if f["dealer"] else "")
            )
    for name, state in r.get("runtimes", {}).items():
        out.append(f"  runtime {name}: {state}")
    for dealer, why in r.get("refused_payloads", {}).items():
        out.append(f"  payloads from {dealer} {why}")
    if r.get("trust"):
        out.append(f"  runs only payloads signed by {', '.join(r['trust'])}")
    return out


def _dealer(d: dict[str, Any]) -> list[str]:
    origin = "" if d["pinned"] else " (referred)"
    task = d.get("task")
    who = f": {task}" + (f", {d['contact']}" if d.get("contact") else "") if task else ""
    out = [f"  dealer {d['address']}{origin}{who}"]
    mismatch = d.get("key_mismatch")
    if mismatch:
        out.append(
            f"    KEY MISMATCH: it presents key {mismatch['presented']}, not the pinned "
            f"{mismatch['pinned']}; nothing is asked of it. If the change is expected (the "
            f"batch was started again elsewhere): {mismatch['accept']}"
        )
    elif d.get("refused"):
        out.append(f"    refused: {d['refused']}")
    elif d.get("paused"):
        out.append("    paused by the owner: asked for no work (`python -m jobber unpause`)")
    elif d["backoff_s"] > 0:
        why = f" ({d['problem']})" if d.get("problem") else ""
        out.append(
            f"    unreachable{why}: {d['failures']} failed contacts in a row, asked again in "
            f"{duration(d['backoff_s'])}"
        )
    elif d.get("finished"):
        out.append("    its task is finished")
    else:
        out.append("    ready")
    account = d.get("account")
    mine = f"    {d.get('done', 0)} results taken in this run"
    if account:
        mine += (
            f"; in all {account['valid']} accepted, {account['invalid']} outvoted, "
            f"{account['errors']} failed here; credit {credit_text(account['credit'])} fuel"
        )
    out.append(mine)
    if d.get("reason"):
        out.append(f"    no work: {d['reason']}")
    return out


def _idle(idle: dict[str, Any] | None) -> str:
    if not idle:
        return ""
    quiet = idle.get("quiet_s")
    return (
        f" (load {idle['load']:g}, {idle['others_load']:g} of it not this jobber's; in use "
        f"above {idle['threshold']:g}"
        + (", keyboard or mouse moved" if idle.get("input") else "")
        + (f"; quiet for {quiet:.0f} s" if quiet is not None else "")
        + f", jobs run after {idle['idle_after_s']:g} s quiet)"
    )


def _pref(name: str, value: Any) -> str:
    return (
        name
        if value is True
        else f"{name}={value:g}"
        if isinstance(value, float)
        else (f"{name}={value}")
    )
