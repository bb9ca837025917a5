"""The wire format: one envelope = topic frame + msgpack header + raw tensor frames.

Frames of a message (a ZeroMQ multipart message):

0. topic, UTF-8, ``<kind>/<peer>/<space>`` e.g. ``samples/3/x`` (first, so SUB
   prefix filtering works; see :mod:`p2pgame.bus.topics`)
1. header, a msgpack map::

       {"v": 2, "sender": int, "topic": str, "step": int, "time": float (unix s; virtual s on the virtual clock),
        "last": bool, "schema": [[name, dtype, shape, packed], ...], "meta": {...}}

   and, on the virtual clock only, ``"until": float``: the sender's promise that it sends
   nothing more before that virtual time (at or after ``time``), carried by its round's
   last data message instead of a clock message of its own.  The real clock never sends
   the key, so its headers are as they were.

   ``last`` marks the sender's last message of its round ``step`` (a sync
   receiver knows the round is complete).  Version 1 headers, which carried
   the flag as ``meta["last"]``, are still read.

   ``dtype`` is one of :data:`DTYPES`; all multi-byte numbers are little-endian.
   ``packed`` is true for ``bool`` tensors: their buffer is the C-order
   flattened tensor bit-packed MSB-first (``numpy.packbits``), zero-padded to a
   whole byte; ``ceil(prod(shape) / 8)`` bytes.
2. one frame per schema entry, in schema order: the raw tensor bytes.

Never pickle: a peer decodes only numbers and strings it can check.

Decoding is lazy where it costs: :func:`decode` checks every frame against the
header (its length against the schema's dtype and shape included, so a
malformed message is refused at once, as a :class:`CodecError`), but a
bit-packed ``bool`` tensor stays packed until a consumer first reads it
(``env.tensors["x"]``): :class:`Tensors` unpacks it then and keeps the result.
Why: a peer receives many more messages than it trains on (its inbox keeps the
freshest per neighbour and space), and it trains in a worker thread.  Unpacking
on first read moves that work off the event loop that receives, into the
training thread, and a message superseded by a fresher one before it is used is
never unpacked at all.  The other tensors are zero-copy views of the received
frames, as before.  Code on the receive path (a schema check) should look at a
tensor's dtype and shape with :meth:`Tensors.spec`, which does not unpack.

The sending side mirrors it: a peer packs its ``bool`` samples in the thread that
drew them (:func:`pack_bools`), and :func:`encode` sends a :class:`PackedBits` as it
is, so the packing pass is off the event loop that sends.  The bytes on the wire
are the same either way.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
from zmq import Frame as _Frame

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
_HEADER_KEYSET = frozenset(HEADER_KEYS)
# What a carried promise adds to a header ("until" and a float64; the header stays a
# fixmap): the clock's bytes, which the traffic accounts and the modelled links leave out,
# so that a data message counts and travels as it would without the promise.
PROMISE_BYTES = len(msgpack.packb({"until": 0.0})) - len(msgpack.packb({}))


class CodecError(ValueError):
    """A message that cannot be decoded; ``reason`` is a short counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


_BOOL = np.dtype(bool)
_U8 = np.dtype(np.uint8)


class PackedBits:
    """A ``bool`` array, bit-packed as on the wire: its bytes, its element count and shape.

    :func:`decode` gives one for each packed tensor (unpacked on first read, see
    :class:`Tensors`).  A producer may also hand one to :func:`encode`
    (:meth:`pack`, or :func:`pack_bools` for a whole mapping): encode then sends its
    bytes as they are.  A peer packs its samples this way in the thread that drew
    them, so the event loop never runs the packing pass, and a relay passes received
    bits on without unpacking and packing them again.
    """

    __slots__ = ("bits", "count", "shape")
    dtype = _BOOL  # what it holds: ``dtype`` and ``shape`` describe it as the array would

    def __init__(self, bits: np.ndarray, count: int, shape: tuple[int, ...]) -> None:
        self.bits = bits  # uint8, exactly ceil(count / 8) bytes (checked by decode)
        self.count = count
        self.shape = shape

    @classmethod
    def pack(cls, arr: np.ndarray) -> PackedBits:
        """Pack a ``bool`` array (MSB first, zero-padded to a whole byte, as encode does)."""
        arr = np.asarray(arr, order="C")
        if arr.dtype != _BOOL:
            raise TypeError(f"PackedBits.pack takes a bool array, not {arr.dtype}")
        # packbits of the 0/1 bytes (a view) is the same bits, faster than of bools;
        # packbits flattens a C-contiguous array without a copy
        return cls(np.packbits(arr.view(_U8)), arr.size, tuple(arr.shape))

    def unpack(self) -> np.ndarray:
        # unpack every bit and keep the first ``count`` (a view): faster than count=
        return np.unpackbits(self.bits)[: self.count].view(bool).reshape(self.shape)


