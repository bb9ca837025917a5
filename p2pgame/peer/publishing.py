"""The publishing side of a peer: the algorithm's messages of a step, drawn and bit-packed
in the step thread, then sent on the loop; the resync marker a re-connected receiver gets.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from p2pgame.bus.codec import Envelope, pack_bools
from p2pgame.bus.topics import RESYNC, Topic
from p2pgame.peer.device import Device
from p2pgame.peer.receiving import PeerFailure


class Publisher:
    """``topics``: space -> our topic of it (what this peer publishes).  ``to_all``: those
    of our topics that every out-neighbour takes (on the virtual clock, a promise rides in
    a round's last message only if that message reaches everyone a clock message would)."""

    def __init__(self, me: int, algorithm: Any, topics: Mapping[str, Topic], device: Device,
                 pack_bool: bool = True, timers: Counter[str] | None = None,
                 to_all: frozenset[Topic] = frozenset()) -> None:
        self.me = me
        self.algorithm = algorithm
        self.topics = dict(topics)
        self.device = device
        self.pack_bool = pack_bool
        self.timers: Counter[str] = Counter() if timers is None else timers
        self.published = -1  # our newest round whose every message has been sent
        self.promised: tuple[int, float] | None = None  # (virtual clock) our latest promise
        self.to_all = to_all
        self.carried = 0  # (virtual clock) promises sent in a data message's header

    def draw(self, step: int) -> dict[str, Any]:
        """The algorithm's messages of ``step``, their ``bool`` tensors bit-packed here
        (the training thread of a heavy algorithm) rather than on the event loop."""
        messages = self.algorithm.publish(step)
        if not self.pack_bool:
            return messages
        memo: dict = {}  # (the arrays stay alive in ``messages``: their ids are stable)
        return {space: pack_bools(tensors, memo) for space, tensors in messages.items()}

    async def publish(self, bus: Any, step: int, virtual_time: float | None = None,
                      until: float | None = None) -> bool:
        """Draw (an algorithm call) and send, in the algorithm's order; the last message
        of the round carries ``last``.  On the virtual clock each message's ``time`` is
        ``virtual_time``, its virtual send time (else the host's clock), and the last
        message carries the promise ``until`` when every out-neighbour receives it: then
        the step needs no clock message (half the messages of a peer that publishes at
        every step).  Whether it did."""
        t0 = time.perf_counter()
        messages = await self.device.call(self.algorithm.heavy, self.draw, step)
        self.timers["sample"] += time.perf_counter() - t0
        items = list(messages.items())
        carry = (until is not None and bool(items)
                 and self.topics.get(items[-1][0]) in self.to_all)
        for k, (space, tensors) in enumerate(items):
            topic = self.topics.get(space)
            if topic is None:
                raise PeerFailure(f"the algorithm published {space!r}, which peer {self.me} "
                                  f"does not publish ({', '.join(self.topics) or 'nothing'})")
            env = Envelope(sender=self.me, topic=topic, step=step, tensors=tensors,
                           last=k == len(items) - 1)
            if virtual_time is not None:
                env.time = virtual_time
            if carry and k == len(items) - 1:
                env.until = until
            await bus.publish(env)
        self.published = step
        if carry:
            self.promised = (step, until)
            self.carried += 1
        return carry

    async def promise(self, bus: Any, step: int, virtual_time: float) -> None:
        """The virtual clock: tell every out-neighbour that we send nothing before
        ``virtual_time`` (after our data messages of the step, on the same connection)."""
        self.promised = (step, virtual_time)
        await bus.publish(Envelope(self.me, Topic.clock(self.me), step, {}, time=virtual_time))

    def on_subscribe(self, bus: Any, data: bytes) -> None:
        """A receiver (re)subscribed to its resync topic in the measured phase: its
        connection to us was cut and re-made (or it re-connected to us after our restart).
        Tell it the newest round we have published in full, so that it gives up what it
        lost meanwhile instead of waiting for it."""
        try:
            topic = Topic.parse(data.decode())
        except (UnicodeDecodeError, ValueError):
            return
        if topic.kind == RESYNC and topic.peer == self.me:
            bus.publish_now(Envelope(self.me, topic, self.published, {}))
            if self.promised is not None:
                # (The virtual clock) and our latest promise again: a restarted neighbour
                # starts with none of ours, and would wait for our next one, while we
                # may be waiting for its.  (The others take it again: no change.)
                step, t = self.promised
                bus.publish_now(Envelope(self.me, Topic.clock(self.me), step, {}, time=t))
