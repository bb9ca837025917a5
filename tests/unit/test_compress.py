"""Parameter compressors: schemas, byte formulas against the wire, unbiasedness, error
feedback and CHOCO-Gossip's consensus (p2pgame.exchange.compress)."""

from __future__ import annotations

import json
import math

import networkx as nx
import numpy as np
import pytest

from p2pgame.bus.codec import Envelope, encode, frame_sizes
from p2pgame.exchange.compress import (
    COMPRESSORS,
    SETTINGS,
    Choco,
    CompressorError,
    ErrorFeedback,
    Int8,
    RandK,
    TopK,
    join_fields,
    make_compressor,
    part_fields,
    part_payload_bytes,
    split_fields,
)

SHAPES = [(1,), (1000,), (7, 13), ()]


def _p(shape) -> int:
    return math.prod(shape)


def _k(ratio: float, p: int) -> int:
    # ratio * P rounded half up, at least 1
    return max(1, int(math.floor(ratio * p + 0.5)))


def expected_bytes(name: str, shape, s: dict) -> int:
    """Each compressor's payload formula, written out independently of the module."""
    p = _p(shape)
    v = 2 if s.get("half") else 4  # bytes of a value / scale
    if name == "none":  # 4P (2P in float16)
        return v * p
    if name == "int8":  # P + 4 ceil(P / bucket)  (2 per scale in float16)
        return p + v * math.ceil(p / s["bucket"])
    if name == "topk":  # k (4 + 4), k (2 + 4) with float16 values; int32 indices counted
        return _k(s["ratio"], p) * (v + 4)
    if name == "randk":  # 4k (2k): the indices come from the seed
        return _k(s["ratio"], p) * v
    if name == "sign":  # ceil(P / 8) + 4 (+ 2 with a float16 scale)
        return math.ceil(p / 8) + v
    if name == "qsgd":  # ceil(P (1 + ceil(log2(s + 1))) / 8) + 4 ceil(P / bucket)
        w = math.ceil(math.log2(s["levels"] + 1))
        return math.ceil(p * (1 + w) / 8) + 4 * math.ceil(p / s["bucket"])
    raise AssertionError(name)


CASES = [
    ("none", {}), ("none", {"half": True}),
    ("int8", {"bucket": 64}), ("int8", {"bucket": 1000, "half": True}),
    ("int8", {"bucket": 1}),
    ("topk", {"ratio": 0.01}), ("topk", {"ratio": 0.1, "half": True}), ("topk", {"ratio": 1}),
    ("randk", {"ratio": 0.05}), ("randk", {"ratio": 0.3, "half": True}),
    ("sign", {}), ("sign", {"half": True}),
    ("qsgd", {"levels": 1, "bucket": 64}), ("qsgd", {"levels": 15, "bucket": 100}),
    ("qsgd", {"levels": 4, "bucket": 1}), ("qsgd", {"levels": 255, "bucket": 512}),
    ("qsgd", {"levels": 256, "bucket": 7}),
]


