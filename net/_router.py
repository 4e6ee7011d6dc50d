"""A ROUTER server served in turns, for every program that answers requests.

One ROUTER socket for work, one thread. Each turn of the loop drains every
message that is waiting (up to MAX_DRAIN, and PUBLIC_DRAIN from the plaintext
port), hands them to the subclass, lets it make the turn's changes durable
(`commit`), and only then sends the replies: nothing is acknowledged before it
is durable, and one fsync serves a whole batch.

The work socket is a CurveZMQ server. A ZAP handler (zmq.auth's
ThreadAuthenticator, with a callback) admits any client key on an open
server, or only the keys of an allow list on a closed one, and never a
denied key. The key each message's connection proved (its "User-Id") is the
sender's identity; the connection's source address ("Peer-Address") names its
machine. Nothing a message says about who sent it is believed.

A second, plaintext ROUTER on the next port up answers only `hello` (the work
socket's public key, for jobbers that trust on first use) and whatever a
subclass makes public (`status`, `work_query`).

What a server holds for its askers is bounded on both sides (docs/security.md,
"What a flood can cost"). Each connection queues at most RCVHWM requests of at
most the frame cap in, and SNDHWM replies out: a reply to a client that does not
read is dropped (ROUTER_MANDATORY makes the send fail at once; the turn counts
the drops and logs them once), and the client's request id makes asking again
safe. libzmq's monitor tells the loop of every connection accepted and closed,
and net._gate decides which to keep: at most PER_SOURCE_CONNECTIONS from one
source (an IPv4 address, an IPv6 /64), MAX_CONNECTIONS in all, opened no faster
than the handshake ration; a connection past that is shut down at once. (Not
by the ZAP handler: a ZAP request names an address but not its connection, so
at a source's cap it cannot tell a kept connection finishing its handshake
from one too many.) `status`, the one reply much bigger than its request, is
rationed per source and in all: past the ration the asker gets an `error`
(code `internal`, text "busy: ...") saying when to ask again.

Other sockets a server talks through (a dealer's links to its peers, a relay's
upstream) are `links`: each polled beside the server's own, and turned first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Collection

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import parse_monitor_message

import protocol as p
from net._gate import Conn, Connections, Ration, source_of
from net._keys import KeyPair, hex_of_z85
from protocol import Peer

log = logging.getLogger(__name__)

MAX_DRAIN = 512  # messages handled per journal commit
# plaintext messages handled per turn: the work port comes first, so a flood of
# cheap requests there (status answered "busy", hello) adds at most a few ms a turn
PUBLIC_DRAIN = 32
TICK_S = 1.0  # longest poll: deadlines are checked at least this often
# Frames the work socket takes: 1 MiB for requests and batches of results (the
# reference jobber keeps a results message under it), plus one result's output.
REQUEST_BYTES = 1024 * 1024
# Frames the plaintext port takes: its requests (hello, status, work_query) are
# under 100 bytes; room to spare, and 16 times less than a work frame to queue
PUBLIC_REQUEST_BYTES = 64 * 1024
# messages queued per connection; the reference jobber has 2 in flight (and a dealer's
# jobber, up to MAX_FETCHES = 8 fetches besides)
RCVHWM = 8


def hwm_for(replies: int) -> int:
    """The smallest SNDHWM under which `replies` replies queued for one connection are
    never dropped. libzmq counts a reply as queued until the connection's I/O thread
    reports it taken, and the I/O thread reports every (hwm + 1) // 2 replies it takes:
    up to that many less one may be taken and not yet reported, and count still."""
    if replies < 1:
        raise ValueError(f"replies: {replies} (at least 1)")
    return max(1, 2 * replies - 2)


# replies queued per connection: the reference jobber has at most 3 requests out
# (bored, results, alive); past it a reply is dropped, never buffered (libzmq's
# default, 1,000, let 20 connections that never read hold 2 GB of status replies)
SNDHWM = hwm_for(3)
# ... a dealer's work port: a jobber fetching an input file has up to MAX_FETCHES `fetch`
# requests out besides those three, and each answer must be queued, not dropped (at
# SNDHWM + MAX_FETCHES = 12 a jobber's 8 chunks out could be dropped, and its fetches
# time out, when the I/O thread had not yet reported 5 it took)
DEALER_SNDHWM = hwm_for(3 + p.MAX_FETCHES)
# connections from one source (an IPv4 address, an IPv6 /64): a jobber needs one
# per port; room for a few dozen machines behind one NAT address
PER_SOURCE_CONNECTIONS = 32
MAX_CONNECTIONS = 4096  # in all: each costs file descriptors and libzmq buffers
# new connections from one source: a burst (a NAT's machines starting together),
# then a steady rate; in all, a restarted dealer's jobbers all coming back at once
HANDSHAKES_PER_S, HANDSHAKE_BURST = 10.0, 64.0
ALL_HANDSHAKES_PER_S, ALL_HANDSHAKE_BURST = 200.0, 2000.0
# `status` (up to ~150 KB for a ~30-byte request): a person or a poller asks a
# few times a second; a page of jobbers at a time for an allocator's poll
STATUS_PER_S, STATUS_BURST = 5.0, 20.0
ALL_STATUS_PER_S, ALL_STATUS_BURST = 50.0, 100.0  # bounds the loop's time spent on status
HANDSHAKE_IVL_MS = 30_000  # unfinished handshakes are dropped (a starved jobber may be slow)
SWEEP_S = 10.0  # how often the live connections are checked against the kernel's
ZAP_DOMAIN = "borednet"


def frame_cap(output_kb: int, checkpoint_kb: int = 0) -> int:
    """The largest frame a dealer whose jobs write at most `output_kb` KiB takes (and,
    for jobs that save states of `checkpoint_kb` KiB, a `save` of one chunk of one)."""
    carried = max(output_kb * 1024, min(p.CHUNK_BYTES, checkpoint_kb * 1024))
    return min(p.MAX_MESSAGE_BYTES, REQUEST_BYTES + carried + 64 * 1024)


class _Gate:
    """The ZAP callback: which client keys may complete the handshake."""

    def __init__(self, allow: Collection[str] | None) -> None:
        self.allow = None if allow is None else frozenset(allow)
        self.denied: frozenset[str] = frozenset()  # replaced whole, read by the auth thread

    def callback(self, domain: str, key: bytes) -> bool:
        try:
            who = hex_of_z85(key)
        except ValueError:
            return False
        return who not in self.denied and (self.allow is None or who in self.allow)


def _peer_of(fd: int) -> str | None:
    """The remote address of the connected socket `fd` (libzmq's: read through a
    duplicate), or None if it is closed or not a network socket."""
    try:
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    with s:
        try:
            peer = s.getpeername()
        except OSError:
            return None
    return peer[0] if isinstance(peer, tuple) else None


def _shut(fd: int) -> None:
    """End the connection on `fd` (libzmq sees the peer hang up and closes it)."""
    try:
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    with s, contextlib.suppress(OSError):  # closed meanwhile: nothing to end
        s.shutdown(socket.SHUT_RDWR)


class RouterServer:
    """A ROUTER socket served in turns: drain, decode, handle, commit, reply.

    Subclasses answer decoded messages in `handle` and may act around each
    turn: `before_turn` (time-driven work), `commit` (make the turn's changes
    durable: runs before any reply is sent), `after_turn`.
    """

    def __init__(
        self,
        bind: str,
        keys: KeyPair | None = None,
        *,
        allow: Collection[str] | None = None,
        max_frame: int = p.MAX_MESSAGE_BYTES,
        per_source: int = PER_SOURCE_CONNECTIONS,
        sndhwm: int = SNDHWM,
    ) -> None:
        """`per_source`: connections kept open from one source (net._gate). `sndhwm`:
        replies queued per work connection (a dealer's: room for MAX_FETCHES chunks)."""
        if per_source < 1:
            raise ValueError(f"connections per address: {per_source} (at least 1)")
        if keys is None:  # a key for this run only (tests, embedding)
            keys = KeyPair(*zmq.curve_keypair())
        self.keys = keys
        self._ctx = zmq.Context()
        # every socket dual-stack: `*` binds IPv6 and IPv4 alike, `[::1]` and peers'
        # IPv6 addresses work (libzmq falls back to IPv4 where a host has no IPv6)
        self._ctx.set(zmq.IPV6, 1)
        self.gate = _Gate(allow)
        self._auth = ThreadAuthenticator(self._ctx, log=logging.getLogger("dealer.zap"))
        self._auth.start()
        self._auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self.gate)
        self.sock = self._router(max_frame, sndhwm)
        self.sock.curve_server = True
        self.sock.curve_secretkey = keys.secret
        self.sock.curve_publickey = keys.public
        self.sock.zap_domain = ZAP_DOMAIN.encode()
        self.public = self._router(PUBLIC_REQUEST_BYTES)
        self.connections = Connections(
            per_source,
            max(MAX_CONNECTIONS, per_source),
            Ration(HANDSHAKES_PER_S, HANDSHAKE_BURST, ALL_HANDSHAKES_PER_S, ALL_HANDSHAKE_BURST),
        )
        self.status_ration = Ration(STATUS_PER_S, STATUS_BURST, ALL_STATUS_PER_S, ALL_STATUS_BURST)
        # each listening socket's monitor, by the socket's number in a `Conn`: 0 work, 1 public
        self._monitors = [self._monitor(s) for s in (self.sock, self.public)]
        # connections shut down for the caps, until their DISCONNECTED: bounded by the
        # descriptors the process may have open
        self._refused: set[Conn] = set()
        self._swept_at = time.monotonic()
        self.replies_dropped = 0
        self._shut_logged_at = float("-inf")
        self._shut_since_log = 0
        try:
            self._bind(bind)
        except BaseException:
            self.close()
            raise
        self.endpoint: str = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.public_endpoint: str = self.public.getsockopt_string(zmq.LAST_ENDPOINT)
        # other sockets polled beside the server's own (see the module's doc): objects
        # with sockets(), changed, timeout_s(now), turn(now, readable) and close()
        self.links: tuple = ()
        self._readable: set[zmq.Socket] | None = None  # what the last poll saw (None: unknown)
        self._stopping = False

    def _router(self, max_frame: int, sndhwm: int = SNDHWM) -> zmq.Socket:
        s = self._ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.LINGER, 1000)
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)
        s.setsockopt(zmq.MAXMSGSIZE, max_frame)
        s.setsockopt(zmq.RCVHWM, RCVHWM)
        s.setsockopt(zmq.SNDHWM, sndhwm)
        s.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)
        return s

    def _monitor(self, s: zmq.Socket) -> zmq.Socket:
        """A PAIR socket that receives `s`'s connections accepted and closed."""
        addr = f"inproc://monitor.{id(s)}"
        s.monitor(addr, zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        m = self._ctx.socket(zmq.PAIR)
        m.setsockopt(zmq.LINGER, 0)
        m.setsockopt(zmq.RCVHWM, 0)  # no event lost: each is a few bytes, drained each turn
        m.connect(addr)
        return m

    def _watch_connections(self, now: float) -> None:
        """Read the monitors: record each connection, and shut those past the caps."""
        c = self.connections
        # one monitor after the other: only each socket's own events are in order, so each
        # event names its connection by socket and descriptor (net._gate's doc says why)
        for which, m in enumerate(self._monitors):
            while True:
                try:
                    event = parse_monitor_message(m.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
                conn = Conn(which, event["value"])
                self._refused.discard(conn)  # closed, or its descriptor reused
                if event["event"] == zmq.EVENT_DISCONNECTED:
                    c.disconnected(conn)
                    continue
                # read moments after the accept; if that connection has closed and its
                # descriptor been reused since, this reads the newer connection's address:
                # the closed one's DISCONNECTED follows on this monitor, and the newer
                # one's ACCEPTED on its socket's, which put the count right
                peer = _peer_of(conn.fd)
                if peer is None:  # gone already: its DISCONNECTED follows
                    continue
                why = c.accepted(conn, source_of(peer), now)
                if why is not None:
                    _shut(conn.fd)
                    self._refused.add(conn)
                    self._shut_since_log += 1
                    if time.monotonic() - self._shut_logged_at > 60:  # a flood logs once a minute
                        log.warning(
                            "%d connections shut down (the latest from %s: %s)",
                            self._shut_since_log,
                            peer,
                            why,
                        )
                        self._shut_logged_at, self._shut_since_log = time.monotonic(), 0
        if time.monotonic() - self._swept_at > SWEEP_S:  # a lost event must not leak a slot
            self._swept_at = time.monotonic()
            for conn in c.conns():
                peer = _peer_of(conn.fd)
                if peer is None or source_of(peer) != c.source(conn):
                    c.forget(conn)

    def _shut_down(self, conn: Conn, now: float) -> bool:
        """Whether the connection a message came on (its socket and descriptor, libzmq's
        SRCFD) was refused. Its ACCEPTED was queued before its handshake ended, so before
        any message of its, but may have come after this turn read the monitors: read them
        again when the connection is not known yet, so that no connection past the caps is
        answered even once (under load, a refused client's request used to be)."""
        if conn in self._refused or self.connections.source(conn) is None:
            # a refused one too: it may have been closed and its descriptor given to a new
            # connection since, whose ACCEPTED (after the old one's DISCONNECTED) is unread
            self._watch_connections(now)
        return conn in self._refused

    def _bind(self, bind: str) -> None:
        """Bind the work socket to `bind` and the plaintext one to the next port up."""
        scheme, _, rest = bind.partition("://")
        if scheme != "tcp":  # ipc/inproc: a sibling name
            self.sock.bind(bind)
            self.public.bind(bind + ".public")
            return
        host, _, port = rest.rpartition(":")
        for _ in range(50 if port == "*" else 1):
            self.sock.bind(bind)
            work = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
            work_port = int(work.rpartition(":")[2])
            try:
                self.public.bind(f"tcp://{host}:{work_port + 1}")
                return
            except zmq.ZMQError as e:
                if port != "*":
                    raise zmq.ZMQError(
                        e.errno, f"{host}:{work_port + 1} (the plaintext port): {e}"
                    ) from e
                self.sock.unbind(work)  # that port's neighbour is taken: pick another pair
        raise zmq.ZMQError(zmq.EADDRINUSE, f"no free pair of ports on {host}")

    @property
    def address(self) -> str:
        """What a jobber needs: the work endpoint and `#` the public key, in hex."""
        return f"{connectable(self.endpoint)}#{self.keys.public_hex}"

    def handle(self, msg: p.Message, now: float, peer: Peer) -> p.Message | None:
        raise NotImplementedError

    def handle_public(self, msg: p.Message, now: float) -> p.Message | None:
        """The plaintext socket: the key, and whatever else a subclass makes public."""
        if isinstance(msg, p.Hello):
            return p.HelloReply(msg.id, self.keys.public_hex)
        if isinstance(msg, p.WorkQuery):
            return self.work_offer(msg, now)
        return self.unexpected(msg, "the plaintext port (use the encrypted one)")

    def work_offer(self, msg: p.WorkQuery, now: float) -> p.WorkOffer:
        """What this server can hand out (a subclass with work says)."""
        return p.WorkOffer(msg.id, 0)

    def before_turn(self, now: float) -> None:
        pass

    def commit(self) -> None:
        pass

    def after_turn(self) -> None:
        pass

    def finished(self) -> bool:
        return False

    def timeout_s(self) -> float:
        return TICK_S

    def stop(self) -> None:
        """Make `run` return after the current turn (from another thread or a signal)."""
        self._stopping = True

    def run(self, *, max_s: float | None = None) -> None:
        """Serve until finished, stopped, or `max_s` seconds have passed."""
        stop_at = None if max_s is None else time.monotonic() + max_s
        poller = self._poller()
        while not self._stopping and not self.finished():
            if stop_at is not None and time.monotonic() >= stop_at:
                break
            wait_s = self.timeout_s()
            if self.links:
                if any(link.changed for link in self.links):  # a socket was made or reset
                    poller = self._poller()
                now = time.time()
                wait_s = min([wait_s] + [link.timeout_s(now) for link in self.links])
            ready = poller.poll(int(wait_s * 1000) + 1)
            if self.links:
                self._readable = {s for s, _ in ready}
            self.turn()

    def _poller(self) -> zmq.Poller:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.public, zmq.POLLIN)
        for m in self._monitors:
            poller.register(m, zmq.POLLIN)
        for link in self.links:
            for s in link.sockets():
                poller.register(s, zmq.POLLIN)
        return poller

    def turn(self) -> None:
        """Handle everything waiting, commit it, then reply."""
        now = time.time()
        if self.links:  # what the links heard first: referrals below read it
            for link in self.links:
                link.turn(now, self._readable)
            self._readable = None
        self._watch_connections(now)
        self.before_turn(now)
        replies: list[tuple[zmq.Socket, zmq.Frame, bytes]] = []
        drains = ((self.sock, MAX_DRAIN), (self.public, PUBLIC_DRAIN))  # the monitors' order
        for which, (sock, most) in enumerate(drains):
            for _ in range(most):
                try:
                    parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                if len(parts) != 2:
                    log.warning("dropping a message of %d frames", len(parts))
                    continue
                ident, frame = parts
                if self._shut_down(Conn(which, frame.get(zmq.SRCFD)), now):
                    continue  # a connection past the caps, read before its shutdown
                data = frame.bytes
                try:
                    msg = p.decode(data)
                except p.ProtocolError as e:
                    log.warning("malformed message: %s", e)
                    code = (
                        p.ErrorCode.VERSION
                        if isinstance(e, p.VersionError)
                        else p.ErrorCode.MALFORMED
                    )
                    reply: p.Message | None = p.Error(p.request_id(data), code, str(e)[:1000])
                else:
                    reply = self._dispatch(sock, msg, frame, now)
                if reply is None:
                    continue
                try:
                    out = p.encode(reply)
                except p.ProtocolError as e:  # e.g. jobs whose stdin adds up past the frame cap
                    log.error("cannot send %s: %s", reply.TYPE, e)
                    err = p.Error(p.request_id(data), p.ErrorCode.INTERNAL, str(e)[:1000])
                    out = p.encode(err)
                replies.append((sock, ident, out))
        self.commit()
        dropped, why = 0, ""
        for sock, ident, out in replies:
            try:
                sock.send_multipart([ident, out], zmq.NOBLOCK, copy=False)
            except zmq.ZMQError as e:  # peer gone (ROUTER_MANDATORY) or not reading (SNDHWM)
                dropped, why = dropped + 1, str(e)
        self.replies_dropped += dropped
        if dropped:  # once a turn: a flood of unread replies must not flood the log too
            log.info("%d replies dropped (the peer gone or not reading): %s", dropped, why)
        self.after_turn()

    def _dispatch(
        self, sock: zmq.Socket, msg: p.Message, frame: zmq.Frame, now: float
    ) -> p.Message | None:
        if isinstance(msg, p.StatusQuery):
            busy = self._rationed(msg, frame, now)
            if busy is not None:
                return busy
        if sock is self.public:
            return self.handle_public(msg, now)
        try:
            key = hex_of_z85(frame.get("User-Id"))
            address = frame.get("Peer-Address")
        except (ValueError, zmq.ZMQError) as e:  # no ZAP identity: should not happen
            log.error("message without a proven identity dropped: %s", e)
            return None
        return self.handle(msg, now, Peer(key, p.source_address(address)))

    def gate_status(self) -> dict:
        """What the caps hold now, for status: connections open, from how many sources, how
        many connections and status requests were refused, and replies dropped unread."""
        return {
            **self.connections.status(),
            "status_refused": self.status_ration.refused,
            "replies_dropped": self.replies_dropped,
        }

    def _rationed(self, msg: p.StatusQuery, frame: zmq.Frame, now: float) -> p.Error | None:
        """An `error` for a `status` past its source's ration (or everyone's), else None."""
        try:
            address = frame.get("Peer-Address")
        except zmq.ZMQError:  # ipc or inproc: no address; the rations in all still hold
            address = ""
        wait_s = self.status_ration.take(source_of(address), now)
        if wait_s <= 0:
            return None
        why = (
            f"busy: status is rationed to {STATUS_PER_S:g} a second per address;"
            f" ask again in {max(wait_s, 0.05):.2f} s"
        )
        return p.Error(msg.id, p.ErrorCode.INTERNAL, why)

    @staticmethod
    def unexpected(msg: p.Message, what: str) -> p.Error:
        rid = getattr(msg, "id", getattr(msg, "re", 0))
        return p.Error(rid, p.ErrorCode.UNEXPECTED, f"{what} does not take {msg.TYPE} messages")

    def close(self) -> None:
        for link in getattr(self, "links", ()):
            link.close()
        for s in (getattr(self, "sock", None), getattr(self, "public", None)):
            if s is not None and not s.closed:
                s.disable_monitor()
                s.close(linger=1000)
        for m in getattr(self, "_monitors", ()):
            m.close(linger=0)
        self._auth.stop()
        self._ctx.term()


def connectable(endpoint: str) -> str:
    """A bound endpoint as a client reaches it: a wildcard bind is reached on loopback
    (a dual-stack `[::]` takes IPv4 too, so `*` reads as it did before IPv6), and an
    IPv4 address a dual-stack socket bound as `[::ffff:a.b.c.d]` is written `a.b.c.d`."""
    scheme, sep, rest = endpoint.partition("://")
    host, _, port = rest.rpartition(":")
    if scheme != "tcp" or not sep or not host.startswith("["):
        return endpoint.replace("tcp://0.0.0.0:", "tcp://127.0.0.1:")
    if host == "[::]":
        return f"tcp://127.0.0.1:{port}"
    plain = p.source_address(host[1:-1])
    return f"tcp://{plain}:{port}" if "." in plain else endpoint
