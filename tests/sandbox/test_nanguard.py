"""NaN guards (sandbox/_nanguard.py): a guarded module on the guarded engine must give
the bytes its module gives on the cranelift-canonicalizing engine, whatever NaNs it
makes, loads or passes around; and the sandbox's canonical mode must use them."""

from __future__ import annotations

import platform
import struct

import pytest
import wasmtime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sandbox
from protocol import Limits, Status
from sandbox import _cache, _engine, _flavors, _nanguard

WASI = "wasi_snapshot_preview1"
X86 = platform.machine().lower() in ("x86_64", "amd64")
BIG = Limits(fuel=10**10, output_kb=4096)

F64 = [  # bit patterns: NaNs of every kind, and ordinary values
    0x7FF8000000000000,  # the canonical NaN
    0xFFF8000000000000,  # x86's default NaN
    0x7FF8000000000123,  # a quiet NaN with a payload
    0x7FF0000000000001,  # a signaling NaN
    0xFFF4000000000000,  # a negative signaling NaN
    0x7FF00000000007A2,  # R's NA
    0x3FF0000000000000,  # 1.0
    0x8000000000000000,  # -0.0
    0x7FF0000000000000,  # inf
    0xFFF0000000000000,  # -inf
    0x0000000000000000,  # 0.0
    0xC004000000000000,  # -2.5
]
F32 = [0x7FC00000, 0xFFC00000, 0x7FC00123, 0x7F800001, 0xFF900000, 0x3F800000, 0x80000000]
F32 += [0x7F800000, 0xFF800000, 0, 0xC0200000]

UNARY = ["neg", "abs", "sqrt", "ceil", "floor", "trunc", "nearest"]
BINARY = ["add", "sub", "mul", "div", "min", "max", "copysign"]


def run_on(flavor: str, wasm: bytes, args=(), limits: Limits = BIG) -> sandbox.Outcome:
    """A job of `wasm` on one engine flavor: as it is, or with NaN guards (guarded)."""
    code = _nanguard.guard(wasm) if flavor == "guarded" else wasm
    module = _flavors.tag(wasmtime.Module(_flavors.named(flavor), code), flavor)
    prepared = _engine._check("0" * 64, module, flavor != "native")
    native = Limits(limits.fuel, limits.memory_mb, limits.time_s, limits.output_kb, True)
    return _engine.execute(prepared, args, b"", native if flavor == "native" else limits)


def same_as_canonical(wasm: bytes, args=()) -> sandbox.Outcome:
    """Runs `wasm` guarded and on the canonical engine; asserts the same bytes."""
    guarded, canonical = run_on("guarded", wasm, args), run_on("canonical", wasm, args)
    assert guarded.status is canonical.status is Status.OK, (guarded.detail, canonical.detail)
    if guarded.stdout != canonical.stdout:
        pairs = zip(guarded.stdout, canonical.stdout, strict=False)
        at = next(i for i, (a, b) in enumerate(pairs) if a != b)
        pytest.fail(f"guarded output differs from the canonical engine's at byte {at}")
    return guarded


def command(body: str, data: bytes = b"", globals_: str = "", funcs: str = "") -> bytes:
    """A command whose `_start` runs `body` (which appends to the output with $out64 and
    $out32: bytes at [1024, $p)) and then writes that output to stdout."""
    text = "".join(f"\\{c:02x}" for c in data)
    return wasmtime.wat2wasm(f"""
(module
  (import "{WASI}" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 64)
  (data (i32.const 256) "{text}")
  (global $p (mut i32) (i32.const 1024))
  {globals_}
  (func $out64 (param i64)
    (i64.store (global.get $p) (local.get 0))
    (global.set $p (i32.add (global.get $p) (i32.const 8))))
  (func $out32 (param i32)
    (i32.store (global.get $p) (local.get 0))
    (global.set $p (i32.add (global.get $p) (i32.const 4))))
  {funcs}
  (func (export "_start") (local $i i32) (local $j i32) (local $t f64) (local $u f64)
    (local $s f32) (local $k f64) (local $n i32)
    {body}
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.sub (global.get $p) (i32.const 1024)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
""")


