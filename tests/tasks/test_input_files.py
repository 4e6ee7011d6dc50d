"""The task author's input files (tasks._files): hashes and chunk digests from bytes and
from a path, streamed (a 200 MB sparse file hashed in a few MB of memory), names checked,
and where a payload sees each file (Job.files, Task.files, Payload.files)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import runpy
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocol as p
from tasks import InputFile, InputFileError, Job, Payload, Task
from tasks._files import SETTLED_NS, guest_files, shared_files
from tests.helpers import ROOT

MiB = 1 << 20


def _digests(data: bytes) -> tuple[bytes, ...]:
    """Each CHUNK_BYTES chunk's SHA-256, written from docs/protocol.md (`fetch`)."""
    n = max(1, -(-len(data) // p.CHUNK_BYTES))
    return tuple(
        hashlib.sha256(data[i * p.CHUNK_BYTES : (i + 1) * p.CHUNK_BYTES]).digest() for i in range(n)
    )


@pytest.mark.parametrize("size", [0, 1, p.CHUNK_BYTES - 1, p.CHUNK_BYTES, 2 * p.CHUNK_BYTES + 7])
def test_bytes_and_a_path_give_the_same_hash_size_and_chunk_digests(tmp_path, size):
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    for f in (InputFile.from_bytes(data), InputFile.from_path(path)):
        assert f.sha256 == hashlib.sha256(data).hexdigest()
        assert f.size == size
        assert f.digests == _digests(data)
        assert f.ref == p.FileRef(f.sha256, size)
        chunks = [f.read_chunk(i) for i in range(len(f.digests))]
        assert b"".join(chunks) == data
        with pytest.raises(IndexError):
            f.read_chunk(len(f.digests))
    assert InputFile.from_bytes(data) == InputFile.from_path(path)  # equal by content
    assert InputFile.from_path(path).path == path.resolve()


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=3000), st.binary(max_size=3000))
def test_equal_files_are_equal_and_hash_alike_and_others_differ(a, b):
    fa, fb = InputFile.from_bytes(a), InputFile.from_bytes(b)
    assert (fa == fb) == (a == b)
    assert (hash(Job(files={"x": fa})) == hash(Job(files={"x": fb}))) or a != b


def test_a_relative_path_is_taken_from_the_calling_file(tmp_path):
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    (task_dir / "data.txt").write_bytes(b"beside the task file")
    (task_dir / "task.py").write_text(
        "from tasks import InputFile\nf = InputFile.from_path('data.txt')\n"
    )
    cwd = os.getcwd()
    os.chdir(tmp_path)  # not where the file is
    try:
        f = runpy.run_path(str(task_dir / "task.py"))["f"]
    finally:
        os.chdir(cwd)
    assert f.sha256 == hashlib.sha256(b"beside the task file").hexdigest()
    assert f.path == (task_dir / "data.txt").resolve()


