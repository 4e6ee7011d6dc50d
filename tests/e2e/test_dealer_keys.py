"""A dealer's identity is its batch's, with real dealer processes started from one working
directory as a researcher would: each batch has a key of its own, beside its journal; a
resumed journal keeps its key (an old one, the key all batches shared then); and a second
dealer on a key in use is refused while the first serves on (the lock itself:
tests/net/test_keys.py)."""

from __future__ import annotations

import re
import signal

from net._ask import query_status
from net._keys import load_key_pair
from tests.helpers import PY, ROOT, free_port

WORD = """\
import sys

sys.path.insert(0, {root!r})

from tasks import Job, Limits, Payload, Task
from tests.wat import printing


class Word(Task):
    \"\"\"One job printing WORD: a batch per word.\"\"\"

    limits = Limits(fuel=10**6, memory_mb=16, time_s=5, output_kb=1)

    def __init__(self, word):
        super().__init__()
        self.payload = Payload(printing(word), "word")

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument("word")

    @classmethod
    def from_args(cls, args):
        return cls(args.word)

    def jobs(self):
        return [Job(("0",))]

    def total(self):
        return 1

    def on_output(self, job, output):
        pass

    def result(self):
        return ""


if __name__ == "__main__":
    from dealer import serve_task

    sys.exit(serve_task(Word))
"""

LISTENING = r"listening on (tcp://\S+)#([0-9a-f]{64})"


def _dealer(procs, name: str, word: str, *extra: str, listening: bool = True):
    """A dealer of the batch WORD, run as a researcher runs one: from the working directory,
    on the default journal (.borednet/word-<hash>.sqlite) unless `extra` says otherwise."""
    script = procs.cwd / "word.py"
    if not script.exists():
        script.write_text(WORD.format(root=str(ROOT)))
    cmd = [PY, script, word, "--bind", f"tcp://127.0.0.1:{free_port()}", *extra]
    proc = procs.start(name, cmd)
    if listening:
        proc.wait_for(LISTENING, 120)
    return proc


def _address(proc) -> tuple[str, str]:
    """(endpoint, key) the dealer printed for lenders."""
    m = proc.wait_for(LISTENING, 1)
    return m.group(1), m.group(2)


def _stop(proc) -> None:
    proc.signal(signal.SIGTERM)
    proc.wait(30)


def _journals(procs) -> list:
    return sorted((procs.cwd / ".borednet").glob("word-*.sqlite"))


def test_two_batches_from_one_directory_have_keys_of_their_own(procs):
    apple = _dealer(procs, "apple", "apple")
    pear = _dealer(procs, "pear", "pear")
    (apple_at, apple_key), (pear_at, pear_key) = _address(apple), _address(pear)
    assert apple_key != pear_key
    # each key is named after its journal and kept beside it; none is shared
    home = procs.cwd / ".borednet"
    journals = _journals(procs)
    assert len(journals) == 2
    keys = {load_key_pair(home / f"{j.stem}.dealer").public_hex for j in journals}
    assert keys == {apple_key, pear_key}
    assert not (home / "dealer.key_secret").exists()
    # both serve at once, each as itself
    assert query_status(apple_at)["key"] == apple_key
    assert query_status(pear_at)["key"] == pear_key
    assert apple.popen.poll() is None and pear.popen.poll() is None


def test_a_second_dealer_on_a_key_in_use_is_refused_and_the_first_serves_on(procs):
    first = _dealer(procs, "first", "apple")
    at, key = _address(first)
    [journal] = _journals(procs)
    secret = f".borednet/{journal.stem}.dealer.key_secret"
    held = f"error: {secret} is in use by process {first.pid}, the dealer of journal "
    held += f".borednet/{journal.name}. Two dealers on one key pair are one dealer"
    # the same command again (say, in another terminal): the same journal, so the same key
    second = _dealer(procs, "second", "apple", listening=False)
    assert second.wait(60) == 2, second.stderr
    assert held in second.stderr
    assert "give this one a key of its own with --key PATH" in second.stderr
    assert "Traceback" not in second.stderr and "listening on" not in second.stderr
    # another batch told to use that key, and a referrer on it: refused the same way
    told = _dealer(procs, "told", "pear", "--key", secret, listening=False)
    assert told.wait(60) == 2, told.stderr
    assert held in told.stderr
    refer = [PY, "-m", "dealer", "refer", "--bind", f"tcp://127.0.0.1:{free_port()}"]
    referrer = procs.start("referrer", [*refer, "--peer", at, "--key", secret])
    assert referrer.wait(60) == 2, referrer.stderr
    assert f"error: {secret} is in use by process {first.pid}" in referrer.stderr
    assert "Traceback" not in referrer.stderr
    # the first serves on, as itself
    assert first.popen.poll() is None
    assert query_status(at)["key"] == key
    # once it stopped, the same command runs on its key: the lock went with the process
    _stop(first)
    assert (procs.cwd / ".borednet" / f"{journal.stem}.dealer.lock").exists()
    again = _dealer(procs, "again", "apple")
    assert _address(again)[1] == key


def test_a_resumed_journal_keeps_its_key_and_so_does_a_fresh_start(procs):
    first = _dealer(procs, "first", "apple")
    key = _address(first)[1]
    _stop(first)
    resumed = _dealer(procs, "resumed", "apple")
    assert _address(resumed)[1] == key  # its lenders pinned it
    _stop(resumed)
    fresh = _dealer(procs, "fresh", "apple", "--fresh")  # the same command, begun again
    assert "moved the old journal" in fresh.stderr
    assert _address(fresh)[1] == key
    assert len(list((procs.cwd / ".borednet").glob("*.key_secret"))) == 2  # its own, admin


def test_a_journal_from_before_keys_per_batch_keeps_the_shared_key(procs):
    """Before, every batch of a directory ran on .borednet/dealer.key_secret: made here as
    then, with --key naming it. Resumed without --key, it keeps that key."""
    home = procs.cwd / ".borednet"
    old = _dealer(procs, "old", "apple", "--key", ".borednet/dealer")
    shared = _address(old)[1]
    _stop(old)
    assert not list(home.glob("*.dealer.key_secret"))  # the journal has no key of its own
    resumed = _dealer(procs, "resumed", "apple")
    assert _address(resumed)[1] == shared
    said = re.search(
        r"word-\w+\.sqlite was made before batches had keys of their own: it "
        r"keeps the shared \.borednet/dealer\.key_secret",
        resumed.stderr,
    )
    assert said, resumed.stderr
    # a new batch beside it gets a key of its own, and both serve at once
    new = _dealer(procs, "new", "pear")
    assert _address(new)[1] != shared
    assert resumed.popen.poll() is None
    assert len(list(home.glob("*.dealer.key_secret"))) == 1