def wire_bytes(fields: dict) -> int:
    """Mirror of the bus's count (codec.py): a bool tensor is bit-packed into
    ceil(n / 8) bytes, any other is its raw bytes."""
    return sum(-(-a.size // 8) if a.dtype == np.bool_ else a.nbytes for a in fields.values())


def _x(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _encode(c, x, seed=7):
    return c.encode(x, seed=seed, rng=np.random.default_rng(seed))


@pytest.mark.parametrize("name,settings", CASES)
@pytest.mark.parametrize("shape", SHAPES)
def test_fields_and_bytes(name, settings, shape):
    c = make_compressor(name, **settings)
    x = _x(shape)
    f = _encode(c, x)
    spec = c.fields(shape)
    assert list(f) == list(spec)
    for k, (dtype, fshape) in spec.items():
        assert f[k].dtype == np.dtype(dtype), k
        assert f[k].shape == fshape, k
    formula = expected_bytes(name, shape, {**c.settings(), **settings})
    assert c.payload_bytes(shape) == formula
    assert wire_bytes(f) == formula
    # and what the bus itself puts on the wire (payload frames, header aside)
    frames = encode(Envelope(sender=0, topic="params/0/model", step=0, tensors=f))
    assert frame_sizes(frames)[1] == formula
    y = c.decode(f, shape, seed=7)
    assert y.dtype == np.float32 and y.shape == tuple(shape)


def test_none_is_identity():
    x = _x((7, 13))
    c = make_compressor("none")
    np.testing.assert_array_equal(c.decode(c.encode(x), x.shape), x)
    h = make_compressor("none", half=True)
    np.testing.assert_array_equal(h.decode(h.encode(x), x.shape), x.astype(np.float16))
    big = np.array([1e6, -1e6], np.float32)  # float16 saturates, never infinite
    assert np.isfinite(h.decode(h.encode(big), (2,))).all()


def test_topk_keeps_the_k_largest():
    rng = np.random.default_rng(1)
    x = rng.permutation(np.arange(1, 1001)).astype(np.float32) * rng.choice([-1, 1], 1000)
    c = TopK(ratio=0.013)  # k = 13
    f = c.encode(x)
    assert f["indices"].size == 13
    kept = set(f["indices"].tolist())
    assert kept == set(np.argsort(-np.abs(x))[:13].tolist())
    y = c.decode(f, x.shape)
    assert np.count_nonzero(y) == 13
    np.testing.assert_array_equal(y[f["indices"]], x[f["indices"]])
    assert np.all(np.diff(f["indices"]) > 0)  # sorted


@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("bucket", [1, 10, 128, 5000])
def test_int8_error_within_half_a_scale(half, bucket):
    x = _x((7, 13), 2) * np.float32(3)
    x[0, :5] = 0  # a bucket with zeros
    c = Int8(bucket=bucket, half=half)
    f = c.encode(x)
    y = c.decode(f, x.shape).reshape(-1)
    scale = np.repeat(f["scale"].astype(np.float64), bucket)[: x.size]
    err = np.abs(y - x.reshape(-1))
    assert np.all(err <= scale / 2 * (1 + 1e-6) + 1e-7 * np.abs(x.reshape(-1)))
    # the scale is max|x| / 127 (rounded up to its wire dtype)
    exact = np.abs(np.pad(x.reshape(-1), (0, -x.size % bucket))).reshape(-1, bucket).max(1) / 127
    assert np.all(f["scale"] >= exact)
    assert np.all(f["scale"] <= exact * (1 + (2e-3 if half else 2e-7)) + 1e-7)
    assert np.abs(f["q"]).max() <= 127
    z = c.decode(c.encode(np.zeros(30, np.float32)), (30,))
    np.testing.assert_array_equal(z, 0)


@pytest.mark.parametrize("half", [False, True])
def test_sign_is_scale_times_sign(half):
    x = _x((7, 13), 3)
    x[0, 0] = 0.0
    c = make_compressor("sign", half=half)
    f = c.encode(x)
    dt = np.float16 if half else np.float32
    assert f["scale"][0] == dt(np.abs(x.astype(np.float64)).mean())
    want = f["scale"].astype(np.float32)[0] * np.where(x >= 0, 1, -1).astype(np.float32)
    np.testing.assert_array_equal(c.decode(f, x.shape), want)


def test_randk_seed_determines_the_indices():
    c = RandK(ratio=0.05)
    x = _x((1000,), 4)
    f = c.encode(x, seed=123)
    y = c.decode(f, x.shape, seed=123)
    idx = np.flatnonzero(y)
    assert idx.size == 50
    np.testing.assert_allclose(y[idx], x[idx] * 20, rtol=1e-6)
    other = c.decode(f, x.shape, seed=124)
    assert not np.array_equal(np.flatnonzero(other), idx)
    with pytest.raises(ValueError, match="seed"):
        c.encode(x)


def _mean_decode(c, x, trials: int):
    acc = np.zeros(x.shape)
    acc2 = np.zeros(x.shape)
    for t in range(trials):
        y = c.decode(c.encode(x, seed=t, rng=np.random.default_rng(10_000 + t)), x.shape,
                     seed=t).astype(np.float64)
        acc += y
        acc2 += y * y
    return acc / trials


def test_randk_is_unbiased():
    # decode_i = (P/k) x_i with probability k/P, else 0: variance x_i^2 (P/k - 1), so over
    # N draws the mean's standard error is |x_i| sqrt((P/k - 1) / N).  5 sigma per entry.
    x = _x((60,), 5)
    c = RandK(ratio=0.2)  # k = 12, P/k = 5
    n = 3000
    mean = _mean_decode(c, x, n)
    se = np.abs(x) * math.sqrt((60 / 12 - 1) / n)
    z = (mean - x) / se
    assert np.all(np.abs(z) < 5)
    assert 0.5 < np.mean(z**2) < 1.6  # about chi-square / dof = 1
    # the same test refuses a biased compressor: top-k is deterministic, never x on average
    tk = TopK(ratio=0.2)
    assert np.max(np.abs(_mean_decode(tk, x, 2) - x) / se) > 5


def test_qsgd_is_unbiased():
    # Entry i of bucket B: level floor(r) + Bernoulli(p), r = s|x_i| / norm_B, p = r -
    # floor(r); decode = sign * level * norm / s has variance (norm / s)^2 p (1 - p), so
    # the mean of N draws has standard error (norm / s) sqrt(p (1 - p) / N).
    x = _x((300,), 6)
    s, b = 4, 64
    c = make_compressor("qsgd", levels=s, bucket=b)
    n = 2000
    mean = _mean_decode(c, x, n)
    norms = np.repeat(c.encode(x, rng=np.random.default_rng(0))["norms"].astype(np.float64),
                      b)[: x.size]
    r = s * np.abs(x) / norms
    p = r - np.floor(r)
    se = norms / s * np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(mean - x) <= 5 * se + 1e-6 * norms)
    z = (mean - x)[se > 0] / se[se > 0]
    assert 0.5 < np.mean(z**2) < 1.6
    # every decode is on the grid sign * {0..s} * norm / s
    y = c.decode(c.encode(x, rng=np.random.default_rng(1)), x.shape)
    lv = np.abs(y) / (norms / s)
    np.testing.assert_allclose(lv, np.rint(lv), atol=1e-4)
    assert lv.max() <= s + 1e-4
    with pytest.raises(ValueError, match="rng"):
        c.encode(x)


def test_qsgd_bit_layout():
    # levels 2 -> 2 bits a level: entry codes [sign, l1, l0], MSB first, concatenated
    c = make_compressor("qsgd", levels=2, bucket=3)
    x = np.array([3.0, -4.0, 0.0], np.float32)  # norm 5: r = 1.2, 1.6, 0
    f = c.encode(x, rng=np.random.default_rng(0))
    assert f["norms"].tolist() == [5.0]
    bits = np.unpackbits(f["bits"])[:9].reshape(3, 3)
    assert bits[:, 0].tolist() == [0, 1, 0]
    levels = bits[:, 1] * 2 + bits[:, 2]
    assert levels[0] in (1, 2) and levels[1] in (1, 2) and levels[2] == 0
    assert f["bits"].size == 2  # ceil(9 / 8)


@pytest.mark.parametrize("name,settings", [("sign", {}), ("topk", {"ratio": 0.05}),
                                           ("int8", {"bucket": 16}),
                                           ("qsgd", {"levels": 2, "bucket": 32})])
def test_error_feedback_carries_the_residual(name, settings):
    ef = ErrorFeedback(make_compressor(name, **settings))
    rng = np.random.default_rng(8)
    xs = [rng.normal(size=(7, 13)).astype(np.float32) for _ in range(30)]
    # one call: e = x - decode(Q(x))
    q = ef.encode("w", xs[0], rng=np.random.default_rng(0))
    np.testing.assert_array_equal(ef.residual("w"), xs[0] - ef.decode(q, xs[0].shape))
    total = ef.decode(q, xs[0].shape).astype(np.float64)
    for t, x in enumerate(xs[1:], 1):
        total += ef.decode(ef.encode("w", x, rng=np.random.default_rng(t)), x.shape)
    np.testing.assert_allclose(total + ef.residual("w"), np.sum(xs, axis=0, dtype=np.float64),
                               atol=1e-4)
    # resume: the state is JSON data and restores the residuals exactly
    other = ErrorFeedback(make_compressor(name, **settings))
    other.load_state(json.loads(json.dumps(ef.state())))
    np.testing.assert_array_equal(other.residual("w"), ef.residual("w"))


def _ring(n: int):
    g = nx.cycle_graph(n)
    w = np.zeros((n, n))
    for i, j in g.edges:  # Metropolis: 1 / (1 + max(d_i, d_j)) = 1/3 on a ring
        w[i, j] = w[j, i] = 1 / (1 + max(g.degree[i], g.degree[j]))
    w[np.diag_indices(n)] = 1 - w.sum(axis=1)
    return g, w


N, D, ROUNDS, LOCAL_ROUNDS, ETA = 8, 1000, 1500, 50, 0.5
# gamma: CHOCO's theory value, rho^2 delta / (16 rho + rho^2 + 4 beta^2 + 2 rho beta^2 -
# 8 rho delta) with spectral gap rho = 0.195, beta = ||I - W|| = 4/3, delta = k/d = 0.01, is
# about 4e-5 (far too slow to test).  Measured on this problem (max relative distance
# after 1500 rounds): gamma 0.01: 7e-2, 0.015: 1.4e-2, 0.02: 2.7e-3, 0.025: 5e-4,
# 0.03: 1e-4, 0.04: 1.9e-3 (slower), 0.05: 0.24 (stalls), >= 0.1: diverges.  0.025 leaves
# a margin below the fastest value, 0.03, and the edge of stability.
GAMMA = 0.025


def _choco_problem():
    g, w = _ring(N)
    b = np.random.default_rng(0).normal(size=(N, D)).astype(np.float32)
    return g, w, b, b.mean(axis=0)


def _eta(t: int) -> float:
    # CHOCO-SGD with a step that stops: with a constant step the peers' fixed points stay
    # O(eta) apart (as in exact DGD); the consensus step preserves the mean exactly (W is
    # doubly stochastic), so the mean reaches mean(b) within 0.5^50 in the local rounds
    # and the rest of the rounds are CHOCO-Gossip's consensus alone.
    return ETA if t < LOCAL_ROUNDS else 0.0


def _distance(x, target) -> float:
    return float(np.linalg.norm(x - target, axis=1).max() / np.linalg.norm(target))


def test_choco_reaches_consensus_with_top1_percent():
    g, w, b, target = _choco_problem()
    topk = make_compressor("topk", ratio=0.01)  # k = 10 of 1000
    peers = [Choco(topk, GAMMA, i, {"w": (D,)}) for i in range(N)]
    x = np.zeros((N, D), np.float32)
    for t in range(ROUNDS):
        x = x - np.float32(_eta(t)) * (x - b)  # local gradient step of ||x - b_i||^2 / 2
        qs = [peers[i].message("w", x[i]) for i in range(N)]
        for i in range(N):
            for j in g.neighbors(i):
                peers[i].receive(j, "w", qs[j])
        x = np.stack([peers[i].consensus("w", x[i], {j: w[i, j] for j in range(N) if w[i, j]})
                      for i in range(N)])
    # measured: max_i ||x_i - mean(b)|| / ||mean(b)|| = 5.0e-4 (||mean(b)|| = 11.4)
    assert _distance(x, target) < 2e-3
    # every out-neighbour's copy of j is bit-identical to j's own public copy
    for i in range(N):
        for j in g.neighbors(i):
            np.testing.assert_array_equal(peers[i].public(j, "w"), peers[j].public(j, "w"))
    # resume: a peer rebuilt from its JSON state holds the same copies
    clone = Choco(topk, GAMMA, 0, {"w": (D,)})
    clone.load_state(json.loads(json.dumps(peers[0].state())))
    for j in (0, 1, N - 1):
        np.testing.assert_array_equal(clone.public(j, "w"), peers[0].public(j, "w"))


def test_plain_averaging_of_topk_parameters_does_not():
    # The same rounds, but each peer averages its own exact parameters with the top-k
    # compressed PARAMETERS of its neighbours (no public copies): the 99 % of entries that
    # a message drops count as zeros and drag every peer towards 0.
    g, w, b, target = _choco_problem()
    topk = make_compressor("topk", ratio=0.01)
    x = np.zeros((N, D), np.float32)
    for t in range(ROUNDS):
        x = x - np.float32(_eta(t)) * (x - b)
        dec = [topk.decode(topk.encode(x[j]), (D,)) for j in range(N)]
        x = np.stack([w[i, i] * x[i] + sum(w[i, j] * dec[j] for j in g.neighbors(i))
                      for i in range(N)]).astype(np.float32)
        if t == 300:
            break  # it has settled long before (the distance no longer changes)
    # measured: 0.988 (after 301 rounds), i.e. about as far as x = 0
    assert _distance(x, target) > 0.5


def test_choco_start_and_order():
    c = make_compressor("none")
    x0 = _x((5,), 9)
    a = Choco(c, 1.0, 0, {"w": (5,)}, start={"w": x0})
    np.testing.assert_array_equal(a.public(3, "w"), x0)
    q = a.message("w", x0 + 1)
    np.testing.assert_allclose(q["values"], np.ones(5), rtol=1e-6)
    np.testing.assert_allclose(a.public(0, "w"), x0 + 1, rtol=1e-6)  # updated by the decoded message
    a.receive(1, "w", {"values": np.full(5, 2, np.float32)})
    out = a.consensus("w", x0 + 1, {0: 0.5, 1: 0.5})
    np.testing.assert_allclose(out, x0 + 1.5, rtol=1e-6)
    with pytest.raises(CompressorError, match="gamma"):
        Choco(c, 0.0, 0, {"w": (5,)})


def test_part_fields_and_messages():
    c = make_compressor("topk", ratio=0.1)
    schema = {"enc.0.weight": ("float32", (7, 13)), "enc.0.bias": ("float32", (7,))}
    spec = part_fields(c, schema)
    assert list(spec) == ["enc.0.weight:values", "enc.0.weight:indices",
                          "enc.0.bias:values", "enc.0.bias:indices"]
    assert spec["enc.0.weight:values"] == ("float32", (9,))
    assert part_payload_bytes(c, schema) == 9 * 8 + 1 * 8
    msg = join_fields({t: c.encode(_x(s)) for t, (_, s) in schema.items()})
    assert set(msg) == set(spec)
    back = split_fields(msg, schema)
    assert set(back["enc.0.bias"]) == {"values", "indices"}


@pytest.mark.parametrize("name,settings,key,text", [
    ("topk", {"ratio": 0}, "ratio", "ratio must lie in (0, 1], got 0"),
    ("randk", {"ratio": 1.5}, "ratio", "ratio must lie in (0, 1], got 1.5"),
    ("topk", {"ratio": float("nan")}, "ratio", "ratio must lie in (0, 1]"),
    ("qsgd", {"levels": 0}, "levels", "levels must be >= 1, got 0"),
    ("qsgd", {"levels": 2.5}, "levels", "levels must be an integer >= 1, got 2.5"),
    ("qsgd", {"bucket": 0}, "bucket", "bucket must be >= 1, got 0"),
    ("int8", {"bucket": -3}, "bucket", "bucket must be >= 1, got -3"),
    ("int8", {"bucket": True}, "bucket", "bucket must be an integer"),
    ("qsgd", {"half": True}, "half", "half is not supported by qsgd"),
    ("sign", {"half": "yes"}, "half", "half must be true or false"),
    ("sign", {"ratio": 0.1}, "ratio", "ratio is not a setting of sign; its settings: half"),
    ("gzip", {}, "compressor", "compressor 'gzip' is not known; allowed: none, int8, topk, "
                               "randk, sign, qsgd"),
])
def test_bad_settings_name_the_key(name, settings, key, text):
    with pytest.raises(ValueError) as err:
        make_compressor(name, **settings)
    assert isinstance(err.value, CompressorError)
    assert err.value.key == key
    assert str(err.value).startswith(text)


def test_registry_and_decode_checks():
    assert set(COMPRESSORS) == set(SETTINGS)
    assert {n for n, c in COMPRESSORS.items() if c.unbiased} == {"none", "randk", "qsgd"}
    c = make_compressor("topk", ratio=0.1)
    f = c.encode(_x((100,)))
    with pytest.raises(ValueError, match="schema"):
        c.decode({"values": f["values"]}, (100,))
    with pytest.raises(ValueError, match="schema"):
        c.decode({**f, "indices": f["indices"].astype(np.int64)}, (100,))
    with pytest.raises(ValueError, match="out of range"):
        c.decode({**f, "indices": f["indices"] + 1000}, (100,))
    with pytest.raises(ValueError, match="empty"):
        c.fields((0,))
    # the bus hands decode read-only views: decode must not write into them
    ro = {k: v.copy() for k, v in f.items()}
    for v in ro.values():
        v.flags.writeable = False
    np.testing.assert_array_equal(c.decode(ro, (100,)), c.decode(f, (100,)))
