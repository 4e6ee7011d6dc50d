"""The schema language's field checkers (protocol._schema): what a field's value must be
on the wire, bounds and all.
"""

from __future__ import annotations

import enum
import math
import re
import reprlib
from typing import Any

MAX_U64 = 2**64 - 1
MAX_STR = 4096  # tags, args, ids, addresses, texts: the default cap of a string


class ProtocolError(ValueError):
    """The bytes or fields given are not a valid borednet message."""


class VersionError(ProtocolError):
    """A well-formed frame of a protocol version this side does not speak."""


# --- field checkers -------------------------------------------------------
# Each checker has `parse(v)`, the Python value to store for the decoded msgpack
# value `v`, and `valid(v)`, the same checks without building anything (encode
# uses it). Both raise _Bad naming what is wrong; where it is wrong is added on
# the way out of each container, so the path is only ever formatted for an
# error, never for a field that is fine.


class _Bad(ProtocolError):
    """A refused value, and the path to it (innermost segment first) as it is found."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text
        self.path: list[str] = []

    def at(self, where: str) -> ProtocolError:
        return ProtocolError(f"{where}{''.join(reversed(self.path))}: {self.text}")


class Check:
    optional = False  # may be left out of its record (reads as nil)

    def parse(self, v: Any) -> Any:
        raise NotImplementedError

    def valid(self, v: Any) -> None:
        self.parse(v)

    def __call__(self, v: Any, where: str) -> Any:
        """Parse `v`, naming `where` in the error (for callers outside this module)."""
        try:
            return self.parse(v)
        except _Bad as e:
            raise e.at(where) from None


class _Int(Check):
    __slots__ = ("hi", "lo")

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def parse(self, v: Any) -> int:
        if type(v) is not int or not self.lo <= v <= self.hi:
            raise _Bad(f"expected an integer in [{self.lo}, {self.hi}], got {_show(v)}")
        return v

    valid = parse


class _Float(Check):
    __slots__ = ("hi", "lo")

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi

    def parse(self, v: Any) -> float:
        if type(v) not in (int, float) or not math.isfinite(v) or not self.lo <= v <= self.hi:
            raise _Bad(f"expected a number in [{self.lo}, {self.hi}], got {_show(v)}")
        return float(v)


class _Str(Check):
    __slots__ = ("max_len", "pattern")

    def __init__(self, max_len: int, pattern: re.Pattern[str] | None) -> None:
        self.max_len, self.pattern = max_len, pattern

    def parse(self, v: Any) -> str:
        if type(v) is not str or len(v) > self.max_len:
            raise _Bad(f"expected a string of at most {self.max_len} characters")
        if self.pattern is not None and not self.pattern.match(v):
            raise _Bad(f"{_show(v)} does not match {self.pattern.pattern}")
        return v

    valid = parse


class _Bool(Check):
    def parse(self, v: Any) -> bool:
        if type(v) is not bool:
            raise _Bad(f"expected true or false, got {_show(v)}")
        return v

    valid = parse


class _Bytes(Check):
    __slots__ = ("max_len", "min_len", "size")

    def __init__(self, max_len: int, min_len: int) -> None:
        self.max_len, self.min_len = max_len, min_len
        self.size = f"exactly {max_len}" if min_len == max_len else f"at most {max_len}"

    def parse(self, v: Any) -> bytes:
        if type(v) is not bytes or not self.min_len <= len(v) <= self.max_len:
            raise _Bad(f"expected binary of {self.size} bytes")
        return v

    valid = parse


class _Enum(Check):
    __slots__ = ("cls", "values")

    def __init__(self, cls: type[enum.Enum]) -> None:
        self.cls = cls
        self.values = {m.value: m for m in cls}

    def parse(self, v: Any) -> Any:
        try:
            return self.values[v]
        except (KeyError, TypeError):
            allowed = ", ".join(m.value for m in self.cls)
            raise _Bad(f"expected one of {allowed}, got {_show(v)}") from None


class _List(Check):
    __slots__ = ("item", "max_len")

    def __init__(self, item: Check, max_len: int) -> None:
        self.item, self.max_len = item, max_len

    def _shape(self, v: Any) -> None:
        if type(v) is not list or len(v) > self.max_len:
            raise _Bad(f"expected a list of at most {self.max_len} items")

    def parse(self, v: Any) -> tuple[Any, ...]:
        self._shape(v)
        parse = self.item.parse
        out = []
        for i, x in enumerate(v):
            try:
                out.append(parse(x))
            except _Bad as e:
                e.path.append(f"[{i}]")
                raise
        return tuple(out)

    def valid(self, v: Any) -> None:
        self._shape(v)
        valid = self.item.valid
        for i, x in enumerate(v):
            try:
                valid(x)
            except _Bad as e:
                e.path.append(f"[{i}]")
                raise


class _Map(Check):
    __slots__ = ("key", "max_len", "value")

    def __init__(self, key: Check, value: Check, max_len: int) -> None:
        self.key, self.value, self.max_len = key, value, max_len

    def parse(self, v: Any) -> dict[Any, Any]:
        if type(v) is not dict or len(v) > self.max_len:
            raise _Bad(f"expected a map of at most {self.max_len} entries")
        out = {}
        for k, x in v.items():
            try:
                k2 = self.key.parse(k)
            except _Bad as e:
                e.path.append(" key")
                raise
            try:
                out[k2] = self.value.parse(x)
            except _Bad as e:
                e.path.append(f"[{k!r}]")
                raise
        return out


MAX_DEPTH = 8  # nesting allowed inside free-form maps (status_reply.info)


def _depth(v: Any, limit: int) -> bool:
    """True if `v` nests no deeper than `limit` lists/maps."""
    if type(v) in (list, dict):
        if limit == 0:
            return False
        items = v.values() if type(v) is dict else v
        return all(_depth(x, limit - 1) for x in items)
    return True


class _AnyMap(Check):
    __slots__ = ("max_len",)

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len

    def parse(self, v: Any) -> dict[str, Any]:
        if type(v) is not dict or len(v) > self.max_len:
            raise _Bad("expected a map")
        if not _depth(v, MAX_DEPTH):
            raise _Bad(f"nested deeper than {MAX_DEPTH}")
        return v

    valid = parse


class _Optional(Check):
    __slots__ = ("inner",)
    optional = True

    def __init__(self, inner: Check) -> None:
        self.inner = inner

    def parse(self, v: Any) -> Any:
        return None if v is None else self.inner.parse(v)

    def valid(self, v: Any) -> None:
        if v is not None:
            self.inner.valid(v)


class _RecordOf(Check):
    __slots__ = ("cls",)

    def __init__(self, cls: type) -> None:  # a protocol._schema record
        self.cls = cls

    def parse(self, v: Any) -> Any:
        return self.cls._parse(v)

    def valid(self, v: Any) -> None:
        self.cls._valid(v)


def _int(lo: int = 0, hi: int = MAX_U64) -> Check:
    return _Int(lo, hi)


def _float(lo: float = 0.0, hi: float = 1e12) -> Check:
    return _Float(lo, hi)


def _str(max_len: int = MAX_STR, pattern: re.Pattern[str] | None = None) -> Check:
    return _Str(max_len, pattern)


def _bool() -> Check:
    return _Bool()


def _bytes(max_len: int, min_len: int = 0) -> Check:
    return _Bytes(max_len, min_len)


def _enum(cls: type[enum.Enum]) -> Check:
    return _Enum(cls)


def _list(item: Check, max_len: int) -> Check:
    return _List(item, max_len)


def _map(key: Check, value: Check, max_len: int) -> Check:
    return _Map(key, value, max_len)


def _any_map(max_len: int = 4096) -> Check:
    return _AnyMap(max_len)


def _optional(check: Check) -> Check:
    return _Optional(check)


def _record(cls: type) -> Check:
    return _RecordOf(cls)


_REPR = reprlib.Repr()  # keyword arguments need Python 3.12
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 100, 60


def _show(v: Any) -> str:
    """A short, safe rendering of a value from the wire (deeply nested ones too)."""
    return _REPR.repr(v)
