"""The receiving side of a peer: envelopes from the bus into :class:`Delivery`, and the
release of what is due into the inbox, the sync barrier included.

Who reads and writes the inbox, and when
----------------------------------------
A heavy algorithm's calls (``publish``, ``train_step``, ``probe``, ``finish``) run in a
worker thread (:class:`~p2pgame.peer.device.Device`) while the event loop goes on
receiving.  The contract between the two, which keeps a step's inbox fixed while the
step runs:

1. **The receive task writes no inbox.**  It runs on the loop at any time, a step in
   flight or not: :meth:`Receiver.receive_loop` -> :meth:`Receiver.on_envelope` ->
   :meth:`Delivery.accept <p2pgame.peer.delivery.Delivery.accept>` (or ``resync``,
   ``rebase``).  That offers the message to its link (:meth:`Link.offer
   <p2pgame.bus.links.Link.offer>`: queued, delivered or not later) and updates
   delivery's bookkeeping (newest step per (sender, space), resolved rounds, given-up
   rounds, rejections) and the traffic counters; it never touches
   :class:`~p2pgame.algorithms.base.Inbox`.
2. **Releasing is the inbox's only writer, on the loop, between two algorithm calls.**
   :meth:`Receiver.release` (:meth:`Delivery.release
   <p2pgame.peer.delivery.Delivery.release>`: the links' due messages -> ``Inbox.put``)
   is called by the step loop alone, before a step (in :meth:`Receiver.barrier` in sync
   mode, once in async mode), never while an algorithm call is in flight: the step loop
   awaits each call before it releases again, and :meth:`Receiver.release` refuses to run
   while one is (``RuntimeError``, a bug).  So the inbox a ``train_step`` gets is the
   inbox of the last release, whatever arrives meanwhile: a message that arrives during
   the step waits on its link until the next release.
3. **The step thread reads the inbox inside ``train_step`` only.**  ``Inbox.use`` also
   counts (``staleness``, ``used``): the step thread is the only writer of those
   counters while it runs; the loop reads them (the metrics line's
   ``staleness_mean``, the summary's ``staleness_*`` and ``used``) only between steps and
   after the last one.  The envelopes in the inbox are the receiver's own decoded copies
   (their bit-packed tensors are unpacked on first read, in the step thread), replaced,
   never mutated, by a later release.
4. **The algorithm's ``check`` runs on the loop, during steps** (it vets every arriving
   message): it may read only what a step does not change (schemas, configuration).
5. **The summary's accounts are read on the loop.**  Links, traffic and inbox counters
   go on changing as long as the receive task runs (neighbours still publish after our
   last step), so they are read on the loop (:meth:`PeerRuntime.finish
   <p2pgame.peer.runtime.PeerRuntime.finish>`), not in the thread that runs the
   algorithm's ``finish``.  (They used to be read in that thread, while the receive task
   still wrote them: the accounts of a link could be read half-updated, and a link's
   deque could change while it was being listed.)
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from p2pgame.bus.codec import Envelope
from p2pgame.bus.topics import CLOCK, RESYNC
from p2pgame.bus.traffic import Traffic
from p2pgame.peer.delivery import Delivery
from p2pgame.topology import Schedule


class PeerFailure(RuntimeError):
    pass


class Receiver:
    """One peer's receiving side (see the module docstring for its contract with the step
    thread).  ``check``: the algorithm's test of a message's content; ``busy``: whether
    an algorithm call is in flight (then nothing may be released)."""

    def __init__(self, me: int, delivery: Delivery, traffic: Traffic, schedule: Schedule,
                 in_peers: Iterable[int], check: Callable[[Envelope], str | None],
                 sync_timeout_s: float, busy: Callable[[], bool] = lambda: False,
                 timers: Counter[str] | None = None, first_timeout_s: float = 0.0) -> None:
        self.me = me
        self.delivery = delivery
        self.traffic = traffic
        self.schedule = schedule
        self.in_peers = frozenset(in_peers)
        self.check = check
        self.sync_timeout_s = sync_timeout_s
        # (The virtual clock) how long a neighbour that has promised nothing yet may take to
        # its first promise: at least sync_timeout_s (the runtime gives the start timeout).
        self.first_timeout_s = max(sync_timeout_s, first_timeout_s)
        self.busy = busy
        self.timers: Counter[str] = Counter() if timers is None else timers
        self.transport: Any = None  # the transport's take_cut (set once bound)
        self.step = 0  # the step in progress (async delays count from it)
        self.heard: set[int] = set()
        self.heard_all = asyncio.Event()
        self.wakeup = asyncio.Event()

    # -- the receive task (the loop, at any time) ------------------------------------------
    def on_envelope(self, env: Envelope, nbytes: int, now: float) -> None:
        if env.topic.kind == RESYNC:
            # (A prefix subscription to rs/j/5 also takes rs/j/50's markers.)
            if env.topic.space == str(self.me) and env.topic.peer == env.sender:
                j = env.sender
                # A cut connection we re-made, or a first one (after j's restart or ours)?
                cut = self.transport is not None and self.transport.take_cut(j)
                self.delivery.resync(j, env.step, cut=cut)
                if cut:
                    self.traffic.reject("connection-cut")
                self.wakeup.set()
            return
        if env.topic.kind == CLOCK:  # a promise of the virtual clock
            reason = self.delivery.promise(env.sender, env.time)
            if reason:
                self.traffic.reject(reason)
            self.wakeup.set()
            return
        if env.topic.is_handshake:
            self.heard.add(env.sender)
            if self.heard >= self.in_peers:
                self.heard_all.set()
            return
        reason = self.delivery.accept(env, nbytes, now, self.step, self.check)
        if reason:
            self.traffic.reject(reason)
        if env.until is not None:  # (the virtual clock) the sender's promise, carried
            self.delivery.carried(env.sender, env.until)
        self.wakeup.set()

    async def receive_loop(self, bus: Any) -> None:
        timers = self.timers
        while True:
            batch = await bus.receive()
            t0 = time.perf_counter()
            now = time.monotonic()
            for env, nbytes in batch:
                self.on_envelope(env, nbytes, now)
            timers["receive_decode"] += time.perf_counter() - t0

    # -- releasing (the step loop, between algorithm calls) ---------------------------------
    def release(self, step: int, now: float) -> float | None:
        """Move what is due at ``step`` into the inbox; the next time-based release."""
        if self.busy():
            raise RuntimeError("the inbox is released while an algorithm call is in flight")
        return self.delivery.release(step, now)

    async def barrier(self, step: int, stopped: Callable[[], bool] = lambda: False) -> None:
        """Sync mode: release until every active in-neighbour's needed round is complete."""
        active = self.schedule.at(step).in_neighbours(self.me)
        timeout_s = self.sync_timeout_s
        deadline = time.monotonic() + timeout_s
        delivery = self.delivery
        while True:
            now = time.monotonic()
            next_time = self.release(step, now)
            missing = delivery.missing(step, active)
            if not missing or stopped():
                return
            if now > deadline:
                j = missing[0]
                raise PeerFailure(f"step {step}: no round {delivery.needed_round(j, step)} "
                                  f"from peer {j} after {timeout_s:g} s")
            self.wakeup.clear()
            timeout = deadline - now if next_time is None else max(0.0, next_time - now)
            try:
                await asyncio.wait_for(self.wakeup.wait(), timeout=min(timeout, 1.0))
            except TimeoutError:
                pass

    async def advance(self, step: int, now: float,
                      stopped: Callable[[], bool] = lambda: False) -> None:
        """The virtual clock: step ``step`` starts at virtual time ``now`` once no
        in-neighbour can still send anything arriving by then (each promised a later time,
        the link's least latency added); then what arrived by ``now`` is released.  What
        it waits for is a real message (a data or clock message on its way), so the wait
        is bounded by ``comm.sync_timeout_s`` of the host's clock *without progress*:
        the time counts from the last promise that moved one of the neighbours it waits
        for, so a neighbour that is slow on the host (thousands of peers in a few
        workers) is waited for as long as it moves, and only one silent that long (it
        stopped) fails the peer; never a result that depends on the host.  A neighbour
        that has promised nothing yet is given ``first_timeout_s`` (the run's start
        timeout, if longer): another worker may take long to bring it to its first step."""
        delivery = self.delivery
        start = time.monotonic()
        deadline = start + self.sync_timeout_s
        seen: dict[int, float] = {}
        while True:
            waiting = delivery.blocking(now)
            if not waiting or stopped():
                break
            promised = {j: delivery.promised[j] for j in waiting}
            first = any(t == -math.inf for t in promised.values())
            timeout_s = self.first_timeout_s if first else self.sync_timeout_s
            if first:
                deadline = max(deadline, start + timeout_s)
            if any(seen.get(j, t) != t for j, t in promised.items()):
                deadline = time.monotonic() + timeout_s  # (one of them moved on)
            seen = promised
            left = deadline - time.monotonic()
            if left <= 0:
                j = min(waiting, key=lambda k: promised[k])
                key = ("runtime.start_timeout_s" if first and self.first_timeout_s
                       > self.sync_timeout_s else "comm.sync_timeout_s")
                raise PeerFailure(f"step {step} (virtual time {now:.6g} s): peer {j} promised "
                                  f"nothing past {delivery.promised[j]:.6g} s for "
                                  f"{timeout_s:g} s ({key})")
            self.wakeup.clear()
            try:
                await asyncio.wait_for(self.wakeup.wait(), timeout=min(left, 1.0))
            except TimeoutError:
                pass
        if self.busy():
            raise RuntimeError("the inbox is released while an algorithm call is in flight")
        delivery.release_virtual(step, now)

    async def settle_virtual(self, stopped: Callable[[], bool] = lambda: False) -> None:
        """The virtual clock, after our last step: wait until every in-neighbour has
        finished (its promise is infinite), so that every message sent to us has been
        offered to its link and the accounts are the same in every run.  Bounded by
        ``comm.sync_timeout_s`` without progress (as :meth:`advance`): a neighbour that
        stopped leaves its accounts as they are."""
        delivery = self.delivery
        deadline = time.monotonic() + self.sync_timeout_s
        seen = dict(delivery.promised)
        while not stopped() and any(t != math.inf for t in delivery.promised.values()):
            if delivery.promised != seen:
                deadline = time.monotonic() + self.sync_timeout_s
                seen = dict(delivery.promised)
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.wakeup.clear()
            try:
                await asyncio.wait_for(self.wakeup.wait(), timeout=min(left, 1.0))
            except TimeoutError:
                pass