# every way a float's bits can leave a value: WAT appending something to the output
# from the value of expression {e}
ROUTES = [
    "(f64.store (global.get $p) {e}) (call $out64 (i64.load (global.get $p)))",
    "(call $out64 (i64.reinterpret_f64 {e}))",
    "(call $out64 (i64.reinterpret_f64 (f64.neg {e})))",
    "(call $out64 (i64.reinterpret_f64 (f64.abs {e})))",
    "(call $out64 (i64.reinterpret_f64 (f64.copysign (f64.const 1) {e})))",
    "(call $out64 (i64.reinterpret_f64 (f64.copysign {e} (f64.const -1))))",
    "(global.set $g {e}) (call $out64 (i64.reinterpret_f64 (global.get $g)))",
    "(call $out64 (i64.reinterpret_f64 (call $id {e})))",
    "(call $out64 (i64.reinterpret_f64 (block (result f64) {e})))",
    "(call $out64 (i64.reinterpret_f64 (select {e} (f64.const 2) (local.get $i))))",
    "(call $out64 (i64.reinterpret_f64 (select (result f64) (f64.const 2) {e} (local.get $j))))",
    "(call $out64 (i64.reinterpret_f64 (f64.add {e} (f64.const 1))))",
    "(call $out64 (i64.reinterpret_f64 (f64.promote_f32 (f32.demote_f64 {e}))))",
    "(call $out32 (f64.eq {e} {e}))",
    "(call $out32 (f64.lt {e} (f64.const 1)))",
    "(call $out64 (i64.trunc_sat_f64_s {e}))",
    # through a local whose every read is harmless (arithmetic, comparisons)
    "(local.set $k {e}) (call $out64 (i64.reinterpret_f64 (f64.sub (local.get $k) (f64.const 1))))"
    " (call $out32 (f64.ne (local.get $k) (local.get $k)))",
    # through a local read into a reinterpretation, and one copied into it
    "(local.set $u {e}) (call $out64 (i64.reinterpret_f64 (local.get $u)))",
    "(local.set $t {e}) (local.set $u (local.get $t))"
    " (call $out64 (i64.reinterpret_f64 (local.get $u)))",
]
ROUTE_FUNCS = "(func $id (param f64) (result f64) (local.get 0))"
ROUTE_GLOBALS = "(global $g (mut f64) (f64.const 0))"


def ops64(x: str, y: str) -> list[str]:
    """Float expressions of x and y: every arithmetic and sign-bit operation."""
    exprs = [f"(f64.{op} {x})" for op in UNARY]
    exprs += [f"(f64.{op} {x} {y})" for op in BINARY] + [f"(f64.{op} {y} {x})" for op in BINARY]
    exprs += [f"(f64.promote_f32 (f32.demote_f64 {x}))", x]
    return exprs


def test_every_float_operation_on_every_kind_of_nan_gives_the_canonical_engines_bytes():
    data = b"".join(struct.pack("<Q", b) for b in F64)
    x = "(f64.load offset=256 (i32.shl (local.get $i) (i32.const 3)))"
    y = "(f64.load offset=256 (i32.shl (local.get $j) (i32.const 3)))"
    each = "\n".join(r.format(e=e) for e in ops64(x, y) for r in ROUTES)
    body = f"""
    (loop $a (local.set $j (i32.const 0))
      (loop $b {each}
        (br_if $b (i32.lt_u (local.tee $j (i32.add (local.get $j) (i32.const 1)))
                            (i32.const {len(F64)}))))
      (br_if $a (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1)))
                          (i32.const {len(F64)}))))"""
    wasm = command(body, data, ROUTE_GLOBALS, ROUTE_FUNCS)
    same_as_canonical(wasm)
    if X86:  # without canonicalization some bits differ: the test can see a missing guard
        assert run_on("native", wasm).stdout != run_on("canonical", wasm).stdout


