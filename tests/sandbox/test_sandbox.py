"""sandbox.run: every outcome, from inline WAT and C payloads, with its exact status."""

from __future__ import annotations

import hashlib
import struct
import threading

import pytest
import wasmtime

import sandbox
from protocol import Limits, Status
from sandbox import _engine, _flavors, _memory, _nanguard
from tests.wat import NAN_BITS

WASI = "wasi_snapshot_preview1"

# A command module skeleton: fd_write and proc_exit, one page of memory, and
# $print(ptr, len) writing memory[ptr:ptr+len] to stdout (the iovec lives at 0,
# nwritten at 8).
IMPORTS = f"""
  (import "{WASI}" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "{WASI}" "proc_exit" (func $proc_exit (param i32)))
"""
PRINT = """
  (func $print (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
"""


def command(
    body: str,
    *,
    extra: str = "",
    memory: str = '(memory (export "memory") 1)',
    imports: str = "",
) -> bytes:
    """A WASI command whose _start runs `body` (`imports` go before any definition)."""
    return wasmtime.wat2wasm(
        f'(module {IMPORTS} {imports} {PRINT} {memory} {extra} (func (export "_start") {body}))'
    )


def wat(text: str) -> bytes:
    return wasmtime.wat2wasm(text)


HELLO = command(
    "(drop (call $print (i32.const 16) (i32.const 6)))",
    extra='(data (i32.const 16) "hello\\n")',
)
SPIN = command("(loop $l (br $l))")


# --- C payloads, built once per session ------------------------------------------

PROBE_C = r"""
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long long ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
    char buf[256];
    size_t n = fread(buf, 1, sizeof buf, stdin);
    printf("stdin=%.*s\n", (int)n, buf);
    for (int i = 0; i < argc; i++) printf("argv[%d]=%s\n", i, argv[i]);
    printf("HOME=%s\n", getenv("HOME") ? getenv("HOME") : "(none)");
    FILE *f = fopen("/etc/passwd", "r");
    printf("fopen=%s\n", f ? "opened" : "refused");
    long long t0 = ns();
    volatile double x = 0;
    for (int i = 0; i < 1000; i++) x += i;
    long long t1 = ns();
    printf("time=%lld clock=%lld advanced=%d\n", (long long)time(NULL), t0, t1 > t0);
    unsigned char r[8];
    int e = getentropy(r, sizeof r);
    printf("entropy=%d ", e);
    for (int i = 0; i < 8; i++) printf("%02x", r[i]);
    printf("\n");
    long long before = ns();
    unsigned left = sleep(5);
    printf("sleep=%u slept_ns>=5e9=%d\n", left, ns() - before >= 5000000000LL);
    fprintf(stderr, "note on stderr\n");
    return 0;
}
"""

FLOATY_C = r"""
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t bits(double x) { uint64_t b; memcpy(&b, &x, 8); return b; }

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 20000;
    double x = 0.5, acc = 0.0;
    uint64_t h = 1469598103934665603ULL;
    for (int i = 1; i <= n; i++) {
        x = sin(x * 3.7 + i) * exp(-fabs(x)) + sqrt(fabs(x) + i) / log(i + 1.5);
        double nan = sqrt(-fabs(x) - 1.0) * x; /* NaN: its bits must not depend on the CPU */
        float f = (float)x * 1.5f + (float)nan;
        uint32_t fb;
        memcpy(&fb, &f, 4);
        acc += pow(fabs(x), 0.3) + atan2(x, acc + 1.0);
        h = (h ^ bits(x)) * 1099511628211ULL;
        h = (h ^ bits(nan)) * 1099511628211ULL;
        h = (h ^ fb) * 1099511628211ULL;
        if (i % (n / 4) == 0) printf("%d %a %a %016llx\n", i, x, acc, (unsigned long long)h);
    }
    printf("nan=%016llx\n", (unsigned long long)bits(sqrt(-acc - 1.0)));
    return 0;
}
"""

