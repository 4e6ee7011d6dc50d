"""The lock of a key pair (net._keys.KeyLock): one holder at a time, named to the one
refused, and let go on close. Real dealer processes refused on a held key:
tests/e2e/test_dealer_keys.py."""

from __future__ import annotations

import os

import pytest

from net._keys import KeyInUse, KeyLock, lock_path


def test_a_held_key_is_refused_naming_the_key_file_and_its_holder(tmp_path):
    path = tmp_path / "keys" / "batch.dealer"  # its folder made on first use
    assert lock_path(path) == tmp_path / "keys" / "batch.dealer.lock"
    assert lock_path(tmp_path / "x.key_secret") == tmp_path / "x.lock"
    with KeyLock(path, "the dealer of journal j.sqlite") as held:
        assert held.path.read_text() == f"process {os.getpid()}, the dealer of journal j.sqlite\n"
        # flock is per open file: a second hold in this very process is refused too
        with pytest.raises(KeyInUse) as e:
            KeyLock(tmp_path / "keys" / "batch.dealer.key_secret", "another")
        assert str(e.value) == (
            f"{tmp_path}/keys/batch.dealer.key_secret is in use by process {os.getpid()}, "
            "the dealer of journal j.sqlite"
        )
        KeyLock(tmp_path / "keys" / "other", "a third").close()  # another key: free
    # let go: the next holder takes it and says who it is
    with KeyLock(path, "the next") as again:
        assert again.path.read_text() == f"process {os.getpid()}, the next\n"


def test_a_holder_that_wrote_nothing_yet_is_another_process(tmp_path):
    with KeyLock(tmp_path / "k", "first") as held:
        os.truncate(held.path, 0)  # as between its flock and its write
        with pytest.raises(KeyInUse, match=r"k\.key_secret is in use by another process$"):
            KeyLock(tmp_path / "k", "second")