def test_f32_operations_and_constants_give_the_canonical_engines_bytes():
    data = b"".join(struct.pack("<I", b) for b in F32)
    x = "(f32.load offset=256 (i32.shl (local.get $i) (i32.const 2)))"
    y = "(f32.load offset=256 (i32.shl (local.get $j) (i32.const 2)))"
    exprs = [f"(f32.{op} {x})" for op in UNARY] + [f"(f32.{op} {x} {y})" for op in BINARY]
    exprs += [f"(f32.demote_f64 (f64.promote_f32 {x}))", f"(f32.div {x} (f32.const 0))"]
    routes = [
        "(call $out32 (i32.reinterpret_f32 (local.get $s)))",
        "(f32.store (global.get $p) (local.get $s)) (call $out32 (i32.load (global.get $p)))",
        "(call $out32 (i32.reinterpret_f32 (f32.neg (local.get $s))))",
        "(call $out64 (i64.reinterpret_f64 (f64.promote_f32 (local.get $s))))",
    ]
    each = "\n".join(f"(local.set $s {e}) {r}" for e in exprs for r in routes)
    consts = "\n".join(  # NaNs from constants and reinterpreted integers, stored as they are
        f"(call $out64 (i64.reinterpret_f64 (f64.reinterpret_i64 (i64.const {b}))))"
        f"(call $out64 (i64.reinterpret_f64 (f64.add (f64.reinterpret_i64 (i64.const {b}))"
        " (f64.const 0))))"
        for b in F64
    )
    body = f"""{consts}
    (loop $a (local.set $j (i32.const 0))
      (loop $b {each}
        (br_if $b (i32.lt_u (local.tee $j (i32.add (local.get $j) (i32.const 1)))
                            (i32.const {len(F32)}))))
      (br_if $a (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1)))
                          (i32.const {len(F32)}))))"""
    same_as_canonical(command(body, data))


# --- random programs ----------------------------------------------------------------

LOCALS = 4


def expressions(depth: int) -> st.SearchStrategy[str]:
    leaf = st.one_of(
        st.integers(0, LOCALS - 1).map(lambda k: f"(local.get $v{k})"),
        st.sampled_from(F64).map(lambda b: f"(f64.reinterpret_i64 (i64.const {b}))"),
        st.integers(0, len(F64) - 1).map(
            lambda k: f"(f64.load offset={256 + 8 * k} (i32.const 0))"
        ),
    )
    if depth == 0:
        return leaf
    sub = expressions(depth - 1)
    return st.one_of(
        leaf,
        st.tuples(st.sampled_from(UNARY), sub).map(lambda t: f"(f64.{t[0]} {t[1]})"),
        st.tuples(st.sampled_from(BINARY), sub, sub).map(lambda t: f"(f64.{t[0]} {t[1]} {t[2]})"),
        st.tuples(sub, sub, sub).map(lambda t: f"(select {t[0]} {t[1]} (f64.lt {t[2]} {t[0]}))"),
    )


SINKS = [
    "(call $out64 (i64.reinterpret_f64 {}))",
    "(f64.store (global.get $p) {}) (call $out64 (i64.load (global.get $p)))",
    "(call $out32 (f64.ne {0} {0}))",
    "(drop {})",
]


@st.composite
def programs(draw) -> str:
    lines = []
    for _ in range(draw(st.integers(1, 8))):
        expr = draw(expressions(3))
        if draw(st.booleans()):
            lines.append(f"(local.set $v{draw(st.integers(0, LOCALS - 1))} {expr})")
        else:
            lines.append(draw(st.sampled_from(SINKS)).format(expr))
    sinks = [draw(st.sampled_from(SINKS[:2])).format(f"(local.get $v{k})") for k in range(LOCALS)]
    return "\n".join(lines + sinks)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_random_float_programs_give_the_canonical_engines_bytes(body):
    data = b"".join(struct.pack("<Q", b) for b in F64)
    decl = " ".join(f"(local $v{k} f64)" for k in range(LOCALS))
    # the random program in a function of its own, with its own locals
    same_as_canonical(command("(call $prog)", data, funcs=f"(func $prog {decl} {body})"))


# --- C ------------------------------------------------------------------------------

NAN_C = r"""
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static double from(uint64_t b) { double d; memcpy(&d, &b, 8); return d; }
static uint64_t bits(double d) { uint64_t b; memcpy(&b, &d, 8); return b; }

int main(void) {
    volatile double zero = 0.0, one = 1.0;
    double na = from(0x7ff00000000007a2ULL); /* R's NA: a payload */
    double v[] = {
        zero / zero, sqrt(-one), na, na + one, one + na, -(zero / zero), fabs(zero / zero),
        copysign(one, zero / zero), na * 2, fmin(na, one), fmax(zero / zero, one),
        (double)(float)na, -na, na - na, INFINITY - INFINITY, from(0xfff4000000000000ULL),
    };
    double copy[sizeof v / sizeof v[0]];
    memcpy(copy, v, sizeof v);
    for (unsigned i = 0; i < sizeof v / sizeof v[0]; i++)
        printf("%2u %016llx %016llx %f %d\n", i, (unsigned long long)bits(v[i]),
               (unsigned long long)bits(copy[i] * one), v[i], signbit(v[i]) != 0);
    return 0;
}
"""


