"""Topics: ``<kind>/<peer>/<space>``, built, parsed and subscribed to in one place.

A topic names what a message carries and who sent it: ``samples/3/hvae`` are
samples of peer 3 in the space ``hvae``; ``params/3/D`` is peer 3's
discriminator.  The topic is the first frame of a message, so ZeroMQ's prefix
filtering lets a subscriber take exactly the (peer, space) pairs it learns
from: a peer that learns only from ``x`` never receives a byte of ``cx``.

Prefix filtering matches prefixes: a subscription to ``samples/3/x`` would
also match a space called ``xy``.  Space names are therefore checked when a
scenario is resolved (:func:`check_space_names`): no space name may be a
prefix of another.  Peer ids cannot collide, the ``/`` after them ends them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

KINDS = ("samples", "params")
HANDSHAKE = "hs"
# ``rs/<peer>/<receiver>``: the receiver's (re)subscription tells the publisher that the
# receiver's connection is (again) live; the publisher answers on the same topic with
# the newest round it has published (a resync marker, :class:`Topic.resync`).
RESYNC = "rs"
# ``ck/<peer>/t``: the virtual clock's messages (runtime.clock = "virtual"): the sender
# promises that it sends nothing before the virtual time in the header.  Not the
# exchange's traffic: counted apart (Traffic.clock_sent, clock_received).
CLOCK = "ck"
_SPACE = re.compile(r"[A-Za-z0-9_.-]+")  # used with fullmatch: no trailing newline


class TopicError(ValueError):
    """A topic string that is not ``<kind>/<peer>/<space>``."""


@dataclass(frozen=True, order=True)
class Topic:
    kind: str  # samples | params | hs (handshake) | rs (resync) | ck (clock)
    peer: int  # the sender
    space: str  # the sample space or parameter part ("" for a handshake)

    def __post_init__(self) -> None:
        if self.kind not in KINDS and self.kind not in (HANDSHAKE, RESYNC, CLOCK):
            raise TopicError(f"topic kind {self.kind!r}; allowed: {', '.join(KINDS)}")
        if isinstance(self.peer, bool) or not isinstance(self.peer, int) or self.peer < 0:
            raise TopicError(f"topic peer {self.peer!r} is not a peer id")
        if self.kind == HANDSHAKE:
            if self.space:
                raise TopicError("a handshake topic has no space")
        elif not _SPACE.fullmatch(self.space):
            raise TopicError(f"space {self.space!r}: letters, digits, '_', '.' or '-' only")
        # The text is what goes on the wire with every message: format (and encode) it once.
        text = f"{self.kind}/{self.peer}/{self.space}"
        object.__setattr__(self, "_text", text)
        object.__setattr__(self, "wire", text.encode())  # the topic frame, UTF-8

    @classmethod
    def handshake(cls, peer: int) -> Topic:
        return cls(HANDSHAKE, peer, "")

    @classmethod
    def resync(cls, peer: int, receiver: int) -> Topic:
        """Peer ``peer``'s resync topic for ``receiver`` (its space is the receiver's id;
        a prefix subscription to ``rs/3/5`` also matches ``rs/3/50``: receivers check)."""
        return cls(RESYNC, peer, str(receiver))

    @classmethod
    def clock(cls, peer: int) -> Topic:
        """Peer ``peer``'s clock topic (its promises, on the virtual clock)."""
        return cls(CLOCK, peer, "t")

    @property
    def is_handshake(self) -> bool:
        return self.kind == HANDSHAKE

    @property
    def is_control(self) -> bool:
        """Handshakes, resync markers and clock messages: the bus's own messages, not the
        exchange's traffic (clock messages are counted apart)."""
        return self.kind == HANDSHAKE or self.kind == RESYNC or self.kind == CLOCK

    def __str__(self) -> str:
        return self._text

    def subscription(self) -> bytes:
        """The ZeroMQ subscription prefix that selects exactly this topic."""
        return self.wire

    @classmethod
    def parse(cls, text: str) -> Topic:
        """The topic ``<kind>/<peer>/<space>``; raises :class:`TopicError`."""
        return _parse(text)


# A peer sees the same few topics over and over (one message per neighbour and step):
# parse each text once.
@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> Topic:
    parts = text.split("/")
    num = parts[1] if len(parts) == 3 else ""
    if not (num.isascii() and num.isdigit()) or num != str(int(num)):
        raise TopicError(f"topic {text!r} is not <kind>/<peer>/<space>")
    return Topic(parts[0], int(parts[1]), parts[2])


def check_space_names(names: Iterable[str]) -> None:
    """Refuse names that prefix-filtering could confuse (``x`` and ``xy``)."""
    names = sorted(set(names))
    for a in names:
        if not _SPACE.fullmatch(a):
            raise TopicError(f"space {a!r}: letters, digits, '_', '.' or '-' only")
        for b in names:
            if a != b and b.startswith(a):
                raise TopicError(
                    f"spaces {a!r} and {b!r}: one name is a prefix of the other, so a "
                    f"subscription to {a!r} would also receive {b!r}")
