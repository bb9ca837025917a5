"""The wire format: round trips, bit-packed bools, rejection reasons, versions, traffic counting."""

from __future__ import annotations

import math
from collections.abc import Mapping

import msgpack
import numpy as np
import pytest

from p2pgame.bus.codec import (
    DTYPES,
    HEADER_KEYS,
    PROMISE_BYTES,
    WIRE_VERSION,
    CodecError,
    Envelope,
    decode,
    encode,
    frame_sizes,
)
from p2pgame.bus.topics import Topic, TopicError
from p2pgame.bus.traffic import Traffic, TrafficCounter

V2_KEYS = ("v", "sender", "topic", "step", "time", "last", "schema", "meta")


def _env(tensors, topic="samples/3/x", step=12, meta=None, last=True) -> Envelope:
    return Envelope(sender=3, topic=topic, step=step, tensors=tensors, time=1234.5, last=last,
                    meta=meta if meta is not None else {})


def _nbytes(frame) -> int:
    return frame.nbytes if isinstance(frame, memoryview) else len(frame)


def _as_bytes(frames) -> list[bytes]:
    """What arrives from a socket: plain byte strings."""
    return [bytes(f) for f in frames]


def _header(frames) -> dict:
    return msgpack.unpackb(bytes(frames[1]), raw=False)


def _with_header(frames, **changes) -> list[bytes]:
    h = _header(frames)
    h.update(changes)
    out = _as_bytes(frames)
    out[1] = msgpack.packb(h)
    return out


def _reason(frames, **kw) -> str:
    with pytest.raises(CodecError) as info:
        decode(frames, **kw)
    return info.value.reason


# --------------------------------------------------------------------------- round trips

RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    "arr",
    [
        RNG.standard_normal((5, 3)).astype(np.float32),
        RNG.standard_normal((2, 3, 4)).astype(np.float32),
        np.arange(-6, 6, dtype=np.int64).reshape(3, 2, 2),
        np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max], dtype=np.int64),
        RNG.integers(0, 256, (4, 7), dtype=np.uint8),
        RNG.random((3, 11)) < 0.5,  # 33 bits: not a multiple of 8
        RNG.random((4, 2, 8)) < 0.5,
        np.zeros((0,), np.float32),
        np.zeros((0, 5), np.int64),
        np.zeros((3, 0), np.uint8),
        np.zeros((0, 16), bool),
        np.arange(6, dtype=np.float64).reshape(2, 3),
        np.arange(6, dtype=np.float16),
        np.arange(6, dtype=np.int8),
        np.arange(6, dtype=np.int16),
        np.arange(6, dtype=np.int32),
    ],
    ids=lambda a: f"{a.dtype}{list(a.shape)}",
)
@pytest.mark.parametrize("pack_bool", [True, False])
def test_round_trip(arr, pack_bool):
    env = _env({"x": arr, "y": np.ones(2, np.float32)}, meta={"k": [1, 2]}, last=False)
    got = decode(_as_bytes(encode(env, pack_bool=pack_bool)))
    assert (got.sender, str(got.topic), got.step, got.time) == (3, "samples/3/x", 12, 1234.5)
    assert got.topic == Topic("samples", 3, "x")
    assert got.last is False
    assert got.meta == {"k": [1, 2]}
    assert list(got.tensors) == ["x", "y"]  # schema order
    x = got.tensors["x"]
    assert x.dtype == arr.dtype and x.shape == arr.shape
    np.testing.assert_array_equal(x, arr)
    assert got.kind == "samples" and got.space == "x"


def test_round_trip_memoryview_frames_and_non_contiguous():
    arr = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]  # a strided view
    frames = encode(_env({"x": arr}))
    got = decode(frames)  # the encoder's own frames (memoryviews) decode too
    np.testing.assert_array_equal(got.tensors["x"], arr)


def test_big_endian_input_is_sent_little_endian():
    arr = np.arange(5, dtype=">i4")
    frames = encode(_env({"x": arr}))
    assert bytes(frames[2]) == np.arange(5, dtype="<i4").tobytes()
    assert _header(frames)["schema"][0][1] == "int32"
    np.testing.assert_array_equal(decode(_as_bytes(frames)).tensors["x"], arr)


