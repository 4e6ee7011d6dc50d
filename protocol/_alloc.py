"""The allocator's messages: jobbers asking for their instructions, admins changing them.

An allocator (``python -m allocator serve``) is a CurveZMQ ROUTER like a
dealer's work port, with the same plaintext ``hello`` port one up. Two kinds
of peer talk to it, each proving its key in the handshake:

    jobber                                   allocator
    instruct(id, pool, host, serial)   ->
                                       <-  instructions(re, ...) | error(re)
    admin
    alloc_admin(id, op, args)          ->
                                       <-  alloc_reply(re, text, data) | error(re)

The records are declared in protocol._schema's language (same codec, same caps
style); the classes are registered in the MESSAGES table, so ``decode`` knows them.
docs/protocol.md, section 10, describes them for other implementations.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from protocol._addr import dealer_address
from protocol._messages import _ID, _JOBBER, MESSAGES, Message
from protocol._records import HostFacts
from protocol._schema import (
    ProtocolError,
    _any_map,
    _bool,
    _float,
    _int,
    _list,
    _optional,
    _Record,
    _record,
    _str,
    checked,
    record,
)

MAX_PROJECTS = 64  # dealers one pool is told to serve
MAX_POOL_NAME = 256
MAX_ADMIN_ARGS = 256  # entries in alloc_admin.args
MAX_OP = 64
MAX_JOIN_TOKEN = 256  # a join token is 32 characters; room for other allocators' own
_HOUR = _optional(_float(0.0, 24.0))


@record
class Prefs(_Record):
    """A pool's preferences, as its supplier admin sets them (nil: not set, the jobber's
    own setting stands). Hours are local time on the jobber's machine, in [0, 24]; a
    window from `start` to `end` wraps past midnight when `end < start`, and an empty
    window (`start == end`) means all day.

    One name per concept: a preference is named here as the jobber's own setting is
    (`slots`, `cpu_limit`, `cache_mb`); the BOINC-style names the wire, the admin's
    commands and the allocator's database use (`max_cpus`, `cpu_usage_limit`,
    `disk_mb`) are declared here alone, as each field's `wire` name. `named` and
    `from_names` convert between the two, for every layer."""

    start_hour: float | None = checked(_HOUR, None)  # compute only from this hour ...
    end_hour: float | None = checked(_HOUR, None)  # ... to this one
    net_start_hour: float | None = checked(_HOUR, None)  # ask for work only from this hour ...
    net_end_hour: float | None = checked(_HOUR, None)  # ... to this one
    # slots used at most
    slots: int | None = checked(_optional(_int(1, 4096)), None, wire="max_cpus")
    # percent of the machine's CPUs used at most
    max_cpus_pct: float | None = checked(_optional(_float(1.0, 100.0)), None)
    # percent of each period jobs may run
    cpu_limit: float | None = checked(_optional(_float(1.0, 100.0)), None, wire="cpu_usage_limit")
    memory_mb: int | None = checked(_optional(_int(1, 1 << 20)), None)  # memory one job may use
    # disk for payloads and their compiled forms
    cache_mb: int | None = checked(_optional(_int(1, 1 << 30)), None, wire="disk_mb")
    # run only while the machine is otherwise idle
    idle_only: bool | None = checked(_optional(_bool()), None)
    # quiet this long before it counts as idle
    idle_after_s: float | None = checked(_optional(_float(0.0, 1e7)), None)

    def __post_init__(self) -> None:
        self._check_self("prefs")
        for a, b in (("start_hour", "end_hour"), ("net_start_hour", "net_end_hour")):
            if (getattr(self, a) is None) != (getattr(self, b) is None):
                raise ProtocolError(f"prefs: {a} and {b} go together (both or neither)")

    def named(self) -> dict[str, Any]:
        """The preferences set, by their wire names (as `instructions.prefs` has them)."""
        return {n: v for a, n, _ in self._FIELDS if (v := getattr(self, a)) is not None}

    @classmethod
    def from_names(cls, data: Mapping[str, Any]) -> Prefs:
        """Preferences from a map by wire name (nil: not set), the values as given;
        ProtocolError naming an unknown or bad one."""
        attr = {n: a for a, n, _ in cls._FIELDS}
        unknown = sorted(set(data) - set(attr))
        if unknown:
            known = ", ".join(sorted(attr))
            raise ProtocolError(f"unknown preference {unknown[0]!r} (known: {known})")
        return cls(**{attr[k]: v for k, v in data.items() if v is not None})


@record
class Project(_Record):
    """A dealer a pool works for, with its resource share."""

    name: str = checked(_str(MAX_POOL_NAME))
    dealer: str = checked(
        _str(MAX_POOL_NAME)
    )  # its address, `tcp://host:port#key` (the key pins it)
    share: float = checked(
        _float(0.0, 1e6)
    )  # relative: a project of share 3 gets three times the work of one of 1


@record
class Instruct(Message):
    """Jobber -> allocator: I am a machine of `pool`; what should I do?

    `serial`: the serial of the instructions the jobber holds (nil: none). `join`: the
    pool's join token, from its admin, which admits this key to the pool (nil: the key
    must have been admitted already). Only an admitted key is answered and recorded
    (its address, host facts, the time); any other gets `error` `forbidden`.
    """

    TYPE: ClassVar[str] = "instruct"
    id: int = checked(_ID)
    jobber: str = checked(_JOBBER)  # a label for people; the identity is the CurveZMQ key
    pool: str = checked(_str(MAX_POOL_NAME))
    host: HostFacts = checked(_record(HostFacts))
    serial: int | None = checked(_optional(_int()), None)
    join: str | None = checked(_optional(_str(MAX_JOIN_TOKEN)), None)


@record
class Instructions(Message):
    """Allocator -> jobber: the dealers to serve, their shares, the pool's preferences."""

    TYPE: ClassVar[str] = "instructions"
    re: int = checked(_ID)
    pool: str = checked(_str(MAX_POOL_NAME))
    serial: int = checked(_int())  # changes whenever anything here changes
    projects: tuple[Project, ...] = checked(_list(_record(Project), MAX_PROJECTS))
    prefs: Prefs = checked(_record(Prefs))
    refresh_s: float = checked(_float(0.1, 1e6))  # ask again after this long
    # ask again this soon, to hear of a change (a new serial) within it; nil: refresh_s
    check_s: float | None = checked(_optional(_float(0.1, 1e6)), None)