def pack_bools(tensors: Mapping[str, Any], memo: dict[int, PackedBits] | None = None
               ) -> dict[str, Any]:
    """``tensors`` with every ``bool`` numpy array replaced by its :class:`PackedBits`
    (the rest as they are): what a producer calls off the event loop before publishing.
    ``memo`` (array id -> packed), shared by the calls for one round's messages, packs
    an array that several messages carry once."""
    memo = {} if memo is None else memo
    out = {}
    for k, v in tensors.items():
        if type(v) is np.ndarray and v.dtype == _BOOL:
            packed = memo.get(id(v))
            if packed is None:
                packed = memo[id(v)] = PackedBits.pack(v)
            v = packed
        out[k] = v
    return out


class Tensors(Mapping[str, np.ndarray]):
    """The tensors of a decoded envelope: a read-only mapping, name -> numpy array, in
    schema order.

    Bit-packed ``bool`` tensors are unpacked on first read (``[name]``, ``.get``,
    ``.items()``, ``.values()``, ``==``) and the array is kept for later reads; names
    (``in``, ``len``, iteration, ``set(...)``) and :meth:`spec` never unpack.  Two
    threads reading the same packed tensor at once may both unpack it: they get equal
    arrays, and later reads get one of them.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | None = None) -> None:
        # name -> ndarray, or a PackedBits not unpacked yet (replaced by its array on first read)
        self._items: dict[str, Any] = dict(items or {})

    @classmethod
    def _wrap(cls, items: dict[str, Any]) -> Tensors:
        """Take ``items`` (decode's own dict) as it is, without a copy."""
        t = cls.__new__(cls)
        t._items = items
        return t

    def __getitem__(self, name: str) -> np.ndarray:
        v = self._items[name]
        if type(v) is PackedBits:
            v = v.unpack()
            self._items[name] = v  # replaces a value, never adds a key: safe while iterating
        return v

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def spec(self, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        """``(dtype, shape)`` of a tensor, without unpacking it."""
        v = self._items[name]  # (a PackedBits has the dtype and shape of its array)
        return v.dtype, v.shape

    @property
    def packed(self) -> tuple[str, ...]:
        """The names of the tensors still bit-packed (not read yet)."""
        return tuple(k for k, v in self._items.items() if type(v) is PackedBits)

    def __repr__(self) -> str:
        parts = []
        for k, v in self._items.items():
            if type(v) is PackedBits:
                parts.append(f"{k!r}: <bit-packed bool array {v.shape}, not unpacked yet>")
            else:
                parts.append(f"{k!r}: {v!r}")
        return "Tensors({" + ", ".join(parts) + "})"


@dataclass
class Envelope:
    sender: int
    topic: Topic
    step: int
    # What was given (a dict, on the sending side) or a decoded :class:`Tensors`.
    tensors: Mapping[str, Any]
    time: float = field(default_factory=time.time)
    last: bool = True  # the sender's last message of round ``step``
    meta: dict[str, Any] = field(default_factory=dict)
    # (The virtual clock) the sender's promise carried here: nothing more from it before
    # this virtual time.  None: no promise (the real clock; or a clock message follows).
    until: float | None = None

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


def encode_work(tensors: Mapping[str, Any], pack_bool: bool = True) -> int:
    """Bytes that :func:`encode` must work through for these tensors, rather than pass
    on as they are: ``bool`` arrays it bit-packs, arrays it copies (not C-contiguous,
    big-endian), and anything that is not a numpy array (a torch tensor may have to
    come from its device).  A C-contiguous little-endian array is sent zero-copy and
    costs nothing here, whatever its size."""
    work = 0
    # (a decoded envelope's tensors: looked at as they are, without unpacking any)
    values = tensors._items.values() if type(tensors) is Tensors else tensors.values()
    for t in values:
        if type(t) is PackedBits:
            if not pack_bool:
                work += t.count  # unpacked by encode, a byte per bool
        elif type(t) is np.ndarray:
            if (pack_bool and t.dtype == _BOOL) or not t.flags.c_contiguous \
                    or t.dtype.byteorder == ">":
                work += t.nbytes
        else:
            n = getattr(t, "nbytes", None)
            if n is None and hasattr(t, "numel"):  # a torch tensor without ``nbytes``
                n = t.numel() * t.element_size()
            work += int(n or 0)
    return work


def _packer() -> msgpack.Packer:
    """This thread's msgpack packer (a packer is not shared between threads); the same
    bytes as ``msgpack.packb``, without making a packer per message."""
    try:
        return _local.packer
    except AttributeError:
        _local.packer = msgpack.Packer()
        return _local.packer


_local = threading.local()


def encode(env: Envelope, pack_bool: bool = True) -> list[bytes | memoryview]:
    """Frames for ``env``: [topic, header, *buffers]."""
    schema = []
    buffers: list[bytes | memoryview] = []
    tensors = env.tensors
    # (a decoded envelope's tensors as they are: packed ones are passed on, not unpacked)
    for name, t in (tensors._items if type(tensors) is Tensors else tensors).items():
        if type(t) is PackedBits:
            if pack_bool:  # packed where it was made: its bytes as they are
                buffers.append(t.bits.data)
                schema.append([name, "bool", list(t.shape), True])
                continue
            t = t.unpack()
        # (a C-contiguous numpy array, the usual case, is taken as it is)
        arr = t if type(t) is np.ndarray and t.flags.c_contiguous else _as_numpy(t)
        dname = _NAMES.get(arr.dtype)
        if dname is None:
            dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
            if dt not in _NAMES:
                raise CodecError("dtype", f"{name}: dtype {arr.dtype} is not on the wire")
            dname = _NAMES[dt]
            arr = arr.astype(dt)
        if pack_bool and dname == "bool":
            buffers.append(PackedBits.pack(arr).bits.data)
            schema.append([name, dname, list(arr.shape), True])
        else:
            buffers.append(arr.reshape(-1).view(_U8).data)
            schema.append([name, dname, list(arr.shape), False])
    topic = env.topic
    text = str(topic)
    header = {
        "v": WIRE_VERSION,
        "sender": int(env.sender),
        "topic": text,
        "step": int(env.step),
        "time": float(env.time),
        "last": bool(env.last),
        "schema": schema,
        "meta": env.meta,
    }
    if env.until is not None:
        header["until"] = float(env.until)
    return [topic.wire if type(topic) is Topic else text.encode(), _packer().pack(header),
            *buffers]


def frame_sizes(frames: list[Any]) -> tuple[int, int]:
    """(header bytes, payload bytes) of a frame list: topic+header vs tensors."""
    header = payload = 0
    for i, f in enumerate(frames):
        n = f.nbytes if isinstance(f, memoryview) else len(f)
        if i < 2:
            header += n
        else:
            payload += n
    return header, payload


def decode(frames: list[Any], max_bytes: int = 64 * 2**20) -> Envelope:
    """Decode and check a frame list; raises :class:`CodecError` on anything odd.

    Every frame is checked here; bit-packed tensors are unpacked later, on first read
    (see :class:`Tensors`).
    """
    return decode_sized(frames, max_bytes)[0]


def decode_sized(frames: list[Any], max_bytes: int = 64 * 2**20) -> tuple[Envelope, int, int]:
    """:func:`decode`, and the message's (header bytes, payload bytes) as
    :func:`frame_sizes` counts them: one pass over the frames for both."""
    # bytes, memoryviews, zmq frames: all buffers.  Bytes and zmq frames (what a socket
    # gives) are used as they are, their len() is their size in bytes; anything else
    # is looked at through a memoryview.
    bufs: list[Any] = frames
    for f in frames:
        if type(f) is not _Frame and type(f) is not bytes:
            bufs = [memoryview(f) for f in frames]
            sizes = [b.nbytes for b in bufs]
            break
    else:
        sizes = [len(f) for f in frames]
    total = sum(sizes)
    if total > max_bytes:
        raise CodecError("oversized", f"{total} bytes > max_message_bytes {max_bytes}")
    if len(bufs) < 2:
        raise CodecError("malformed", "fewer than 2 frames")
    try:
        header = msgpack.unpackb(bufs[1], raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several exception types
        raise CodecError("malformed", f"header is not msgpack ({type(e).__name__})") from None
    if type(header) is not dict or not header.keys() >= _HEADER_KEYSET:
        raise CodecError("malformed", "header lacks required keys")
    version = header["v"]
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise CodecError("version", f"wire version {version!r}")
    try:
        text = str(bufs[0], "utf-8")
    except UnicodeDecodeError:
        raise CodecError("malformed", "topic is not UTF-8") from None
    if text != header["topic"]:
        raise CodecError("malformed", "topic frame and header disagree")
    try:
        topic = Topic.parse(text)
    except TopicError as e:
        raise CodecError("topic", str(e)) from None
    meta = header["meta"] if type(header["meta"]) is dict else {}
    if version >= 2:
        if "last" not in header:
            raise CodecError("malformed", "header lacks required keys")
        last = header["last"]
    else:  # version 1 carried the flag in meta
        last = meta.get("last", True)
        meta = {k: v for k, v in meta.items() if k != "last"}
    if type(last) is not bool:
        raise CodecError("malformed", "last must be true or false")
    schema = header["schema"]
    if type(schema) is not list or len(schema) != len(bufs) - 2:
        raise CodecError("malformed", "schema does not match the number of frames")
    sender, step, when = header["sender"], header["step"], header["time"]
    if type(sender) is not int or type(step) is not int:
        raise CodecError("malformed", "sender and step must be integers")
    if type(when) is not float and type(when) is not int:
        raise CodecError("malformed", "time must be a number")
    until = header.get("until")
    if until is not None and (type(until) is not float and type(until) is not int
                              or not until >= when):  # (nan is not)
        raise CodecError("malformed", "until must be a number at or after time")
    tensors: dict[str, Any] = {}
    for i, entry in enumerate(schema, 2):
        buf, nbytes = bufs[i], sizes[i]
        if type(entry) is not list or len(entry) != 4:
            raise CodecError("malformed", "schema entry is not [name, dtype, shape, packed]")
        name, dname, shape, packed = entry
        if type(name) is not str or type(dname) is not str:
            raise CodecError("malformed", "schema name and dtype must be strings")
        dt = DTYPES.get(dname)
        if dt is None:
            raise CodecError("dtype", f"{name}: unknown dtype {dname!r}")
        if type(shape) is not list:
            raise CodecError("malformed", f"{name}: bad shape {shape!r}")
        for s in shape:
            if type(s) is not int or s < 0:  # (a bool is not a size: numpy refuses it)
                raise CodecError("malformed", f"{name}: bad shape {shape!r}")
        count = math.prod(shape)
        if packed:
            if dname != "bool":
                raise CodecError("malformed", f"{name}: only bool tensors are bit-packed")
            if nbytes != (count + 7) // 8:
                raise CodecError("truncated", f"{name}: {nbytes} bytes for {count} bits")
            if count:  # checked now, unpacked on first read (Tensors)
                tensors[name] = PackedBits(np.frombuffer(buf, np.uint8), count, tuple(shape))
                continue
            flat = np.zeros(0, bool)  # nothing to unpack: an empty array of that shape, now
        else:
            if nbytes != count * dt.itemsize:
                raise CodecError("truncated", f"{name}: {nbytes} bytes for {count} x {dname}")
            flat = np.frombuffer(buf, dt)
        try:  # every size is at most ``count`` unless count is 0: then numpy may refuse it
            tensors[name] = flat.reshape(shape)
        except ValueError:  # "array is too big", "maximum allowed dimension exceeded"
            raise CodecError("malformed", f"{name}: bad shape {shape!r}") from None
    env = Envelope(sender, topic, step, Tensors._wrap(tensors), float(when), last, meta,
                   None if until is None else float(until))
    return env, sizes[0] + sizes[1], total - sizes[0] - sizes[1]
