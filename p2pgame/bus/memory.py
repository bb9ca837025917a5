"""An in-memory bus: the part of :class:`~p2pgame.bus.transport.Transport` that a peer uses,
without sockets, so that several peers run in one event loop (unit tests).

A :class:`MemoryNetwork` connects the :class:`MemoryTransport` of each peer.  It keeps
what the runtime relies on of the ZeroMQ transport, and nothing else:

* frames, not objects, travel: a publisher's frames are copied to ``bytes`` when sent
  (as ZeroMQ copies them into its queues), so a receiver decodes its own copy with the
  codec and counts its bytes as the real bus does (:class:`~p2pgame.bus.endpoint.PeerBus`
  wraps a :class:`MemoryTransport` as it wraps a :class:`Transport`);
* prefix subscriptions per connection: a receiver takes from in-neighbour ``j`` the
  topics it subscribed to at ``j`` (data topics, its resync topic, ``j``'s handshake),
  and a message arrives tagged with the connection it came on (sender binding);
* order: FIFO per connection (one queue per receiver keeps every connection's order);
* subscriptions reach the publisher: queued until :meth:`MemoryTransport.take_subscriptions`
  hands them to ``on_subscribe``, as the XPUB socket does;
* a cut connection (:meth:`MemoryTransport.cut`): what ``j`` sends until it is re-made is
  lost, then the receiver subscribes again and :meth:`~MemoryTransport.take_cut` says so,
  as after ZeroMQ cut a connection for an oversized frame.

It is reliable and instantaneous otherwise: the link layer (:mod:`p2pgame.bus.links`)
adds delay and loss on the receiving side, as it does over ZeroMQ.  Every call is made
from the event loop's thread; ``send`` never blocks (a PUB socket never does either).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from typing import Any

from p2pgame.bus.topics import Topic

SCHEME = "memory://"


class MemoryNetwork:
    """The peers' in-memory transports, by peer id."""

    def __init__(self) -> None:
        self.peers: dict[int, MemoryTransport] = {}

    def transport(self, peer_id: int, max_message_bytes: int = -1) -> MemoryTransport:
        t = MemoryTransport(self, peer_id, max_message_bytes)
        self.peers[peer_id] = t
        return t

    def endpoints(self) -> dict[int, str]:
        return {i: t.endpoint for i, t in self.peers.items()}


