"""A job's checkpoint directory (sandbox._scratch), with real wasmtime and a real C
payload (compiled once per session with ziglang): a job stopped halfway (its fuel
ends) leaves its last saved state in its outcome; run again from that state it
finishes with the output of a run straight through. Saves by rename and by close,
the allowance, fixed metadata, and jobs without an allowance unchanged."""

from __future__ import annotations

import pytest

import sandbox
from protocol import Limits, Status
from tests.helpers import ROOT

# argv: STEPS EVERY [close]: a chain of STEPS steps, its state saved every EVERY steps
# (by a rename, or with "close" by writing state itself); it resumes from a saved state
CHAIN_C = (ROOT / "tests" / "task_files" / "chain.c").read_text()

PROBE_C = r"""
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* what the directory looks like, and what it refuses */
int main(void) {
    FILE *a = fopen("/checkpoint/a", "wb");
    fputs("hello", a);
    fclose(a);
    FILE *b = fopen("/checkpoint/b", "wb");
    fclose(b);
    struct stat s;
    stat("/checkpoint/a", &s);
    printf("a dev=%llu ino=%llu nlink=%llu size=%lld mtime=%lld\n",
           (unsigned long long)s.st_dev, (unsigned long long)s.st_ino,
           (unsigned long long)s.st_nlink, (long long)s.st_size, (long long)s.st_mtim.tv_sec);
    DIR *d = opendir("/checkpoint");
    struct dirent *e;
    while ((e = readdir(d))) printf("entry %s\n", e->d_name);
    closedir(d);
    printf("mkdir %d\n", mkdir("/checkpoint/sub", 0755) ? errno == ENOTSUP : -1);
    printf("unlink %d\n", unlink("/checkpoint/b"));
    printf("gone %d\n", access("/checkpoint/b", F_OK) ? errno == ENOENT : -1);
    FILE *big = fopen("/checkpoint/big", "wb");
    static char block[4096];
    size_t n = 0, k;
    while ((k = fwrite(block, 1, sizeof block, big)) == sizeof block) n += k;
    n += k;
    printf("big %zu\n", n);
    fclose(big);
    printf("errno %d\n", errno == ENOSPC);
    FILE *c = fopen("/checkpoint/a", "rb");
    char buf[16] = {0};
    fread(buf, 1, sizeof buf - 1, c);
    printf("read %s\n", buf);
    return 0;
}
"""

STEPS, EVERY = 400, 50


@pytest.fixture(scope="module")
def chain_wasm() -> bytes:
    from tasks import compile_c

    return compile_c(CHAIN_C)


@pytest.fixture(scope="module")
def probe_wasm() -> bytes:
    from tasks import compile_c

    return compile_c(PROBE_C)


def limits(fuel: int = 10**10, kb: int | None = 1) -> Limits:
    return Limits(fuel=fuel, memory_mb=16, time_s=60, output_kb=1, checkpoint_kb=kb)


