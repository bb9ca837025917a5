"""The message bus: codec, ZeroMQ transport, link emulation.  The only layer that imports zmq."""

from p2pgame.bus.codec import CodecError, Envelope, TrafficCounter, decode, encode, frame_sizes
from p2pgame.bus.links import Link, Pending, TokenBucket

__all__ = [
    "CodecError",
    "Envelope",
    "Link",
    "Pending",
    "TokenBucket",
    "TrafficCounter",
    "decode",
    "encode",
    "frame_sizes",
]