class MemoryTransport:
    """One peer's end of a :class:`MemoryNetwork` (the data plane, no control channel)."""

    def __init__(self, network: MemoryNetwork, peer_id: int, max_message_bytes: int = -1) -> None:
        self.network = network
        self.peer_id = peer_id
        self.max_message_bytes = max_message_bytes  # a larger message cuts the connection
        self.endpoint = f"{SCHEME}{peer_id}"
        # Publisher side: per receiver, the topic prefixes it subscribed to here.
        self.subscribers: dict[int, list[bytes]] = {}
        self.on_subscribe: Any = None
        self._subscriptions: deque[bytes] = deque()  # not yet handed to on_subscribe
        # Receiver side: in-neighbour -> the topics we take from it; what arrived, in order.
        self.conns: dict[int, list[Topic]] = {}
        self._queue: deque[tuple[int, list[bytes]]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._down: set[int] = set()  # in-neighbours whose connection is cut
        self.cuts: dict[int, int] = {}  # re-made connections whose marker is not taken yet
        self.sent = 0  # messages put on the network (one per send, whatever the receivers)
        self.closed = False

    # -- setting up ----------------------------------------------------------------------
    def bind(self, *args: Any, **kwargs: Any) -> str:
        return self.endpoint

    def connect(self, endpoints: Mapping[int, str], topics: Mapping[int, list[Topic]],
                server_keys: Mapping[int, str] | None = None) -> None:
        """Subscribe to ``topics[j]`` of every in-neighbour j, then to our resync topic at
        j and j's handshake topic, in that order (as :meth:`Transport.connect`)."""
        for j, ep in sorted(endpoints.items()):
            self._subscribe(j, ep, list(topics.get(j, ())))

    def _subscribe(self, j: int, endpoint: str, topics: list[Topic]) -> None:
        if not endpoint.startswith(SCHEME):
            raise ValueError(f"not an in-memory endpoint: {endpoint!r}")
        pub = self.network.peers[int(endpoint[len(SCHEME):])]
        self.conns[j] = topics
        prefixes = [t.subscription() for t in (*sorted(topics), Topic.resync(j, self.peer_id),
                                               Topic.handshake(j))]
        pub.subscribers[self.peer_id] = prefixes
        pub._subscribed(prefixes)

    def reconnect(self, j: int, endpoint: str, topics: list[Topic],
                  server_key: str | None = None) -> None:
        """In-neighbour ``j`` moved (restarted): take the same topics from ``endpoint``."""
        old = self.network.peers.get(j)
        if old is not None:
            old.subscribers.pop(self.peer_id, None)
        self.cuts.pop(j, None)
        self._down.discard(j)
        self._subscribe(j, endpoint, topics)

    def cut(self, j: int) -> None:
        """Cut our connection to in-neighbour ``j``: what it sends is lost until
        :meth:`remake` (a test's stand-in for ZeroMQ cutting it)."""
        self._down.add(j)

    def remake(self, j: int) -> None:
        """Re-make a cut connection: a new subscription, which ``j`` answers with a
        resync marker; :meth:`take_cut` then says the connection was cut."""
        self._down.discard(j)
        self.cuts[j] = self.cuts.get(j, 0) + 1
        pub = self.network.peers[j]
        pub._subscribed(pub.subscribers.get(self.peer_id, ()))

    def take_cut(self, j: int) -> bool:
        if self.cuts.get(j, 0) <= 0:
            return False
        self.cuts[j] -= 1
        return True

    def take_subscriptions(self) -> None:
        """Hand every queued subscription to :attr:`on_subscribe` (None: drop them)."""
        while self._subscriptions:
            data = self._subscriptions.popleft()
            if self.on_subscribe is not None:
                self.on_subscribe(data)

    # -- sending -------------------------------------------------------------------------
    async def send(self, frames: list[Any]) -> None:
        self.send_now(frames)

    def send_now(self, frames: list[Any]) -> None:
        copy = [bytes(f) for f in frames]
        topic = copy[0]
        size = sum(map(len, copy))
        self.sent += 1
        for r, prefixes in list(self.subscribers.items()):
            receiver = self.network.peers.get(r)
            if receiver is None or receiver.closed or self.peer_id in receiver._down:
                continue
            if not any(topic.startswith(p) for p in prefixes):
                continue
            if receiver.max_message_bytes > 0 and size > receiver.max_message_bytes:
                receiver.cut(self.peer_id)  # (ZeroMQ refuses it and cuts the connection)
                continue
            receiver._deliver(self.peer_id, copy)

    def _subscribed(self, prefixes) -> None:
        """Subscriptions reached us: the receiving task hands them over."""
        self._subscriptions.extend(prefixes)
        self._wake()

    def _deliver(self, j: int, frames: list[bytes]) -> None:
        self._queue.append((j, frames))
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- receiving -----------------------------------------------------------------------
    async def recv_from(self) -> list[tuple[int, list[bytes]]]:
        """Wait for one message, then take every other one queued, each with the
        in-neighbour whose connection it came on (subscriptions are handed over first)."""
        while True:
            self.take_subscriptions()
            if self._queue:
                out, self._queue = list(self._queue), deque()
                return out
            self._waiter = w = asyncio.get_running_loop().create_future()
            try:
                await w
            finally:
                self._waiter = None

    def pending(self) -> int:
        """Messages arrived and not yet received."""
        return len(self._queue)

    def close(self) -> None:
        self.closed = True
        for pub in self.network.peers.values():
            pub.subscribers.pop(self.peer_id, None)
