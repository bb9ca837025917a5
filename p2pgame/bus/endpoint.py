"""One peer's end of the bus: publish and receive envelopes, every byte counted on the way.

The peer runtime sees envelopes only; encoding, the sockets and the
:class:`~p2pgame.bus.traffic.Traffic` counters stay here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from p2pgame.bus.codec import Envelope, encode
from p2pgame.bus.topics import Topic
from p2pgame.bus.traffic import Traffic
from p2pgame.bus.transport import Transport


class PeerBus:
    def __init__(self, transport: Transport, traffic: Traffic,
                 subscribers: Mapping[Topic, tuple[int, ...]], pack_bool: bool = True) -> None:
        self.transport = transport
        self.traffic = traffic
        # Who subscribed to each of our topics: PUB sends one copy to each of them, and
        # none to an out-neighbour that did not subscribe, so only they are counted.
        self.subscribers = dict(subscribers)
        self.pack_bool = pack_bool
        self.encode_s = 0.0
        self.send_s = 0.0

    async def publish(self, env: Envelope) -> None:
        t0 = time.perf_counter()
        frames = encode(env, pack_bool=self.pack_bool)
        t1 = time.perf_counter()
        await self.transport.send(frames)
        self.encode_s += t1 - t0
        self.send_s += time.perf_counter() - t1
        if not env.topic.is_handshake:
            self.traffic.count_sent(env, frames, self.subscribers.get(env.topic, ()))

    async def receive(self) -> list[tuple[Envelope, int]]:
        """Wait for messages; the decodable ones with their size (the rest are counted)."""
        out = []
        for j, frames in await self.transport.recv_from():
            got = self.traffic.decode(frames, via=j)
            if got is not None:
                out.append(got)
        return out
