"""NaN guards: a module rewritten so that no NaN bits from the CPU can be seen.

`guard(wasm)` returns a module that gives, on an engine *without* NaN
canonicalization, the same bytes as `wasm` gives on the canonical engine (cranelift's
``cranelift_nan_canonicalization``: a canonical NaN after every float operation) on
every CPU; or raises Unsupported (the caller then compiles `wasm` for the canonical
engine). docs/sandbox.md ("NaN guards") has the argument; in short:

- Only float *arithmetic* (add, sub, mul, div, sqrt, min, max, ceil, floor, trunc,
  nearest, promote, demote) makes NaN bits the CPU chooses; loads, constants,
  reinterpretations, conversions from integers and the sign-bit operations abs, neg
  and copysign are exact. An arithmetic result may go unguarded wherever a NaN's
  bits make no difference: into more arithmetic, a comparison, a truncation to an
  integer, ``drop``, or a local all of whose reads go only to such places.
- Anywhere else (a store, a reinterpretation, abs, neg, copysign, select, a global,
  a call's argument, a result, a branch's or an exception's values, a local read
  into such a place) it gets a *guard* right after the operation that made it:
  ``block (param f) (result f) local.tee $t local.get $t local.get $t f.ge br_if 0
  drop f.const nan end``, the canonical NaN in place of any NaN, as cranelift puts
  after every operation. Its branch is hinted as taken (a
  ``metadata.code.branch_hint`` section, read by the guarded engine), so a NaN-free
  value pays a compare and a branch not taken. Fuel counts the guard's operators
  (5 for a value that is no NaN, 6 for a NaN): the same on every machine.

Supported: the core instructions, sign extension, saturating truncation, bulk
memory, reference types, multi-value, tail calls, exceptions (``try_table``),
wide arithmetic, memory64 and multi-memory. Anything else (SIMD, atomics, GC
and typed function references, a type section with more than function types)
raises Unsupported: such modules keep cranelift's canonicalization. So do modules
over MAX_BYTES (the pass reads every instruction, in Python: about 0.6 s a MB) and
modules it cannot read (wasmtime then refuses them, or compiles them as they are).
"""

from __future__ import annotations

import struct

VERSION = 1  # part of the guarded engine's key: a new pass means new compiled forms
MAX_BYTES = 8 * 1024 * 1024  # larger modules are not guarded: seconds of Python, each MB

HINTS = "metadata.code.branch_hint"
_CANON = {0x7C: b"\x44" + struct.pack("<Q", 0x7FF8000000000000), 0x7D: b"\x43\x00\x00\xc0\x7f"}
_GE = {0x7C: 0x66, 0x7D: 0x60}  # f64.ge, f32.ge
_A64, _A32 = 0x7C, 0x7D  # an arithmetic result's kind is its value type
_OTHER, _LOCAL = 0, 1
_MAX_LOCALS = 50_000  # wasmtime's limit on a function's locals


class Unsupported(Exception):
    """This pass cannot guard the module; the reason is the message."""


# --- decoding helpers ---------------------------------------------------------------


def _u(b: bytes, i: int) -> tuple[int, int]:
    """An unsigned LEB128 at `i`: (value, next offset)."""
    result = shift = 0
    while True:
        x = b[i]
        i += 1
        result |= (x & 0x7F) << shift
        if x < 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise Unsupported("LEB128 too long")


def _s(b: bytes, i: int) -> tuple[int, int]:
    """A signed LEB128 at `i`: (value, next offset)."""
    result = shift = 0
    while True:
        x = b[i]
        i += 1
        result |= (x & 0x7F) << shift
        shift += 7
        if x < 0x80:
            if x & 0x40:
                result -= 1 << shift
            return result, i
        if shift > 70:
            raise Unsupported("LEB128 too long")


def _skip(b: bytes, i: int) -> int:
    """Past the LEB128 at `i`."""
    while b[i] & 0x80:
        i += 1
    return i + 1