HOG_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    void **head = NULL;
    long blocks = 0;
    for (;;) { /* a chain of 1 MiB blocks, so that the compiler keeps every malloc */
        void **p = malloc(1 << 20);
        if (!p) break;
        memset(p, 1, 1 << 20);
        *p = head;
        head = p;
    }
    for (void **p = head; p; p = *p) blocks++;
    printf("got %ld MiB, then malloc returned NULL\n", blocks);
    return 0; /* a payload that carries on after malloc failed still ends as MEMORY */
}
"""

ABORT_C = r"""
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "need more arguments\n");
        abort();
    }
    return 0;
}
"""


@pytest.fixture(scope="session")
def c_payloads(factor_wasm) -> dict[str, bytes]:
    from tasks import builtin, compile_c

    built = {
        name: compile_c(source)
        for name, source in [
            ("probe", PROBE_C),
            ("floaty", FLOATY_C),
            ("hog", HOG_C),
            ("abort", ABORT_C),
        ]
    }
    built["factor"] = factor_wasm
    built["nbody"] = compile_c(builtin("nbody").read_text())
    return built


@pytest.fixture(autouse=True)
def no_memory_left_behind():
    yield
    assert _memory.live() == 0, "a finished job left a linear memory mapped"


# --- clean ends -----------------------------------------------------------------


def test_return_from_start_is_ok():
    o = sandbox.run(HELLO)
    assert o.status is Status.OK
    assert o.stdout == b"hello\n"
    assert o.exit_code == 0 and o.detail == "" and o.ok
    assert o.fuel > 0 and o.wall_s >= 0


def test_proc_exit_zero_is_ok():
    o = sandbox.run(command("(call $proc_exit (i32.const 0))"))
    assert (o.status, o.exit_code) == (Status.OK, 0)


def test_proc_exit_nonzero_is_exit_with_code():
    o = sandbox.run(command("(call $proc_exit (i32.const 3))"))
    assert o.status is Status.EXIT
    assert o.exit_code == 3
    assert o.detail == "exit code 3"


@pytest.mark.parametrize("code", [126, 255, 256, -1])
def test_any_exit_code_is_exit(code):
    o = sandbox.run(command(f"(call $proc_exit (i32.const {code}))"))
    assert (o.status, o.exit_code) == (Status.EXIT, code & 0xFFFFFFFF)


def test_c_factor_payload(c_payloads):
    o = sandbox.run(c_payloads["factor"], ["91", "2", "100"])
    assert o.status is Status.OK
    assert o.stdout == b"7\n13\n91\n"


def test_c_exit_code_and_stderr_in_detail(c_payloads):
    o = sandbox.run(c_payloads["factor"], ["not-a-number"])
    assert o.status is Status.EXIT and o.exit_code == 2
    assert o.stderr == b"usage: factor N LO HI\n"
    assert "usage: factor N LO HI" in o.detail


# --- limits --------------------------------------------------------------------------


def test_fuel_limit():
    o = sandbox.run(SPIN, limits=Limits(fuel=10_000))
    assert o.status is Status.FUEL
    assert o.fuel == 10_000
    assert "fuel limit of 10000" in o.detail


def test_time_limit():
    o = sandbox.run(SPIN, limits=Limits(time_s=0.2))
    assert o.status is Status.TIME
    assert 0.2 <= o.wall_s < 2.0
    assert "wall-clock limit of 0.2 s" in o.detail
    # wasm keeps its fuel count in a register between calls: a job stopped by
    # the clock reports the fuel used up to its last call, here none
    assert o.fuel == 0


def test_memory_grow_past_limit_is_memory_even_if_the_payload_exits_cleanly():
    # memory.grow returns -1 to the payload; it carries on and exits 0: still MEMORY
    o = sandbox.run(
        command(
            "(if (i32.ne (memory.grow (i32.const 32)) (i32.const -1))"
            "  (then (call $proc_exit (i32.const 9))))"
            "(call $proc_exit (i32.const 0))"
        ),
        limits=Limits(memory_mb=2),
    )
    assert o.status is Status.MEMORY
    assert "memory.grow to 2.062 MiB refused" in o.detail
    assert "limit is 2 MiB" in o.detail
    assert o.exit_code is None


def test_memory_grow_past_limit_stops_a_payload_that_ignores_it():
    o = sandbox.run(
        command("(drop (memory.grow (i32.const 1000))) (loop $l (br $l))"),
        limits=Limits(memory_mb=2, time_s=30),
    )
    assert o.status is Status.MEMORY
    assert o.wall_s < 5  # stopped at the next tick, not at the time limit


def test_memory_grow_within_limit_is_fine():
    o = sandbox.run(
        command(
            "(if (i32.eq (memory.grow (i32.const 31)) (i32.const -1))"
            "  (then (call $proc_exit (i32.const 9))))"
            "(i32.store (i32.const 2097148) (i32.const 7))"  # last word of 2 MiB
        ),
        limits=Limits(memory_mb=2),
    )
    assert o.status is Status.OK


def test_module_minimum_memory_above_limit_fails_at_instantiation():
    o = sandbox.run(command("", memory='(memory (export "memory") 33)'), limits=Limits(memory_mb=2))
    assert o.status is Status.MEMORY
    assert "needs 2.062 MiB of linear memory to start" in o.detail
    assert o.fuel == 0


def test_store_limits_on_tables_and_memories():
    big_table = command("", extra="(table 1000000 funcref)")
    assert sandbox.run(big_table).status is Status.MEMORY
    two_memories = wat('(module (memory 1) (memory 1) (func (export "_start")))')
    o = sandbox.run(two_memories)
    assert o.status is Status.MEMORY
    assert "memory count" in o.detail


def test_c_malloc_until_null_is_memory(c_payloads):
    o = sandbox.run(c_payloads["hog"], limits=Limits(memory_mb=8, time_s=10))
    assert o.status is Status.MEMORY
    assert "refused" in o.detail


def test_output_limit_stops_the_payload_while_writing():
    o = sandbox.run(
        command("(loop $l (drop (call $print (i32.const 16) (i32.const 1000))) (br $l))"),
        limits=Limits(output_kb=64, time_s=30),
    )
    assert o.status is Status.OUTPUT
    assert len(o.stdout) == 64 * 1024  # what fits, and no more
    assert "output limit of 64 KiB" in o.detail
    assert o.wall_s < 5


def test_output_exactly_at_the_limit_is_ok():
    writes = "(drop (call $print (i32.const 16) (i32.const 512)))" * 2
    assert sandbox.run(command(writes), limits=Limits(output_kb=1)).status is Status.OK
    o = sandbox.run(command(writes + writes), limits=Limits(output_kb=1))
    assert o.status is Status.OUTPUT and len(o.stdout) == 1024


def test_zero_output_limit():
    o = sandbox.run(HELLO, limits=Limits(output_kb=0))
    assert o.status is Status.OUTPUT and o.stdout == b""


def test_stack_overflow():
    o = sandbox.run(command("(call $deep)", extra="(func $deep (call $deep))"))
    assert o.status is Status.STACK
    assert o.detail == "call stack exhausted"


# --- traps -----------------------------------------------------------------------


def test_unreachable_is_trap():
    o = sandbox.run(command("unreachable"))
    assert o.status is Status.TRAP
    assert "unreachable" in o.detail


def test_divide_by_zero_is_trap():
    o = sandbox.run(command("(drop (i32.div_u (i32.const 1) (i32.const 0)))"))
    assert o.status is Status.TRAP
    assert "divide by zero" in o.detail


def test_out_of_bounds_is_trap():
    o = sandbox.run(command("(drop (i32.load (i32.const 70000)))"))
    assert o.status is Status.TRAP
    assert "out of bounds" in o.detail


def test_trap_in_start_section_is_trap():
    o = sandbox.run(command("", extra="(func $boom unreachable) (start $boom)"))
    assert o.status is Status.TRAP


def test_c_abort_is_trap_with_the_message(c_payloads):
    o = sandbox.run(c_payloads["abort"])
    assert o.status is Status.TRAP
    assert b"need more arguments" in o.stderr
    assert "need more arguments" in o.detail


# --- modules the sandbox refuses -------------------------------------------------


@pytest.mark.parametrize("wasm", [b"", b"garbage", b"\0asm\x01\0\0\0\xff"])
def test_invalid_bytes(wasm):
    o = sandbox.run(wasm)
    assert o.status is Status.INVALID
    assert o.detail.startswith("not a valid module")


def test_module_without_start_is_invalid():
    o = sandbox.run(wat('(module (memory (export "memory") 1))'))
    assert o.status is Status.INVALID
    assert "no _start export" in o.detail


def test_reactor_is_invalid():
    o = sandbox.run(wat('(module (func (export "_initialize")))'))
    assert o.status is Status.INVALID
    assert "reactor" in o.detail


def test_start_with_wrong_type_is_invalid():
    o = sandbox.run(wat('(module (func (export "_start") (param i32)))'))
    assert o.status is Status.INVALID
    assert "[] -> []" in o.detail


def test_foreign_imports_are_refused_and_listed():
    o = sandbox.run(
        wat(
            '(module (import "env" "now" (func)) (import "wasi_unstable" "fd_write" (func))'
            ' (import "env" "mem" (memory 1)) (func (export "_start")))'
        )
    )
    assert o.status is Status.IMPORT
    for name in ("env.now (func)", "wasi_unstable.fd_write (func)", "env.mem (memory)"):
        assert name in o.detail


def test_unknown_wasi_function_is_refused():
    o = sandbox.run(
        wat(f'(module (import "{WASI}" "no_such_call" (func)) (func (export "_start")))')
    )
    assert o.status is Status.IMPORT
    assert f"{WASI}.no_such_call" in o.detail


def test_wasi_import_with_wrong_signature_is_refused():
    o = sandbox.run(
        wat(f'(module (import "{WASI}" "fd_write" (func (param i32))) (func (export "_start")))')
    )
    assert o.status is Status.IMPORT
    assert "fd_write" in o.detail


# --- what a payload sees ------------------------------------------------------------


def test_args_stdin_and_nothing_else(c_payloads):
    o = sandbox.run(c_payloads["probe"], ["a b", "-c"], b"from stdin")
    assert o.status is Status.OK, o.detail
    lines = o.stdout.decode().splitlines()
    assert lines[:4] == ["stdin=from stdin", "argv[0]=payload", "argv[1]=a b", "argv[2]=-c"]
    assert "HOME=(none)" in lines  # no environment
    assert "fopen=refused" in lines  # no preopened directories
    assert o.stderr == b"note on stderr\n"


def test_clocks_are_virtual_and_sleep_does_not_block(c_payloads):
    o = sandbox.run(c_payloads["probe"], limits=Limits(time_s=3))
    assert o.status is Status.OK, o.detail
    text = o.stdout.decode()
    assert "time=0 " in text  # realtime starts at the epoch
    assert "advanced=1" in text  # clocks advance with fuel used
    assert "sleep=0 slept_ns>=5e9=1" in text  # sleep(5) returned at once, the clock jumped
    assert o.wall_s < 1


def test_random_is_the_documented_fixed_stream(c_payloads):
    o = sandbox.run(c_payloads["probe"])
    expected = hashlib.sha256(b"borednet random_get" + (0).to_bytes(8, "little")).digest()[:8]
    assert f"entropy=0 {expected.hex()}" in o.stdout.decode()


RANDOM_GET = f'(import "{WASI}" "random_get" (func $random_get (param i32 i32) (result i32)))'


def stream(n: int) -> bytes:
    blocks = (hashlib.sha256(b"borednet random_get" + i.to_bytes(8, "little")) for i in range(n))
    return b"".join(b.digest() for b in blocks)


def test_random_stream_continues_across_calls_and_restarts_per_job():
    wasm = command(
        "(drop (call $random_get (i32.const 16) (i32.const 20)))"
        "(drop (call $random_get (i32.const 36) (i32.const 50)))"
        "(drop (call $print (i32.const 16) (i32.const 70)))",
        imports=RANDOM_GET,
    )
    first, second = sandbox.run(wasm), sandbox.run(wasm)
    assert first.stdout == second.stdout == stream(3)[:70]


def test_a_huge_random_get_still_honours_the_time_limit():
    wasm = command(
        "(drop (call $random_get (i32.const 0) (i32.const 134217728)))",
        imports=RANDOM_GET,
        memory='(memory (export "memory") 2048)',
    )
    o = sandbox.run(wasm, limits=Limits(time_s=0.1))
    assert o.status is Status.TIME and o.wall_s < 1


def test_huge_stderr_writes_are_counted_not_copied():
    # 64 MiB to stderr, 64 times over: only the first 8 KiB are kept
    o = sandbox.run(
        command(
            "(local $i i32)"
            "(i32.store (i32.const 0) (i32.const 0)) (i32.store (i32.const 4) (i32.const 67108864))"
            "(loop $l"
            "  (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))"
            "  (br_if $l (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1)))"
            "                      (i32.const 64))))"
            "(call $proc_exit (i32.load (i32.const 8)))",
            memory='(memory (export "memory") 1024)',
        ),
        limits=Limits(time_s=10),
    )
    assert o.status is Status.EXIT and o.exit_code == 67108864  # nwritten: all of it
    assert len(o.stderr) == 8192 and o.wall_s < 2


def test_jobs_in_threads_keep_their_own_state():
    # one job spins into its time limit while eight others print, concurrently
    outcomes: dict[int, sandbox.Outcome] = {}

    def job(i: int) -> None:
        if i == 0:
            outcomes[i] = sandbox.run(SPIN, limits=Limits(time_s=0.3))
            return
        body = "(drop (call $print (i32.const 16) (i32.const 6)))" * i
        wasm = command(body, extra='(data (i32.const 16) "hello\\n")')
        outcomes[i] = sandbox.run(wasm, limits=Limits(time_s=5))

    threads = [threading.Thread(target=job, args=(i,)) for i in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes[0].status is Status.TIME
    for i in range(1, 9):
        assert outcomes[i].status is Status.OK and outcomes[i].stdout == b"hello\n" * i


# --- determinism --------------------------------------------------------------------

# Float work whose NaN results feed a hash: without NaN canonicalization the
# hash would differ between x86 (sqrt(-1) = fff8...) and other CPUs (7ff8...).
FLOAT_WAT = f"""
(module
  (import "{WASI}" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (local $i i32) (local $x f64) (local $n f64) (local $f f32) (local $h i64)
    (local.set $x (f64.const 0.5))
    (local.set $h (i64.const 1469598103934665603))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (i32.const 100000)))
      (local.set $x (f64.add
        (f64.sub
          (f64.div (f64.sqrt (f64.add (f64.abs (local.get $x)) (f64.convert_i32_u (local.get $i))))
                   (f64.add (f64.mul (local.get $x) (local.get $x)) (f64.const 1)))
          (f64.mul (local.get $x) (f64.const 0.75)))
        (f64.nearest (f64.mul (local.get $x) (f64.const 3.3)))))
      (local.set $n (f64.add (f64.sqrt (f64.sub (f64.const -1) (f64.abs (local.get $x))))
                             (local.get $x)))
      (local.set $f (f32.add (f32.demote_f64 (local.get $n)) (f32.demote_f64 (local.get $x))))
      (local.set $h (i64.mul (i64.xor (local.get $h) (i64.reinterpret_f64 (local.get $x)))
                             (i64.const 1099511628211)))
      (local.set $h (i64.mul (i64.xor (local.get $h) (i64.reinterpret_f64 (local.get $n)))
                             (i64.const 1099511628211)))
      (local.set $h (i64.mul (i64.xor (local.get $h)
                                      (i64.extend_i32_u (i32.reinterpret_f32 (local.get $f))))
                             (i64.const 1099511628211)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (i64.store (i32.const 16) (local.get $h))
    (f64.store (i32.const 24) (local.get $n))
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""

# Measured once; the same on every machine (fuel counts wasm operators: the payload's
# own, 6,700,026, and the NaN guards' that the canonical mode adds, see _nanguard).
FLOAT_HASH = "29d261c71a767457"
FLOAT_FUEL = 8499267
FLOAT_FUEL_UNGUARDED = 6700026  # on the cranelift-canonicalizing engine


def test_nan_bits_are_canonical_and_the_float_run_is_golden():
    o = sandbox.run(wat(FLOAT_WAT))
    assert o.status is Status.OK
    h, nan = struct.unpack("<QQ", o.stdout)
    assert nan == 0x7FF8000000000000  # canonical NaN (x86 would give fff8...)
    assert (f"{h:016x}", o.fuel) == (FLOAT_HASH, FLOAT_FUEL)
    # the same bytes as cranelift's canonicalization gives, with the payload's fuel
    plain = run_on("canonical", wat(FLOAT_WAT))
    assert (plain.stdout, plain.fuel) == (o.stdout, FLOAT_FUEL_UNGUARDED)


def test_float_heavy_c_payload_is_identical_on_every_run(c_payloads):
    runs = [sandbox.run(c_payloads["floaty"], ["20000"]) for _ in range(20)]
    first = runs[0]
    assert first.status is Status.OK
    assert first.stdout.endswith(b"nan=7ff8000000000000\n")
    for o in runs[1:]:
        assert (o.stdout, o.fuel) == (first.stdout, first.fuel)


NATIVE = Limits(native_nans=True)
NBODY_GUARD_FUEL = 375_090  # measured once (the n-body's 1000 steps)


def run_on(flavor: str, wasm: bytes, args=()) -> sandbox.Outcome:
    """A job of `wasm` on one engine flavor (see _flavors), its module as it is, or
    with NaN guards for the guarded engine."""
    code = _nanguard.guard(wasm) if flavor == "guarded" else wasm
    module = _flavors.tag(wasmtime.Module(_flavors.named(flavor), code), flavor)
    prepared = _engine._check("0" * 64, module, flavor != "native")
    return _engine.execute(prepared, args, b"", Limits(native_nans=flavor == "native"))


X86 = __import__("platform").machine().lower() in ("x86_64", "amd64")


def nan_bits(limits: Limits) -> tuple[int, int, int]:
    o = sandbox.run(NAN_BITS, limits=limits)
    assert o.status is Status.OK, o.detail
    return struct.unpack("<QQI", o.stdout)


def test_canonical_engine_gives_canonical_nan_bits():
    assert Limits().native_nans is None  # the default: canonical, as every jobber used to
    for limits in (Limits(), Limits(native_nans=False)):
        assert nan_bits(limits) == (0x7FF8000000000000, 0x7FF8000000000000, 0x7FC00000)


def test_native_engine_leaves_nan_bits_to_the_cpu():
    div, sqrt, f32 = nan_bits(NATIVE)
    for bits, mantissa, exponent in ((div, 52, 0x7FF), (sqrt, 52, 0x7FF), (f32, 23, 0xFF)):
        assert (bits >> mantissa) & exponent == exponent and bits & ((1 << mantissa) - 1)  # NaN
    if X86:  # x86's default NaN has the sign bit set: not canonicalized
        assert (div, sqrt, f32) == (0xFFF8000000000000, 0xFFF8000000000000, 0xFFC00000)


# Float work with no NaN in it: sqrt, div, nearest, min/max, f32 rounding, conversions,
# every value hashed through its bits. Both engines must give the same bytes and fuel.
CLEAN_FLOAT_WAT = f"""
(module
  (import "{WASI}" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (local $i i32) (local $x f64) (local $y f64) (local $f f32) (local $h i64)
    (local.set $x (f64.const 0.5))
    (local.set $h (i64.const 1469598103934665603))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (i32.const 100000)))
      (local.set $y (f64.convert_i32_u (i32.add (local.get $i) (i32.const 1))))
      (local.set $x (f64.add
        (f64.div (f64.sqrt (f64.add (f64.abs (local.get $x)) (local.get $y)))
                 (f64.add (f64.mul (local.get $x) (local.get $x)) (f64.const 1)))
        (f64.min (f64.nearest (f64.mul (local.get $x) (f64.const 3.3)))
                 (f64.max (local.get $x) (f64.const -2.5)))))
      (local.set $f (f32.div (f32.demote_f64 (local.get $x))
                             (f32.add (f32.sqrt (f32.demote_f64 (local.get $y))) (f32.const 1))))
      (local.set $x (f64.sub (local.get $x) (f64.promote_f32 (local.get $f))))
      (local.set $h (i64.mul (i64.xor (local.get $h) (i64.reinterpret_f64 (local.get $x)))
                             (i64.const 1099511628211)))
      (local.set $h (i64.mul (i64.xor (local.get $h)
                                      (i64.extend_i32_u (i32.reinterpret_f32 (local.get $f))))
                             (i64.const 1099511628211)))
      (local.set $h (i64.add (local.get $h) (i64.trunc_sat_f64_s (f64.mul (local.get $x)
                                                                         (f64.const 1e6)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (i64.store (i32.const 16) (local.get $h))
    (f64.store (i32.const 24) (local.get $x))
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""
CLEAN_FLOAT_HASH = "95eed4d44dd4baf4"  # measured once; the same on every machine
CLEAN_FLOAT_FUEL = 7100026  # the payload's own operators (native NaNs)
CLEAN_FLOAT_GUARDED_FUEL = 8600026  # and its NaN guards' (canonical NaNs)


def test_both_engines_agree_on_float_code_without_nans():
    runs = [sandbox.run(wat(CLEAN_FLOAT_WAT), limits=lim) for lim in (Limits(), NATIVE)]
    runs.append(run_on("canonical", wat(CLEAN_FLOAT_WAT)))
    for o in runs:
        assert o.status is Status.OK, o.detail
    guarded, native, canonical = runs
    assert native.stdout == guarded.stdout == canonical.stdout
    assert native.fuel == canonical.fuel == CLEAN_FLOAT_FUEL
    h, x = struct.unpack("<Qd", guarded.stdout)
    assert (f"{h:016x}", guarded.fuel) == (CLEAN_FLOAT_HASH, CLEAN_FLOAT_GUARDED_FUEL)
    assert x == x  # no NaN


def test_nbody_payload_is_the_same_on_both_engines(c_payloads):
    runs = [sandbox.run(c_payloads["nbody"], ["1000"], limits=lim) for lim in (Limits(), NATIVE)]
    assert [(o.status, o.stdout) for o in runs] == [(Status.OK, b"-0.169087605\n")] * 2
    # the guards' operators: 75 stores of a computed double per step (60 velocities,
    # 15 positions), 5 each, and a few outside the loop
    assert runs[0].fuel - runs[1].fuel == NBODY_GUARD_FUEL
    plain = run_on("canonical", c_payloads["nbody"], ["1000"])
    assert (plain.stdout, plain.fuel) == (runs[0].stdout, runs[1].fuel)


def test_never_raises_on_arbitrary_bytes():
    rng = __import__("random").Random(7)
    header = b"\0asm\x01\0\0\0"
    for _ in range(200):
        junk = header + bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        assert sandbox.run(junk).status in (Status.INVALID, Status.IMPORT)


def test_argument_with_nul_is_invalid():
    o = sandbox.run(HELLO, ["a\0b"])
    assert o.status is Status.INVALID and "NUL" in o.detail


def test_a_bug_in_the_sandbox_is_a_crash_not_an_exception(monkeypatch, caplog):
    from sandbox import _engine

    def broken(*args):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(_engine, "_execute", broken)
    o = sandbox.run(HELLO)
    assert o.status is Status.CRASH and "sandbox internal error" in o.detail
