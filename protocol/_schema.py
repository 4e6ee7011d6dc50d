"""The schema language of borednet's records: a record is declared once, as a typed field
list, and its checks and its msgpack codec follow from that declaration.

A record is a frozen, slotted dataclass made by `record`; each of its fields is
`checked(check, default)`, naming the checker its value must pass (bounds and
all), and, where the name on the wire differs from the one the code uses, that
wire name (`wire=`), so a concept has one name in the code and the mapping to
the wire's is declared where the field is. The wire records (protocol._records,
protocol._messages, protocol._alloc), the dealer's journal records
(dealer._records) and the jobber's kept instructions (jobber._instructions) are
all declared this way.

From the declaration, `_SCHEMA` (wire name: checker) is made once, and on a
class's first use its field checks are compiled into straight-line functions
(`_compile`), as dataclasses writes its __init__: a generic loop was most of the
codec's time. `decode` (protocol._wire) is still the one place a whole message
from outside is read; these checks are what it applies, and what `encode`
applies before anything leaves.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, ClassVar

from protocol._frozen import frozen

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

    def __init__(self, cls: type[_Record]) -> None:
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


def _record(cls: type[_Record]) -> Check:
    return _RecordOf(cls)


_REPR = reprlib.Repr()  # keyword arguments need Python 3.12
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 100, 60


def _show(v: Any) -> str:
    """A short, safe rendering of a value from the wire (deeply nested ones too)."""
    return _REPR.repr(v)


# --- records --------------------------------------------------------------

_SCALARS = frozenset((int, str, bytes, float, bool, type(None)))


class _Record:
    """A frozen dataclass with a schema: {wire name: checker} (see `record`)."""

    __slots__ = ()
    _SCHEMA: ClassVar[dict[str, Check]]
    # (attribute, wire name, checker), in field order: made by `record`
    _FIELDS: ClassVar[tuple[tuple[str, str, Check], ...]]
    # (attribute, wire name, checker, optional) in schema order, and the dataclass's
    # fields as (attribute, wire name, optional); made once per class on first use
    _PLAN: ClassVar[tuple[tuple[str, str, Check, bool], ...]]
    _NAMES: ClassVar[tuple[tuple[str, str, bool], ...]]
    _parse_fields: ClassVar[Any]
    _valid_fields: ClassVar[Any]
    _make: ClassVar[Any]  # a map's fields checked, and the record made of them
    _wire_fields: ClassVar[Any]  # the record as a map, by wire name

    @classmethod
    def _plan(cls) -> tuple[tuple[str, str, Check, bool], ...]:
        plan = cls.__dict__.get("_PLAN")
        if plan is None:
            declared = cls.__dict__.get("_FIELDS")
            if declared is None:  # a class that wrote its _SCHEMA by hand: names are wire names
                declared = tuple((n, n, c) for n, c in cls._SCHEMA.items())
            plan = tuple((a, n, c, c.optional) for a, n, c in declared)
            cls._parse_fields = staticmethod(_compile(cls, plan, "parse"))
            cls._valid_fields = staticmethod(_compile(cls, plan, "valid"))
            cls._make = staticmethod(_compile(cls, plan, "make"))
            wire = {a: (n, c.optional) for a, n, c, _ in plan}
            names = tuple(
                (f.name, *wire.get(f.name, (f.name, False)))
                for f in fields(cls)  # type: ignore[arg-type]
            )
            cls._wire_fields = staticmethod(_compile_wire(names))
            # _NAMES and _PLAN last, _PLAN the very last: they are what says the rest is
            # made, and another thread (a jobber's allocator link) may be encoding the
            # same class for the first time at this moment
            cls._NAMES = names
            cls._PLAN = plan
        return plan

    def _to_wire(self) -> dict[str, Any]:
        """The record as a map by wire name; an optional field left at None is left out
        (it reads as nil)."""
        cls = type(self)
        if "_PLAN" not in cls.__dict__:
            cls._plan()
        return cls._wire_fields(self)

    def _check_self(self, where: str) -> None:
        """Apply the schema's checks to this record's own fields (for records built in
        code, not decoded: Limits, Prefs), naming `where`."""
        for name, key, check in type(self)._FIELDS:
            try:
                check.valid(getattr(self, name))
            except _Bad as e:
                raise e.at(f"{where}.{key}") from None

    @classmethod
    def _parse(cls, v: Any) -> Any:
        if "_PLAN" not in cls.__dict__:
            cls._plan()
        return cls._make(v)

    @classmethod
    def _valid(cls, v: Any) -> None:
        if "_PLAN" not in cls.__dict__:
            cls._plan()
        cls._valid_fields(v)

    @classmethod
    def _from_wire(cls, v: Any, where: str) -> Any:
        """The record `v` (a decoded msgpack map) describes; ProtocolError naming `where`."""
        try:
            return cls._parse(v)
        except _Bad as e:
            raise e.at(where) from None


def _compile(cls: type, plan: tuple[tuple[str, str, Check, bool], ...], mode: str):
    """A function checking (`valid`), or checking and converting (`parse`: to a map of
    the record's fields; `make`: to the record) the fields of a map for `cls`, written
    out field by field, as dataclasses writes its __init__: the generic loop was most
    of the codec's time. The common checks are written inline too (an integer in its
    bounds, a string or bytes of a length, a float, a bool, an enum's value); a value
    they do not pass goes to its checker, whose message says what is wrong (or which
    converts it: an integer where a float goes). Same checks, same messages."""
    lines = [
        "def fields_of(v):",
        "    if type(v) is not dict:",
        "        raise _Bad(f'expected a map, got {_show(v)}')",
    ]
    env: dict[str, Any] = {"_Bad": _Bad, "_show": _show, "_cls": cls}
    out = []
    for i, (attr, name, check, optional) in enumerate(plan):
        inner = check.inner if isinstance(check, _Optional) else check
        env[f"c{i}"] = inner.valid if mode == "valid" else inner.parse
        fast = _inline(inner, i, env, mode)
        if optional:
            lines += [f"    x = v.get({name!r})", "    if x is None:", f"        a{i} = None"]
            lines.append("    elif " + fast[0] if fast else "    else:")
            indent = "        "
        else:
            lines += [
                "    try:",
                f"        x = v[{name!r}]",
                "    except KeyError:",
                f"        raise _Bad({f'missing field {name!r}'!r}) from None",
            ]
            indent = "    "
            if fast:
                lines.append(f"    if {fast[0]}")
                indent = "        "
        if fast:
            lines += [f"{indent}{fast[1]}", "    else:"]
            indent = "        "
        lines += [
            f"{indent}try:",
            f"{indent}    a{i} = c{i}(x)",
            f"{indent}except _Bad as e:",
            f"{indent}    e.path.append({'.' + name!r})",
            f"{indent}    raise",
        ]
        out.append((attr, f"a{i}"))
    if mode == "parse":
        lines.append("    return {" + ", ".join(f"{a!r}: {x}" for a, x in out) + "}")
    elif mode == "make":
        lines += [
            "    try:",
            "        return _cls(" + ", ".join(f"{a}={x}" for a, x in out) + ")",
            "    except _Bad:",
            "        raise",
            "    except (TypeError, ValueError) as e:",
            "        raise _Bad(str(e)) from e",
        ]
    exec("\n".join(lines), env)  # noqa: S102 - code made here from the class's own schema
    return env["fields_of"]


def _inline(check: Check, i: int, env: dict[str, Any], mode: str) -> tuple[str, str] | None:
    """For field `i`: a test that `x` passes `check` (ending in ':'), and what to do when
    it does; None where the checker is always called (lists, maps, records)."""
    kind = type(check)
    keep = "pass" if mode == "valid" else f"a{i} = x"
    if kind is _Int:
        env[f"lo{i}"], env[f"hi{i}"] = check.lo, check.hi
        return f"type(x) is int and lo{i} <= x <= hi{i}:", keep
    if kind is _Float:  # (a float within finite bounds is finite)
        env[f"lo{i}"], env[f"hi{i}"] = check.lo, check.hi
        return f"type(x) is float and lo{i} <= x <= hi{i}:", keep
    if kind is _Str:
        env[f"n{i}"] = check.max_len
        if check.pattern is None:
            return f"type(x) is str and len(x) <= n{i}:", keep
        env[f"m{i}"] = check.pattern.match
        return f"type(x) is str and len(x) <= n{i} and m{i}(x) is not None:", keep
    if kind is _Bytes:
        env[f"lo{i}"], env[f"hi{i}"] = check.min_len, check.max_len
        return f"type(x) is bytes and lo{i} <= len(x) <= hi{i}:", keep
    if kind is _Bool:
        return "type(x) is bool:", keep
    if kind is _Enum and all(type(value) is str for value in check.values):
        env[f"e{i}"] = check.values
        return f"type(x) is str and x in e{i}:", "pass" if mode == "valid" else f"a{i} = e{i}[x]"
    return None


def _compile_wire(names: tuple[tuple[str, str, bool], ...]):
    """The function of a record's map by wire name, written out field by field (see
    `_compile`): each field as it is where it is a scalar, else as `_to_wire` makes it;
    an optional field left at None is left out."""
    lines = ["def wire_of(r):", "    out = {}"]
    for attr, key, optional in names:
        lines.append(f"    x = r.{attr}")
        put = f"out[{key!r}] = x if type(x) in _SCALARS else _to_wire(x)"
        lines.append(f"    if x is not None:\n        {put}" if optional else f"    {put}")
    lines.append("    return out")
    env: dict[str, Any] = {"_SCALARS": _SCALARS, "_to_wire": _to_wire}
    exec("\n".join(lines), env)  # noqa: S102 - code made here from the class's own fields
    return env["wire_of"]


def _to_wire(v: Any) -> Any:
    if type(v) in _SCALARS:
        return v
    if isinstance(v, _Record):
        return v._to_wire()
    if isinstance(v, enum.Enum):
        return v.value
    if isinstance(v, tuple | list):
        return [x if type(x) in _SCALARS else _to_wire(x) for x in v]
    if isinstance(v, Mapping):
        return {k: x if type(x) in _SCALARS else _to_wire(x) for k, x in v.items()}
    return v


_MISSING: Any = dataclasses.MISSING


def checked(
    check: Check,
    default: Any = _MISSING,
    *,
    factory: Callable[[], Any] = _MISSING,
    wire: str = "",
    hashed: bool = True,
) -> Any:
    """A record's field: its checker, its default (or `factory`), and its name on the wire
    where that differs from the attribute's (`wire`; used by `record`). A map field of a
    record that must stay hashable is left out of its hash (`hashed=False`); it still
    counts for equality."""
    meta = {"check": check, "wire": wire}
    return dataclasses.field(
        default=default, default_factory=factory, metadata=meta, hash=None if hashed else False
    )


def record(cls: type) -> Any:
    """Make `cls` a frozen, slotted dataclass and its schema, from its `checked` fields."""
    cls = frozen(cls)
    declared = tuple(
        (f.name, f.metadata["wire"] or f.name, f.metadata["check"])
        for f in fields(cls)
        if "check" in f.metadata
    )
    cls._FIELDS = declared  # type: ignore[attr-defined]
    cls._SCHEMA = {n: c for _, n, c in declared}  # type: ignore[attr-defined]
    return cls
