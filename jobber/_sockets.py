"""The jobber shell's sockets to its dealers: a DEALER socket per dealer (CurveZMQ,
checked against the dealer's key), one to its plaintext port while its key is being
learnt, and ZeroMQ's monitor sockets for both. What they say goes to the core as
events (a message, a failed contact, a connection problem); nothing is decided here.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import socket
import time
from dataclasses import dataclass, field

import zmq
from zmq.utils.monitor import recv_monitor_message

import protocol as p
from net._keys import z85_of_hex

log = logging.getLogger("jobber._client")  # the shell's log, whichever part of it speaks


# what ZeroMQ can tell about a connection that a missing reply cannot; the first two
# are definite: a request out to such a dealer has failed, without waiting for its timeout
_PROBLEMS = {
    zmq.EVENT_CONNECT_RETRIED: "cannot connect: refused, or the host is unreachable",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the dealer refused our key (denied, or a closed pool)",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the encryption handshake failed (a wrong dealer key?)",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the encryption handshake failed (a wrong dealer key?)",
}
_DEFINITE = (zmq.EVENT_CONNECT_RETRIED, zmq.EVENT_HANDSHAKE_FAILED_AUTH)
# Frames ZeroMQ may queue from one dealer before this loop reads them (ZMQ_RCVHWM): a
# dealer answers each request once and the loop reads every turn, so a queue of two
# never holds an honest reply back (a full queue stops reading the connection; nothing
# is dropped), while a dealer pushing frames unasked makes the jobber hold at most this
# many, and one more being received, of p.MAX_MESSAGE_BYTES each (docs/jobber.md)
RECV_HWM = 2
_WATCHED = zmq.EVENT_CONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
for _event in _PROBLEMS:
    _WATCHED |= _event


# Each monitor's inproc address is its own. pyzmq's default names it after the socket's
# file descriptor, which a new socket may reuse while the closed one's endpoint is still
# bound (ZeroMQ closes sockets on its own thread, later): "Address already in use".
_MONITOR_IDS = itertools.count(1)


def _monitor(s: zmq.Socket) -> zmq.Socket:
    """A socket that receives `s`'s ZeroMQ events (those watched)."""
    return s.get_monitor_socket(_WATCHED, f"inproc://jobber.monitor.{next(_MONITOR_IDS)}")


@dataclass
class Sockets:
    """A dealer's sockets and what ZeroMQ says about them."""

    sock: zmq.Socket | None = None
    hello: zmq.Socket | None = None  # to the plaintext port, while a key is being learnt
    monitors: dict = field(default_factory=dict)  # socket -> its ZeroMQ event socket
    resolved: bool = False  # its host name resolved (checked again after a reset)

    def close(self, which: zmq.Socket | None = None) -> None:
        """Close `which` (default: all) and its monitor."""
        for s in [which] if which is not None else [self.sock, self.hello]:
            if s is None:
                continue
            mon = self.monitors.pop(s, None)
            if mon is not None:
                mon.close(linger=0)
            s.close(linger=0)
            if s is self.sock:
                self.sock = None
            if s is self.hello:
                self.hello = None


