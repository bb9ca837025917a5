"""Link emulation: what happens to a message on the edge j -> i.

The transport is reliable (ZeroMQ over ipc/tcp delivers in order once the
handshake is done); the link layer, on the receiving side, makes it as
unreliable as the scenario asks: it drops, delays by steps, adds latency with
jitter, and caps bandwidth with a token bucket.  Every fault draws from its own
seeded RNG, one per edge, so a synchronous run is reproducible and changing one
fault's rate never shifts another fault's draws.  Release stays FIFO per link,
like a TCP stream; messages of different senders can still overtake each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pgame.bus.codec import Envelope
from p2pgame.config import LinkSpec
from p2pgame.rng import generator


class TokenBucket:
    """Bytes/s cap: a message of n bytes leaves once n tokens have accumulated."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens: float | None = None  # full on first use
        self.t_last = 0.0

    def release_time(self, nbytes: int, t_arrive: float) -> float:
        cap = max(self.burst, float(nbytes))
        if self.tokens is None:
            self.tokens, self.t_last = cap, t_arrive
        t = max(t_arrive, self.t_last)  # FIFO: never before the previous message left
        tokens = min(cap, self.tokens + (t - self.t_last) * self.rate)
        if tokens < nbytes:
            t += (nbytes - tokens) / self.rate
            tokens = float(nbytes)
        self.tokens = tokens - nbytes
        self.t_last = t
        return t


@dataclass
class Pending:
    """A message admitted by the link, usable from ``step`` and ``time`` on."""

    env: Envelope
    nbytes: int
    release_step: int
    release_time: float
    lost: bool = False  # a placeholder for a dropped message, settled in its turn (FIFO)


class Link:
    """The emulated edge ``src -> dst`` as seen by the receiver ``dst``."""

    def __init__(self, src: int, dst: int, spec: LinkSpec, seed: int) -> None:
        self.src, self.dst, self.spec = src, dst, spec
        self.drop_rng = generator(seed, "link", src, dst, "drop")
        self.jitter_rng = generator(seed, "link", src, dst, "jitter")
        self.bucket = TokenBucket(spec.bandwidth, spec.burst) if spec.bandwidth > 0 else None
        self.last_release = 0.0
        self.admitted = 0
        self.dropped = 0

    def admit(self, env: Envelope, nbytes: int, now: float, recv_step: int, sync: bool) -> (
        Pending | None
    ):
        """Decide the message's fate; None means the link lost it.

        In sync mode a delay counts from the sender's step (deterministic); in
        async mode from the receiver's step at arrival.
        """
        spec = self.spec
        if spec.drop > 0 and self.drop_rng.random() < spec.drop:
            self.dropped += 1
            return None
        self.admitted += 1
        t = now
        if spec.latency_ms or spec.jitter_ms:
            t += (spec.latency_ms + spec.jitter_ms * self.jitter_rng.random()) / 1000.0
        if self.bucket is not None:
            t = self.bucket.release_time(nbytes, t)
        t = max(t, self.last_release)
        self.last_release = t
        base = env.step if sync else recv_step
        return Pending(env, nbytes, base + spec.delay_steps, t)