def test_torch_like_tensor_is_converted():
    class FakeTensor:  # the codec duck-types torch tensors without importing torch
        def __init__(self, a):
            self.a = a

        def detach(self):
            return self

        def cpu(self):
            return self

        def numpy(self):
            return self.a

    arr = np.arange(4, dtype=np.float32)
    got = decode(_as_bytes(encode(_env({"x": FakeTensor(arr)}))))
    np.testing.assert_array_equal(got.tensors["x"], arr)


@pytest.mark.parametrize("value", [np.array(2.5, np.float32), np.array(True)])
def test_zero_dim_tensor_keeps_its_shape(value):
    got = decode(_as_bytes(encode(_env({"s": value}))))
    assert got.tensors["s"].shape == ()


# --------------------------------------------------------------------------- the wire


def test_header_keys_and_schema():
    arr = np.ones((3, 4), np.float32)
    frames = encode(_env({"x": arr, "b": np.zeros((3, 5), bool)}))
    assert bytes(frames[0]) == b"samples/3/x"  # topic first, for prefix filtering
    h = _header(frames)
    assert tuple(h) == V2_KEYS
    assert set(HEADER_KEYS) | {"last"} == set(V2_KEYS)  # the keys every version has, + last
    assert h["v"] == WIRE_VERSION == 2
    assert (h["sender"], h["topic"], h["step"], h["time"]) == (3, "samples/3/x", 12, 1234.5)
    assert h["last"] is True
    assert h["schema"] == [["x", "float32", [3, 4], False], ["b", "bool", [3, 5], True]]
    assert h["meta"] == {}
    assert len(frames) == 4
    assert bytes(frames[2]) == arr.astype("<f4").tobytes()


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 16, 33, 1000])
def test_bools_are_bit_packed_msb_first(n):
    bits = np.random.default_rng(n).random(n) < 0.5
    frames = encode(_env({"x": bits}))
    payload = bytes(frames[2])
    assert len(payload) == math.ceil(n / 8)
    assert payload == np.packbits(bits).tobytes()  # MSB first, zero padded
    hdr, pay = frame_sizes(frames)
    assert pay == math.ceil(n / 8)


def test_bit_order_by_hand():
    frames = encode(_env({"x": np.array([True, False, False, False, False, False, False, True,
                                         True, True])}))
    assert bytes(frames[2]) == bytes([0b10000001, 0b11000000])


def test_pack_bool_false_sends_a_byte_per_bool():
    bits = np.array([[True, False, True], [False, False, True]])
    frames = encode(_env({"x": bits}), pack_bool=False)
    assert bytes(frames[2]) == bytes([1, 0, 1, 0, 0, 1])
    assert _header(frames)["schema"][0] == ["x", "bool", [2, 3], False]
    np.testing.assert_array_equal(decode(_as_bytes(frames)).tensors["x"], bits)


def test_frame_sizes_split_header_and_payload():
    frames = encode(_env({"x": np.ones((10, 4), np.float32), "b": np.ones(20, bool)}))
    hdr, pay = frame_sizes(frames)
    assert pay == 10 * 4 * 4 + 3
    assert hdr == len(b"samples/3/x") + len(bytes(frames[1]))
    assert frame_sizes(_as_bytes(frames)) == (hdr, pay)


# --------------------------------------------------------------------------- rejections


@pytest.fixture
def good() -> list:
    return encode(_env({"x": np.ones((4, 3), np.float32), "b": np.ones(10, bool)}))


def test_good_message_decodes(good):
    assert decode(_as_bytes(good)).tensors["x"].shape == (4, 3)


def test_malformed_header(good):
    frames = _as_bytes(good)
    assert _reason([frames[0], b"\xc1garbage", *frames[2:]]) == "malformed"
    assert _reason([frames[0]]) == "malformed"  # fewer than 2 frames
    assert _reason([frames[0], msgpack.packb([1, 2, 3]), *frames[2:]]) == "malformed"
    h = _header(good)
    del h["schema"]
    assert _reason([frames[0], msgpack.packb(h), *frames[2:]]) == "malformed"
    # Non-string map keys in the header are refused by the strict unpacker.
    assert _reason([frames[0], msgpack.packb({1: 2}), *frames[2:]]) == "malformed"


