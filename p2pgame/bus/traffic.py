"""Byte counting, in one place: every bandwidth figure of a run comes from here.

A peer's :class:`Traffic` counts what it published (one row per receiver that
subscribed to the topic: PUB fans one copy out to each), what arrived
(decodable data messages, counted before any check of the receiver's), and
what it refused, by reason.  Header bytes (topic frame + msgpack header) and
payload bytes (tensor frames) are kept apart.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from p2pgame.bus.codec import PROMISE_BYTES, CodecError, Envelope, decode_sized, frame_sizes
from p2pgame.bus.topics import CLOCK


@dataclass
class TrafficCounter:
    """Messages and bytes per (sender, receiver, topic), header and payload apart."""

    table: dict[tuple[int, int, str], list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0, 0])
    )

    def add(self, sender: int, receiver: int, topic: str, header: int, payload: int) -> None:
        row = self.table[(sender, receiver, str(topic))]
        row[0] += 1
        row[1] += header
        row[2] += payload

    def totals(self) -> dict[str, int]:
        msgs = sum(r[0] for r in self.table.values())
        hdr = sum(r[1] for r in self.table.values())
        pay = sum(r[2] for r in self.table.values())
        return {"messages": msgs, "header_bytes": hdr, "payload_bytes": pay, "bytes": hdr + pay}

    def rows(self) -> list[dict[str, Any]]:
        return [
            {"sender": s, "receiver": r, "topic": t, "messages": v[0], "header_bytes": v[1],
             "payload_bytes": v[2]}
            for (s, r, t), v in sorted(self.table.items())
        ]


class Traffic:
    """One peer's counters: sent, received, rejected."""

    def __init__(self, me: int, max_message_bytes: int = 64 * 2**20) -> None:
        self.me = me
        self.max_message_bytes = max_message_bytes
        self.sent = TrafficCounter()
        self.received = TrafficCounter()
        self.rejected: Counter[str] = Counter()
        # The virtual clock's own messages (topic ck/<peer>/t): apart from the exchange's.
        self.clock_sent = TrafficCounter()
        self.clock_received = TrafficCounter()
        # (The virtual clock) the bytes of promises carried in data messages' headers,
        # left out of those messages' counts (and sizes): the clock's, not the exchange's.
        self.promise_bytes_sent = 0
        self.promise_bytes_received = 0

    def count_sent(self, env: Envelope, frames: list[Any], receivers: Sequence[int]) -> None:
        header, payload = frame_sizes(frames)
        table, me, topic = self.sent.table, self.me, str(env.topic)
        if env.until is not None:
            header -= PROMISE_BYTES
            self.promise_bytes_sent += PROMISE_BYTES * len(receivers)
        for r in receivers:  # TrafficCounter.add, inlined (once per message and receiver)
            row = table[(me, r, topic)]
            row[0] += 1
            row[1] += header
            row[2] += payload

    def decode(self, frames: list[Any], via: int | None = None) -> tuple[Envelope, int] | None:
        """The envelope and its size in bytes, or None (rejected and counted).

        ``via``: the in-neighbour whose connection the message came on; a message
        claiming another sender is refused (``spoofed``) before it is counted as received.
        """
        try:
            env, header, payload = decode_sized(frames, self.max_message_bytes)
        except CodecError as e:
            self.rejected[e.reason] += 1
            return None
        except (ValueError, TypeError):  # defence in depth: never let a message kill us
            self.rejected["malformed"] += 1
            return None
        if via is not None and env.sender != via:
            self.rejected["spoofed"] += 1
            return None
        if env.until is not None:
            header -= PROMISE_BYTES
            self.promise_bytes_received += PROMISE_BYTES
        if env.topic.kind == CLOCK:
            self.clock_received.add(env.sender, self.me, str(env.topic), header, payload)
        elif not env.topic.is_control:  # handshakes and resync markers are not traffic
            row = self.received.table[(env.sender, self.me, str(env.topic))]
            row[0] += 1
            row[1] += header
            row[2] += payload
        return env, header + payload

    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1

    def per_message_bytes(self, topic: str) -> int | None:
        """Mean bytes of one message sent on ``topic`` (None if none was sent)."""
        return mean_message_bytes(self.sent.rows(), topic)


def mean_message_bytes(rows: Iterable[dict[str, Any]], topic: str) -> int | None:
    """Mean header + payload bytes of one message on ``topic`` in traffic rows (None: none)."""
    rows = [r for r in rows if r["topic"] == topic]
    msgs = sum(r["messages"] for r in rows)
    return round(sum(r["header_bytes"] + r["payload_bytes"] for r in rows) / msgs) if msgs else None
