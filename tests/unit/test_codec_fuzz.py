"""Property-based tests of the decoder: whatever arrives is decoded or refused with a reason.

A peer's receive path must survive anything a socket can deliver, so ``decode`` may raise
only :class:`CodecError` (whose ``reason`` becomes a rejection counter), and whatever it
accepts must be a well-formed envelope that encodes back to the same frames.  Bit-packed
tensors are unpacked when first read, after decoding: reading every tensor of an accepted
envelope must never raise either, and must give the dtype and shape that were checked.
"""

from __future__ import annotations

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pgame.bus.codec import CodecError, Envelope, decode, encode
from p2pgame.bus.topics import Topic

SETTINGS = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _decodes_or_refuses(frames) -> Envelope | None:
    try:
        env = decode(frames, max_bytes=1 << 20)
    except CodecError as e:
        assert e.reason and " " not in e.reason  # a short counter key
        return None
    assert isinstance(env.sender, int) and isinstance(env.step, int)
    assert isinstance(env.topic, Topic)
    specs = {name: env.tensors.spec(name) for name in env.tensors}  # read without unpacking
    for name in env.tensors:  # the first read unpacks: it must not fail, whatever arrived
        t = env.tensors[name]
        assert isinstance(t, np.ndarray)
        assert (t.dtype, t.shape) == specs[name]
    assert env.tensors.packed == ()
    return env


@SETTINGS
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_any_frames_decode_or_are_refused(frames):
    _decodes_or_refuses(frames)


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=12)


def _valid_frames():
    env = Envelope(sender=3, topic=Topic("samples", 3, "x"), step=7,
                   tensors={"x": np.ones((2, 5), dtype=bool),
                            "y": np.arange(6, dtype=np.float32).reshape(2, 3)}, last=True)
    return [bytes(f) for f in encode(env)]


@SETTINGS
@given(key=st.sampled_from(["v", "sender", "topic", "step", "time", "last", "schema", "meta",
                            "extra"]), value=_VALUES)
def test_any_header_value_decodes_or_is_refused(key, value):
    """A valid message with one header entry replaced by anything msgpack can carry."""
    frames = _valid_frames()
    header = msgpack.unpackb(frames[1])
    header[key] = value
    frames[1] = msgpack.packb(header)
    _decodes_or_refuses(frames)


@SETTINGS
@given(entry=st.lists(_VALUES, min_size=0, max_size=5), k=st.integers(0, 1),
       payload=st.binary(max_size=40))
def test_any_schema_entry_decodes_or_is_refused(entry, k, payload):
    frames = _valid_frames()
    header = msgpack.unpackb(frames[1])
    header["schema"][k] = entry
    frames[1] = msgpack.packb(header)
    frames[2 + k] = payload
    _decodes_or_refuses(frames)


@SETTINGS
@given(st.integers(0, 3), st.integers(0, 200), st.binary(min_size=1, max_size=4))
def test_a_flipped_or_cut_frame_decodes_or_is_refused(which, at, junk):
    frames = _valid_frames()
    f = bytearray(frames[which])
    if at < len(f):
        f[at:at + len(junk)] = junk
    else:
        del f[len(f) // 2:]
    frames[which] = bytes(f)
    env = _decodes_or_refuses(frames)
    if env is not None:  # what is accepted re-encodes to what was received
        assert [bytes(x) for x in encode(env)] == frames or which >= 1


@SETTINGS
@given(shape=st.lists(st.integers(0, 20) | st.sampled_from([2**31, 2**62, 2**63, 2**64 - 1]),
                      max_size=4),
       dname=st.sampled_from(["bool", "uint8", "float32"]), packed=st.booleans(),
       payload=st.binary(max_size=64), extra=st.integers(-1, 1))
def test_any_packed_entry_decodes_or_is_refused_and_reads(shape, dname, packed, payload, extra):
    """A bit-packed (or plain) tensor of any declared shape with a buffer of any length,
    often the right one: refused at decode, or read without error later."""
    frames = _valid_frames()
    header = msgpack.unpackb(frames[1])
    header["schema"][0] = ["x", dname, shape, packed]
    count = int(np.prod(shape, dtype=object)) if shape else 1
    size = (count + 7) // 8 if packed else count * np.dtype(dname).itemsize
    if size + extra <= 64:  # the right length, or one off
        payload = bytes(max(0, size + extra))
    frames[1] = msgpack.packb(header)
    frames[2] = payload
    _decodes_or_refuses(frames)