def test_a_200_mb_sparse_file_is_hashed_without_reading_it_whole(tmp_path):
    """In a fresh process, so its peak resident memory is this hash's alone."""
    path = tmp_path / "sparse.bin"
    with open(path, "wb") as f:
        f.truncate(200 * MiB)
        f.seek(150 * MiB)
        f.write(b"x")
    code = (
        "import resource, sys\n"
        "from tasks import InputFile\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"f = InputFile.from_path({str(path)!r})\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(f.sha256, f.size, len(f.digests), (after - before) // 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    whole = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 * MiB):
            whole.update(block)
    assert out[:3] == [whole.hexdigest(), str(200 * MiB), "50"]
    grown_mb = int(out[3])
    print(f"\n200 MB hashed; peak memory grew {grown_mb} MB")
    assert grown_mb < 32  # one 4 MiB chunk at a time, not 200 MB


def test_names_are_one_path_component():
    f = InputFile.from_bytes(b"x")
    for good in ("table.csv", "a", "x" * 255, "..a", "a-b_c+d.e"):
        assert Job(files={good: f}).files == ((good, f),)
    for bad in ("", ".", "..", "a/b", "/a", "x" * 256, "sp ace", "é", 3):
        with pytest.raises(InputFileError, match="input file name"):
            Job(files={bad: f})
    with pytest.raises(TypeError, match="not a tasks.InputFile"):
        Job(files={"a": b"bytes"})
    with pytest.raises(InputFileError, match="given twice"):
        Job(files=[("a", f), ("a", f)])
    with pytest.raises(InputFileError, match="over the wire's cap"):
        Job(files={str(i): f for i in range(p.MAX_JOB_FILES + 1)})


def test_a_job_is_frozen_and_hashable_with_its_files_sorted():
    a, b = InputFile.from_bytes(b"a"), InputFile.from_bytes(b"b")
    job = Job(("1",), files={"z": a, "m": b})
    assert job.files == (("m", b), ("z", a))
    assert job == Job(("1",), files={"m": b, "z": a})
    assert hash(job) == hash(Job(("1",), files=[("z", a), ("m", b)]))
    assert job != Job(("1",), files={"z": b, "m": a})
    assert {job: 1}[Job(("1",), files={"m": b, "z": a})] == 1


def test_guest_paths_the_task_s_the_job_s_and_the_payload_s():
    t, j, lib = (InputFile.from_bytes(x) for x in (b"t", b"j", b"lib"))
    shared = shared_files({"table.csv": t}, {"/usr/local/lib/python315.zip": lib})
    assert shared == {"/input/table.csv": t, "/usr/local/lib/python315.zip": lib}
    files = guest_files(shared, Job(files={"own": j}).files)
    assert files == {**shared, "/input/own": j}
    with pytest.raises(InputFileError, match="'table.csv' repeats a task-wide one"):
        guest_files(shared, Job(files={"table.csv": j}).files)
    with pytest.raises(InputFileError, match="under /input"):
        shared_files({}, {"/input/x": lib})
    with pytest.raises(InputFileError, match="not an absolute guest path"):
        shared_files({}, {"lib.zip": lib})
    with pytest.raises(InputFileError, match="/usr is a file and a directory of /usr/lib"):
        shared_files({}, {"/usr": lib, "/usr/lib": lib})
    with pytest.raises(InputFileError, match="Task.files: input file name"):
        shared_files({"a/b": t}, {})


def test_task_files_as_a_class_attribute_or_set_in_init_and_payload_files_default_empty():
    f = InputFile.from_bytes(b"x")

    class Wide(Task):
        files = {"a": f}

    class Own(Task):
        def __init__(self) -> None:
            super().__init__()
            self.files = {"b": f}

    assert Task().files == {} and Wide().files == {"a": f} and Own().files == {"b": f}
    assert Payload(b"\0asm\1\0\0\0").files == {}


def test_an_unreadable_or_odd_path_is_refused_naming_it(tmp_path):
    with pytest.raises(InputFileError, match="cannot read input file .*missing"):
        InputFile.from_path(tmp_path / "missing")
    with pytest.raises(InputFileError, match="cannot read input file|not a regular file"):
        InputFile.from_path(tmp_path)


def test_a_file_changed_after_hashing_is_refused_when_read(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"a" * 10)
    f = InputFile.from_path(path)
    path.write_bytes(b"b" * 10)
    with pytest.raises(InputFileError, match="the file changed"):
        f.read_chunk(0)


def _settle(path) -> None:
    """Wait until the file's last change is SETTLED_NS old (a condition, not a time)."""
    while time.time_ns() - path.stat().st_ctime_ns <= SETTLED_NS:
        time.sleep(0.01)


def test_a_chunk_found_right_is_not_hashed_again_while_its_file_is_unchanged(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(os.urandom(p.CHUNK_BYTES + 5))
    f = InputFile.from_path(path)
    checked: dict[int, tuple] = {}
    assert f.read_chunk(1, checked) == path.read_bytes()[p.CHUNK_BYTES :]
    assert checked == {}  # just written: hashed each time until its ctime settles
    _settle(path)
    assert f.read_chunk(1, checked) == path.read_bytes()[p.CHUNK_BYTES :]
    st = path.stat()
    assert checked == {1: (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)}
    # the same file named with wrong digests: a chunk checked under this identity is
    # served unhashed, one never checked is hashed and refused
    wrong = dataclasses.replace(f, digests=(b"\0" * 32, b"\0" * 32))
    assert wrong.read_chunk(1, checked) == path.read_bytes()[p.CHUNK_BYTES :]
    with pytest.raises(InputFileError, match="chunk 0 differs"):
        wrong.read_chunk(0, checked)
    with pytest.raises(InputFileError, match="chunk 1 differs"):
        wrong.read_chunk(1)  # nothing known: hashed


def test_a_file_changed_after_a_chunk_was_served_is_refused_again(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"a" * 10)
    f = InputFile.from_path(path)
    checked: dict[int, tuple] = {}
    _settle(path)
    assert f.read_chunk(0, checked) == b"a" * 10
    before = checked[0]
    with open(path, "r+b") as out:  # in place: same inode, same size
        out.write(b"b")
    # the ctime moves with any write; wait for the clock's tick, not a fixed time
    while path.stat().st_ctime_ns == before[4]:
        with open(path, "r+b") as out:
            out.write(b"b")
    with pytest.raises(InputFileError, match="the file changed"):
        f.read_chunk(0, checked)
