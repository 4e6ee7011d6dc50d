"""Dealer addresses as people write them: `host`, `host:port` or `tcp://host:port`.

Any of them may end in `#` and the dealer's public key as 64 hexadecimal
digits (`tcp://dealer.example.org:7117#3f2a...`): the key a jobber checks the
dealer against in the CurveZMQ handshake. Without it a jobber trusts the key
the dealer announces on first contact and pins it (see docs/security.md).
"""

from __future__ import annotations

import ipaddress
import re

from protocol._frozen import frozen

DEFAULT_PORT = 7117
DEFAULT_BIND = f"tcp://*:{DEFAULT_PORT}"  # where a dealer or a relay serves unless told
# An IPv6 host usually holds a whole /64 (SLAAC, privacy addresses): that prefix is one
# machine, as one IPv4 address is. A /48 is what one site is given, the IPv6 "subnet".
IPV6_HOST_PREFIX = 64
IPV6_SUBNET_PREFIX = 48
IPV4_SUBNET_PREFIX = 24
_KEY_HEX = re.compile(r"\A[0-9a-fA-F]{64}\Z")


def split_key(address: str) -> tuple[str, str | None]:
    """`(endpoint, key)` of a canonical address: the key as 64 lowercase hex digits, or None."""
    endpoint, sep, key = address.partition("#")
    return endpoint, (key if sep else None)


def dealer_address(text: str) -> str:
    """The ZeroMQ endpoint for a dealer written as `host`, `host:port` or `tcp://host:port`.

    >>> dealer_address("example.org")
    'tcp://example.org:7117'
    >>> dealer_address("127.0.0.1:9000")
    'tcp://127.0.0.1:9000'
    >>> dealer_address("example.org#" + "AB" * 32) == "tcp://example.org:7117#" + "ab" * 32
    True
    """
    text = text.strip()
    if not text:
        raise ValueError("empty dealer address")
    text, sep, key = text.partition("#")
    text = text.strip()
    if sep:
        if not _KEY_HEX.match(key):
            raise ValueError(
                f"dealer address {text!r}: the key after # must be 64 hexadecimal digits"
            )
        return f"{_endpoint(text)}#{key.lower()}"
    return _endpoint(text)


def _endpoint(text: str) -> str:
    if "://" in text:
        scheme, rest = text.split("://", 1)
        if scheme != "tcp":
            # ipc:// and inproc:// name no port; pass them through as they are
            if scheme in ("ipc", "inproc") and rest:
                return text
            raise ValueError(
                f"dealer address {text!r}: only tcp://, ipc:// and inproc:// are known"
            )
        text = rest
    host, port = _split_host_port(text)
    return f"tcp://{host}:{port}"


def _split_host_port(text: str) -> tuple[str, int]:
    has_port = False
    if text.startswith("["):  # [v6 address] or [v6 address]:port
        end = text.find("]")
        if end < 0:
            raise ValueError(f"dealer address {text!r}: unclosed [")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"dealer address {text!r}: junk after ]")
        has_port, port_text = bool(rest), rest[1:]
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"dealer address {text!r}: not an IPv6 address in [ ]") from None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        has_port = True
    elif ":" in text:  # a bare IPv6 address: bracket it; with a port it would be ambiguous
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            raise ValueError(
                f"dealer address {text!r}: write an IPv6 address in brackets, as [addr]:port"
            ) from None
        host, port_text = f"[{text}]", ""
    else:
        host, port_text = text, ""
    if not host or any(c.isspace() or c == "/" for c in host):
        raise ValueError(f"dealer address {text!r}: bad host")
    if not has_port:
        return host, DEFAULT_PORT
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ValueError(f"dealer address {text!r}: bad port {port_text!r}")
    return host, int(port_text)


def source_address(text: str) -> str:
    """A connection's source address as one machine writes it: an IPv4 client of a
    dual-stack socket shows as `::ffff:a.b.c.d` and is the IPv4 address `a.b.c.d`.

    >>> source_address("::ffff:127.0.0.2")
    '127.0.0.2'
    >>> source_address("2001:DB8::1")
    '2001:db8::1'
    >>> source_address("not an address")
    'not an address'
    """
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return text
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def machine_of(address: str, subnet: bool = False) -> str:
    """The machine (or with `subnet`, the network) a source address stands for: an IPv4
    address itself (its /24 with `subnet`), an IPv6 address's /64 (its /48).

    >>> machine_of("192.0.2.7"), machine_of("192.0.2.7", subnet=True)
    ('192.0.2.7', '192.0.2.0/24')
    >>> machine_of("2001:db8:1:2:a::5"), machine_of("2001:db8:1:2:a::5", subnet=True)
    ('2001:db8:1:2::/64', '2001:db8:1::/48')
    """
    try:
        ip = ipaddress.ip_address(source_address(address))
    except ValueError:
        return address
    if ip.version == 4:
        if not subnet:
            return str(ip)
        bits = IPV4_SUBNET_PREFIX
    else:
        bits = IPV6_SUBNET_PREFIX if subnet else IPV6_HOST_PREFIX
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


@frozen
class Peer:
    """Who sent a message, as the transport proved it."""

    key: str  # the CurveZMQ public key, 64 hex digits ("" on the plaintext socket)
    address: str  # the connection's source IP address

    def machine(self, distinct: str) -> str:
        """The group votes are counted by, under the --distinct policy."""
        if distinct == "key":
            return self.key
        return machine_of(self.address, subnet=distinct == "subnet")


def public_endpoint(address: str) -> str:
    """The plaintext port of the dealer at `address` (canonical, maybe with #key): the work
    port + 1 (docs/protocol.md, section 1), or an ipc endpoint with `.public` added."""
    endpoint, _ = split_key(address)
    if not endpoint.startswith("tcp://"):
        return endpoint + ".public"
    host, _, port = endpoint.rpartition(":")
    return f"{host}:{int(port) + 1}"