def _leb(n: int) -> bytes:
    out = bytearray()
    while True:
        x = n & 0x7F
        n >>= 7
        if n:
            out.append(x | 0x80)
        else:
            out.append(x)
            return bytes(out)


def _sleb(n: int) -> bytes:
    out = bytearray()
    while True:
        x = n & 0x7F
        n >>= 7
        if (n == 0 and not x & 0x40) or (n == -1 and x & 0x40):
            out.append(x)
            return bytes(out)
        out.append(x | 0x80)


def _valtype(b: bytes, i: int) -> int:
    """Past the value type at `i`."""
    t = b[i]
    if t in (0x63, 0x64):  # (ref null? heaptype)
        return _s(b, i + 1)[1]
    if t in (0x7F, 0x7E, 0x7D, 0x7C, 0x7B) or 0x69 <= t <= 0x74:
        return i + 1
    raise Unsupported(f"value type {t:#x}")


def _limits(b: bytes, i: int) -> int:
    flags = b[i]
    if flags & ~0x0F:
        raise Unsupported(f"limits flags {flags:#x}")
    i = _skip(b, i + 1)
    if flags & 1:
        i = _skip(b, i)
    if flags & 8:  # custom page size
        i = _skip(b, i)
    return i


def _name(b: bytes, i: int) -> int:
    n, i = _u(b, i)
    return i + n


# --- the module ------------------------------------------------------------------------


class _Module:
    """What a function body's stack depends on: types, functions' and tags' types."""

    def __init__(self) -> None:
        self.types: list[tuple[int, int]] = []  # (params, results) of each function type
        self.funcs: list[int] = []  # type index of each function, imports first
        self.tags: list[int] = []  # type index of each tag, imports first
        self.imported = 0  # functions imported

    def read_types(self, b: bytes, i: int, end: int) -> None:
        n, i = _u(b, i)
        for _ in range(n):
            if b[i] != 0x60:
                raise Unsupported(f"a type of form {b[i]:#x} (only function types are read)")
            counts = []
            i += 1
            for _ in range(2):
                k, i = _u(b, i)
                for _ in range(k):
                    i = _valtype(b, i)
                counts.append(k)
            self.types.append((counts[0], counts[1]))
        if i != end:
            raise Unsupported("type section length")

    def read_imports(self, b: bytes, i: int, end: int) -> None:
        n, i = _u(b, i)
        for _ in range(n):
            i = _name(b, _name(b, i))
            kind = b[i]
            i += 1
            if kind == 0:
                t, i = _u(b, i)
                self.funcs.append(t)
                self.imported += 1
            elif kind == 1:
                i = _limits(b, _valtype(b, i))
            elif kind == 2:
                i = _limits(b, i)
            elif kind == 3:
                i = _valtype(b, i) + 1
            elif kind == 4:
                t, i = _u(b, i + 1)
                self.tags.append(t)
            else:
                raise Unsupported(f"import kind {kind:#x}")
        if i != end:
            raise Unsupported("import section length")

    def read_indices(self, b: bytes, i: int, end: int, into: list[int], attr: bool) -> None:
        n, i = _u(b, i)
        for _ in range(n):
            if attr:  # a tag's attribute byte
                i += 1
            t, i = _u(b, i)
            into.append(t)
        if i != end:
            raise Unsupported("section length")

    def signature(self, t: int) -> tuple[int, int]:
        if not 0 <= t < len(self.types):
            raise Unsupported(f"type index {t}")
        return self.types[t]


def guard(wasm: bytes) -> bytes:
    """`wasm` with NaN guards and their branch hints (see the module docstring).

    Raises Unsupported when it cannot: the caller uses the canonical engine.
    """
    try:
        return _guard(bytes(wasm))
    except (IndexError, ValueError, RecursionError) as e:
        raise Unsupported(f"unreadable module ({type(e).__name__})") from None