@pytest.mark.parametrize(
    "changes",
    [
        {"topic": "samples/4/x"},  # topic frame and header disagree
        {"sender": "3"},
        {"step": 1.5},
        {"schema": "x"},
        {"schema": [["x", "float32", [4, 3], False]]},  # one entry for two frames
        {"schema": [["x", "float32", [4, 3]], ["b", "bool", [10], True]]},
        {"schema": [["x", "float32", [4, -3], False], ["b", "bool", [10], True]]},
        {"schema": [["x", "float32", "4x3", False], ["b", "bool", [10], True]]},
        {"schema": [["x", "float32", [4, 3], True], ["b", "bool", [10], True]]},  # packed float
    ],
)
def test_malformed_fields(good, changes):
    assert _reason(_with_header(good, **changes)) == "malformed"


def test_topic_not_utf8(good):
    frames = _as_bytes(good)
    frames[0] = b"\xff\xfe"
    assert _reason(frames) == "malformed"


def test_truncated_buffers(good):
    frames = _as_bytes(good)
    assert _reason([*frames[:2], frames[2][:-1], frames[3]]) == "truncated"
    assert _reason([*frames[:2], frames[2] + b"\0", frames[3]]) == "truncated"
    assert _reason([*frames[:3], frames[3] + b"\0"]) == "truncated"  # packed bools
    assert _reason([*frames[:3], b""]) == "truncated"
    # A shape that claims more data than the buffer holds.
    assert _reason(_with_header(good, schema=[["x", "float32", [400, 3], False],
                                              ["b", "bool", [10], True]])) == "truncated"


def test_oversized(good):
    frames = _as_bytes(good)
    total = sum(len(f) for f in frames)
    assert decode(frames, max_bytes=total).step == 12
    assert _reason(frames, max_bytes=total - 1) == "oversized"
    big = encode(_env({"x": np.zeros(100_000, np.float32)}))
    assert _reason(_as_bytes(big), max_bytes=64 * 1024) == "oversized"


def test_unknown_dtype(good):
    assert _reason(_with_header(good, schema=[["x", "complex64", [4, 3], False],
                                              ["b", "bool", [10], True]])) == "dtype"
    assert _reason(_with_header(good, schema=[["x", "object", [4, 3], False],
                                              ["b", "bool", [10], True]])) == "dtype"


@pytest.mark.parametrize("version", [0, 3, "1", "2", None, True, [1]])
def test_wrong_version(good, version):
    assert _reason(_with_header(good, v=version)) == "version"


@pytest.mark.parametrize(
    "arr",
    [np.array([{"a": 1}, None], dtype=object), np.array(["a", "b"]),
     np.ones(3, np.complex64), np.array([b"ab"]), np.ones(2, dtype="datetime64[s]")],
    ids=lambda a: str(a.dtype),
)
def test_encode_refuses_non_numeric_dtypes(arr):
    with pytest.raises(CodecError) as info:
        encode(_env({"x": arr}))
    assert info.value.reason == "dtype"


def test_never_pickles(monkeypatch, good):
    import pickle

    def boom(*a, **k):
        raise AssertionError("the codec must never unpickle")

    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(np, "load", boom)
    decode(_as_bytes(good))
    # A pickled object array sent as a tensor's bytes is just bytes: wrong size -> refused.
    blob = pickle.dumps(np.array([object()], dtype=object))
    frames = _as_bytes(good)
    assert _reason([*frames[:2], blob, frames[3]]) == "truncated"
    # A pickle as the header is not msgpack.
    assert _reason([frames[0], pickle.dumps({"v": 1}), *frames[2:]]) == "malformed"


def test_dtypes_table_is_little_endian():
    for name, dt in DTYPES.items():
        assert dt.byteorder in ("<", "|", "="), name
        assert dt.kind in "biuf", name


