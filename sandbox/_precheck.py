"""Reads a module's section headers and refuses one that would cost too much to compile.

Compiling is work a payload makes the sandbox do before any limit of its job
applies, and its cost grows with what the module declares: a 4 MB module of a
million empty functions took wasmtime 40 to 100 s, 70 to 180 s of CPU and
5.9 GB of memory. So before wasmtime sees the bytes, `check` reads the counts
the binary format puts up front (section ids and LEB128 vector lengths; no
instruction is decoded) and compares them with the caps below. A module beyond
a cap ends as INVALID, the detail naming the count and its cap. A bomb is
refused in microseconds (the function section comes before the code section,
so a huge count is refused before any body is looked at); an ordinary module
costs a walk over its function bodies' headers, about a microsecond each.

What is read, per section id (1 type, 2 import, 3 function, 4 table, 5 memory,
6 global, 7 export, 9 element, 10 code, 11 data, 13 tag): the leading count of
the vector it holds, summed over repeated sections; in the code section each
body's size and its declared locals. Custom (0), start (8), data count (12)
and unknown sections are skipped by their size. Table sizes are not read: they
cost nothing to compile, and the store limits them when instantiating (see
_engine). Whether the counts agree with each other, and everything else, is
wasmtime's to validate; this reader only has to be right about what it bounds,
and never raise anything but Refused. Bytes it cannot frame (a bad magic or
version, a truncated LEB128, a section running past the end) are INVALID as
"not a valid module: ...".

The caps are far above what real payloads declare (tasks/payloads/factor.c
compiles to 61 functions, 7 imports, 1 global, its largest body 9.6 KB; a
large C or Rust program to a few thousand functions) and far below what
wasmparser accepts (1,000,000 functions, 7.6 MB bodies), which is where bombs
live. They bound compile cost
only roughly: a module within every cap can still be slow to compile, and the
compile fences (see _worker and _slots) stop that.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol import Status
from sandbox._job import MIB

# protocol.MAX_PAYLOAD_BYTES: no dealer can send more, so no real payload is bigger
MAX_MODULE_BYTES = 32 * MIB
# compile time and memory grow with the number of functions (about 10 us of CPU and
# 6 KB even for an empty one); 50,000 is ten times a large real program and seconds,
# not minutes, to compile
MAX_FUNCTIONS = 50_000
# one function's compile cost grows faster than its size (register allocation); real
# C and Rust functions stay under 100 KB, interpreters' dispatch loops under 1 MB
MAX_FUNCTION_BYTES = 2 * MIB
# locals declared by one function: values the compiler tracks through the whole body
# (wasmparser allows 50,000; compilers emit a few hundred at most)
MAX_LOCALS = 10_000
MAX_TYPES = 10_000  # function signatures, each interned in wasmtime's type registry
MAX_IMPORTS = 1_000  # WASI preview 1 has 46 functions: anything near this is refused anyway
MAX_EXPORTS = 10_000  # a command needs _start and memory; each is a name in a map
MAX_GLOBALS = 10_000  # slots in the instance; real programs have a handful
# the store allows 4 tables and 1 memory (see _engine): a few more pass here, so that
# too many is still the store's MEMORY at instantiation, as before this check
MAX_TABLES = 100
MAX_MEMORIES = 100
# element and data segments: initialisation work per segment; C programs have one or
# two of each, linkers that keep segments apart a few hundred
MAX_ELEMENT_SEGMENTS = 10_000
MAX_DATA_SEGMENTS = 100_000
MAX_TAGS = 10_000  # exception tags

# section id -> (what its leading count counts, cap)
_COUNTED = {
    1: ("types", MAX_TYPES),
    2: ("imports", MAX_IMPORTS),
    3: ("functions", MAX_FUNCTIONS),
    4: ("tables", MAX_TABLES),
    5: ("memories", MAX_MEMORIES),
    6: ("globals", MAX_GLOBALS),
    7: ("exports", MAX_EXPORTS),
    9: ("element segments", MAX_ELEMENT_SEGMENTS),
    10: ("function bodies", MAX_FUNCTIONS),
    11: ("data segments", MAX_DATA_SEGMENTS),
    13: ("tags", MAX_TAGS),
}
_CODE = 10
_HEADER = b"\0asm\x01\0\0\0"
_REF_WITH_HEAP_TYPE = (0x63, 0x64)  # (ref null ht), (ref ht): a heap type (s33) follows


class Refused(Exception):
    """A module the sandbox will not (or could not) compile: how its job ends.

    ``remember``: the same bytes always end so (a cap, malformed bytes, the size of
    the compiled form), so a process may keep the answer; False for a fence that
    depends on the moment (time, memory).
    """

    def __init__(self, status: Status, detail: str, *, remember: bool = True) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.remember = remember


class _Malformed(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Counts:
    """What a module declares, as `check` read it."""

    size: int
    counts: dict[str, int]  # "functions" -> 45, ... (every counted kind, 0 if absent)
    largest_body: int  # bytes of the largest function body
    most_locals: int  # locals declared by one function, at most


def _leb(data: bytes, pos: int, end: int, bits: int = 32) -> tuple[int, int]:
    """A LEB128 at `pos` (no further than `end`): (value, position after it).

    bits 32: a u32 (at most 5 bytes, the value checked); 33: an s33 heap type, skipped
    (its value, read as unsigned, is not used)."""
    result = shift = 0
    while True:
        if pos >= end:
            raise _Malformed(f"unexpected end at offset {pos}")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            if bits == 32 and result >> 32:
                raise _Malformed(f"integer too large at offset {pos - 1}")
            return result, pos
        shift += 7
        if shift >= bits:
            raise _Malformed(f"integer representation too long at offset {pos - 1}")


def _over(value: int, what: str, cap: int, name: str) -> Refused:
    return Refused(
        Status.INVALID, f"too costly to compile: {value:,} {what}, over the cap of {cap:,} ({name})"
    )


def _bodies(data: bytes, pos: int, end: int, n: int) -> tuple[int, int]:
    """The largest body and the most locals among the `n` function bodies at `pos`."""
    largest = most = 0
    for _ in range(n):
        size, pos = _leb(data, pos, end)
        if size > end - pos:
            raise _Malformed(f"function body running past its section at offset {pos}")
        if size > MAX_FUNCTION_BYTES:
            what = "bytes in one function body"
            raise _over(size, what, MAX_FUNCTION_BYTES, "MAX_FUNCTION_BYTES")
        body_end = pos + size
        entries, at = _leb(data, pos, body_end)
        declared = 0
        for _ in range(entries):
            count, at = _leb(data, at, body_end)
            declared += count
            if declared > MAX_LOCALS:
                raise _over(declared, "locals in one function", MAX_LOCALS, "MAX_LOCALS")
            if at >= body_end:
                raise _Malformed(f"unexpected end at offset {at}")
            kind = data[at]
            at += 1
            if kind in _REF_WITH_HEAP_TYPE:
                _, at = _leb(data, at, body_end, 33)
        largest = max(largest, size)
        most = max(most, declared)
        pos = body_end
    return largest, most


def check(wasm: bytes) -> Counts:
    """What the module declares; Refused (INVALID) if a count is beyond its cap or the
    bytes cannot be framed as a module. Never raises anything else."""
    try:
        return _check(bytes(wasm))
    except _Malformed as e:
        raise Refused(Status.INVALID, f"not a valid module: {e}") from None


def _check(data: bytes) -> Counts:
    if len(data) > MAX_MODULE_BYTES:
        raise _over(len(data), "bytes of module", MAX_MODULE_BYTES, "MAX_MODULE_BYTES")
    if data[:4] != _HEADER[:4]:
        raise _Malformed("bad magic number (not a WebAssembly module)")
    if data[:8] != _HEADER:
        raise _Malformed("not a core module of binary version 1 (a component?)")
    counts = {what: 0 for what, _ in _COUNTED.values()}
    largest = most = 0
    pos, end = 8, len(data)
    while pos < end:
        sid = data[pos]
        size, pos = _leb(data, pos + 1, end)
        if size > end - pos:
            raise _Malformed(f"section {sid} running past the end at offset {pos}")
        counted = _COUNTED.get(sid)
        if counted is not None:
            what, cap = counted
            n, at = _leb(data, pos, pos + size)
            counts[what] += n
            if counts[what] > cap:
                name = "MAX_FUNCTIONS" if sid == _CODE else f"MAX_{what.upper().replace(' ', '_')}"
                raise _over(counts[what], what, cap, name)
            if sid == _CODE:
                body, declared = _bodies(data, at, pos + size, n)
                largest, most = max(largest, body), max(most, declared)
        pos += size
    return Counts(len(data), counts, largest, most)