def _guard(b: bytes) -> bytes:
    if b[:8] != b"\0asm\x01\0\0\0":
        raise Unsupported("not a core module")
    if len(b) > MAX_BYTES:
        raise Unsupported(f"{len(b):,} bytes: over {MAX_BYTES:,}")
    sections = []  # (id, start of the section, start of its content, end)
    i = 8
    while i < len(b):
        size, j = _u(b, i + 1)
        sections.append((b[i], i, j, j + size))
        i = j + size
    if i != len(b):
        raise Unsupported("section past the end")
    m = _Module()
    for sid, _, start, end in sections:
        if sid == 1:
            m.read_types(b, start, end)
        elif sid == 2:
            m.read_imports(b, start, end)
        elif sid == 3:
            m.read_indices(b, start, end, m.funcs, attr=False)
        elif sid == 13:
            m.read_indices(b, start, end, m.tags, attr=True)
    # the guards' block types, after the module's own types
    block_types = {0x7C: len(m.types), 0x7D: len(m.types) + 1}
    out = bytearray(b[:8])
    hints = b""
    for sid, head, start, end in sections:
        if sid == 0 and _custom_name(b, start) == HINTS:
            continue  # the payload's own hints: their offsets no longer hold
        if sid == 1:
            n, j = _u(b, start)
            extra = bytes([0x60, 1, 0x7C, 1, 0x7C, 0x60, 1, 0x7D, 1, 0x7D])
            _section(out, 1, _leb(n + 2) + b[j:end] + extra)
        elif sid == 10:
            code, hints = _code(b, start, end, m, block_types)
            if hints:  # before the code section, where wasmtime reads it
                _section(out, 0, _leb(len(HINTS)) + HINTS.encode() + hints)
            _section(out, 10, code)
        else:
            out += b[head:end]
    return bytes(out)


def _custom_name(b: bytes, i: int) -> str:
    n, i = _u(b, i)
    return b[i : i + n].decode("utf-8", "replace")


def _section(out: bytearray, sid: int, content: bytes) -> None:
    out.append(sid)
    out += _leb(len(content))
    out += content


def _code(b: bytes, i: int, end: int, m: _Module, block_types: dict) -> tuple[bytes, bytes]:
    """The code section's content, guarded, and the branch hints' content."""
    n, i = _u(b, i)
    if n != len(m.funcs) - m.imported:
        raise Unsupported("function and code counts differ")
    code = bytearray(_leb(n))
    hinted = []  # (function index, its hints' bytes)
    for k in range(n):
        size, i = _u(b, i)
        body_end = i + size
        params, results = m.signature(m.funcs[m.imported + k])
        body, offsets = _body(b, i, body_end, params, results, m, block_types)
        code += _leb(len(body))
        code += body
        if offsets:
            entries = b"".join(_leb(o) + b"\x01\x01" for o in offsets)  # 1 byte: likely taken
            hinted.append(_leb(m.imported + k) + _leb(len(offsets)) + entries)
        i = body_end
    if i != end:
        raise Unsupported("code section length")
    return bytes(code), (_leb(len(hinted)) + b"".join(hinted) if hinted else b"")


# --- one function --------------------------------------------------------------------