@pytest.mark.parametrize(
    "changes",
    [{"time": "yesterday"}, {"time": None},
     {"schema": [["x", ["float32"], [4, 3], False], ["b", "bool", [10], True]]}],
    ids=["time-str", "time-none", "dtype-list"],
)
def test_odd_header_values_raise_codec_error(good, changes):
    frames = _with_header(good, **changes)
    try:
        decode(frames)
    except CodecError as e:
        assert e.reason == "malformed"
    else:
        pytest.fail("decoded a malformed header")


def test_a_promise_rides_in_the_header_only_when_given_and_never_before_the_send_time(good):
    """The virtual clock's promise carried by a data message (``until``): absent from the
    header unless given (the real clock's headers are as before), decoded as a float, and
    refused as malformed when it is not a number at or after the message's send time."""
    assert "until" not in _header(good) and decode(_as_bytes(good)).until is None
    env = _env({"x": np.ones((4, 3), np.float32)})
    env.time, env.until = 1.25, 1.5
    frames = encode(env)
    assert _header(frames)["until"] == 1.5
    got = decode(_as_bytes(frames))
    assert (got.time, got.until) == (1.25, 1.5) and type(got.until) is float
    assert decode(_with_header(frames, until=2)).until == 2.0  # (an integer is a number)
    assert decode(_with_header(frames, until=math.inf)).until == math.inf  # (the last one)
    assert decode(_with_header(frames, until=1.25)).until == 1.25  # (no lookahead: allowed)
    for bad in (1.0, math.nan, "later", [2.0], True):
        assert _reason(_with_header(frames, until=bad)) == "malformed", bad
    # The promise's bytes are the clock's: a data message carrying one counts (and, on a
    # modelled link, weighs) what it would without it; the promise's are counted apart.
    plain = _env({"x": np.ones((4, 3), np.float32)})
    plain.time = 1.25
    assert sum(frame_sizes(frames)) == sum(frame_sizes(encode(plain))) + PROMISE_BYTES == (
        sum(frame_sizes(encode(plain))) + 15)
    sender, plain_sender, receiver = Traffic(3), Traffic(3), Traffic(5)
    sender.count_sent(env, frames, (5, 6))
    plain_sender.count_sent(plain, encode(plain), (5, 6))
    assert sender.sent.rows() == plain_sender.sent.rows()
    assert (sender.promise_bytes_sent, plain_sender.promise_bytes_sent) == (2 * PROMISE_BYTES, 0)
    _, carried_size = receiver.decode(_as_bytes(frames))
    _, plain_size = receiver.decode(_as_bytes(encode(plain)))
    assert carried_size == plain_size and receiver.promise_bytes_received == PROMISE_BYTES


def test_codec_error_reason_attribute():
    e = CodecError("truncated", "x: 3 bytes")
    assert e.reason == "truncated" and "x: 3 bytes" in str(e)
    assert isinstance(e, ValueError)


# --------------------------------------------------------------------------- counting


def test_traffic_counter_per_sender_receiver_topic():
    c = TrafficCounter()
    c.add(0, 1, "samples/0/x", 50, 100)
    c.add(0, 1, "samples/0/x", 52, 100)
    c.add(0, 2, "samples/0/x", 50, 100)
    c.add(3, 1, "params/3/w", 10, 1000)
    assert c.totals() == {"messages": 4, "header_bytes": 162, "payload_bytes": 1300,
                          "bytes": 1462}
    rows = c.rows()
    assert rows[0] == {"sender": 0, "receiver": 1, "topic": "samples/0/x", "messages": 2,
                       "header_bytes": 102, "payload_bytes": 200}
    assert [(r["sender"], r["receiver"], r["topic"]) for r in rows] == [
        (0, 1, "samples/0/x"), (0, 2, "samples/0/x"), (3, 1, "params/3/w")]
    assert TrafficCounter().totals() == {"messages": 0, "header_bytes": 0, "payload_bytes": 0,
                                         "bytes": 0}


