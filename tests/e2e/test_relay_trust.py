"""End to end: a lying jobber behind a relay costs itself, not the lab (issue 21, item 1).

Real processes on loopback: the factoring example at redundancy 2 upstream, two honest
jobbers connecting to it directly, and a relay (`python -m dealer relay`, attributing
its jobbers by default, trusted by nobody) serving one honest jobber and one liar
(tests/wrong_jobber.py: every job answered at once with a plausible wrong output,
claiming the honest jobbers' platform and fuel count). Once per task kind:
cross-platform (every replica grouped by how its jobber counts fuel, host.nan_fuel)
and not (replicas vote within their platform, which the relay passes up for each of
its jobbers). Each run shows:

- the batch's answer is right;
- upstream, the liar (`relay/LIAR`) lost votes and is denied, and the honest lab jobber
  (`relay/LAB`) earned valid results and credit and is not denied, nor is the relay;
- the relay holds its jobbers to the standing the upstream tells it: the liar denied
  once it heard of 3 lost votes, never the lab jobber;
- every relayed replica ran on the relay's one machine (the relay is one vote) and,
  for the task that is not cross-platform, was recorded with its jobber's platform.

Each test prints its batch time and the liar's and the lab jobber's counts
(run with `-s` to see them).
"""

from __future__ import annotations

import re
import time

import pytest

import sandbox
from dealer._core import Sent
from dealer._reader import ReadOnly
from tests.helpers import PY, ROOT, N, free_port, wait_status

CHUNK = "25000000"  # 41 jobs of about 0.08 s here: enough for the liar to lose 3 votes
LINE = f"{N} = 1000000007 * 1000000009"
LIAR, LAB = "127.0.0.250", "127.0.0.251"  # the two machines behind the relay


def _rows(stderr: str) -> dict[str, tuple[int, int, int, int, bool]]:
    """The upstream's closing table: name -> (valid, invalid, errors, credit, denied).
    Names are cut at 24 characters with " (denied)" in them (`relay/127.0.0.250 (denie`)."""
    rx = r"^(.{24}) ([0-9a-f]{12}) \S+\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$"
    out = {}
    for m in re.finditer(rx, stderr, re.M):
        name, _, mark = m.group(1).strip().partition(" (")
        out[name] = (*(int(m.group(i)) for i in range(3, 7)), mark.startswith("deni"))
    return out


@pytest.mark.parametrize("cross", [True, False], ids=["cross-platform", "per-platform"])
def test_a_liar_behind_a_relay_is_denied_and_the_lab_jobber_beside_it_is_credited(
    procs, factor_wasm, tmp_path, cross
):
    up_port, relay_port = free_port(), free_port()
    db = tmp_path / "up.sqlite"
    argv = [
        "../tests/task_files/factoring_platforms.py",
        str(N),
        "--chunk",
        CHUNK,
        "--redundancy",
        "2",
    ]
    argv += ["--cross-platform"] if cross else []
    started = time.monotonic()
    dealer = procs.dealer("up", *argv, port=up_port, db=db)
    relay_argv = [PY, "-m", "dealer", "relay", f"127.0.0.1:{up_port}"]
    relay_argv += ["--bind", f"tcp://127.0.0.1:{relay_port}", "--db", tmp_path / "r" / "r.sqlite"]
    relay_argv += ["--min-backoff", "0.2", "--max-backoff", "1", "--request-timeout", "2"]
    relay = procs.start("relay", relay_argv)
    key = relay.wait_for(r"listening on \S+#([0-9a-f]{64})", 60).group(1)
    for i in (1, 2):
        procs.jobber(f"direct{i}", f"127.0.0.1:{up_port}", extra=("--max-idle", "30"))
    procs.jobber("lab", f"127.0.0.1:{relay_port}", source=LAB, extra=("--max-idle", "30"))
    liar_argv = [PY, ROOT / "tests" / "wrong_jobber.py", f"127.0.0.1:{relay_port}#{key}"]
    liar_argv += ["--name", "liar", "--source", LIAR, "--max-idle", "30"]
    liar_argv += ["--platform", sandbox.PLATFORM, "--nan-fuel", sandbox.NAN_FUEL]
    procs.start("liar", liar_argv)

    assert dealer.wait(240) == 0, dealer.stderr + relay.stderr
    batch_s = time.monotonic() - started
    assert dealer.stdout.strip() == LINE  # the batch's answer is right
    rows = _rows(dealer.stderr)
    liar, lab = rows[f"relay/{LIAR}"], rows[f"relay/{LAB}"]
    print(
        f"\n[{'cross' if cross else 'per'}-platform] batch {batch_s:.1f} s; "
        f"liar valid {liar[0]} invalid {liar[1]} credit {liar[3]} denied {liar[4]}; "
        f"lab valid {lab[0]} invalid {lab[1]} credit {lab[3]} denied {lab[4]}"
    )
    assert liar[0] == 0 and liar[1] >= 3 and liar[4], rows  # lost its votes, denied
    assert lab[0] > 0 and lab[1] == 0 and lab[3] > 0 and not lab[4], rows  # credited
    assert not rows.get("relay", (0, 0, 0, 0, False))[4]  # the relay itself is not denied
    assert "THE UPSTREAM CANNOT ATTRIBUTE" not in relay.stderr

    # the relay holds its jobbers to what the upstream told it: never the lab jobber
    # denied; the liar denied once it heard of 3 lost votes (the upstream exits as soon as
    # its batch is done, so the relay may not hear the last of them: not waited for)
    info = wait_status(relay_port, lambda s: len(s["jobbers"]) == 2, 30)
    at_relay = {j["machine"]: j for j in info["jobbers"]}
    print(
        f"at the relay: liar lost {at_relay[LIAR]['invalid']} denied {at_relay[LIAR]['denied']}"
        f"; lab won {at_relay[LAB]['valid']} denied {at_relay[LAB]['denied']}"
    )
    assert not at_relay[LAB]["denied"] and at_relay[LAB]["invalid"] == 0, at_relay
    assert at_relay[LIAR]["valid"] == 0, at_relay
    if at_relay[LIAR]["invalid"] >= 3:
        assert at_relay[LIAR]["denied"], at_relay

    # upstream, every relayed replica is on the relay's one machine (127.0.0.1), and
    # carries its jobber's platform unless the task is cross-platform
    with ReadOnly(db) as journal:
        sent = [r for r in journal.records() if isinstance(r, Sent)]
    relayed = [r for r in sent if r.machine == "127.0.0.1"]
    expected = sandbox.NAN_FUEL if cross else sandbox.PLATFORM
    assert relayed and {r.platform for r in relayed} == {expected}
    by_job: dict[int, int] = {}
    for r in relayed:
        by_job[r.job_id] = by_job.get(r.job_id, 0) + 1
    assert max(by_job.values()) == 1  # one replica of a job behind the relay: one vote