# operators without immediates: opcode -> (values popped, what is pushed, whether the
# popped values' NaN bits matter). Pushed: None (nothing), _OTHER (an exact value), or
# _A64/_A32 (an arithmetic float result).
_SIMPLE: dict[int, tuple[int, int | None, bool]] = {0x01: (0, None, False)}
_SIMPLE.update({op: (1, _OTHER, False) for op in (0x45, 0x50, 0x67, 0x68, 0x69, 0x79, 0x7A)})
_SIMPLE.update({0x7B: (1, _OTHER, False), 0xD1: (1, _OTHER, False), 0xD3: (2, _OTHER, False)})
_SIMPLE.update({op: (2, _OTHER, False) for op in range(0x46, 0x50)})
_SIMPLE.update({op: (2, _OTHER, False) for op in range(0x51, 0x67)})  # int and float compares
_SIMPLE.update({op: (2, _OTHER, False) for op in range(0x6A, 0x79)})
_SIMPLE.update({op: (2, _OTHER, False) for op in range(0x7C, 0x8B)})
_SIMPLE.update({op: (1, _OTHER, True) for op in (0x8B, 0x8C, 0x99, 0x9A, 0xBC, 0xBD)})
_SIMPLE.update({op: (2, _OTHER, True) for op in (0x98, 0xA6)})  # copysign
_SIMPLE.update({op: (1, _A32, False) for op in (*range(0x8D, 0x92), 0xB6)})
_SIMPLE.update({op: (2, _A32, False) for op in range(0x92, 0x98)})
_SIMPLE.update({op: (1, _A64, False) for op in (*range(0x9B, 0xA0), 0xBB)})
_SIMPLE.update({op: (2, _A64, False) for op in range(0xA0, 0xA6)})
_SIMPLE.update({op: (1, _OTHER, False) for op in range(0xA7, 0xBC) if op not in (0xB6, 0xBB)})
_SIMPLE.update({op: (1, _OTHER, False) for op in (0xBE, 0xBF, *range(0xC0, 0xC5))})
_SIMPLE.update({0x1A: (1, None, False), 0x1B: (3, _OTHER, True)})  # drop, select
# loads and stores (a memarg follows): (popped, pushed)
_MEMORY = {op: (1, _OTHER) for op in range(0x28, 0x36)}
_MEMORY.update({op: (2, None) for op in range(0x36, 0x3F)})
# operators with one index (or heap type) as immediate: (popped, pushed): global.get,
# global.set, table.get, table.set, memory.size, memory.grow, ref.null, ref.func
_INDEXED = {0x23: (0, 1), 0x24: (1, 0), 0x25: (1, 1), 0x26: (2, 0), 0x3F: (0, 1)}
_INDEXED.update({0x40: (1, 1), 0xD0: (0, 1), 0xD2: (0, 1)})
# 0xFC operators: sub-opcode -> (immediate LEB128s, popped, pushed)
_FC = {op: (0, 1, 1) for op in range(8)}  # saturating truncations: any NaN gives 0
_FC.update({8: (2, 3, 0), 9: (1, 0, 0), 10: (2, 3, 0), 11: (1, 3, 0), 12: (2, 3, 0)})
_FC.update({13: (1, 0, 0), 14: (2, 3, 0), 15: (1, 2, 1), 16: (1, 0, 1), 17: (1, 3, 0)})
_FC.update({19: (0, 4, 2), 20: (0, 4, 2), 21: (0, 2, 2), 22: (0, 2, 2)})


