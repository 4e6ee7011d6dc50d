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
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, ClassVar

from protocol._checks import MAX_DEPTH as MAX_DEPTH
from protocol._checks import MAX_STR as MAX_STR

# the checkers: protocol._checks (here too, where the records' modules import them)
from protocol._checks import MAX_U64 as MAX_U64
from protocol._checks import Check as Check
from protocol._checks import ProtocolError as ProtocolError
from protocol._checks import VersionError as VersionError
from protocol._checks import _any_map as _any_map
from protocol._checks import _AnyMap as _AnyMap
from protocol._checks import _Bad as _Bad
from protocol._checks import _Bool as _Bool
from protocol._checks import _bool as _bool
from protocol._checks import _Bytes as _Bytes
from protocol._checks import _bytes as _bytes
from protocol._checks import _depth as _depth
from protocol._checks import _Enum as _Enum
from protocol._checks import _enum as _enum
from protocol._checks import _Float as _Float
from protocol._checks import _float as _float
from protocol._checks import _Int as _Int
from protocol._checks import _int as _int
from protocol._checks import _List as _List
from protocol._checks import _list as _list
from protocol._checks import _Map as _Map
from protocol._checks import _map as _map
from protocol._checks import _Optional as _Optional
from protocol._checks import _optional as _optional
from protocol._checks import _record as _record
from protocol._checks import _RecordOf as _RecordOf
from protocol._checks import _show as _show
from protocol._checks import _Str as _Str
from protocol._checks import _str as _str
from protocol._frozen import frozen

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
            checks = {a: c for a, _, c, _ in plan}
            cls._wire_fields = staticmethod(_compile_wire(names, checks))
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
    of the codec's time. The common checks are written inline too (`_fast`); a value
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
        if optional:
            lines += [f"    x = v.get({name!r})", "    if x is None:", f"        a{i} = None"]
            lines.append("    else:")
            indent = "        "
        else:
            lines += [
                "    try:",
                f"        x = v[{name!r}]",
                "    except KeyError:",
                f"        raise _Bad({f'missing field {name!r}'!r}) from None",
            ]
            indent = "    "
        lines.append(f"{indent}try:")
        lines += [f"{indent}    {line}" for line in _fast(inner, i, env, mode)]
        lines += [
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


def _fast(check: Check, i: int, env: dict[str, Any], mode: str) -> list[str]:
    """The lines that check field `i`'s value `x` (and, but for `valid`, set `a{i}` to
    what it parses to): the common checks written out, else the checker `c{i}`.

    A scalar passes an inline test (`_test`) or goes to its checker; a record goes to
    its own class's compiled function; a list of records or of scalars is gone through
    in one loop, and if an item fails, the list goes to its checker, which says which
    item is wrong (the index is found only then)."""
    to = "" if mode == "valid" else f"a{i} = "
    checker = f"{to}c{i}(x)"  # the checker: converts the value, or raises saying why
    test = _test(check, "x", f"{i}", env)
    if test is not None:
        value = f"e{i}[x]" if isinstance(check, _Enum) else "x"
        return [f"if {test}:", f"    {to}{value}", "else:", f"    {checker}"]
    if isinstance(check, _RecordOf):
        env[f"r{i}"] = _compiled(check.cls, mode)
        return [f"{to}r{i}(x)"]
    if not isinstance(check, _List):
        return [checker]
    env[f"n{i}"] = check.max_len
    shape = f"type(x) is list and len(x) <= n{i}"
    item = check.item
    if isinstance(item, _RecordOf):
        env[f"r{i}"] = _compiled(item.cls, mode)
        if mode == "valid":
            each = ["for y in x:", f"    r{i}(y)"]
        else:
            each = [f"{to}tuple([r{i}(y) for y in x])"]
        return [
            f"if {shape}:",
            "    try:",
            *[f"        {line}" for line in each],
            "    except _Bad:",
            f"        {checker}",
            "else:",
            f"    {checker}",
        ]
    test = _test(item, "y", f"{i}i", env)
    if test is None or isinstance(item, _Enum):
        return [checker]
    body = ["    for y in x:", f"        if not ({test}):", "            return False"]
    exec("\n".join([f"def all{i}(x):", *body, "    return True"]), env)  # noqa: S102
    good = f"{to}tuple(x)" if to else "pass"
    return [f"if {shape} and all{i}(x):", f"    {good}", "else:", f"    {checker}"]


def _compiled(cls: type, mode: str):
    """The compiled function of the record class `cls` that `mode` calls (made now)."""
    cls._plan()
    return cls._valid_fields if mode == "valid" else cls._make


def _test(check: Check, x: str, i: str, env: dict[str, Any]) -> str | None:
    """An expression true when the value `x` passes the scalar checker `check` as it is
    (an integer or float in its bounds, a string or bytes of a length, a bool, an enum's
    value, whose member is `e{i}[x]`), with the names it needs put in `env`; None for
    any other checker."""
    kind = type(check)
    if kind is _Int:
        env[f"lo{i}"], env[f"hi{i}"] = check.lo, check.hi
        return f"type({x}) is int and lo{i} <= {x} <= hi{i}"
    if kind is _Float:  # (a float within finite bounds is finite)
        env[f"lo{i}"], env[f"hi{i}"] = check.lo, check.hi
        return f"type({x}) is float and lo{i} <= {x} <= hi{i}"
    if kind is _Str:
        env[f"m{i}"] = check.max_len
        if check.pattern is None:
            return f"type({x}) is str and len({x}) <= m{i}"
        env[f"p{i}"] = check.pattern.match
        return f"type({x}) is str and len({x}) <= m{i} and p{i}({x}) is not None"
    if kind is _Bytes:
        env[f"lo{i}"], env[f"hi{i}"] = check.min_len, check.max_len
        return f"type({x}) is bytes and lo{i} <= len({x}) <= hi{i}"
    if kind is _Bool:
        return f"type({x}) is bool"
    if kind is _Enum and all(type(value) is str for value in check.values):
        env[f"e{i}"] = check.values
        return f"type({x}) is str and {x} in e{i}"
    return None


def _compile_wire(names: tuple[tuple[str, str, bool], ...], checks: dict[str, Check]):
    """The function of a record's map by wire name, written out field by field (see
    `_compile`): each field as it is where it is a scalar, a record of a field's own
    class by that class's function, a list item by item, else as `_to_wire` makes it;
    an optional field left at None is left out."""
    lines = ["def wire_of(r):", "    out = {}"]
    env: dict[str, Any] = {"_SCALARS": _SCALARS, "_to_wire": _to_wire}
    for i, (attr, key, optional) in enumerate(names):
        check = checks.get(attr)
        if isinstance(check, _Optional):
            check = check.inner
        value = "x if type(x) in _SCALARS else _to_wire(x)"
        if isinstance(check, _RecordOf):
            env[f"C{i}"], env[f"w{i}"] = check.cls, _wire_of(check.cls)
            value = f"w{i}(x) if type(x) is C{i} else _to_wire(x)"
        elif isinstance(check, _List):
            item = "y if type(y) in _SCALARS else _to_wire(y)"
            if isinstance(check.item, _RecordOf):
                env[f"C{i}"], env[f"w{i}"] = check.item.cls, _wire_of(check.item.cls)
                item = f"w{i}(y) if type(y) is C{i} else _to_wire(y)"
            value = f"[{item} for y in x] if type(x) is tuple else _to_wire(x)"
        lines.append(f"    x = r.{attr}")
        put = f"out[{key!r}] = {value}"
        lines.append(f"    if x is not None:\n        {put}" if optional else f"    {put}")
    lines.append("    return out")
    exec("\n".join(lines), env)  # noqa: S102 - code made here from the class's own fields
    return env["wire_of"]


def _wire_of(cls: type):
    """The compiled map function of the record class `cls` (made now)."""
    cls._plan()
    return cls._wire_fields


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
