"""Trust at a real dealer with real processes: generated frames, then a real jobber that
finishes; a dealer process started with --sign (tests/dealer/test_trust.py has the rest)."""

from __future__ import annotations

import hashlib
import signal
import subprocess

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol as p
from net._author_keys import create_author_key, write_rotation

# `serve`, a fixture: imported here to be found by pytest, used as an argument
from tests.dealer.test_trust import HOST, Collect, serve  # noqa: F401
from tests.helpers import PY, ROOT, CurveClient, free_port, wait_for

# --- fuzz: generated frames at a real dealer, then a real jobber finishes --------------


frames = st.one_of(
    st.binary(max_size=300),
    st.dictionaries(
        st.sampled_from(["v", "type", "id", "re", "jobber", "host", "want", "results", "page"]),
        st.one_of(
            st.integers(-5, 2**64 - 1),
            st.text(max_size=20),
            st.sampled_from(["bored", "results", "status", "deny", "hello", "jobs", "ack"]),
            st.binary(max_size=20),
            st.lists(
                st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**64 - 1), max_size=3),
                max_size=3,
            ),
            st.none(),
        ),
        max_size=8,
    ).map(lambda d: msgpack.packb(d, use_bin_type=True)),
)


def test_fuzzed_frames_change_nothing_and_a_real_jobber_then_finishes(serve, tmp_path, procs):  # noqa: F811
    task = Collect(6)
    s = serve(task)
    fuzzer = s.client(source="127.0.0.10")

    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(frame=frames)
    def throw(frame: bytes) -> None:
        fuzzer.send(frame)
        reply = fuzzer.recv()  # every frame gets a clear answer; nothing crashes
        assert isinstance(reply, p.Message)

    throw()
    assert s.dealer.core.accepted == 0
    assert s.thread.is_alive()
    jobber = procs.jobber("real", s.dealer.address, extra=("--max-idle", "5"))
    wait_for(lambda: len(task.outputs) == 6, 60, "the real jobber finished the batch")
    assert set(task.outputs.values()) == {b"hi\n"}
    assert jobber.wait(60) == 0


def test_a_dealer_started_with_sign_sends_a_verifiable_signature(procs, tmp_path):
    """A task file served with --sign: every `jobs` carries the author's signature of the
    payload, with the key's rotation links, also when the bytes are not sent again."""
    old = create_author_key(tmp_path / "old")
    new = create_author_key(tmp_path / "new")
    write_rotation(tmp_path / "old", tmp_path / "new")
    port = free_port()
    argv = [PY, ROOT / "tests" / "task_files" / "flaky.py", "--sign", tmp_path / "new"]
    argv += ["--bind", f"tcp://127.0.0.1:{port}", "--quiet", "--db", tmp_path / "d.sqlite"]
    dealer = procs.start("dealer", argv)
    address = dealer.wait_for(r"listening on (\S+)", 30).group(1)
    c = CurveClient(address)
    try:
        first = c.ask(p.Bored(1, "hand", HOST, 1), timeout_s=10)
        assert isinstance(first, p.Jobs) and len(first.jobs) == 1
        sha = first.jobs[0].payload
        assert set(first.payloads) == {sha} and set(first.signatures) == {sha}
        signature = first.signatures[sha]
        assert signature.key == new.public
        assert [(x.old, x.new) for x in signature.chain] == [(old.public, new.public)]
        # a jobber trusting the new key runs it; one trusting the old key too, and learns
        assert p.verify_payload(sha, signature, {new.public}).accepted
        through = p.verify_payload(sha, signature, {old.public})
        assert through.accepted and through.learned == (new.public,)
        # one trusting another author's key does not
        other = create_author_key(tmp_path / "other")
        assert not p.verify_payload(sha, signature, {other.public}).accepted
        # the bytes are the payload the signature is of
        assert hashlib.sha256(first.payloads[sha]).hexdigest() == sha
        # cached: no bytes, the signature all the same
        cached = p.HostFacts(2, 1024, 2, cached=(sha,))
        second = c.ask(p.Bored(2, "hand", cached, 1), timeout_s=10)
        assert isinstance(second, p.Jobs) and second.payloads == {}
        assert second.jobs and second.signatures == {sha: signature}
        # want 0: no jobs, and still the signature (every `jobs` carries it)
        third = c.ask(p.Bored(3, "hand", cached, 0), timeout_s=10)
        assert (
            isinstance(third, p.Jobs) and third.jobs == () and third.signatures == {sha: signature}
        )
        status = c.ask(p.StatusQuery(4), timeout_s=10)
        assert status.info["signer"] == new.public
        shown = subprocess.run(
            [PY, "-m", "dealer", "status", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert f"payload signed by author key {new.public}" in shown.stdout, shown.stderr
    finally:
        c.close()
        dealer.signal(signal.SIGTERM)
        dealer.wait(30)