def _body(b, i, end, nparams, nresults, m, block_types):  # noqa: C901, PLR0912, PLR0915
    """A function body (locals, then code) with its guards, and the offsets of their
    br_if instructions in it."""
    start = i
    groups, i = _u(b, i)
    nlocals = nparams
    for _ in range(groups):
        count, i = _u(b, i)
        i = _valtype(b, i)
        nlocals += count
    code_start = i
    if nlocals > _MAX_LOCALS:
        raise Unsupported("too many locals")

    kind: list[int] = []  # per value: _OTHER, _LOCAL, _A64 or _A32
    where: list[int] = []  # per value: its local (_LOCAL), or the offset after its maker
    guard = bytearray()  # per value: 1 if an arithmetic result must be guarded
    into: list[tuple[int, int]] = []  # (arithmetic value, the local it is stored into)
    copies: list[tuple[int, int]] = []  # (local, local it is copied into)
    sensitive = set()  # locals read into a place where bits are seen

    def new(k: int, w: int) -> int:
        kind.append(k)
        where.append(w)
        guard.append(0)
        return len(kind) - 1

    def seen(v: int) -> None:  # `v`'s bits may be seen
        if v >= 0:
            k = kind[v]
            if k == _LOCAL:
                sensitive.add(where[v])
            elif k != _OTHER:
                guard[v] = 1

    stack: list[int] = []
    # control frames: [stack height, label arity for br, results, params, unreachable]
    frames = [[0, nresults, nresults, 0, False]]

    def pop() -> int:
        f = frames[-1]
        if len(stack) > f[0]:
            return stack.pop()
        if f[4]:
            return -1  # unreachable code: any value
        raise Unsupported("stack underflow")

    def pops(n: int) -> None:
        for _ in range(n):
            seen(pop())

    def unreachable() -> None:
        f = frames[-1]
        del stack[f[0] :]
        f[4] = True

    def enter(bt_params: int, bt_results: int, is_loop: bool) -> None:
        args = [pop() for _ in range(bt_params)]
        for v in args:
            seen(v)
        frames.append(
            [len(stack), bt_params if is_loop else bt_results, bt_results, bt_params, False]
        )
        for _ in range(bt_params):
            stack.append(new(_OTHER, 0))

    def blocktype(i: int) -> tuple[int, int, int]:
        t = b[i]
        if t == 0x40:
            return 0, 0, i + 1
        if t in (0x7F, 0x7E, 0x7D, 0x7C, 0x7B, 0x63, 0x64) or 0x69 <= t <= 0x74:
            return 0, 1, _valtype(b, i)
        idx, i = _s(b, i)
        p, r = m.signature(idx)
        return p, r, i

    while i < end:
        op = b[i]
        i += 1
        simple = _SIMPLE.get(op)
        if simple is not None:
            n, push, bits = simple
            if n == 1:
                v = pop()
                if bits:
                    seen(v)
            elif n:
                for _ in range(n):
                    v = pop()
                    if bits:
                        seen(v)
            if push is not None:
                stack.append(new(push, i))
        elif op == 0x20:  # local.get
            x, i = _u(b, i)
            stack.append(new(_LOCAL, x))
        elif op == 0x21 or op == 0x22:  # local.set, local.tee
            x, i = _u(b, i)
            v = pop()
            if v >= 0:
                k = kind[v]
                if k == _LOCAL:
                    copies.append((where[v], x))
                elif k != _OTHER:
                    into.append((v, x))
            if op == 0x22:
                stack.append(new(_LOCAL, x))
        elif op in _MEMORY:
            n, push = _MEMORY[op]
            align, i = _u(b, i)
            if align & 0x40:
                i = _skip(b, i)
            i = _skip(b, i)
            pops(n)
            if push is not None:
                stack.append(new(_OTHER, 0))
        elif op == 0x1C:  # select with its type (one value type)
            if b[i] != 1:
                raise Unsupported("select with other than one type")
            i = _valtype(b, i + 1)
            pops(3)
            stack.append(new(_OTHER, 0))
        elif 0x41 <= op <= 0x44:  # consts
            i = _skip(b, i) if op < 0x43 else i + (4 if op == 0x43 else 8)
            stack.append(new(_OTHER, 0))
        elif op == 0x02 or op == 0x03:  # block, loop
            p, r, i = blocktype(i)
            enter(p, r, op == 0x03)
        elif op == 0x04:  # if
            p, r, i = blocktype(i)
            pop()
            enter(p, r, False)
        elif op == 0x1F:  # try_table
            p, r, i = blocktype(i)
            n, i = _u(b, i)
            for _ in range(n):
                c = b[i]
                if c > 3:
                    raise Unsupported(f"catch kind {c}")
                i = _skip(b, i + 1)
                if c < 2:
                    i = _skip(b, i)
            enter(p, r, False)
        elif op == 0x05:  # else
            f = frames[-1]
            pops(len(stack) - f[0])
            f[4] = False
            for _ in range(f[3]):
                stack.append(new(_OTHER, 0))
        elif op == 0x0B:  # end
            f = frames[-1]
            pops(len(stack) - f[0])
            frames.pop()
            if not frames:
                break
            for _ in range(f[2]):
                stack.append(new(_OTHER, 0))
        elif op == 0x0C:  # br
            depth, i = _u(b, i)
            pops(frames[-1 - depth][1])
            unreachable()
        elif op == 0x0D:  # br_if
            depth, i = _u(b, i)
            pop()
            n = frames[-1 - depth][1]
            pops(n)
            for _ in range(n):
                stack.append(new(_OTHER, 0))
        elif op == 0x0E:  # br_table
            n, i = _u(b, i)
            for _ in range(n):
                i = _skip(b, i)
            depth, i = _u(b, i)
            pop()
            pops(frames[-1 - depth][1])
            unreachable()
        elif op == 0x0F:  # return
            pops(nresults)
            unreachable()
        elif op == 0x00:  # unreachable
            unreachable()
        elif 0x10 <= op <= 0x13:  # call, call_indirect, return_call, return_call_indirect
            x, i = _u(b, i)
            if op & 1:  # indirect: a type index, then a table's
                i = _skip(b, i)
                pop()
            elif not 0 <= x < len(m.funcs):
                raise Unsupported(f"function index {x}")
            p, r = m.signature(x if op & 1 else m.funcs[x])
            pops(p)
            if op >= 0x12:
                unreachable()
            for _ in range(0 if op >= 0x12 else r):
                stack.append(new(_OTHER, 0))
        elif op == 0x08:  # throw
            x, i = _u(b, i)
            if not 0 <= x < len(m.tags):
                raise Unsupported(f"tag index {x}")
            pops(m.signature(m.tags[x])[0])
            unreachable()
        elif op == 0x0A:  # throw_ref
            pop()
            unreachable()
        elif op in _INDEXED:  # one index (or heap type) as immediate
            i = _skip(b, i)
            n, r = _INDEXED[op]
            pops(n)
            for _ in range(r):
                stack.append(new(_OTHER, 0))
        elif op == 0xFC:
            sub, i = _u(b, i)
            if sub not in _FC:
                raise Unsupported(f"operator 0xfc {sub}")
            imms, n, r = _FC[sub]
            for _ in range(imms):
                i = _skip(b, i)
            pops(n) if sub > 7 else pop()
            for _ in range(r):
                stack.append(new(_OTHER, 0))
        else:
            raise Unsupported(f"operator {op:#x}")
    if frames or i != end:
        raise Unsupported("function body does not end where its size says")

    # locals whose values reach a sensitive one are sensitive too
    changed = True
    while changed:
        changed = False
        for src, dst in copies:
            if dst in sensitive and src not in sensitive:
                sensitive.add(src)
                changed = True
    for v, x in into:
        if x in sensitive:
            guard[v] = 1
    return _emit(b, start, code_start, end, nlocals, kind, where, guard, block_types)


def _emit(b, start, code_start, end, nlocals, kind, where, guard, block_types):
    """The body with the guards of the values marked in `guard` inserted after their
    makers, and the offsets of the guards' br_if in it."""
    marks = sorted((where[v], kind[v]) for v in range(len(kind)) if guard[v])
    if not marks:
        return b[start:end], []
    used = sorted({k for _, k in marks})
    temp = {k: nlocals + n for n, k in enumerate(used)}
    groups, i = _u(b, start)
    head = _leb(groups + len(used)) + b[i:code_start] + b"".join(b"\x01" + bytes([k]) for k in used)
    seqs = {}
    for k in used:
        t = _leb(temp[k])
        pre = b"\x02" + _sleb(block_types[k]) + b"\x22" + t + b"\x20" + t + b"\x20" + t
        pre += bytes([_GE[k]])
        seqs[k] = (pre, b"\x0d\x00\x1a" + _CANON[k] + b"\x0b")
    out = bytearray(head)
    offsets = []
    at = code_start
    for pos, k in marks:
        out += b[at:pos]
        pre, post = seqs[k]
        out += pre
        offsets.append(len(out))
        out += post
        at = pos
    out += b[at:end]
    return bytes(out), offsets
