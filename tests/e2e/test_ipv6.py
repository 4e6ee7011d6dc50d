"""IPv6 with real processes: a dealer bound to `::1` and a jobber connecting from it."""

from __future__ import annotations

from tests.helpers import free_port
from tests.protocol.test_ipv6 import needs_ipv6


@needs_ipv6
def test_a_batch_over_ipv6_loopback(procs, factor_wasm):
    """A real dealer bound to [::1] and a real jobber given only `[::1]:PORT` (so it learns
    the dealer's key over the IPv6 plaintext port, then works over the encrypted one),
    connecting from ::1: the batch ends with the right factors."""
    port = free_port()
    n = 1000003 * 1000033
    dealer = procs.dealer(
        "dealer", "factoring.py", str(n), "--chunk", "50000", port=port, host="[::1]"
    )
    address = dealer.wait_for(r"listening on (\S+)", 60).group(1)
    assert address.startswith(f"tcp://[::1]:{port}#"), address
    jobber = procs.jobber("six", f"[::1]:{port}", source="::1", extra=("--max-idle", "5"))
    assert dealer.wait(90) == 0, dealer.stderr
    assert dealer.stdout.strip().splitlines()[-1] == "1000036000099 = 1000003 * 1000033"
    assert jobber.wait(60) == 0, jobber.stderr