def test_a_c_program_full_of_nans_prints_what_the_canonical_engine_prints():
    from tasks import compile_c

    wasm = compile_c(NAN_C)
    o = same_as_canonical(wasm)
    assert b"7ff00000000007a2" in o.stdout  # a NaN loaded, not computed, keeps its bits
    assert b"-nan" in o.stdout  # -(0/0) is the canonical NaN with its sign flipped
    if X86:
        assert run_on("native", wasm).stdout != o.stdout


# --- the sandbox's canonical mode -------------------------------------------------------


def test_the_canonical_mode_runs_guarded_modules_and_falls_back_for_the_rest(tmp_path):
    float_code = command(
        "(call $out64 (i64.reinterpret_f64 (f64.div (f64.const 0) (f64.load (i32.const 256)))))",
        struct.pack("<d", 0.0),
    )
    assert _flavors.flavor_of(_engine.compile(float_code)) == "guarded"
    assert _flavors.flavor_of(_engine.compile(float_code, False)) == "native"
    assert sandbox.run(float_code).stdout == struct.pack("<Q", 0x7FF8000000000000)
    simd = command("(drop (f64x2.add (v128.const i64x2 0 0) (v128.const i64x2 0 0)))")
    with pytest.raises(_nanguard.Unsupported, match="0xfd"):
        _nanguard.guard(simd)
    assert _flavors.flavor_of(_engine.compile(simd)) == "canonical"
    assert sandbox.run(simd).status is Status.OK
    # the cache keeps each under its engine's key, and loads each back on its engine
    # (for slot workers' watched engines by default, or for the in-process ones)
    cache = _cache.ModuleCache(tmp_path)
    for wasm, base in ((float_code, "guarded"), (simd, "canonical")):
        sha = cache.put(wasm)
        for watched, flavor in ((True, base + _flavors.WATCHED), (False, base)):
            cache.build(sha, True, watched)
            loaded = cache.load(sha, True, watched)
            assert _flavors.flavor_of(loaded) == flavor
            path = cache.compiled_path(sha, True, watched)
            assert path.parent.name == _flavors.engine_keys(watched)[True]
            assert path.read_bytes()[8:40] == _flavors.FLAVOR_KEYS[flavor].encode()
    assert _flavors.ENGINE_KEYS[False] == _flavors.FLAVOR_KEYS["native" + _flavors.WATCHED]
    assert _flavors.engine_keys(False)[False] == _flavors.FLAVOR_KEYS["native"]
    assert len(set(_flavors.FLAVOR_KEYS.values())) == len(_flavors.FLAVORS)


def test_invalid_and_oversized_modules(monkeypatch):
    with pytest.raises(wasmtime.WasmtimeError, match="type mismatch"):
        _engine.compile(wasmtime.wat2wasm('(module (func (export "_start") (i32.const 1)))'))
    monkeypatch.setattr(_nanguard, "MAX_BYTES", 100)
    big = command("(nop)")
    with pytest.raises(_nanguard.Unsupported, match="over 100"):
        _nanguard.guard(big)
    assert _flavors.flavor_of(_engine.compile(big)) == "canonical"


def test_branch_hints_point_at_the_guards_branches():
    wasm = command(ROUTES[1].format(e="(f64.sqrt (f64.load (i32.const 256)))"))
    guarded = _nanguard.guard(wasm)
    sections, i = {}, 8
    while i < len(guarded):
        size, j = _nanguard._u(guarded, i + 1)
        name = guarded[j + 1 : j + 1 + guarded[j]] if guarded[i] == 0 else b""
        sections[guarded[i], bytes(name)] = (j, j + size)
        i = j + size
    start, _ = sections[0, _nanguard.HINTS.encode()]
    content = guarded[start + 1 + len(_nanguard.HINTS) :]
    n, k = _nanguard._u(content, 0)
    assert n == 1  # one function has a guard
    func, k = _nanguard._u(content, k)
    count, k = _nanguard._u(content, k)
    offsets = []
    for _ in range(count):
        off, k = _nanguard._u(content, k)
        assert content[k : k + 2] == b"\x01\x01"  # one byte: likely taken
        offsets.append(off)
        k += 2
    code, _ = sections[10, b""]
    bodies, k = _nanguard._u(guarded, code)
    for index in range(bodies):
        size, k = _nanguard._u(guarded, k)
        if index + 1 == func:  # one imported function (fd_write) before the bodies
            assert offsets and all(guarded[k + off] == 0x0D for off in offsets)
        k += size