def test_traffic_counter_with_frame_sizes():
    frames = encode(_env({"x": np.ones(16, bool)}))
    c = TrafficCounter()
    c.add(3, 0, "samples/3/x", *frame_sizes(frames))
    t = c.totals()
    assert t["payload_bytes"] == 2
    assert t["bytes"] == sum(_nbytes(f) for f in frames)


def test_traffic_counts_sent_once_per_subscribed_receiver():
    env = _env({"x": np.ones((5, 3), np.float32), "b": np.ones(9, bool)})
    frames = encode(env)
    hdr, pay = frame_sizes(frames)
    t = Traffic(me=3)
    t.count_sent(env, frames, receivers=(0, 5))
    t.count_sent(env, frames, receivers=())  # nobody subscribed: nothing went out
    assert t.sent.rows() == [
        {"sender": 3, "receiver": r, "topic": "samples/3/x", "messages": 1, "header_bytes": hdr,
         "payload_bytes": pay} for r in (0, 5)]
    assert t.sent.totals()["bytes"] == 2 * sum(_nbytes(f) for f in frames)
    assert t.per_message_bytes("samples/3/x") == hdr + pay
    assert t.per_message_bytes("samples/3/y") is None


def test_traffic_decode_counts_received_and_rejected():
    t = Traffic(me=0, max_message_bytes=10_000)
    frames = _as_bytes(encode(_env({"x": np.ones(40, np.float32)})))
    got = t.decode(frames)
    assert got is not None
    env, nbytes = got
    assert nbytes == sum(len(f) for f in frames) and env.step == 12
    assert t.received.rows() == [{"sender": 3, "receiver": 0, "topic": "samples/3/x",
                                  "messages": 1, "header_bytes": frame_sizes(frames)[0],
                                  "payload_bytes": 160}]
    # Handshakes decode but precede the measured phase: not counted as received.
    hs = t.decode(_as_bytes(encode(Envelope(3, Topic.handshake(3), 0, {}))))
    assert hs is not None and hs[0].topic.is_handshake
    assert t.received.totals()["messages"] == 1
    # Refused messages are counted by reason, never raised.
    assert t.decode([frames[0]]) is None
    assert t.decode([frames[0], frames[1], frames[2][:-1]]) is None
    assert t.decode(_with_header(encode(_env({"x": np.ones(40, np.float32)})), v=9)) is None
    assert t.decode(_as_bytes(encode(_env({"x": np.ones(4000, np.float32)})))) is None
    assert dict(t.rejected) == {"malformed": 1, "truncated": 1, "version": 1, "oversized": 1}
    t.reject("space")
    assert t.rejected["space"] == 1
    assert t.received.totals()["messages"] == 1


# --------------------------------------------------------------------------- versions


def _as_v1(frames, meta_last=True) -> list[bytes]:
    """The same message as a version-1 sender framed it: the flag in meta["last"]."""
    h = _header(frames)
    v1 = {"v": 1, "sender": h["sender"], "topic": h["topic"], "step": h["step"],
          "time": h["time"], "schema": h["schema"], "meta": {**h["meta"]}}
    if meta_last is not None:
        v1["meta"]["last"] = meta_last
    out = _as_bytes(frames)
    out[1] = msgpack.packb(v1)
    return out


@pytest.mark.parametrize("last", [True, False])
def test_last_is_a_typed_header_key(last):
    frames = encode(_env({"x": np.ones(3, np.float32)}, last=last, meta={"k": 1}))
    h = _header(frames)
    assert h["last"] is last
    assert "last" not in h["meta"] and h["meta"] == {"k": 1}
    got = decode(_as_bytes(frames))
    assert got.last is last and got.meta == {"k": 1}


def test_envelope_last_defaults_to_true_and_topic_is_parsed():
    env = Envelope(0, "params/0/mu", 1, {})
    assert env.last is True and env.meta == {}
    assert env.topic == Topic("params", 0, "mu") and str(env.topic) == "params/0/mu"
    assert (env.kind, env.space) == ("params", "mu")
    with pytest.raises(TopicError):
        Envelope(0, "params/0", 1, {})


