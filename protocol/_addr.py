"""Dealer addresses as people write them: `host`, `host:port` or `tcp://host:port`."""

from __future__ import annotations

import ipaddress

DEFAULT_PORT = 7117


def dealer_address(text: str) -> str:
    """The ZeroMQ endpoint for a dealer written as `host`, `host:port` or `tcp://host:port`.

    >>> dealer_address("example.org")
    'tcp://example.org:7117'
    >>> dealer_address("127.0.0.1:9000")
    'tcp://127.0.0.1:9000'
    """
    text = text.strip()
    if not text:
        raise ValueError("empty dealer address")
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
