"""ZeroMQ transport: one PUB socket per peer, one SUB connected to each in-neighbour.

No broker.  A peer binds its PUB socket (ipc:// on one host by default, or
tcp:// on 127.0.0.1 with an OS-chosen port), reports the endpoint to the
launcher, and connects one SUB socket to each in-neighbour's endpoint,
subscribing to exactly the topics it learns from (:mod:`p2pgame.bus.topics`),
so the publisher never sends it a byte it cannot use.  A peer's receive
high-water marks are unlimited, so the link emulation, where losses are
counted, is the only loss a live peer sees; the publisher's send high-water
mark (``comm.send_hwm`` messages per subscriber) bounds what a stalled or
frozen listener can cost it.

Control (launcher <-> peers) uses ROUTER/DEALER, which queues messages until a
connection exists, so readiness reports and commands are never lost; every
message a peer sends carries the token its launcher gave it (:class:`ControlServer`).  The
control channel carries opaque bytes here; the typed messages are
:mod:`p2pgame.peer.control`'s.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from p2pgame.bus.topics import Topic


def bind_endpoint(sock: zmq.Socket, transport: str, host: str, ipc_dir: Path, name: str) -> str:
    if transport == "ipc":
        path = Path(ipc_dir) / f"{name}.sock"
        if len(str(path)) > 100:
            raise ValueError(f"ipc path too long for a unix socket: {path}")
        endpoint = f"ipc://{path}"
        sock.bind(endpoint)
        return endpoint
    port = sock.bind_to_random_port(f"tcp://{host}")
    return f"tcp://{host}:{port}"


@dataclass(frozen=True)
class Curve:
    """CURVE security for one party (``comm.security = "curve"``): its own key pair and
    the public keys of everyone it accepts as a client (Z85 text, ``zmq.curve_keypair``).

    A PUB (or the launcher's ROUTER) is a CURVE server: traffic is encrypted, and a ZAP
    handler admits only clients whose public key is in ``allowed``, the run's peers.  A
    subscriber without a key of the run completes no handshake and receives nothing.
    """

    public: str
    secret: str
    allowed: frozenset[str] = frozenset()

    def serve(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.secret.encode()
        sock.curve_publickey = self.public.encode()
        sock.curve_server = True

    def client(self, sock: zmq.Socket, server_public: str) -> None:
        sock.curve_secretkey = self.secret.encode()
        sock.curve_publickey = self.public.encode()
        sock.curve_serverkey = server_public.encode()


def curve_keypair() -> tuple[str, str]:
    """(public, secret), Z85 text."""
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq has no CURVE support; comm.security = 'curve' needs it")
    public, secret = zmq.curve_keypair()
    return public.decode(), secret.decode()


class _Allowed:
    def __init__(self, keys: frozenset[str]) -> None:
        self.keys = {k.encode() for k in keys}

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


def start_authenticator(ctx: zmq.Context, allowed: frozenset[str]) -> Any:
    """The ZAP handler of a context (one per context, in a thread of its own): admits CURVE
    clients whose public key is in ``allowed``.  Stop it before the context ends."""
    from zmq.auth.thread import ThreadAuthenticator

    # A synchronous view of the same context: ZAP talks over its inproc endpoint.
    auth = ThreadAuthenticator(zmq.Context.shadow(ctx.underlying))
    auth.start()
    auth.configure_curve_callback("*", credentials_provider=_Allowed(allowed))
    return auth


def shared_context(sockets: int) -> zmq.asyncio.Context:
    """One zmq context for all the peers of a worker process: one I/O thread for them
    all instead of one each, with room for ``sockets`` sockets (ZeroMQ's default cap is
    1023, too few for hundreds of peers).  Each peer keeps its own sockets."""
    ctx = zmq.asyncio.Context()
    ctx.set(zmq.MAX_SOCKETS, max(1024, sockets))
    return ctx


class Transport:
    """The data plane of one peer."""

    def __init__(self, peer_id: int, ctx: zmq.asyncio.Context | None = None,
                 max_message_bytes: int = -1, send_hwm: int = 0,
                 curve: Curve | None = None) -> None:
        self.peer_id = peer_id
        # ZeroMQ refuses a larger frame as it arrives (and drops that connection, which it
        # then re-opens) instead of receiving all of it into memory first.
        self.max_message_bytes = max_message_bytes
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.asyncio.Context()
        self.curve = curve
        # A context of our own needs its own ZAP handler; a shared one has the worker's.
        self.auth = start_authenticator(self.ctx, curve.allowed) if (
            curve and self._own_ctx) else None
        # XPUB, a PUB that also hands us its subscribers' subscriptions (every one, repeats
        # included: verbose): a receiver whose connection was cut (ZeroMQ cuts one that
        # brings a frame above max_message_bytes) and re-made subscribes again, and
        # :attr:`on_subscribe` answers with a resync marker (README, "Wire format").
        self.pub = self.ctx.socket(zmq.XPUB)
        _options(self.pub)
        self.pub.setsockopt(zmq.XPUB_VERBOSE, 1)
        # Called with each subscription's topic bytes as the receiving task takes it (None:
        # taken and dropped, e.g. before the measured phase).
        self.on_subscribe: Any = None
        self._pub_ready = False
        if curve:
            curve.serve(self.pub)
        # Per subscriber: beyond this many queued messages PUB drops for that subscriber
        # alone (ZeroMQ's policy for PUB), so a listener that stalls, or never reads, costs
        # the publisher at most send_hwm messages.  A peer of the run drains its socket from
        # a task of its own (its receive high-water mark is unlimited), so only a frozen
        # peer ever reaches it; such a loss shows in links.csv as in_transport.
        self.pub.setsockopt(zmq.SNDHWM, send_hwm)
        self.endpoint = ""
        # One SUB socket per in-neighbour, connected to that neighbour's endpoint alone:
        # the socket a message arrives on says who sent it, whatever its header claims
        # (the receiver checks the two agree: sender binding).
        self.subs: dict[int, zmq.Socket] = {}
        # The receive side is plain (synchronous) sockets of the same context, watched
        # through their file descriptors (:meth:`recv_from`): zmq.asyncio's Poller costs a
        # few futures and callbacks per wake-up, about as much as decoding a message.
        self._sync_ctx = zmq.Context.shadow(self.ctx.underlying)
        # In-neighbours that moved (restarted), applied by the receiving task between two
        # waits: closing a socket that a pending wait is watching can leave that wait
        # deaf to every other socket too (seen with zmq.asyncio's Poller: a peer stopped
        # receiving from everyone at a neighbour's restart).  A message on the inproc wake
        # pair ends the pending wait.
        self._moves: dict[int, tuple[str, list[Topic], str | None]] = {}
        # Per in-neighbour: where we connect (endpoint, topics, server key), and a monitor
        # of its SUB socket's disconnections.  ZeroMQ does not re-make a connection it cut
        # for a protocol error, which a frame above max_message_bytes is: we do (a new
        # SUB, so a new subscription, which the publisher answers with a resync marker).
        self._conns: dict[int, tuple[str, list[Topic], str | None]] = {}
        self._monitors: dict[int, zmq.Socket] = {}
        self._cut: set[int] = set()
        # Per in-neighbour: connections re-made after a cut whose resync marker has not
        # been taken yet (:meth:`take_cut`).
        self.cuts: dict[int, int] = {}
        wake = f"inproc://p2pgame-wake-{peer_id}-{id(self):x}"
        self._wake_in = self._sync_ctx.socket(zmq.PAIR)
        self._wake_in.bind(wake)
        self._wake_out = self._sync_ctx.socket(zmq.PAIR)
        self._wake_out.connect(wake)
        self._held: deque[tuple[int, list[zmq.Frame]]] = deque()  # taken, not yet returned
        # Receiving: the sockets that may have a message (drained until empty), the loop
        # whose reader callbacks watch the sockets' descriptors, and the future the
        # receiving task waits on while nothing is ready.
        self._ready: dict[int, zmq.Socket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._woken = False  # the wake socket signalled: empty it
        # Synchronous views of the same sockets, for the calls that never block (below):
        # they skip zmq.asyncio's per-call future.
        self._pub_now = zmq.Socket.shadow(self.pub.underlying)

    def bind(self, transport: str, host: str, ipc_dir: Path, incarnation: int = 0) -> str:
        # A restarted peer binds afresh (a new ipc path: the old one may still exist).
        name = f"peer-{self.peer_id}" + (f"-r{incarnation}" if incarnation else "")
        self.endpoint = bind_endpoint(self.pub, transport, host, ipc_dir, name)
        return self.endpoint

    def reconnect(self, j: int, endpoint: str, topics: list[Topic],
                  server_key: str | None = None) -> None:
        """In-neighbour ``j`` moved (it was restarted): drop its old connection, take the
        same topics from its new endpoint.  Done by the receiving task, before its next
        wait (see ``_moves``); this only asks for it."""
        self._moves[j] = (endpoint, topics, server_key)
        self.cuts.pop(j, None)  # (its old connection ended with its process: no cut)
        self._wake_out.send(b"", flags=zmq.NOBLOCK)

    def _reconnect_cut(self) -> list[tuple[int, list[zmq.Frame]]]:
        """Re-make the connections whose monitors report a disconnection; what the old
        sockets still held (taken before the cut), in order."""
        cut, self._cut = self._cut, set()
        taken: list[tuple[int, list[zmq.Frame]]] = []
        for j in sorted(cut):
            mon = self._monitors.get(j)
            if mon is None or j in self._moves:  # (moving anyway)
                continue
            events = 0
            while True:
                try:
                    _recv(mon, _NOW, True)
                except zmq.Again:
                    break
                events += 1
            if events:
                self.cuts[j] = self.cuts.get(j, 0) + 1
                old = self.subs.get(j)
                if old is not None:
                    taken += [(j, frames) for frames in _drain_one(old)]
                self._move(j, *self._conns[j])
        return taken

    def take_cut(self, j: int) -> bool:
        """Whether j's connection was cut and re-made since the last call that said so (a
        resync marker from j answers either such a re-connection, or a first one)."""
        if self.cuts.get(j, 0) <= 0:
            return False
        self.cuts[j] -= 1
        return True

    def _apply_moves(self) -> None:
        while self._moves:
            j, (endpoint, topics, server_key) = self._moves.popitem()
            self._move(j, endpoint, topics, server_key)

    def _move(self, j: int, endpoint: str, topics: list[Topic], server_key: str | None) -> None:
        self._ready.pop(j, None)
        self._close_sub(self.subs.pop(j, None), self._monitors.pop(j, None))
        self.connect({j: endpoint}, {j: topics},
                     {j: server_key} if server_key is not None else None)

    def _close_sub(self, sub: zmq.Socket | None, mon: zmq.Socket | None) -> None:
        """Close an in-neighbour's SUB and the PAIR that reads its monitor, in the one safe
        order.  ZeroMQ's I/O thread writes a monitor event with a *blocking* send: if our
        PAIR end closes first and the SUB's teardown then reports a disconnection, that
        send waits forever for a reader, and with it the context's I/O thread, which
        carries every other connection of this context (a peer went deaf to all its
        neighbours at one neighbour's restart; with shared contexts, a whole worker
        would).  So stop the monitor (which waits for an event being written), then
        close the SUB, then our PAIR."""
        if sub is not None and not sub.closed:
            self._unwatch(sub)
            sub.disable_monitor()
            sub.close(linger=0)
        if mon is not None:
            self._unwatch(mon)
            mon.close(linger=0)

    def connect(self, endpoints: dict[int, str], topics: dict[int, list[Topic]],
                server_keys: dict[int, str] | None = None) -> None:
        """Subscribe to ``topics[j]`` of every in-neighbour j, plus j's handshake topic
        (with CURVE, ``server_keys[j]`` is j's public key)."""
        for j, ep in sorted(endpoints.items()):
            sub = self._sync_ctx.socket(zmq.SUB)
            _options(sub)
            if self.curve:
                self.curve.client(sub, (server_keys or {})[j])
            sub.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
            # (A name never used before in this process: a closed socket's monitor endpoint
            # lingers until ZeroMQ's reaper gets to it, and id() values are reused.)
            address = f"inproc://p2pgame-mon-{self.peer_id}-{j}-{next(_MONITORS)}"
            try:
                sub.monitor(address, zmq.EVENT_DISCONNECTED)
            except zmq.ZMQError:
                sub.close(linger=0)  # (an open socket would hold the context's term)
                raise
            mon = self._sync_ctx.socket(zmq.PAIR)
            mon.setsockopt(zmq.LINGER, 0)
            mon.connect(address)
            self._monitors[j] = mon
            self._conns[j] = (ep, list(topics.get(j, ())), (server_keys or {}).get(j))
            sub.connect(ep)
            # Subscriptions reach the publisher in order: the handshake topic last, so that
            # hearing a handshake proves the data topics (and our resync topic) are live.
            for topic in (*sorted(topics.get(j, ())), Topic.resync(j, self.peer_id),
                          Topic.handshake(j)):
                sub.setsockopt(zmq.SUBSCRIBE, topic.subscription())
            self.subs[j] = sub
            self._ready[j] = sub  # drained at the next receive, then watched
            if self._loop is not None:
                self._watch(j, sub)
                self._watch((_MON, j), mon)

    async def send(self, frames: list[Any]) -> None:
        # A PUB socket never blocks (at a subscriber's HWM it drops for that subscriber),
        # so send at once; the awaitable path stays for the case that it ever reports EAGAIN.
        # Frame by frame with the backend's send and plain int flags: pyzmq's
        # send_multipart adds a Python wrapper and two enum operations per frame.
        for f in frames:  # every frame a buffer, checked before any is queued (as pyzmq does)
            if type(f) is not bytes and type(f) is not memoryview and type(f) is not zmq.Frame:
                memoryview(f)  # raises TypeError for what is not a buffer
        pub = self._pub_now
        try:
            _send(pub, frames[0], _MORE_NOW if len(frames) > 1 else _NOW, False)
        except zmq.Again:  # nothing of the message was queued
            await self.pub.send_multipart(frames, copy=False)
            self._after_send()
            return
        # The rest of a multipart message is always taken once its first frame is.
        last = frames[-1]
        for f in frames[1:-1]:
            _send(pub, f, _MORE_NOW, False)
        if len(frames) > 1:
            _send(pub, last, _NOW, False)
        self._after_send()

    def _after_send(self) -> None:
        """A send processes the socket's pending commands, and with them can clear its
        descriptor while a subscription waits to be read (the descriptor signals a change
        once; reading ``EVENTS`` says what is there): the reader callback would then never
        run for it, and a receiver that re-connected after a cut would wait for its
        resync marker until its sync barrier timed out (seen under load).  So look."""
        if not self._pub_ready and _get(self._pub_now, _EVENTS) & _POLLIN:
            self._pub_ready = True
            w = self._waiter
            if w is not None and not w.done():
                w.set_result(None)

    def send_now(self, frames: list[Any]) -> None:
        """Send a small message at once (a resync marker, from a receiving callback)."""
        for f in frames[:-1]:
            _send(self._pub_now, f, _MORE_NOW, True)
        _send(self._pub_now, frames[-1], _NOW, True)
        self._after_send()

    def take_subscriptions(self) -> None:
        """Hand every subscription the XPUB has queued to :attr:`on_subscribe`."""
        self._pub_ready = False
        while True:
            try:
                data = _recv(self._pub_now, _NOW, True)
            except zmq.Again:
                return
            if data[:1] == b"\x01" and self.on_subscribe is not None:
                self.on_subscribe(data[1:])

    def _watch(self, key: Any, sock: zmq.Socket) -> None:
        """Call :meth:`_readable` whenever ``sock``'s descriptor signals (ZeroMQ's
        descriptor is edge-triggered: it signals when the socket's state may have
        changed; the callback asks the socket whether a message is waiting)."""
        assert self._loop is not None
        self._loop.add_reader(sock.getsockopt(zmq.FD), self._readable, key, sock)

    def _unwatch(self, sock: zmq.Socket) -> None:
        if self._loop is not None and not self._loop.is_closed() and not sock.closed:
            self._loop.remove_reader(sock.getsockopt(zmq.FD))

    def _readable(self, key: Any, sock: zmq.Socket) -> None:
        if sock.closed:
            return
        if key is _WAKE:
            self._woken = True
        elif key is _PUB:
            self._pub_ready = True
        elif type(key) is tuple:  # (_MON, j): j's SUB may have been disconnected
            self._cut.add(key[1])
        else:
            self._ready[key] = sock  # at worst, one receive finds nothing
        w = self._waiter
        if w is not None and not w.done():
            # The receiving task drains the socket next, to EAGAIN, which processes its
            # pending commands and so clears its descriptor.
            w.set_result(None)
        else:
            # Nobody receives now: reading EVENTS processes the commands and clears the
            # descriptor (asyncio's selector is level-triggered: else this would run again
            # at every turn of the loop until the receiving task drains the socket).
            _get(sock, _EVENTS)

    def _start_watching(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        if self._loop is not None:  # (a new event loop: move the readers to it)
            for sock in (self._wake_in, self.pub, *self.subs.values()):
                self._unwatch(sock)
        self._loop = loop
        self._watch(_WAKE, self._wake_in)
        self._watch(_PUB, self.pub)
        self._pub_ready = True
        for j, sock in self.subs.items():
            self._watch(j, sock)
            self._ready[j] = sock
        for j, mon in self._monitors.items():
            self._watch((_MON, j), mon)
            self._cut.add(j)

    def _drain(self) -> list[tuple[int, list[zmq.Frame]]]:
        """Every message queued on the sockets that may have one; a socket found empty
        is left out until its descriptor signals again."""
        out = []
        for j, sock in list(self._ready.items()):
            while True:  # whole messages only: ZeroMQ delivers multipart messages atomically
                try:
                    f = _recv(sock, _NOW, False)
                except zmq.Again:
                    del self._ready[j]
                    break
                frames = [f]
                while f.more:
                    f = _recv(sock, _NOW, False)
                    frames.append(f)
                out.append((j, frames))
        return out

    async def recv_from(self) -> list[tuple[int, list[zmq.Frame]]]:
        """Wait for one message, then take every other one already queued, each with the
        in-neighbour whose connection it came on."""
        if self._held:
            out, self._held = list(self._held), deque()
            return out + self._drain()
        self._start_watching()
        while True:
            out = self._reconnect_cut() if self._cut else []
            self._apply_moves()
            if self._pub_ready:
                self.take_subscriptions()
            out += self._drain()
            if out:
                return out
            self._waiter = w = self._loop.create_future()
            try:
                await w
            finally:
                self._waiter = None
            if self._woken:  # wake-ups carry nothing
                self._woken = False
                while True:
                    try:
                        _recv(self._wake_in, _NOW, True)
                    except zmq.Again:
                        break

    async def recv_ready(self) -> list[list[zmq.Frame]]:
        """Like :meth:`recv_from`, without the connections."""
        return [frames for _, frames in await self.recv_from()]

    async def recv(self) -> list[zmq.Frame]:
        """One message (the rest of a burst waits for the next call)."""
        if not self._held:
            self._held.extend(await self.recv_from())
        return self._held.popleft()[1]

    def control(self, endpoint: str, token: str = "", server_key: str = "") -> ControlClient:
        return ControlClient(self.peer_id, endpoint, self.ctx, token,
                             self.curve if server_key else None, server_key)

    def close(self) -> None:
        for sock in (self._wake_in, self.pub):
            if not sock.closed:
                self._unwatch(sock)
        self._ready.clear()
        for j in sorted(set(self.subs) | set(self._monitors)):
            self._close_sub(self.subs.get(j), self._monitors.get(j))
        self.pub.close(linger=0)
        self._wake_in.close(linger=0)
        self._wake_out.close(linger=0)
        if self.auth is not None:
            self.auth.stop()
        if self._own_ctx:
            self.ctx.term()


# The backend's calls, without pyzmq's Python-level wrappers (flags as plain ints).
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
_get = zmq.backend.Socket.get
_NOW = int(zmq.NOBLOCK)
_MORE_NOW = int(zmq.NOBLOCK | zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_WAKE = object()  # the key of the wake socket in reader callbacks
_PUB = object()  # the key of our XPUB (its subscriptions) in reader callbacks
_MON = object()  # (_MON, j): the key of j's SUB monitor in reader callbacks
_MONITORS = itertools.count()  # numbers the monitors' inproc endpoints


def _drain_one(sock: zmq.Socket) -> list[list[zmq.Frame]]:
    """Every whole message queued on ``sock``."""
    out = []
    while True:
        try:
            f = _recv(sock, _NOW, False)
        except zmq.Again:
            return out
        frames = [f]
        while f.more:
            f = _recv(sock, _NOW, False)
            frames.append(f)
        out.append(frames)


def _options(sock: zmq.Socket) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)


def control_token(secret: bytes, peer: int) -> str:
    """Peer ``peer``'s credential on the control channel: an HMAC of its id under the run's
    secret.  A peer is handed its own token only, so it cannot speak for another."""
    return hmac.new(secret, f"peer-{peer}".encode(), hashlib.sha256).hexdigest()


# The largest frame the launcher's control socket takes: ZeroMQ refuses a larger one as it
# arrives (and cuts the connection that sent it), before it is received into memory, so a
# stranger's 256 MiB frame costs the launcher nothing.  It bounds frames, not messages: a
# legitimate message can be of any size (a checkpoint that a Ray node sends home grows with
# the model), so a peer sends a longer one as several frames of one message
# (:meth:`ControlClient.send`), each checked on arrival.  Config-independent on purpose:
# what a message holds depends on the algorithm, never on comm.max_message_bytes.
CONTROL_FRAME_BYTES = 16 << 20


class ControlServer:
    """Launcher side of the control channel (ROUTER).

    Every message from a peer is ``[b"<peer>:<token>", message]``, the message in one frame
    or, beyond :data:`CONTROL_FRAME_BYTES`, in several (joined here).  The
    launcher spawned each peer with its token (:func:`control_token`), so a local process
    that connects and claims to be peer 3 is not believed: without the token its frames are
    dropped and counted in ``junk``, however it names itself.  ZeroMQ's routing identity is
    not trusted (nor set by peers): the launcher answers a peer on the connection its last
    authenticated message came from.  ``tokens = None`` checks nothing (component tests).
    """

    def __init__(self, transport: str, host: str, ipc_dir: Path,
                 tokens: dict[int, str] | None = None, curve: Curve | None = None) -> None:
        self.ctx = zmq.asyncio.Context()
        self.auth = start_authenticator(self.ctx, curve.allowed) if curve else None
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, CONTROL_FRAME_BYTES)
        if curve:
            curve.serve(self.sock)
        self.endpoint = bind_endpoint(self.sock, transport, host, ipc_dir, "control")
        self.tokens = tokens
        self.routes: dict[int, bytes] = {}  # peer -> routing id of its connection
        self.junk = 0

    def _authentic(self, auth: bytes) -> int | None:
        peer_s, sep, token = auth.partition(b":")
        peer = _peer_number(peer_s)
        if peer is None or not sep:
            return None
        if self.tokens is not None:
            want = self.tokens.get(peer)
            if want is None or not hmac.compare_digest(token, want.encode()):
                return None
        return peer

    def queued(self) -> bool:
        """Whether a message is already waiting to be read: the launcher is behind."""
        return bool(self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)

    async def recv(self, timeout_s: float | None = None) -> tuple[int, bytes] | None:
        """(peer id, message bytes), or None when nothing came within ``timeout_s``.

        Anything that is not ``[auth, message...]`` with a valid ``auth`` is dropped and
        counted in ``junk``; it never raises.  A frame above :data:`CONTROL_FRAME_BYTES`
        never arrives (ZeroMQ refuses it, and reports only that the connection closed, as a
        peer's ordinary exit does: it is not counted).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if wait is not None and not await self.sock.poll(int(wait * 1000)):
                return None
            frames = await self.sock.recv_multipart()
            peer = self._authentic(frames[1]) if len(frames) >= 3 else None
            if peer is None:
                self.junk += 1
                continue
            self.routes[peer] = frames[0]
            return peer, frames[2] if len(frames) == 3 else b"".join(frames[2:])

    async def send(self, peer: int, data: bytes) -> bool:
        """Send to ``peer``; False if it has not spoken yet (no connection known)."""
        route = self.routes.get(peer)
        if route is None:
            return False
        await self.sock.send_multipart([route, data])
        return True

    def close(self) -> None:
        self.sock.close(linger=0)
        if self.auth is not None:
            self.auth.stop()
        self.ctx.term()


def control_context() -> zmq.asyncio.Context:
    """A context for a process that only reports to the launcher (a peer that refuses to
    start); terminate it after use."""
    return zmq.asyncio.Context()


class ControlClient:
    """Peer side of the control channel (DEALER); every message carries the peer's token."""

    def __init__(self, peer_id: int, endpoint: str, ctx: zmq.asyncio.Context,
                 token: str = "", curve: Curve | None = None, server_key: str = "") -> None:
        self.sock = ctx.socket(zmq.DEALER)
        if curve:
            curve.client(self.sock, server_key)
        self.auth = f"{peer_id}:{token}".encode()
        self.sock.setsockopt(zmq.LINGER, 2000)  # let the final report reach the launcher
        self.sock.connect(endpoint)

    async def send(self, data: bytes) -> None:
        # One message, in frames the launcher accepts (CONTROL_FRAME_BYTES): ZeroMQ delivers
        # the frames of a message together, so no other message can come between them.
        if len(data) <= CONTROL_FRAME_BYTES:
            await self.sock.send_multipart([self.auth, data])
            return
        view = memoryview(data)
        await self.sock.send_multipart(
            [self.auth, *(view[k:k + CONTROL_FRAME_BYTES]
                          for k in range(0, len(data), CONTROL_FRAME_BYTES))])

    async def recv(self) -> bytes:
        return await self.sock.recv()

    def close(self) -> None:
        self.sock.close()


def _peer_number(text: bytes) -> int | None:
    try:
        num = text.decode("ascii")
    except UnicodeDecodeError:
        return None
    return int(num) if num.isdigit() and len(num) < 10 else None