@pytest.mark.parametrize("last", [True, False])
def test_version_1_header_is_still_read(last):
    arr = np.arange(12, dtype=np.float32).reshape(4, 3)
    frames = _as_v1(encode(_env({"x": arr, "b": np.ones(10, bool)}, last=not last)), last)
    assert _header(frames)["v"] == 1 and "last" not in _header(frames)
    got = decode(frames)
    assert got.last is last  # from meta["last"], not the v2 sender's flag
    assert (got.sender, str(got.topic), got.step, got.time) == (3, "samples/3/x", 12, 1234.5)
    np.testing.assert_array_equal(got.tensors["x"], arr)


def test_version_1_without_the_flag_means_last():
    frames = _as_v1(encode(_env({"x": np.ones(2, np.float32)}, last=False)), meta_last=None)
    assert decode(frames).last is True


def test_version_1_with_a_non_bool_flag_is_malformed():
    frames = _as_v1(encode(_env({"x": np.ones(2, np.float32)})), meta_last=1)
    assert _reason(frames) == "malformed"


def test_version_2_without_last_is_malformed(good):
    h = _header(good)
    del h["last"]
    frames = _as_bytes(good)
    frames[1] = msgpack.packb(h)
    assert _reason(frames) == "malformed"


@pytest.mark.parametrize("value", [1, 0, None, "true", [True]])
def test_version_2_last_must_be_a_bool(good, value):
    assert _reason(_with_header(good, last=value)) == "malformed"


@pytest.mark.parametrize("last", [True, False])
@pytest.mark.parametrize("meta", [{}, {"k": [1, 2]}])
def test_v2_header_is_as_long_as_v1_with_meta_last(last, meta):
    """Why byte counts did not change with version 2: "last" moved, at the same cost."""
    frames = encode(_env({"x": np.ones((5, 3), np.float32), "b": np.ones(9, bool)},
                         last=last, meta=meta))
    v1 = _as_v1(frames, last)
    assert _header(v1)["meta"] == {**meta, "last": last}
    assert frame_sizes(frames) == frame_sizes(v1)
    assert decode(v1).last is last


# --------------------------------------------------------------------------- topics


def _with_topic(frames, topic: str) -> list[bytes]:
    out = _with_header(frames, topic=topic)
    out[0] = topic.encode()
    return out


@pytest.mark.parametrize(
    "topic",
    ["samples/3", "samples/3/x/y", "samples/x/3", "model/3/x", "samples/-3/x", "samples/03/x",
     "samples/3/", "samples/3/x y", "hs/3/x", "", "x"],
)
def test_topic_not_kind_peer_space_is_rejected(good, topic):
    assert _reason(_with_topic(good, topic)) == "topic"


def test_topic_frame_must_match_the_header(good):
    frames = _as_bytes(good)
    frames[0] = b"samples/3/y"  # a valid topic, but not the header's
    assert _reason(frames) == "malformed"


def test_handshake_topic_decodes():
    env = decode(_as_bytes(encode(Envelope(4, Topic.handshake(4), 0, {}))))
    assert env.topic.is_handshake and str(env.topic) == "hs/4/" and env.tensors == {}


# Topics that once slipped through: a trailing newline, a non-ASCII digit.


def test_topic_with_trailing_newline_is_rejected(good):
    assert _reason(_with_topic(good, "samples/3/x\n")) == "topic"


def test_topic_with_a_superscript_digit_is_rejected(good):
    assert _reason(_with_topic(good, "samples/²/x")) == "topic"


# --------------------------------------------------------------------------- lazy unpacking


def _eager(frames, k: int, shape) -> np.ndarray:
    """What the decoder used to return for packed tensor ``k``: every bit, unpacked now."""
    count = math.prod(shape)
    bits = np.unpackbits(np.frombuffer(bytes(frames[2 + k]), np.uint8), count=count)
    return bits.view(bool).reshape(shape)


