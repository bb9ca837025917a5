"""Link emulation: what happens to a message on the edge j -> i.

The transport is reliable (ZeroMQ over ipc/tcp delivers in order once the
handshake is done); the link layer, on the receiving side, makes it as
unreliable as the scenario asks.  A message that arrives from the socket goes
through the stages of a real path, in order:

1. **loss**: dropped with probability ``drop`` on entering the link (it then
   uses no bandwidth and no buffer);
2. **bottleneck**: with a bandwidth cap, messages are transmitted one after
   another by a token bucket; those waiting behind the one on the wire sit in a
   finite buffer (``buffer_bytes``, ``buffer_messages``), and an arrival that
   does not fit is dropped ("tail") or pushes out the oldest waiting message
   ("oldest"), so an overloaded link drops rather than ages;
3. **propagation**: latency plus a random part (uniform, exponential or
   log-normal), FIFO like a TCP stream unless ``reorder`` lets a message that
   drew a short latency overtake one that drew a long one;
4. **step delay**: usable only ``delay_steps`` steps later (counted from the
   sender's step in sync mode, from the receiver's in async mode).

Every fault draws from its own seeded RNG, one per edge, so a synchronous run is
reproducible and changing one fault's rate never shifts another fault's draws
(without buffer overflows, the i-th message that is not lost gets the i-th latency
draw, whatever ``drop`` is).  The bottleneck is advanced lazily, from the ``now`` of each call: the
link has no clock of its own, so unit tests drive it with a fake one.

Every message the link is offered ends in exactly one of four counters, and
:meth:`Link.counts` keeps ``arrived = delivered + dropped_loss + dropped_buffer
+ held`` true at every moment (``held``: in the buffer or propagating).  A
dropped message leaves a placeholder in the pipeline, settled in its turn, so
the receiver learns that a round is complete only after what came before it.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from p2pgame.bus.codec import Envelope
from p2pgame.config import MAHIMAHI_BYTES, LinkSpec, trace_period_ms
from p2pgame.rng import generator

DELIVERED, LOST, OVERFLOW = "delivered", "loss", "buffer"


class TokenBucket:
    """Bytes/s cap: a message of n bytes leaves once n tokens have accumulated."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens: float | None = None  # full on first use
        self.t_last = 0.0

    def _plan(self, nbytes: int, t_arrive: float) -> tuple[float, float]:
        cap = max(self.burst, float(nbytes))
        if self.tokens is None:
            tokens, t_last = cap, t_arrive
        else:
            tokens, t_last = self.tokens, self.t_last
        t = max(t_arrive, t_last)  # FIFO: never before the previous message left
        tokens = min(cap, tokens + (t - t_last) * self.rate)
        if tokens < nbytes:
            t += (nbytes - tokens) / self.rate
            tokens = float(nbytes)
        return t, tokens - nbytes

    def peek(self, nbytes: int, t_arrive: float) -> float:
        """When a message of ``nbytes`` arriving at ``t_arrive`` would leave (no state change)."""
        return self._plan(nbytes, t_arrive)[0]

    def release_time(self, nbytes: int, t_arrive: float) -> float:
        """When it leaves; the bucket is spent."""
        t, self.tokens = self._plan(nbytes, t_arrive)
        self.t_last = t
        return t