class DealerSockets:
    """The dealers' sockets of the shell (jobber._client.Jobber, a mixin: the state is its)."""

    def _connect_to(self, endpoint: str) -> str:
        """`endpoint` from this jobber's source address, if it has one."""
        if self.cfg.source is None or not endpoint.startswith("tcp://"):
            return endpoint
        source = f"[{self.cfg.source}]" if ":" in self.cfg.source else self.cfg.source
        return f"tcp://{source}:0;{endpoint[len('tcp://') :]}"

    def _sockets(self, dealer: str) -> Sockets:
        return self._socks.setdefault(dealer, Sockets())

    def _work_socket(self, dealer: str) -> zmq.Socket:
        ss = self._sockets(dealer)
        if ss.sock is None:
            key = self.core.links[dealer].key
            assert key is not None
            s = self._ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.MAXMSGSIZE, p.MAX_MESSAGE_BYTES)
            s.setsockopt(zmq.RCVHWM, RECV_HWM)
            s.curve_secretkey = self.keys.secret
            s.curve_publickey = self.keys.public
            s.curve_serverkey = z85_of_hex(key)
            ss.monitors[s] = _monitor(s)
            s.connect(self._connect_to(dealer))
            ss.sock = s
        return ss.sock

    def _hello_socket(self, dealer: str) -> zmq.Socket:
        ss = self._sockets(dealer)
        if ss.hello is None:
            if not dealer.startswith("tcp://"):
                endpoint = dealer + ".public"
            else:
                host, _, port = dealer.rpartition(":")
                endpoint = f"{host}:{int(port) + 1}"
            s = self._ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.MAXMSGSIZE, 64 * 1024)
            ss.monitors[s] = _monitor(s)
            s.connect(self._connect_to(endpoint))
            ss.hello = s
        return ss.hello

    def _reset(self, dealer: str) -> None:
        ss = self._socks.pop(dealer, None)
        if ss is not None:
            ss.close()

    def _resolves(self, dealer: str, now: float) -> bool:
        """False (and a failed contact) if the dealer's host name does not resolve."""
        ss = self._sockets(dealer)
        if ss.resolved or not dealer.startswith("tcp://"):
            return True
        host = dealer[len("tcp://") :].rpartition(":")[0].strip("[]")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            try:
                socket.getaddrinfo(host, None)
            except OSError as e:
                problem = f"host {host} does not resolve ({e.strerror or e})"
                self.core.contact_failed(dealer, now, "no contact", problem)
                return False
        ss.resolved = True
        return True

    def _send(self, dealer: str, msg: p.Message, hello: bool = False) -> None:
        now = time.monotonic()
        if not self._resolves(dealer, now):
            return
        sock = self._hello_socket(dealer) if hello else self._work_socket(dealer)
        frame = p.encode(msg)
        try:
            sock.send(frame, zmq.NOBLOCK)
            self._count_traffic(len(frame))
        except zmq.Again:  # its queue is full: treat as unreachable
            self.core.contact_failed(dealer, now, "send queue full")

    def _drain_monitors(self, dealer: str, ss: Sockets) -> None:
        for mon in list(ss.monitors.values()):
            while mon.poll(0):
                try:
                    event = recv_monitor_message(mon, zmq.NOBLOCK)["event"]
                except (zmq.Again, zmq.ZMQError):
                    break
                if event in _DEFINITE:
                    # what came before the connection ended still answers: a dealer that
                    # replies and exits (its `ack` to our last results) is heard first
                    for s in (ss.sock, ss.hello):
                        if s is not None and not s.closed and self._socks.get(dealer) is ss:
                            self._recv(dealer, s)
                    if self._socks.get(dealer) is not ss:
                        return  # those answers reset the sockets
                    self.core.contact_failed(
                        dealer, time.monotonic(), "no contact", _PROBLEMS[event]
                    )
                    self._carry_out()  # may reset these very sockets
                    return
                if event in _PROBLEMS:
                    self.core.problem(dealer, _PROBLEMS[event])
                elif event in (zmq.EVENT_CONNECTED, zmq.EVENT_HANDSHAKE_SUCCEEDED):
                    self.core.problem(dealer, "")

    def _drain(self, dealer: str, sock: zmq.Socket):
        """The valid messages waiting on `sock`; malformed ones are logged."""
        while True:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._count_traffic(len(frame))
            try:
                yield p.decode(frame)
            except p.ProtocolError as e:
                log.warning("dealer %s sent a malformed message: %s", dealer, e)

    def _recv(self, dealer: str, sock: zmq.Socket) -> None:
        for msg in self._drain(dealer, sock):
            now = time.monotonic()
            screened = self._screen_payloads(msg) if isinstance(msg, p.Jobs) else []
            # the core decides what of a `jobs` is taken before anything of it is kept:
            # the payloads of jobs it takes come back as a Store action
            self.core.received(dealer, msg, now, screened=screened)
            ss = self._socks.get(dealer)
            if isinstance(msg, p.HelloReply) and ss is not None and sock is ss.hello:
                ss.close(sock)  # the key is known: the plaintext port is done with
            self._carry_out()
            ss = self._socks.get(dealer)
            if ss is None or sock not in (ss.sock, ss.hello):  # closed or reset meanwhile
                return