def test_packed_tensor_is_unpacked_on_first_read_only():
    x = RNG.random((200, 1, 28, 28)) < 0.2
    y = RNG.standard_normal((200, 3)).astype(np.float32)
    frames = _as_bytes(encode(_env({"x": x, "y": y})))
    env = decode(frames)
    tensors = env.tensors
    assert tensors.packed == ("x",)  # checked, not unpacked
    # Names, membership, sizes and specs never unpack.
    assert list(tensors) == ["x", "y"] and len(tensors) == 2 and set(tensors) == {"x", "y"}
    assert "x" in tensors and "z" not in tensors
    assert tensors.spec("x") == (np.dtype(bool), (200, 1, 28, 28))
    assert tensors.spec("y") == (np.dtype("<f4"), (200, 3))
    assert "not unpacked" in repr(tensors)
    assert tensors.packed == ("x",)
    # The first read unpacks, equal to the eager result; later reads get the same array.
    got = tensors["x"]
    assert tensors.packed == ()
    assert got.dtype == bool and got.shape == x.shape
    np.testing.assert_array_equal(got, _eager(frames, 0, x.shape))
    np.testing.assert_array_equal(got, x)
    assert tensors["x"] is got
    np.testing.assert_array_equal(tensors["y"], y)


def test_unpacked_tensor_is_a_plain_writable_array():
    x = RNG.random((3, 11)) < 0.5  # 33 bits: not a multiple of 8
    got = decode(_as_bytes(encode(_env({"x": x})))).tensors["x"]
    assert type(got) is np.ndarray and got.flags.writeable
    np.testing.assert_array_equal(got, x)


def test_tensors_mapping_supports_what_the_algorithms_do():
    x = RNG.random((6, 1, 4, 4)) < 0.5
    c = np.arange(6, dtype=np.int64)
    env = decode(_as_bytes(encode(_env({"x": x, "c": c}))))
    t = env.tensors
    assert isinstance(t, Mapping)
    assert set(t) == {"x", "c"}  # check_schema
    assert t["x"].shape[0] == 6 and len(t["x"]) == 6  # game.py, expfam.py
    pick = np.array([5, 0, 0, 3])
    picked = {f: np.ascontiguousarray(a[pick]) for f, a in t.items()}  # game.py
    np.testing.assert_array_equal(picked["x"], x[pick])
    np.testing.assert_array_equal(picked["c"], c[pick])
    assert [k for k, _ in t.items()] == ["x", "c"] and len(list(t.values())) == 2
    assert t.get("x") is t["x"] and t.get("nope") is None
    assert bool(t["x"].any()) and t["x"][0, 0, 0, 0] == x[0, 0, 0, 0]
    assert dict(t).keys() == {"x", "c"}
    assert t == dict(t)  # compared as a dict is
    assert t != {"x": x}
    with pytest.raises(TypeError):
        t["x"] = x  # read-only
    assert "array(" in repr(t)  # unpacked now: shown as arrays


def test_tensors_read_from_threads_at_once_are_equal():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    x = RNG.random((64, 1, 28, 28)) < 0.5
    frames = _as_bytes(encode(_env({"x": x})))
    start = threading.Barrier(4)

    def read(e: Envelope) -> np.ndarray:
        start.wait()  # all four read the still-packed tensor at once
        return e.tensors["x"]

    for _ in range(20):
        env = decode(frames)
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(read, [env] * 4))
        for g in got:
            np.testing.assert_array_equal(g, x)
        assert env.tensors.packed == ()


def test_malformed_packed_buffer_is_still_refused_at_decode():
    x = np.ones((5, 3), bool)  # 15 bits: 2 bytes
    frames = _as_bytes(encode(_env({"x": x})))
    for bad in (frames[2][:-1], frames[2] + b"\x00", b""):
        assert _reason([*frames[:2], bad]) == "truncated"
    # A shape numpy cannot make is refused at decode, not when the tensor is read.
    for shape in ([0, 2**63], [0, 2**40, 2**40], [True, 15], [5, -3]):
        h = _header(frames)
        h["schema"][0][2] = shape
        out = [frames[0], msgpack.packb(h), b"" if 0 in shape else frames[2]]
        assert _reason(out) == "malformed", shape


def test_empty_packed_tensor_keeps_its_shape():
    env = decode(_as_bytes(encode(_env({"x": np.zeros((0, 16), bool)}))))
    assert env.tensors.packed == ()  # nothing to unpack
    assert env.tensors["x"].shape == (0, 16) and env.tensors["x"].dtype == bool


