"""The message bus: topics, codec, traffic counting, link emulation, ZeroMQ transport.

The only layer that imports zmq (in :mod:`p2pgame.bus.transport`).
"""

from p2pgame.bus.codec import CodecError, Envelope, decode, encode, frame_sizes
from p2pgame.bus.links import Link, Pending, TokenBucket
from p2pgame.bus.topics import HANDSHAKE, Topic, TopicError
from p2pgame.bus.traffic import Traffic, TrafficCounter

__all__ = [
    "HANDSHAKE",
    "CodecError",
    "Envelope",
    "Link",
    "Pending",
    "TokenBucket",
    "Topic",
    "TopicError",
    "Traffic",
    "TrafficCounter",
    "decode",
    "encode",
    "frame_sizes",
]