class TraceBucket:
    """A bandwidth trace (Mahimahi's format, ``comm.trace``) in place of the token bucket:
    the link may pass 1500 bytes at each of the trace's delivery opportunities (times in
    ms, repeating with the period of the last one).  A message of n bytes takes the next
    ceil(n / 1500) unused opportunities at or after it enters the bottleneck, and leaves
    at the last of them (FIFO: after the message before it; an opportunity nobody uses
    is lost, as on a real link).  The same interface as :class:`TokenBucket`."""

    def __init__(self, trace_ms: tuple[int, ...]) -> None:
        self.times = [t / 1000.0 for t in trace_ms]
        self.period = trace_period_ms(trace_ms) / 1000.0
        self.next = 0  # the first opportunity not used yet, counted over every period

    def _time(self, i: int) -> float:
        q, r = divmod(i, len(self.times))
        return q * self.period + self.times[r]

    def _first_at(self, t: float) -> int:
        """The first opportunity at or after ``t``."""
        q = max(0, math.floor(t / self.period))
        r = bisect.bisect_left(self.times, t - q * self.period)
        return q * len(self.times) + r  # (r = len: the next period's first)

    def _plan(self, nbytes: int, t_arrive: float) -> tuple[float, int]:
        first = max(self.next, self._first_at(t_arrive))
        used = max(1, -(-nbytes // MAHIMAHI_BYTES))
        return self._time(first + used - 1), first + used

    def peek(self, nbytes: int, t_arrive: float) -> float:
        return self._plan(nbytes, t_arrive)[0]

    def release_time(self, nbytes: int, t_arrive: float) -> float:
        t, self.next = self._plan(nbytes, t_arrive)
        return t


def _bottleneck(spec: LinkSpec) -> TokenBucket | TraceBucket | None:
    if spec.trace_ms:
        return TraceBucket(spec.trace_ms)
    return TokenBucket(spec.bandwidth, spec.burst) if spec.bandwidth > 0 else None


@dataclass
class Pending:
    """A message on the link, usable from ``release_step`` and ``release_time`` on.

    ``fate`` is :data:`DELIVERED` for a message that will be delivered, or the
    reason of a drop (:data:`LOST`, :data:`OVERFLOW`) for a placeholder.
    """

    env: Envelope
    nbytes: int
    release_step: int
    release_time: float
    fate: str = DELIVERED
    arrived_at: float = 0.0  # when the link was offered it

    @property
    def lost(self) -> bool:
        return self.fate != DELIVERED


class Link:
    """The emulated edge ``src -> dst`` as seen by the receiver ``dst``."""

    def __init__(self, src: int, dst: int, spec: LinkSpec, seed: int) -> None:
        self.src, self.dst, self.spec = src, dst, spec
        self.drop_rng = generator(seed, "link", src, dst, "drop")
        self.jitter_rng = generator(seed, "link", src, dst, "jitter")
        self.bucket = _bottleneck(spec)
        self.buffer_bytes = spec.buffer_limit_bytes
        self.buffer_messages = spec.buffer_messages or math.inf
        # Bottleneck queue: [arrival time, Pending]; the head is the one on the wire.
        self.queue: deque[tuple[float, Pending]] = deque()
        self.waiting_bytes = 0  # bytes behind the head (placeholders weigh nothing)
        self.waiting_messages = 0
        # Propagating: FIFO deque, or a heap on (release_time, order) with reorder.
        self.flight: deque[Pending] = deque()
        self.heap: list[tuple[float, int, Pending]] = []
        self._order = itertools.count()
        self.last_release = -math.inf
        self.arrived = 0
        self.delivered = 0
        self.delivered_bytes = 0
        self.dropped_loss = 0
        self.dropped_buffer = 0
        self.delay_sum = 0.0  # seconds on the link of the delivered messages
        self.first_arrival: float | None = None
        self.last_delivery: float | None = None

    # -- counters --------------------------------------------------------------------------
    @property
    def dropped(self) -> int:
        return self.dropped_loss + self.dropped_buffer

    @property
    def held(self) -> int:
        """Messages still on the link (buffered or propagating), placeholders aside."""
        return sum(not p.lost for p in self.pending)

    @property
    def admitted(self) -> int:
        """Messages not dropped (delivered or still on the link)."""
        return self.arrived - self.dropped

    @property
    def pending(self) -> list[Pending]:
        """Everything on the link, placeholders included: buffered, then propagating."""
        return ([p for _, p in self.queue] + list(self.flight)
                + [p for _, _, p in sorted(self.heap, key=lambda item: item[:2])])

    def counts(self) -> dict[str, int | float]:
        """The accounts (``arrived = delivered + dropped_loss + dropped_buffer + held``),
        the mean time a delivered message spent on the link (queueing, transmission,
        latency) and the link's active time, first arrival to last delivery."""
        active = (self.last_delivery - self.first_arrival
                  if self.last_delivery is not None and self.first_arrival is not None else 0.0)
        return {"arrived": self.arrived, "delivered": self.delivered,
                "delivered_bytes": self.delivered_bytes, "dropped_loss": self.dropped_loss,
                "dropped_buffer": self.dropped_buffer, "held": self.held,
                "delay_mean_s": self.delay_sum / self.delivered if self.delivered else 0.0,
                "active_s": max(0.0, active)}

    # -- arrival ---------------------------------------------------------------------------
    def offer(self, env: Envelope, nbytes: int, now: float, recv_step: int, sync: bool) -> str:
        """A message arrives from the socket at ``now``; returns its fate so far.

        ``delivered`` means admitted (it will be, in its turn); ``loss`` or ``buffer``
        means dropped (a placeholder settles its round in its turn).
        """
        self.arrived += 1
        base = env.step if sync else recv_step
        pend = Pending(env, nbytes, base + self.spec.delay_steps, now, arrived_at=now)
        if self.first_arrival is None:
            self.first_arrival = now
        self._advance(now)
        if self.spec.drop > 0 and self.drop_rng.random() < self.spec.drop:
            self.dropped_loss += 1
            pend.fate, pend.nbytes = LOST, 0
        if self.bucket is None:  # nothing ever waits: straight onto the wire
            self._propagate(pend, now)
            return pend.fate
        if pend.lost:
            self._enqueue(pend, now)  # keeps its turn behind what is waiting
            return LOST
        if self.queue and not self._fits(nbytes):
            if self.spec.buffer_policy == "oldest":
                self._push_out_oldest(nbytes)
            if not self._fits(nbytes):
                self.dropped_buffer += 1
                pend.fate, pend.nbytes = OVERFLOW, 0
                self._enqueue(pend, now)
                return OVERFLOW
        self._enqueue(pend, now)
        self._advance(now)
        return DELIVERED

    def _fits(self, nbytes: int) -> bool:
        """Room behind the head for one more message?  An empty wait always has room."""
        if self.waiting_messages == 0:
            return True
        return (self.waiting_bytes + nbytes <= self.buffer_bytes
                and self.waiting_messages + 1 <= self.buffer_messages)

    def _push_out_oldest(self, nbytes: int) -> None:
        """Drop waiting messages, oldest first, until ``nbytes`` fits (never the head)."""
        for k in range(1, len(self.queue)):
            if self._fits(nbytes):
                return
            _, p = self.queue[k]
            if p.lost:
                continue
            self.waiting_bytes -= p.nbytes
            self.waiting_messages -= 1
            self.dropped_buffer += 1
            p.fate, p.nbytes = OVERFLOW, 0  # stays in place: its round settles in its turn

    def _enqueue(self, pend: Pending, now: float) -> None:
        """Into the bottleneck's queue (the head, when it is empty, is on the wire)."""
        if self.queue and not pend.lost:
            self.waiting_bytes += pend.nbytes
            self.waiting_messages += 1
        self.queue.append((now, pend))

    # -- the bottleneck and propagation ------------------------------------------------------
    def _advance(self, now: float) -> float | None:
        """Transmit what the bucket lets leave by ``now``; returns the next departure time."""
        while self.queue:
            t_arrive, head = self.queue[0]
            t_out = (self.bucket.peek(head.nbytes, t_arrive)
                     if self.bucket is not None and not head.lost else t_arrive)
            if t_out > now:
                return t_out
            if self.bucket is not None and not head.lost:
                self.bucket.release_time(head.nbytes, t_arrive)
            self.queue.popleft()
            if self.queue:  # the next one goes on the wire: it no longer waits
                _, nxt = self.queue[0]
                if not nxt.lost:
                    self.waiting_bytes -= nxt.nbytes
                    self.waiting_messages -= 1
            self._propagate(head, t_out)
        return None

    def _latency(self) -> float:
        spec = self.spec
        extra = 0.0
        if spec.jitter_ms > 0:
            if spec.jitter_dist == "exponential":
                extra = self.jitter_rng.exponential(spec.jitter_ms)
            elif spec.jitter_dist == "lognormal":
                extra = spec.jitter_ms * math.exp(spec.jitter_sigma * self.jitter_rng.normal())
            else:
                extra = spec.jitter_ms * self.jitter_rng.random()
        return (spec.latency_ms + extra) / 1000.0

    def _propagate(self, pend: Pending, t_sent: float) -> None:
        if pend.lost:
            t = t_sent  # a placeholder only needs to keep its turn
        else:
            t = t_sent + (self._latency() if self.spec.latency_ms or self.spec.jitter_ms else 0.0)
        if self.spec.reorder:
            pend.release_time = t
            heapq.heappush(self.heap, (t, next(self._order), pend))
        else:
            pend.release_time = max(t, self.last_release)
            self.last_release = pend.release_time
            self.flight.append(pend)

    # -- release ---------------------------------------------------------------------------
    def due(self, step: int, now: float) -> tuple[list[Pending], float | None]:
        """Messages and placeholders usable at ``step`` and ``now``, and the next release time.

        FIFO links release in arrival order (a message held by its step delay holds
        those behind it); reordering links release whatever is due, earliest first.
        """
        t_next = self._advance(now)
        out: list[Pending] = []
        if self.spec.reorder:
            later = []
            while self.heap and self.heap[0][0] <= now:
                item = heapq.heappop(self.heap)
                (out if item[2].release_step <= step else later).append(item)
            for item in later:
                heapq.heappush(self.heap, item)
            out = [item[2] for item in out]
            if self.heap:
                t_next = self._earliest(t_next, self.heap[0][0])
        else:
            while self.flight and self.flight[0].release_step <= step:
                if self.flight[0].release_time > now:
                    t_next = self._earliest(t_next, self.flight[0].release_time)
                    break
                out.append(self.flight.popleft())
        self._count_delivered(out)
        return out, t_next

    def _count_delivered(self, out: list[Pending]) -> None:
        """The accounts of what a release gives out (placeholders aside)."""
        for p in out:
            if not p.lost:
                self.delivered += 1
                self.delivered_bytes += p.nbytes
                self.delay_sum += p.release_time - p.arrived_at
                self.last_delivery = max(p.release_time, self.last_delivery or p.release_time)

    @staticmethod
    def _earliest(a: float | None, b: float) -> float:
        return b if a is None else min(a, b)


class VirtualLink(Link):
    """The edge ``src -> dst`` on the virtual clock (``runtime.clock = "virtual"``).

    The same stages, the same seeded streams and the same accounts as :class:`Link`, but
    every time is a virtual one: a message enters the link at its virtual send time (the
    header's ``time``) and its whole fate is decided when it is offered: lost or not,
    whether it fits the buffer, when it leaves the bottleneck and when it arrives.  Why
    at once: on the virtual clock a message may be offered after the receiver has
    released messages of later virtual times (it was sent earlier, and the sockets took
    their time), so the lazy bottleneck of :class:`Link`, advanced to each call's
    ``now``, would see a queue of the wrong moment.  Offers come in send-time order (one
    sender, one connection, FIFO), and a message's fate depends only on the messages
    before it, so deciding it at once gives every run the same fates, whatever the host.

    The buffer holds, at time t, the messages that entered by t and have not left the
    bottleneck yet; the one leaving first is on the wire, the others wait (as in
    :class:`Link`).  ``buffer_policy = "oldest"`` would change earlier messages' fates;
    the scenario refuses it on this clock.

    ``release_step`` is filled in when the message is released: the receiver's step at
    which it arrived (the first whose virtual start time is at or after its arrival)
    plus ``delay_steps`` (:meth:`due_virtual`)."""

    def __init__(self, src: int, dst: int, spec: LinkSpec, seed: int) -> None:
        super().__init__(src, dst, spec, seed)
        # What has entered the bottleneck and not left it as of the latest offer: (departure
        # time, bytes), in departure order (FIFO: the order they entered).
        self.bottleneck: deque[tuple[float, int]] = deque()
        self.last_departure = -math.inf
        self.lookahead = spec.latency_ms / 1000.0  # no message arrives sooner after its send
        # The receiver's offline windows (set by its runtime): virtual time -> the start of
        # the window it falls in, or None.  What arrives while the receiver is away waits on
        # the link for its return, in the link's buffer: beyond ``buffer_messages`` or the
        # byte limit (for an uncapped link with no buffer keys: none) it is dropped.
        self.receiver_away: Callable[[float], float | None] | None = None
        self.held_away: dict[float, list[int]] = {}  # window start -> [messages, bytes]

    def offer(self, env: Envelope, nbytes: int, now: float, recv_step: int, sync: bool) -> str:
        """``now``: the message's virtual send time; ``recv_step`` and ``sync`` unused."""
        t = now
        self.arrived += 1
        pend = Pending(env, nbytes, -1, t, arrived_at=t)
        if self.first_arrival is None:
            self.first_arrival = t
        if self.spec.drop > 0 and self.drop_rng.random() < self.spec.drop:
            self.dropped_loss += 1
            pend.fate, pend.nbytes = LOST, 0
        if self.bucket is None:
            self._propagate(pend, t)
            return self._held_for_away(pend)
        queue = self.bottleneck
        while queue and queue[0][0] <= t:  # left the bottleneck by t
            queue.popleft()
        if not pend.lost and queue and not self._fits_at(nbytes):
            self.dropped_buffer += 1
            pend.fate, pend.nbytes = OVERFLOW, 0
        if pend.lost:  # a placeholder keeps its turn: behind what entered before it
            self._propagate(pend, max(t, self.last_departure))
            return pend.fate
        departure = self.bucket.release_time(nbytes, t)  # (FIFO: after the one before)
        self.last_departure = departure
        queue.append((departure, nbytes))
        self._propagate(pend, departure)
        return self._held_for_away(pend)

    def _held_for_away(self, pend: Pending) -> str:
        """A message that arrives while the receiver is away waits in the link's buffer
        until it is back; one that does not fit there is dropped (tail drop), keeping its
        turn as a placeholder.  Offers come in send-time order, so the fates are the same
        in every run."""
        if pend.lost or self.receiver_away is None:
            return pend.fate
        window = self.receiver_away(pend.release_time)
        if window is None:
            return pend.fate
        held = self.held_away.setdefault(window, [0, 0])
        if held[0] + 1 > self.buffer_messages or held[1] + pend.nbytes > self.buffer_bytes:
            self.dropped_buffer += 1
            pend.fate, pend.nbytes = OVERFLOW, 0
            return OVERFLOW
        held[0] += 1
        held[1] += pend.nbytes
        return pend.fate

    def _fits_at(self, nbytes: int) -> bool:
        """Room for ``nbytes`` behind the one on the wire, in the bottleneck as it is now?"""
        waiting = list(self.bottleneck)[1:]
        if not waiting:  # an empty wait always has room
            return True
        return (sum(b for _, b in waiting) + nbytes <= self.buffer_bytes
                and len(waiting) + 1 <= self.buffer_messages)

    def due_virtual(self, step: int, now: float,
                    arrival_step: Callable[[float], int]) -> list[Pending]:
        """What has arrived by virtual time ``now`` and is usable at ``step``: arrived at
        the receiver's step ``arrival_step(t)`` at least ``delay_steps`` steps ago."""
        delay = self.spec.delay_steps
        out: list[Pending] = []

        def usable(p: Pending) -> bool:
            if p.release_time > now:
                return False
            if p.release_step < 0:
                p.release_step = arrival_step(p.release_time) + delay
            return p.release_step <= step

        if self.spec.reorder:
            later = []
            while self.heap and self.heap[0][0] <= now:
                item = heapq.heappop(self.heap)
                (out if usable(item[2]) else later).append(item)
            for item in later:
                heapq.heappush(self.heap, item)
            out = [item[2] for item in out]
        else:
            while self.flight and usable(self.flight[0]):
                out.append(self.flight.popleft())
        self._count_delivered(out)
        return out
