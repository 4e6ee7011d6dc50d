"""The allocator's messages: jobbers asking for their instructions, admins changing them.

An allocator (``python -m dealer allocator serve``) is a CurveZMQ ROUTER like a
dealer's work port, with the same plaintext ``hello`` port one up. Two kinds
of peer talk to it, each proving its key in the handshake:

    jobber                                   allocator
    instruct(id, pool, host, serial)   ->
                                       <-  instructions(re, ...) | error(re)
    admin
    alloc_admin(id, op, args)          ->
                                       <-  alloc_reply(re, text, data) | error(re)

The records and checkers are protocol._wire's (same codec, same caps style);
the classes are registered in its MESSAGES table, so ``decode`` knows them.
docs/protocol.md, section 10, describes them for other implementations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from protocol import _wire as w
from protocol._addr import dealer_address
from protocol._wire import (
    _ID,
    _JOBBER,
    Check,
    HostFacts,
    Message,
    _any_map,
    _bool,
    _float,
    _int,
    _optional,
    _Record,
    _record,
    _str,
)

MAX_PROJECTS = 64  # dealers one pool is told to serve
MAX_POOL_NAME = 256
MAX_ADMIN_ARGS = 256  # entries in alloc_admin.args
MAX_OP = 64
MAX_JOIN_TOKEN = 256  # a join token is 32 characters; room for other allocators' own
_HOUR = _optional(_float(0.0, 24.0))


@dataclass(frozen=True, slots=True)
class Prefs(_Record):
    """A pool's preferences, as its supplier admin sets them (nil: not set, the jobber's
    own setting stands). Hours are local time on the jobber's machine, in [0, 24]; a
    window from `start` to `end` wraps past midnight when `end < start`, and an empty
    window (`start == end`) means all day."""

    start_hour: float | None = None  # compute only from this hour ...
    end_hour: float | None = None  # ... to this one
    net_start_hour: float | None = None  # ask dealers for work only from this hour ...
    net_end_hour: float | None = None  # ... to this one
    max_cpus: int | None = None  # slots used at most
    max_cpus_pct: float | None = None  # percent of the machine's CPUs used at most
    cpu_usage_limit: float | None = None  # percent of each period jobs may run
    memory_mb: int | None = None  # memory one job may use
    disk_mb: int | None = None  # disk for payloads and their compiled forms
    idle_only: bool | None = None  # run only while the machine is otherwise idle
    idle_after_s: float | None = None  # quiet this long before it counts as idle

    _SCHEMA: ClassVar[dict[str, Check]] = {
        "start_hour": _HOUR,
        "end_hour": _HOUR,
        "net_start_hour": _HOUR,
        "net_end_hour": _HOUR,
        "max_cpus": _optional(_int(1, 4096)),
        "max_cpus_pct": _optional(_float(1.0, 100.0)),
        "cpu_usage_limit": _optional(_float(1.0, 100.0)),
        "memory_mb": _optional(_int(1, 1 << 20)),
        "disk_mb": _optional(_int(1, 1 << 30)),
        "idle_only": _optional(_bool()),
        "idle_after_s": _optional(_float(0.0, 1e7)),
    }

    def __post_init__(self) -> None:
        for name, check in self._SCHEMA.items():
            try:
                check.valid(getattr(self, name))
            except w._Bad as e:
                raise e.at(f"prefs.{name}") from None
        for a, b in (("start_hour", "end_hour"), ("net_start_hour", "net_end_hour")):
            if (getattr(self, a) is None) != (getattr(self, b) is None):
                raise w.ProtocolError(f"prefs: {a} and {b} go together (both or neither)")


@dataclass(frozen=True, slots=True)
class Project(_Record):
    """A dealer a pool works for, with its resource share."""

    name: str
    dealer: str  # its address, `tcp://host:port#key` (the key pins it)
    share: float  # relative: a project of share 3 gets three times the work of one of 1

    _SCHEMA: ClassVar[dict[str, Check]] = {
        "name": _str(MAX_POOL_NAME),
        "dealer": _str(MAX_POOL_NAME),
        "share": _float(0.0, 1e6),
    }


@dataclass(frozen=True, slots=True)
class Instruct(Message):
    """Jobber -> allocator: I am a machine of `pool`; what should I do?

    `serial`: the serial of the instructions the jobber holds (nil: none). `join`: the
    pool's join token, from its admin, which admits this key to the pool (nil: the key
    must have been admitted already). Only an admitted key is answered and recorded
    (its address, host facts, the time); any other gets `error` `forbidden`.
    """

    TYPE: ClassVar[str] = "instruct"
    id: int
    jobber: str  # a label for people; the identity is the CurveZMQ key
    pool: str
    host: HostFacts
    serial: int | None = None
    join: str | None = None

    _SCHEMA: ClassVar[dict[str, Check]] = {
        "id": _ID,
        "jobber": _JOBBER,
        "pool": _str(MAX_POOL_NAME),
        "host": _record(HostFacts),
        "serial": _optional(_int()),
        "join": _optional(_str(MAX_JOIN_TOKEN)),
    }


@dataclass(frozen=True, slots=True)
class Instructions(Message):
    """Allocator -> jobber: the dealers to serve, their shares, the pool's preferences."""

    TYPE: ClassVar[str] = "instructions"
    re: int
    pool: str
    serial: int  # changes whenever anything here changes
    projects: tuple[Project, ...]
    prefs: Prefs
    refresh_s: float  # ask again after this long

    _SCHEMA: ClassVar[dict[str, Check]] = {
        "re": _ID,
        "pool": _str(MAX_POOL_NAME),
        "serial": _int(),
        "projects": w._list(_record(Project), MAX_PROJECTS),
        "prefs": _record(Prefs),
        "refresh_s": _float(0.1, 1e6),
    }


@dataclass(frozen=True, slots=True)
class AllocAdmin(Message):
    """Admin -> allocator: carry out `op` with `args` (docs/protocol.md lists the ops),
    if the key this connection proved has a role that may."""

    TYPE: ClassVar[str] = "alloc_admin"
    id: int
    op: str
    args: dict[str, Any]

    _SCHEMA: ClassVar[dict[str, Check]] = {
        "id": _ID,
        "op": _str(MAX_OP),
        "args": _any_map(MAX_ADMIN_ARGS),
    }


@dataclass(frozen=True, slots=True)
class AllocReply(Message):
    """Allocator -> admin: done (and durable); `data` what was asked for."""

    TYPE: ClassVar[str] = "alloc_reply"
    re: int
    text: str
    data: dict[str, Any]

    _SCHEMA: ClassVar[dict[str, Check]] = {
        "re": _ID,
        "text": _str(),
        "data": _any_map(),
    }


ALLOCATOR_MESSAGES = (Instruct, Instructions, AllocAdmin, AllocReply)
for _cls in ALLOCATOR_MESSAGES:
    w.MESSAGES.setdefault(_cls.TYPE, _cls)


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
