"""The wire format: one envelope = topic frame + msgpack header + raw tensor frames.

Frames of a message (a ZeroMQ multipart message):

0. topic, UTF-8, ``<kind>/<peer>/<space>`` e.g. ``samples/3/x`` (first, so SUB
   prefix filtering works; see :mod:`p2pgame.bus.topics`)
1. header, a msgpack map::

       {"v": 2, "sender": int, "topic": str, "step": int, "time": float (unix s),
        "last": bool, "schema": [[name, dtype, shape, packed], ...], "meta": {...}}

   ``last`` marks the sender's last message of its round ``step`` (a sync
   receiver knows the round is complete).  Version 1 headers, which carried
   the flag as ``meta["last"]``, are still read.

   ``dtype`` is one of :data:`DTYPES`; all multi-byte numbers are little-endian.
   ``packed`` is true for ``bool`` tensors: their buffer is the C-order
   flattened tensor bit-packed MSB-first (``numpy.packbits``), zero-padded to a
   whole byte; ``ceil(prod(shape) / 8)`` bytes.
2. one frame per schema entry, in schema order: the raw tensor bytes.

Never pickle: a peer decodes only numbers and strings it can check.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from p2pgame.bus.topics import Topic, TopicError

WIRE_VERSION = 2
READABLE_VERSIONS = (1, 2)
DTYPES: dict[str, np.dtype] = {
    "bool": np.dtype(bool),
    "uint8": np.dtype("u1"),
    "int8": np.dtype("i1"),
    "int16": np.dtype("<i2"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "float16": np.dtype("<f2"),
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
}
_NAMES = {v: k for k, v in DTYPES.items()}
HEADER_KEYS = ("v", "sender", "topic", "step", "time", "schema", "meta")  # and "last" from v2


class CodecError(ValueError):
    """A message that cannot be decoded; ``reason`` is a short counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Envelope:
    sender: int
    topic: Topic
    step: int
    tensors: dict[str, np.ndarray]
    time: float = field(default_factory=time.time)
    last: bool = True  # the sender's last message of round ``step``
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.topic, str):
            self.topic = Topic.parse(self.topic)

    @property
    def kind(self) -> str:
        """``samples`` or ``params``: the first topic level."""
        return self.topic.kind

    @property
    def space(self) -> str:
        """The last topic level: the sample space or parameter part."""
        return self.topic.space


def _as_numpy(t: Any) -> np.ndarray:
    if hasattr(t, "detach"):  # a torch tensor; the bus itself never imports torch
        t = t.detach().cpu().numpy()
    return np.asarray(t, order="C")  # keeps 0-d shapes (ascontiguousarray makes them 1-d)


def encode(env: Envelope, pack_bool: bool = True) -> list[bytes | memoryview]:
    """Frames for ``env``: [topic, header, *buffers]."""
    schema = []
    buffers: list[bytes | memoryview] = []
    for name, t in env.tensors.items():
        arr = _as_numpy(t)
        dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        if dt not in _NAMES:
            raise CodecError("dtype", f"{name}: dtype {arr.dtype} is not on the wire")
        dname = _NAMES[dt]
        if dname == "bool" and pack_bool:
            # packbits of the 0/1 bytes (a view) is the same bits, faster than of bools
            buffers.append(np.packbits(arr.reshape(-1).view(np.uint8)).data)
            schema.append([name, dname, list(arr.shape), True])
        else:
            buffers.append(arr.astype(dt, copy=False).reshape(-1).view(np.uint8).data)
            schema.append([name, dname, list(arr.shape), False])
    topic = str(env.topic)
    header = {
        "v": WIRE_VERSION,
        "sender": int(env.sender),
        "topic": topic,
        "step": int(env.step),
        "time": float(env.time),
        "last": bool(env.last),
        "schema": schema,
        "meta": env.meta,
    }
    return [topic.encode(), msgpack.packb(header), *buffers]