@pytest.mark.parametrize("how", ["rename", "close"])
def test_a_job_stopped_halfway_resumes_from_its_last_save_to_the_same_output(chain_wasm, how):
    extra = ("close",) if how == "close" else ()
    args = (str(STEPS), str(EVERY), *extra)
    straight = sandbox.run(chain_wasm, args, limits=limits())
    assert straight.ok, straight
    assert straight.checkpoint is not None and len(straight.checkpoint) == 16
    stopped = sandbox.run(chain_wasm, args, limits=limits(fuel=straight.fuel // 2))
    assert stopped.status is Status.FUEL
    assert stopped.checkpoint is not None
    at = int.from_bytes(stopped.checkpoint[:8], "little")
    assert 0 < at < STEPS and at % EVERY == 0
    resumed = sandbox.run(chain_wasm, args, limits=limits(), checkpoint=stopped.checkpoint)
    assert resumed.ok, resumed
    assert f"resumed at {at}".encode() in resumed.stderr
    assert resumed.stdout == straight.stdout  # the same output as straight through
    assert resumed.fuel < straight.fuel  # and less work


def test_a_job_without_an_allowance_has_no_checkpoint_directory(chain_wasm):
    plain = sandbox.run(chain_wasm, (str(STEPS), str(EVERY)), limits=limits(kb=None))
    assert plain.ok and plain.checkpoint is None  # its saves fail; it runs straight through
    zero = sandbox.run(chain_wasm, (str(STEPS), str(EVERY)), limits=limits(kb=0))
    assert zero.stdout == plain.stdout and zero.checkpoint is None


def test_a_checkpoint_over_the_allowance_is_refused_before_the_job_runs(chain_wasm):
    out = sandbox.run(chain_wasm, ("10", "5"), limits=limits(kb=1), checkpoint=b"x" * 1025)
    assert out.status is Status.INVALID and "over the job's 1 KiB" in out.detail


def test_the_directory_has_fixed_metadata_a_bound_and_no_subdirectories(probe_wasm):
    out = sandbox.run(probe_wasm, limits=limits(kb=16))
    assert out.ok, out
    lines = out.stdout.decode().splitlines()
    assert lines[0] == "a dev=0 ino=2 nlink=1 size=5 mtime=0"
    assert [x for x in lines if x.startswith("entry")] == [
        "entry .",
        "entry ..",
        "entry a",
        "entry b",
    ]
    assert "mkdir 1" in lines and "unlink 0" in lines and "gone 1" in lines
    assert f"big {16 * 1024 - 5}" in lines  # all the room the allowance leaves
    assert "errno 1" in lines and "read hello" in lines
    assert out.checkpoint is None  # nothing was saved as state


def test_in_a_slot_saves_reach_the_caller_and_a_killed_job_resumes_from_the_last(
    tmp_path, chain_wasm
):
    import hashlib
    import os
    import signal
    import time
    from multiprocessing.connection import wait

    from tests.helpers import collect_one

    sha = hashlib.sha256(chain_wasm).hexdigest()
    sandbox.ModuleCache(tmp_path).put(chain_wasm)
    args = ("200000", "500")
    lim = limits(fuel=10**12)
    straight = sandbox.run(chain_wasm, args, limits=lim)
    assert straight.ok
    with sandbox.Slots(1, tmp_path) as slots:
        slots.start("j", sha, args, b"", lim)
        saves = []
        deadline = time.monotonic() + 120
        while not saves:  # its first save (at step 500 of 200,000) goes out at once
            assert not slots.collect(), "the job ended before its first save came"
            saves += slots.take_saves()
            assert time.monotonic() < deadline, "no save reached the caller"
            wait(slots.fds(), timeout=0.2)
        os.kill(slots._workers[0].process.pid, signal.SIGKILL)
        assert all(s.key == "j" and len(s.state) == 16 for s in saves)
        assert 0 < saves[0].fuel < straight.fuel
        key, killed = collect_one(slots)
        assert (key, killed.status) == ("j", Status.CRASH)
        last = (saves + slots.take_saves())[-1].state
        slots.start("j2", sha, args, b"", lim, checkpoint=last)
        key, resumed = collect_one(slots, timeout_s=120)
    assert resumed.ok and resumed.stdout == straight.stdout
    assert resumed.checkpoint is not None  # its own last save comes with its outcome


def test_a_worker_sends_at_most_one_save_a_second_per_job():
    from sandbox import _worker

    sent = []

    class Pipe:  # the worker's end of its pipe to the parent: what was sent on it
        def send(self, msg):
            sent.append(msg)

    clock = iter([10.0, 10.5, 11.0, 11.5, 12.0])
    saves = _worker._Saves(Pipe(), "k", clock=lambda: next(clock))  # started at 10.0
    for i, fuel in enumerate((100, 200, 300, 400)):
        saves(bytes([i]), fuel)
    assert [(m["key"], m["state"], m["fuel"], m["wall_s"]) for m in sent] == [
        ("k", b"\x00", 100, 0.5),  # the first at once
        ("k", b"\x02", 300, 1.5),  # then one a second: 11.0 and 12.0 are dropped
    ]


def test_saves_nobody_takes_are_one_per_running_job_and_go_with_its_outcome(tmp_path, chain_wasm):
    import hashlib

    from tests.helpers import collect_one

    sha = hashlib.sha256(chain_wasm).hexdigest()
    sandbox.ModuleCache(tmp_path).put(chain_wasm)
    with sandbox.Slots(1, tmp_path) as slots:
        slots.start("j", sha, ("100000", "500"), b"", limits(fuel=10**12))
        key, out = collect_one(slots, timeout_s=120)  # saves made meanwhile, none taken
        assert key == "j" and out.ok and out.checkpoint is not None
        assert slots.take_saves() == []  # the ended job's went with its outcome
