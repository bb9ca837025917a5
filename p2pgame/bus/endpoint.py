"""One peer's end of the bus: publish and receive envelopes, every byte counted on the way.

The peer runtime sees envelopes only; encoding, the sockets and the
:class:`~p2pgame.bus.traffic.Traffic` counters stay here.

Encoding a large message is work (bit-packing bools, copying what cannot be sent
as it is): above :data:`ENCODE_IN_THREAD_BYTES` of such work, :meth:`PeerBus.publish`
encodes in a worker thread (numpy releases the GIL while it packs and copies), so
the event loop keeps receiving meanwhile.  Smaller messages are encoded inline: the
hop to a thread and back costs the event loop itself about 60 us (measured on a
shared 2-core machine), as much as bit-packing about 1.5 MiB of bools, and 200
binary MNIST samples (157 kB of bools) pack in under 10 us.  A C-contiguous
little-endian array is sent zero-copy and counts for nothing, whatever its size.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from p2pgame.bus.codec import Envelope, encode, encode_work, frame_sizes
from p2pgame.bus.topics import CLOCK, Topic
from p2pgame.bus.traffic import Traffic
from p2pgame.bus.transport import Transport

# Encode in a worker thread when encode_work (bytes to pack or copy) exceeds this.
ENCODE_IN_THREAD_BYTES = 2 << 20


class PeerBus:
    def __init__(self, transport: Transport, traffic: Traffic,
                 subscribers: Mapping[Topic, tuple[int, ...]], pack_bool: bool = True,
                 encode_in_thread_bytes: int = ENCODE_IN_THREAD_BYTES) -> None:
        self.transport = transport
        self.traffic = traffic
        # Who subscribed to each of our topics: PUB sends one copy to each of them, and
        # none to an out-neighbour that did not subscribe, so only they are counted.
        self.subscribers = dict(subscribers)
        self.pack_bool = pack_bool
        self.encode_in_thread_bytes = encode_in_thread_bytes
        self.encode_s = 0.0  # wall time publish spent encoding (a thread hop included)
        self.send_s = 0.0
        self.encoded_in_thread = 0  # messages encoded in a worker thread

    async def publish(self, env: Envelope) -> None:
        """Encode and send ``env``.  Awaited in turn, publishes leave in the order of
        the calls: the frames are sent only once they are encoded, in thread or not."""
        t0 = time.perf_counter()
        if encode_work(env.tensors, self.pack_bool) > self.encode_in_thread_bytes:
            frames = await asyncio.to_thread(encode, env, self.pack_bool)
            self.encoded_in_thread += 1
        else:
            frames = encode(env, pack_bool=self.pack_bool)
        t1 = time.perf_counter()
        limit = self.traffic.max_message_bytes
        if limit > 0 and (big := max(map(_nbytes, frames))) > limit:
            # Its receivers' ZeroMQ would cut the connection on it (MAXMSGSIZE): say so.
            raise ValueError(f"a message of peer {env.sender} on {env.topic} has a frame of "
                             f"{big} bytes, above comm.max_message_bytes = {limit}; raise "
                             "that key or send fewer samples per message")
        await self.transport.send(frames)
        self.encode_s += t1 - t0
        self.send_s += time.perf_counter() - t1
        receivers = self.subscribers.get(env.topic)
        if receivers and env.topic.kind == CLOCK:
            header, payload = frame_sizes(frames)
            for r in receivers:
                self.traffic.clock_sent.add(env.sender, r, str(env.topic), header, payload)
        elif receivers and not env.topic.is_control:
            self.traffic.count_sent(env, frames, receivers)

    def publish_now(self, env: Envelope) -> None:
        """Encode and send a small bus message (a resync marker) at once, from a callback
        of the receiving task; never counted as traffic."""
        self.transport.send_now(encode(env, pack_bool=self.pack_bool))

    async def receive(self) -> list[tuple[Envelope, int]]:
        """Wait for messages; the decodable ones with their size (the rest are counted).

        Decoding checks every frame but leaves bit-packed tensors packed: each is
        unpacked where it is first read, which belongs in the training step (a worker
        thread); a check on the event loop should use ``env.tensors.spec(name)``.
        """
        out = []
        for j, frames in await self.transport.recv_from():
            got = self.traffic.decode(frames, via=j)
            if got is not None:
                out.append(got)
        return out


def _nbytes(frame) -> int:
    return frame.nbytes if isinstance(frame, memoryview) else len(frame)