def test_decode_sized_counts_as_frame_sizes():
    from p2pgame.bus.codec import decode_sized

    frames = encode(_env({"x": RNG.random((7, 9)) < 0.5, "y": np.ones(4, np.float32)}))
    for fr in (frames, _as_bytes(frames)):
        env, header, payload = decode_sized(fr)
        assert (header, payload) == frame_sizes(fr)
        assert env.tensors.packed == ("x",)


def test_version_1_with_meta_not_a_map_decodes_as_last():
    frames = _as_v1(encode(_env({"x": np.ones(3, np.float32)})), meta_last=None)
    h = _header(frames)
    h["meta"] = [1, 2]
    frames[1] = msgpack.packb(h)
    env = decode(frames)  # it raised AttributeError (not a CodecError) before
    assert env.last is True and env.meta == {}


def test_encode_work_counts_what_encode_must_pack_or_copy():
    from p2pgame.bus.codec import encode_work

    b = np.ones((100, 10), bool)
    f = np.ones((100, 10), np.float32)
    assert encode_work({"f": f}) == 0  # sent zero-copy
    assert encode_work({"b": b, "f": f}) == 1000
    assert encode_work({"b": b}, pack_bool=False) == 0
    assert encode_work({"f": f[:, ::2]}) == 2000  # not contiguous: copied
    assert encode_work({"f": f.astype(">f4")}) == 4000  # byte-swapped

    class FakeTensor:  # a torch tensor: may come from a device
        nbytes = 123

    assert encode_work({"t": FakeTensor()}) == 123
    env = decode(_as_bytes(encode(_env({"b": b}))))
    # received bits are passed on as they are (nothing to do), unless bools go as bytes
    assert encode_work(env.tensors) == 0 and env.tensors.packed == ("b",)  # not unpacked
    assert encode_work(env.tensors, pack_bool=False) == 1000 and env.tensors.packed == ("b",)


@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (9,), (3, 5, 7), (64, 1, 28, 28)])
def test_bits_packed_by_the_producer_go_on_the_wire_as_encode_would_pack_them(shape):
    from p2pgame.bus.codec import PackedBits, encode_work, pack_bools

    rng = np.random.default_rng(sum(shape))
    b = rng.random(shape) < 0.3
    f = rng.random(3).astype(np.float32)
    ours = pack_bools({"b": b, "f": f})
    assert type(ours["b"]) is PackedBits and ours["f"] is f
    assert encode_work(ours) == 0  # nothing left for encode to pack
    assert _as_bytes(encode(_env(ours))) == _as_bytes(encode(_env({"b": b, "f": f})))
    got = decode(_as_bytes(encode(_env(ours))))
    assert got.tensors["b"].dtype == bool and np.array_equal(got.tensors["b"], b)
    # pack_bool=False: sent a byte per bool, the same bytes as from the array
    assert _as_bytes(encode(_env(ours), pack_bool=False)) == \
        _as_bytes(encode(_env({"b": b, "f": f}), pack_bool=False))


def test_pack_bools_packs_an_array_shared_by_two_messages_once():
    from p2pgame.bus.codec import pack_bools

    b = np.ones(10, bool)
    memo: dict = {}
    one, two = pack_bools({"x": b}, memo), pack_bools({"x": b, "y": b}, memo)
    assert one["x"] is two["x"] is two["y"] and len(memo) == 1


def test_packed_bits_refuse_a_non_bool_array():
    from p2pgame.bus.codec import PackedBits

    with pytest.raises(TypeError, match="bool array, not uint8"):
        PackedBits.pack(np.ones(3, np.uint8))


def test_a_relayed_envelope_passes_its_bits_on_without_unpacking():
    b = np.random.default_rng(1).random((20, 3)) < 0.5
    first = _as_bytes(encode(_env({"b": b})))
    env = decode(first)
    again = _as_bytes(encode(_env(env.tensors)))
    assert env.tensors.packed == ("b",)  # passed on as it came
    assert again == first