@record
class AllocAdmin(Message):
    """Admin -> allocator: carry out `op` with `args` (docs/protocol.md lists the ops),
    if the key this connection proved has a role that may."""

    TYPE: ClassVar[str] = "alloc_admin"
    id: int = checked(_ID)
    op: str = checked(_str(MAX_OP))
    args: dict[str, Any] = checked(_any_map(MAX_ADMIN_ARGS))


@record
class AllocReply(Message):
    """Allocator -> admin: done (and durable); `data` what was asked for."""

    TYPE: ClassVar[str] = "alloc_reply"
    re: int = checked(_ID)
    text: str = checked(_str())
    data: dict[str, Any] = checked(_any_map())


ALLOCATOR_MESSAGES = (Instruct, Instructions, AllocAdmin, AllocReply)
for _cls in ALLOCATOR_MESSAGES:
    MESSAGES.setdefault(_cls.TYPE, _cls)


DEFAULT_ALLOCATOR_PORT = 7127  # its plaintext port is 7128; a dealer's are 7117 and 7118


def allocator_address(text: str) -> str:
    """`host`, `host:port` or `tcp://host:port`, optionally `#KEY`, as an endpoint (with the
    key): as a dealer's address, but the default port is 7127. Give IPv6 hosts a port."""
    addr, sep, key = text.partition("#")
    if "://" not in addr and ":" not in addr:
        addr += f":{DEFAULT_ALLOCATOR_PORT}"
    endpoint = dealer_address(addr + sep + key)
    # an IPv4 address as a dual-stack socket prints it ([::ffff:a.b.c.d]) is the IPv4
    # address: one allocator, one spelling, so that its pinned key and kept instructions
    # are found under either
    mapped = "tcp://[::ffff:"
    if endpoint.startswith(mapped) and "]:" in endpoint:
        host, rest = endpoint[len(mapped) :].split("]:", 1)
        if host.count(".") == 3:
            endpoint = f"tcp://{host}:{rest}"
    return endpoint
