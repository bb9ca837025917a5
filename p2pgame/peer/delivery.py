"""Delivery: what a receiving peer does with messages between the socket and its learner.

Pure (no sockets, no event loop, no clock of its own: every call takes ``now``),
so unit tests drive it with a fake clock.  It owns

* the emulated links of the in-neighbours (:class:`~p2pgame.bus.links.Link`:
  drop, delay in steps or time, bandwidth), one per in-neighbour;
* what each link releases, put into the :class:`Inbox` when due;
* round resolution: the newest round of each in-neighbour that is complete,
  which a sync step waits for (:meth:`missing`).

A round ``r`` of in-neighbour ``j`` is complete when a message of round ``r``
marked ``last`` was released or lost, or when every space we take from ``j``
has a round-``r`` message released or lost.  The first rule covers publishers
that put out only some of their spaces in a round (Diffusion GAN: D or G), as
long as we subscribe to all of them (the scenario resolver insists); the
second covers subscribers that take only some spaces of a publisher, who never
see the message carrying ``last``.  Each topic carries at most one message per
round, so neither rule can fire early.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping

from p2pgame.bus.codec import Envelope
from p2pgame.bus.links import Link, VirtualLink
from p2pgame.config import round_at
from p2pgame.exchange.inbox import Inbox


class Delivery:
    """``steps``: the run's length; a sender's step lies in ``[0, steps)`` (None: unbounded,
    for tests that do not care)."""

    def __init__(self, me: int, links: Mapping[int, Link], subscribed: Mapping[int, Iterable[str]],
                 sync: bool, publish_every: int = 1, max_samples: int = 65536,
                 steps: int | None = None, publish_from: int = 0) -> None:
        self.me = me
        self.links = dict(links)
        self.subscribed = {j: frozenset(subscribed.get(j, ())) for j in self.links}
        self.sync = sync
        self.publish_every = publish_every
        self.publish_from = publish_from
        self.inbox = Inbox()
        # Highest round of each in-neighbour that is complete (released or lost).
        self.resolved: dict[int, int] = {j: -1 for j in self.links}
        self._seen: dict[int, dict[int, set[str]]] = {j: defaultdict(set) for j in self.links}
        self.rejected: Counter[int] = Counter()  # per in-neighbour: refused by a check
        self.last_step: dict[tuple[int, str], int] = {}  # per (sender, space): newest step
        self.max_samples = max_samples
        self.steps = steps
        # Per in-neighbour: every round up to this one is complete once what we took of it
        # is released (the rest was lost in transport: :meth:`resync`).
        self.given_up: dict[int, int] = {j: -1 for j in self.links}
        self.cuts: Counter[int] = Counter()  # per in-neighbour: connections cut and re-made
        # The virtual clock (every link a VirtualLink): per in-neighbour, the virtual time
        # before which it will send nothing more (its promise: a data message's send time,
        # or a clock message's); and the virtual start time of each of our steps.
        self.virtual = bool(self.links) and all(isinstance(k, VirtualLink)
                                                for k in self.links.values())
        self.promised: dict[int, float] = {j: -math.inf for j in self.links}
        self.step_times: list[float] = []
        self.step_ids: list[int] = []

    def rebase(self, j: int, from_step: int) -> None:
        """In-neighbour ``j`` restarted and resumes at ``from_step``: its steps go up from
        there again (they would be refused as replays).  On the virtual clock its clock
        goes back to its resume state's too: what it promised is forgotten, and we wait
        for the new incarnation's promises (its old ones died with it)."""
        for space in self.subscribed.get(j, ()):
            self.last_step[(j, space)] = from_step - 1
        if self.virtual and j in self.promised:
            self.promised[j] = -math.inf

    def resync(self, j: int, newest: int, cut: bool = True) -> None:
        """In-neighbour ``j``'s connection to us was (re)made, and ``j`` says it has
        published every message of its rounds up to ``newest``.

        The marker comes after everything ``j`` sent us on the new connection, so what
        of those rounds we have not taken by now was lost in transport (sent while the
        connection was down): a sync barrier must not wait for it.  ``cut``: the old
        connection was cut under us (ZeroMQ cuts one that brings a frame above
        ``comm.max_message_bytes``), which refused that frame: counted as a rejection of
        ``j``'s, as it was sent and never taken.
        """
        if j not in self.links:
            return
        if cut:
            self.rejected[j] += 1
            self.cuts[j] += 1
        for space in self.subscribed[j]:  # j sends nothing of those rounds again
            key = (j, space)
            self.last_step[key] = max(self.last_step.get(key, -1), newest)
        self.given_up[j] = max(self.given_up[j], newest)
        # Every round up to ``newest`` is complete but those the link still holds (each
        # completes as it is released, :meth:`_settle`): the highest one not held is.
        # (A held round above a lost one must not hold the lost one up: j may have sent
        # round r + 1 on the new connection before the marker, and r + 1 is released
        # only at step r + 1, while the barrier of step r waits for r.)
        held = {p.env.step for p in self.links[j].pending}
        r = newest
        while r in held:
            r -= 1
        self._complete(j, r)

    # -- arrival --------------------------------------------------------------------------
    def accept(self, env: Envelope, nbytes: int, now: float, step: int,
               check: Callable[[Envelope], str | None] = lambda env: None) -> str | None:
        """Offer a decoded data message to its link; returns a rejection reason or None.

        ``step`` is the receiver's current step (async delays count from it);
        ``check`` is the learner's own test of the content (schema).
        """
        j = env.sender
        if j not in self.links or env.topic.peer != j:
            return "sender"
        if env.space not in self.subscribed[j]:
            self.rejected[j] += 1
            return "space"
        if env.topic.kind == "samples" and _samples(env) > self.max_samples:
            self.rejected[j] += 1
            return "samples"
        reason = check(env)
        if reason:
            self.rejected[j] += 1
            return reason
        # What the step check still has to catch.  The connection a message came on names
        # its sender (sender binding, checked before this), so only j itself can put a
        # message here; on one connection j's steps only go up.  So a step at or below the
        # last one taken is a replay (a restarted j is rebased first, :meth:`rebase`), and a
        # step outside the run, [0, steps), is one no honest peer publishes (it would
        # resolve every round of a sync barrier at once, or poison the staleness).  Gaps
        # are legitimate and never refused: the transport drops whole messages for a
        # receiver that fell behind (the publisher's high-water mark), a link may lose
        # them, and a sender may publish only every publish_every steps.
        if env.step < 0 or (self.steps is not None and env.step >= self.steps):
            self.rejected[j] += 1
            return "step-range"
        if env.step <= self.last_step.get((j, env.space), -1):
            self.rejected[j] += 1
            return "replayed"
        if self.virtual:  # the send time is the link's now; it may not go back
            if not self._keeps_promise(j, env.time):
                self.rejected[j] += 1
                return "clock"
            now = env.time
        self.last_step[(j, env.space)] = env.step
        self.links[j].offer(env, nbytes, now, step, self.sync)
        return None

    # -- the virtual clock ------------------------------------------------------------------
    def _keeps_promise(self, j: int, t: float) -> bool:
        """A send time of ``j``'s at or after what it promised (an earlier one would
        change what we already released); the promise moves up to it."""
        if not (isinstance(t, float | int) and t >= self.promised[j]) or math.isnan(t):
            return False
        self.promised[j] = float(t)
        return True

    def promise(self, j: int, t: float) -> str | None:
        """In-neighbour ``j``'s clock message: it sends nothing before virtual time ``t``
        (or a rejection reason: a promise that goes back)."""
        if j not in self.links:
            return "sender"
        if not self._keeps_promise(j, t):
            self.rejected[j] += 1
            return "clock"
        return None

    def carried(self, j: int, t: float) -> None:
        """In-neighbour ``j``'s promise carried in a data message's header (after the
        message itself was taken or refused): it moves ``j``'s promise up to ``t``.  Taken
        even from a refused message (the sender counts on it, as on a clock message), but
        never back in time: the codec refused a promise before its message's own send
        time, and a message whose send time went back was refused with ``clock``."""
        if j in self.links:
            self._keeps_promise(j, t)  # (one that goes back is ignored: nothing is refused)

    def blocking(self, now: float) -> list[int]:
        """The in-neighbours that could still send something arriving by virtual time
        ``now``: their promise plus the link's least latency is not past it."""
        return [j for j, link in self.links.items()
                if self.promised[j] + link.lookahead <= now]

    def release_virtual(self, step: int, now: float) -> None:
        """Step ``step`` starts at virtual time ``now`` (every in-neighbour past it,
        :meth:`blocking`): what arrived by then, and is usable at ``step``, into the inbox."""
        self.inbox.now = now  # (the ages of this step's uses, in virtual seconds)
        times, ids = self.step_times, self.step_ids
        if not ids or step > ids[-1]:
            times.append(now)
            ids.append(step)

        def arrival_step(t: float) -> int:  # our first step starting at or after t
            return ids[min(bisect.bisect_left(times, t), len(ids) - 1)]

        for j, link in self.links.items():
            for pend in link.due_virtual(step, now, arrival_step):
                if not pend.lost:
                    self.inbox.put(pend.env)
                self._settle(j, pend.env)

    def _settle(self, j: int, env: Envelope) -> None:
        """``env`` of round ``env.step`` has been released or lost: is the round complete?"""
        r = env.step
        if r <= self.resolved[j]:
            return
        seen = self._seen[j][r]
        seen.add(env.space)
        if (env.last or seen >= self.subscribed[j]
                or (r <= self.given_up[j]
                    and not any(p.env.step == r for p in self.links[j].pending))):
            self._complete(j, r)

    def _complete(self, j: int, r: int) -> None:
        if r <= self.resolved[j]:
            return
        self.resolved[j] = r
        for old in [q for q in self._seen[j] if q <= r]:
            del self._seen[j][old]

    # -- release ---------------------------------------------------------------------------
    def release(self, step: int, now: float) -> float | None:
        """Move due messages to the inbox; return the next time-based release, if any."""
        next_time = None
        for j, link in self.links.items():
            out, t = link.due(step, now)
            for pend in out:
                if not pend.lost:
                    self.inbox.put(pend.env)
                self._settle(j, pend.env)
            if t is not None:
                next_time = t if next_time is None else min(next_time, t)
        return next_time

    # -- the sync barrier's condition ----------------------------------------------------
    def needed_round(self, j: int, step: int) -> int:
        """The newest round of j that a sync step ``step`` must wait for (-1: none)."""
        q = step - self.links[j].spec.delay_steps
        if q < 0:
            return -1
        return round_at(q, self.publish_every, self.publish_from)

    def missing(self, step: int, active: Iterable[int]) -> list[int]:
        """The active in-neighbours whose needed round is not complete yet.

        An in-neighbour we take no space from is never waited for.
        """
        return [j for j in active if j in self.links and self.subscribed[j]
                and self.resolved[j] < self.needed_round(j, step)]

    # -- accounts --------------------------------------------------------------------------
    @property
    def pending(self) -> dict[int, list]:
        """Per in-neighbour: what is on its link (see :attr:`Link.pending`)."""
        return {j: link.pending for j, link in self.links.items()}

    def _total(self, counter: str) -> int:
        return sum(getattr(link, counter) for link in self.links.values())

    admitted = property(lambda self: self._total("admitted"))
    arrived = property(lambda self: self._total("arrived"))
    dropped = property(lambda self: self._total("dropped"))
    delivered_bytes = property(lambda self: self._total("delivered_bytes"))

    def edge_accounts(self) -> list[dict[str, int]]:
        """Per in-neighbour: what its link did with every message offered, and how many of
        its messages a training step used (``arrived = delivered + dropped_loss +
        dropped_buffer + held``)."""
        inbox = self.inbox
        out = [{"src": j, "dst": self.me, **link.counts(), "rejected": self.rejected[j],
                "used": inbox.used[j]} for j, link in sorted(self.links.items())]
        if self.virtual:  # the age of use in virtual seconds, per in-neighbour
            for e in out:
                j = e["src"]
                e["staleness_mean_s"] = inbox.age_s[j] / inbox.uses[j] if inbox.uses[j] else 0.0
        return out


def _samples(env: Envelope) -> int:
    """The leading dimension of a message's tensors (its samples), read from the header's
    schema: a bit-packed tensor is not unpacked to learn it."""
    tensors = env.tensors
    spec = getattr(tensors, "spec", None)
    n = 0
    for name in tensors:
        shape = spec(name)[1] if spec is not None else tensors[name].shape
        n = max(n, shape[0] if shape else 1)
    return n
