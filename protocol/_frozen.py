"""Frozen, slotted dataclasses made quickly: the records of the wire and of the dealer's
journal, and the values the dealer's core hands out, are made by the thousand a second
(docs/benchmarks.md, "Dispatch")."""

from __future__ import annotations

import dataclasses
from dataclasses import fields
from typing import Any

_MISSING: Any = dataclasses.MISSING


def quick_init(cls: type) -> Any:
    """Give the frozen, slotted dataclass `cls` an __init__ that stores each field through
    its slot's own descriptor: the same parameters, defaults, factories and
    __post_init__ as dataclasses' own, which stores each through object.__setattr__,
    at about twice the cost (records are made by the thousand a second: the dealer's
    journal records, every message's). A class of init=False, keyword-only or InitVar
    fields keeps its own."""
    flds = fields(cls)
    if any(not f.init or f.kw_only for f in flds):
        return cls  # (not worth a copy of dataclasses' every rule)
    if len(flds) != len(getattr(cls, "__dataclass_fields__", ())):
        return cls  # (an InitVar or a ClassVar: a pseudo-field fields() leaves out)
    env: dict[str, Any] = {"_NONE": _NO_ARGUMENT}
    params, body = [], []
    for i, f in enumerate(flds):
        slot = next(k.__dict__[f.name] for k in cls.__mro__ if f.name in k.__dict__)
        env[f"_s{i}"] = slot.__set__
        if f.default is not _MISSING:
            env[f"_d{i}"] = f.default
            params.append(f"{f.name}=_d{i}")
        elif f.default_factory is not _MISSING:
            env[f"_f{i}"] = f.default_factory
            params.append(f"{f.name}=_NONE")
            body.append(f"    if {f.name} is _NONE:\n        {f.name} = _f{i}()")
        else:
            params.append(f.name)
        body.append(f"    _s{i}(self, {f.name})")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    src = f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body or ["    pass"])
    exec(src, env)  # noqa: S102 - code made here from the class's own fields
    init = env["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    cls.__init__ = init
    return cls


_NO_ARGUMENT: Any = object()  # quick_init's default of a field made by a factory


def frozen(cls: type) -> Any:
    """`cls` as a frozen, slotted dataclass (with quick_init's __init__)."""
    return quick_init(dataclasses.dataclass(frozen=True, slots=True)(cls))
