"""The control socket's path: a Unix socket's path has at most 107 bytes, and a jobber
whose data directory is deeper says so (its owner gives a shorter --data-dir) rather than
dying of ZeroMQ's error."""

from __future__ import annotations

import os

import pytest
import zmq

from jobber._control import MAX_SOCKET_PATH, serve_socket


def data_dir_with_socket_path_of(tmp_path, n: int):
    """A data directory under tmp_path whose control socket's path has `n` bytes."""
    base = len(os.fsencode(tmp_path.resolve() / "d" / "control"))
    assert base < n, "tmp_path is too deep for this test"
    d = tmp_path / ("d" * (1 + n - base))
    d.mkdir()
    assert len(os.fsencode(d.resolve() / "control")) == n
    return d


def test_a_socket_path_of_the_most_bytes_binds(tmp_path):
    d = data_dir_with_socket_path_of(tmp_path, MAX_SOCKET_PATH)
    ctx = zmq.Context()
    try:
        sock = serve_socket(ctx, d)
        assert (d / "control").exists()
        sock.close()
    finally:
        ctx.term()


def test_one_byte_more_is_refused_naming_the_option(tmp_path):
    d = data_dir_with_socket_path_of(tmp_path, MAX_SOCKET_PATH + 1)
    ctx = zmq.Context()
    try:
        with pytest.raises(
            ValueError, match=r"\(108 bytes; .* at most 107\): give a shorter --data-dir"
        ):
            serve_socket(ctx, d)
        assert not (d / "control").exists()
    finally:
        ctx.term()