def frame_sizes(frames: list[Any]) -> tuple[int, int]:
    """(header bytes, payload bytes) of a frame list: topic+header vs tensors."""
    sizes = [f.nbytes if isinstance(f, memoryview) else len(f) for f in frames]
    return sum(sizes[:2]), sum(sizes[2:])


def decode(frames: list[Any], max_bytes: int = 64 * 2**20) -> Envelope:
    """Decode and check a frame list; raises :class:`CodecError` on anything odd."""
    bufs = [f.buffer if hasattr(f, "buffer") else memoryview(f) for f in frames]
    total = sum(len(b) for b in bufs)
    if total > max_bytes:
        raise CodecError("oversized", f"{total} bytes > max_message_bytes {max_bytes}")
    if len(bufs) < 2:
        raise CodecError("malformed", "fewer than 2 frames")
    try:
        header = msgpack.unpackb(bufs[1], raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several exception types
        raise CodecError("malformed", f"header is not msgpack ({type(e).__name__})") from None
    if not isinstance(header, dict) or any(k not in header for k in HEADER_KEYS):
        raise CodecError("malformed", "header lacks required keys")
    version = header["v"]
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise CodecError("version", f"wire version {version!r}")
    try:
        text = bytes(bufs[0]).decode()
    except UnicodeDecodeError:
        raise CodecError("malformed", "topic is not UTF-8") from None
    if text != header["topic"]:
        raise CodecError("malformed", "topic frame and header disagree")
    try:
        topic = Topic.parse(text)
    except TopicError as e:
        raise CodecError("topic", str(e)) from None
    meta = header["meta"] if isinstance(header["meta"], dict) else {}
    if version >= 2 and "last" not in header:
        raise CodecError("malformed", "header lacks required keys")
    if version >= 2:
        last = header["last"]
    else:  # version 1 carried the flag in meta
        meta = {k: v for k, v in meta.items() if k != "last"}
        last = header["meta"].get("last", True)
    if not isinstance(last, bool):
        raise CodecError("malformed", "last must be true or false")
    schema = header["schema"]
    if not isinstance(schema, list) or len(schema) != len(bufs) - 2:
        raise CodecError("malformed", "schema does not match the number of frames")
    sender, step = header["sender"], header["step"]
    if type(sender) is not int or type(step) is not int:
        raise CodecError("malformed", "sender and step must be integers")
    if isinstance(header["time"], bool) or not isinstance(header["time"], (int, float)):
        raise CodecError("malformed", "time must be a number")
    tensors: dict[str, np.ndarray] = {}
    for entry, buf in zip(schema, bufs[2:], strict=True):
        if not (isinstance(entry, list) and len(entry) == 4):
            raise CodecError("malformed", "schema entry is not [name, dtype, shape, packed]")
        name, dname, shape, packed = entry
        if not isinstance(name, str) or not isinstance(dname, str):
            raise CodecError("malformed", "schema name and dtype must be strings")
        if dname not in DTYPES:
            raise CodecError("dtype", f"{name}: unknown dtype {dname!r}")
        if not isinstance(shape, list) or not all(
            isinstance(s, int) and s >= 0 for s in shape
        ):
            raise CodecError("malformed", f"{name}: bad shape {shape!r}")
        count = math.prod(shape)
        if packed:
            if dname != "bool":
                raise CodecError("malformed", f"{name}: only bool tensors are bit-packed")
            if len(buf) != (count + 7) // 8:
                raise CodecError("truncated", f"{name}: {len(buf)} bytes for {count} bits")
            # unpack every bit and keep the first ``count`` (a view): faster than count=
            arr = np.unpackbits(np.frombuffer(buf, np.uint8))[:count].view(bool)
        else:
            dt = DTYPES[dname]
            if len(buf) != count * dt.itemsize:
                raise CodecError("truncated", f"{name}: {len(buf)} bytes for {count} x {dname}")
            arr = np.frombuffer(buf, dt)
        tensors[name] = arr.reshape(shape)
    return Envelope(
        sender=sender,
        topic=topic,
        step=step,
        tensors=tensors,
        time=float(header["time"]),
        last=last,
        meta=meta,
    )
