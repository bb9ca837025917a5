"""Parameter compressors for the ``params`` exchange, error feedback and CHOCO-Gossip.

Pure numpy: no clock, no I/O, no torch.  A compressor works on ONE float32 tensor of any
shape (P = its number of entries, P >= 1; a 0-d tensor counts as P = 1) and turns it into
a few message fields, ``{suffix: array}``, whose dtypes and shapes depend only on the
tensor's shape and the compressor's settings, so a topic's schema is declared up front
(:meth:`Compressor.fields`).  Every field is 1-d (the tensor flattened in C order).

What each sends, its payload bytes (the formula :meth:`Compressor.payload_bytes` returns;
a ``bool`` field counts ``ceil(n / 8)`` bytes, as the bus bit-packs it, see
:mod:`p2pgame.bus.codec`) and its source:

=========  ================================================  ================================
name       fields (suffix: dtype[shape])                     payload bytes
=========  ================================================  ================================
``none``   ``values``: float32[P] (float16 with ``half``)    4P (2P)
``int8``   ``q``: int8[P], ``scale``: float32[B]             P + 4B (P + 2B), B = ceil(P / b)
``topk``   ``values``: float32[k], ``indices``: int32[k]     8k (6k)
``randk``  ``values``: float32[k]                            4k (2k); the indices come from
                                                             the seed both ends know
``sign``   ``signs``: bool[P], ``scale``: float32[1]         ceil(P / 8) + 4 (... + 2)
``qsgd``   ``bits``: uint8[ceil(P (1 + w) / 8)],             ceil(P (1 + w) / 8) + 4B,
           ``norms``: float32[B]                             w = ceil(log2(s + 1)), B as int8
=========  ================================================  ================================

(in parentheses: with ``half``, float16 values or scales), with ``k = max(1, floor(ratio * P
+ 1/2))`` (ratio * P rounded half up, at least one
entry; k <= P since ratio <= 1) and ``b`` = ``bucket`` (the last bucket may be shorter).

* ``none``: the identity (so the exchange has one code path); float32 or float16.
* ``int8``: per bucket of ``bucket`` consecutive entries a scale ``max|x| / 127``; each
  entry ``round(x / scale)`` (half to even) in int8, within ``scale / 2`` of x.  With
  ``half`` the scale travels as float16, rounded UP to the next float16 so no entry
  clips (a scale beyond float16's range saturates at 65504 and the entries clip).
  Biased (deterministic rounding).  Per-bucket scaling as in QSGD's buckets / 8-bit
  quantization schemes; no single source.
* ``topk``: the k entries of largest magnitude (ties broken by numpy's argpartition),
  their values and int32 indices into the flattened tensor, indices sorted ascending;
  the rest decode to 0.  Biased.  Stich, Cordonnier & Jaggi, NeurIPS 2018 ("Sparsified
  SGD with memory"); Alistarh et al., NeurIPS 2018.
* ``randk``: k entries drawn without replacement by ``np.random.default_rng(seed)``
  (``Generator.choice(P, k, replace=False)``, sorted); only their values travel, and the
  receiver redraws the indices from the same seed.  Decode scales them by P / k, so
  ``E[decode] = x`` over seeds (unbiased; with ``half`` of the float16-rounded x).  The
  exchange derives ``seed`` (a non-negative int) from the run's seed, the sender, the
  step and the tensor name; both ends must run the same numpy (the draw is numpy's).
* ``sign``: ``sign(x)`` (x >= 0 -> True, i.e. +1) and one scale ``mean |x|`` per tensor;
  decode ``scale * (+-1)``: Karimireddy et al., ICML 2019 (EF-SGD's scaled sign); signSGD
  is Bernstein et al., ICML 2018.  Biased; meant to run with :class:`ErrorFeedback`.
* ``qsgd`` (``levels`` s, ``bucket`` b): per bucket its float32 L2 norm (rounded UP to
  float32, so ``|x| / norm <= 1``); per entry a sign bit and a level ``l`` in {0..s},
  ``floor(r)`` or ``floor(r) + 1`` with probability ``r - floor(r)``, ``r = s |x| / norm``
  (stochastic rounding: ``E[decode] = x``, unbiased).  Decode ``sign * l * (norm / s)``.
  Each entry is ``1 + w`` bits, the sign bit (1: negative) first and then the level's w
  bits MSB first; the entries' codes are concatenated over the flattened tensor and
  bit-packed with ``numpy.packbits`` (MSB first, zero-padded to a whole byte) into the
  uint8 field ``bits``.  Alistarh, Grubic, Li, Tomioka & Vojnovic, NeurIPS 2017.
  No ``half``: float16 norms would bias it.

``half`` (float16 values or scales) applies to ``none``, ``int8``, ``topk``, ``randk``
and ``sign``; ``qsgd`` refuses it.  float16 values saturate at +-65504 instead of
becoming infinite.

API the exchange is meant to use
--------------------------------

* ``make_compressor(name, **settings) -> Compressor``; ``SETTINGS[name]`` lists the keys
  a compressor takes (``ratio``, ``bucket``, ``levels``, ``half``), so an exchange whose
  config holds all of them passes ``{k: cfg[k] for k in SETTINGS[name]}``.  A bad value
  raises :class:`CompressorError` (a ValueError) whose ``key`` is the setting's name and
  whose message starts with it, e.g. ``ratio must lie in (0, 1], got 0``; the exchange
  turns it into ``config_error(e.key, str(e))``.
* On a compressor: ``fields(shape) -> {suffix: (dtype_name, shape)}``,
  ``payload_bytes(shape) -> int``, ``encode(x, *, seed=None, rng=None) -> {suffix:
  array}``, ``decode(fields, shape, *, seed=None) -> float32 array of shape``; the class
  attributes ``name``, ``unbiased``, ``needs_seed`` (randk: pass ``seed`` to encode and
  decode, the same at both ends) and ``needs_rng`` (qsgd: pass a ``np.random.Generator``
  to encode; the exchange owns the seeded streams).  ``decode`` only reads its input
  (the bus's arrays are read-only views) and checks the fields' dtypes and shapes
  (ValueError otherwise).
* A part's message schema: ``part_fields(compressor, schema)`` names a tensor's fields
  ``<tensor>:<suffix>`` (:func:`field_name`); ``part_payload_bytes``; ``join_fields`` /
  ``split_fields`` go between ``{tensor: {suffix: array}}`` and the flat message.
* :class:`ErrorFeedback` (``encode(name, x, ...)``, residual per tensor name) and
  :class:`Choco` (one peer's CHOCO-Gossip state) wrap a compressor; both have
  ``state()`` / ``load_state()`` in JSON data (arrays as base64 strings of their
  little-endian bytes, exact).

Determinism: ``decode`` uses only IEEE float32 multiplications and scatters, so two peers
with one numpy decode a message to the same bits; CHOCO needs that (see :class:`Choco`).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import numpy as np

Shape = tuple[int, ...]
FieldSpec = dict[str, tuple[str, Shape]]
SEP = ":"  # a part's message field: <tensor>:<suffix>
FLOAT16_MAX = float(np.finfo(np.float16).max)
_F32 = np.dtype("<f4")


class CompressorError(ValueError):
    """A bad compressor setting; ``key`` names it (``ratio``, ``bucket``, ...)."""

    def __init__(self, key: str, msg: str) -> None:
        super().__init__(f"{key} {msg}")
        self.key = key


# -- settings ------------------------------------------------------------------------------
def _check_ratio(ratio: Any) -> float:
    ok = isinstance(ratio, (int, float, np.integer, np.floating)) and not isinstance(
        ratio, (bool, np.bool_))
    if not ok or not math.isfinite(float(ratio)) or not 0 < float(ratio) <= 1:
        raise CompressorError("ratio", f"must lie in (0, 1], got {ratio!r}")
    return float(ratio)


def _check_int(key: str, value: Any, low: int = 1) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise CompressorError(key, f"must be an integer >= {low}, got {value!r}")
    if value < low:
        raise CompressorError(key, f"must be >= {low}, got {value!r}")
    return int(value)


def _check_half(half: Any) -> bool:
    if not isinstance(half, (bool, np.bool_)):
        raise CompressorError("half", f"must be true or false, got {half!r}")
    return bool(half)


def _size(shape: Iterable[int]) -> int:
    shape = tuple(shape)
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(f"bad tensor shape {shape!r}")
    p = math.prod(int(s) for s in shape)
    if p == 0:
        raise ValueError(f"cannot compress an empty tensor (shape {shape!r})")
    if p >= 2**31:
        raise ValueError(f"tensor of {p} entries: int32 indices cannot address it")
    return p


def _flat(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).reshape(-1)


def _to_float16(x: np.ndarray) -> np.ndarray:
    """float32 -> float16, saturating at +-65504 instead of overflowing to infinity."""
    return np.clip(x, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)


def _round_up(value: np.ndarray, dtype: Any) -> np.ndarray:
    """``value`` (float64, >= 0) in ``dtype``, rounded up: never below ``value``."""
    out = value.astype(dtype)
    low = out.astype(np.float64) < value
    if low.any():
        out[low] = np.nextafter(out[low], np.array(np.inf, dtype))
    return out


class Compressor:
    """One tensor in, message fields out; see the module docstring for each kind."""

    name: ClassVar[str] = ""
    unbiased: ClassVar[bool] = False
    needs_seed: ClassVar[bool] = False  # encode and decode take the same ``seed``
    needs_rng: ClassVar[bool] = False  # encode takes ``rng`` (a np.random.Generator)
    supports_half: ClassVar[bool] = True

    def __init__(self, half: bool = False) -> None:
        self.half = _check_half(half)
        if self.half and not self.supports_half:
            raise CompressorError("half", f"is not supported by {self.name} (its values "
                                          "stay float32)")

    @property
    def value_dtype(self) -> str:
        return "float16" if self.half else "float32"

    @property
    def value_bytes(self) -> int:
        return 2 if self.half else 4

    def settings(self) -> dict[str, Any]:
        """The effective settings (for a run's summary)."""
        return {"half": self.half}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"

    # -- the protocol ------------------------------------------------------------------
    def fields(self, shape: Shape) -> FieldSpec:
        """The message fields of a tensor of ``shape``: ``{suffix: (dtype_name, shape)}``."""
        raise NotImplementedError

    def payload_bytes(self, shape: Shape) -> int:
        """The payload bytes of one tensor of ``shape`` (the formula)."""
        raise NotImplementedError

    def encode(self, x: np.ndarray, *, seed: int | None = None,
               rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def decode(self, fields: Mapping[str, Any], shape: Shape, *,
               seed: int | None = None) -> np.ndarray:
        raise NotImplementedError

    # -- helpers -----------------------------------------------------------------------
    def _checked(self, fields: Mapping[str, Any], shape: Shape) -> dict[str, np.ndarray]:
        """The fields as arrays, checked against :meth:`fields` (ValueError otherwise)."""
        spec = self.fields(shape)
        if set(fields) != set(spec):
            raise ValueError(f"{self.name}: fields {sorted(fields)} differ from the "
                             f"schema's {sorted(spec)}")
        out = {}
        for k, (dtype, fshape) in spec.items():
            arr = np.asarray(fields[k])
            if arr.dtype != np.dtype(dtype) or arr.shape != fshape:
                raise ValueError(f"{self.name}: field {k} is {arr.dtype}{list(arr.shape)}, "
                                 f"the schema's is {dtype}{list(fshape)}")
            out[k] = arr
        return out


def _k(ratio: float, p: int) -> int:
    return max(1, min(p, math.floor(ratio * p + 0.5)))


class NoCompression(Compressor):
    name = "none"
    unbiased = True  # exactly (float32); float16 rounds to nearest

    def fields(self, shape: Shape) -> FieldSpec:
        return {"values": (self.value_dtype, (_size(shape),))}

    def payload_bytes(self, shape: Shape) -> int:
        return self.value_bytes * _size(shape)

    def encode(self, x, *, seed=None, rng=None):
        flat = _flat(x)
        return {"values": _to_float16(flat) if self.half else flat.copy()}

    def decode(self, fields, shape, *, seed=None):
        f = self._checked(fields, shape)
        return f["values"].astype(np.float32).reshape(shape)


class Int8(Compressor):
    name = "int8"

    def __init__(self, bucket: int = 512, half: bool = False) -> None:
        super().__init__(half)
        self.bucket = _check_int("bucket", bucket)

    def settings(self):
        return {"bucket": self.bucket, "half": self.half}

    def buckets(self, shape: Shape) -> int:
        return -(-_size(shape) // self.bucket)

    def fields(self, shape):
        return {"q": ("int8", (_size(shape),)),
                "scale": (self.value_dtype, (self.buckets(shape),))}

    def payload_bytes(self, shape):
        return _size(shape) + self.value_bytes * self.buckets(shape)

    def encode(self, x, *, seed=None, rng=None):
        flat = _flat(x).astype(np.float64)
        p, b = flat.size, self.bucket
        nb = -(-p // b)
        padded = np.zeros(nb * b)
        padded[:p] = flat
        rows = padded.reshape(nb, b)
        exact = np.abs(rows).max(axis=1) / 127.0
        if self.half:
            scale = _round_up(np.minimum(exact, FLOAT16_MAX), np.float16)
        else:
            scale = _round_up(exact, np.float32)
        s = scale.astype(np.float64)[:, None]
        q = np.divide(rows, s, out=np.zeros_like(rows), where=s > 0)
        q = np.clip(np.rint(q), -127, 127).astype(np.int8).reshape(-1)[:p]
        return {"q": q, "scale": scale}

    def decode(self, fields, shape, *, seed=None):
        f = self._checked(fields, shape)
        p = _size(shape)
        scale = np.repeat(f["scale"].astype(np.float32), self.bucket)[:p]
        return (f["q"].astype(np.float32) * scale).reshape(shape)


class _KOfP(Compressor):
    """A compressor that sends k = ``ratio`` x P entries of a tensor (topk, randk)."""

    def __init__(self, ratio: float = 0.01, half: bool = False) -> None:
        super().__init__(half)
        self.ratio = _check_ratio(ratio)

    def settings(self):
        return {"ratio": self.ratio, "half": self.half}

    def k(self, shape: Shape) -> int:
        return _k(self.ratio, _size(shape))


class TopK(_KOfP):
    name = "topk"

    def fields(self, shape):
        k = self.k(shape)
        return {"values": (self.value_dtype, (k,)), "indices": ("int32", (k,))}

    def payload_bytes(self, shape):
        return (self.value_bytes + 4) * self.k(shape)

    def encode(self, x, *, seed=None, rng=None):
        flat = _flat(x)
        k = _k(self.ratio, flat.size)
        if k == flat.size:
            idx = np.arange(k)
        else:
            idx = np.sort(np.argpartition(np.abs(flat), flat.size - k)[flat.size - k:])
        values = flat[idx]
        return {"values": _to_float16(values) if self.half else values,
                "indices": idx.astype(np.int32)}

    def decode(self, fields, shape, *, seed=None):
        f = self._checked(fields, shape)
        p = _size(shape)
        idx = f["indices"]
        if idx.size and (idx.min() < 0 or idx.max() >= p):
            raise ValueError(f"topk: indices out of range [0, {p})")
        out = np.zeros(p, np.float32)
        out[idx] = f["values"]
        return out.reshape(shape)


class RandK(_KOfP):
    name = "randk"
    unbiased = True
    needs_seed = True

    def indices(self, shape: Shape, seed: int | None) -> np.ndarray:
        """The k flat indices that ``seed`` selects (sorted), the same at both ends."""
        if seed is None:
            raise ValueError("randk: encode and decode need the seed both ends derive")
        p = _size(shape)
        k = _k(self.ratio, p)
        if k == p:
            return np.arange(p)
        return np.sort(np.random.default_rng(seed).choice(p, k, replace=False))

    def fields(self, shape):
        return {"values": (self.value_dtype, (self.k(shape),))}

    def payload_bytes(self, shape):
        return self.value_bytes * self.k(shape)

    def encode(self, x, *, seed=None, rng=None):
        flat = _flat(x)
        values = flat[self.indices(flat.shape, seed)]
        # Unscaled on the wire (P / k times a value could overflow float16); decode scales.
        return {"values": _to_float16(values) if self.half else values}

    def decode(self, fields, shape, *, seed=None):
        f = self._checked(fields, shape)
        p = _size(shape)
        idx = self.indices(shape, seed)
        out = np.zeros(p, np.float32)
        out[idx] = f["values"].astype(np.float32) * np.float32(p / idx.size)
        return out.reshape(shape)


class Sign(Compressor):
    name = "sign"

    def fields(self, shape):
        return {"signs": ("bool", (_size(shape),)), "scale": (self.value_dtype, (1,))}

    def payload_bytes(self, shape):
        return -(-_size(shape) // 8) + self.value_bytes

    def encode(self, x, *, seed=None, rng=None):
        flat = _flat(x)
        scale = np.array([np.abs(flat, dtype=np.float64).mean()])
        return {"signs": flat >= 0,
                "scale": _to_float16(scale) if self.half else scale.astype(np.float32)}

    def decode(self, fields, shape, *, seed=None):
        f = self._checked(fields, shape)
        s = f["scale"].astype(np.float32)[0]
        return np.where(f["signs"], s, -s).astype(np.float32).reshape(shape)


class QSGD(Compressor):
    name = "qsgd"
    unbiased = True
    needs_rng = True
    supports_half = False

    def __init__(self, levels: int = 15, bucket: int = 512, half: bool = False) -> None:
        super().__init__(half)
        self.levels = _check_int("levels", levels)
        self.bucket = _check_int("bucket", bucket)
        self.width = self.levels.bit_length()  # = ceil(log2(s + 1)), exactly, for s >= 1

    def settings(self):
        return {"levels": self.levels, "bucket": self.bucket, "half": self.half}

    def buckets(self, shape: Shape) -> int:
        return -(-_size(shape) // self.bucket)

    def bits_bytes(self, shape: Shape) -> int:
        return -(-_size(shape) * (1 + self.width) // 8)

    def fields(self, shape):
        return {"bits": ("uint8", (self.bits_bytes(shape),)),
                "norms": ("float32", (self.buckets(shape),))}

    def payload_bytes(self, shape):
        return self.bits_bytes(shape) + 4 * self.buckets(shape)

    def encode(self, x, *, seed=None, rng=None):
        if rng is None:
            raise ValueError("qsgd: encode needs rng (a np.random.Generator) for its "
                             "stochastic rounding")
        flat = _flat(x).astype(np.float64)
        p, b, s = flat.size, self.bucket, self.levels
        nb = -(-p // b)
        padded = np.zeros(nb * b)
        padded[:p] = flat
        norms = _round_up(np.sqrt(np.square(padded.reshape(nb, b)).sum(axis=1)), np.float32)
        per_entry = np.repeat(norms.astype(np.float64), b)[:p]
        r = np.divide(np.abs(flat) * s, per_entry, out=np.zeros(p), where=per_entry > 0)
        r = np.minimum(r, s)
        low = np.floor(r)
        level = (low + (rng.random(p) < r - low)).astype(np.int64)
        level = np.minimum(level, s)
        codes = np.empty((p, 1 + self.width), np.uint8)
        codes[:, 0] = flat < 0
        shifts = np.arange(self.width - 1, -1, -1)
        codes[:, 1:] = (level[:, None] >> shifts) & 1
        return {"bits": np.packbits(codes.reshape(-1)), "norms": norms}

    def decode(self, fields, shape, *, seed=None):
        f = self._checked(fields, shape)
        p, w = _size(shape), self.width
        codes = np.unpackbits(f["bits"], count=p * (1 + w)).reshape(p, 1 + w)
        level = codes[:, 1:].astype(np.int64) @ (1 << np.arange(w - 1, -1, -1))
        if level.max() > self.levels:
            raise ValueError(f"qsgd: a level above {self.levels}")
        unit = np.repeat(f["norms"].astype(np.float32) / np.float32(self.levels),
                         self.bucket)[:p]
        value = level.astype(np.float32) * unit
        return np.where(codes[:, 0].astype(bool), -value, value).reshape(shape)


COMPRESSORS: dict[str, type[Compressor]] = {
    c.name: c for c in (NoCompression, Int8, TopK, RandK, Sign, QSGD)}
SETTINGS: dict[str, tuple[str, ...]] = {
    "none": ("half",),
    "int8": ("bucket", "half"),
    "topk": ("ratio", "half"),
    "randk": ("ratio", "half"),
    "sign": ("half",),
    "qsgd": ("levels", "bucket", "half"),
}


def make_compressor(name: str, **settings: Any) -> Compressor:
    """The compressor ``name`` with ``settings`` (keys of ``SETTINGS[name]``; the rest
    take their defaults).  Raises :class:`CompressorError` naming the key at fault."""
    if name not in COMPRESSORS:
        raise CompressorError("compressor", f"{name!r} is not known; allowed: "
                                            f"{', '.join(COMPRESSORS)}")
    for key in settings:
        if key not in SETTINGS[name]:
            raise CompressorError(key, f"is not a setting of {name}; its settings: "
                                       f"{', '.join(SETTINGS[name])}")
    return COMPRESSORS[name](**settings)


# -- a part's message ----------------------------------------------------------------------
def field_name(tensor: str, suffix: str) -> str:
    return f"{tensor}{SEP}{suffix}"


def part_fields(compressor: Compressor, schema: Mapping[str, tuple[str, Shape]]) -> FieldSpec:
    """A part's message schema: each tensor's fields, named ``<tensor>:<suffix>``, in the
    schema's order (``schema``: ``{tensor: (dtype, shape)}``, a learner's part)."""
    return {field_name(t, k): spec for t, (_, shape) in schema.items()
            for k, spec in compressor.fields(tuple(shape)).items()}


def part_payload_bytes(compressor: Compressor,
                       schema: Mapping[str, tuple[str, Shape]]) -> int:
    return sum(compressor.payload_bytes(tuple(shape)) for _, shape in schema.values())


def join_fields(per_tensor: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``{tensor: {suffix: array}}`` -> the flat message ``{"<tensor>:<suffix>": array}``."""
    return {field_name(t, k): v for t, f in per_tensor.items() for k, v in f.items()}


def split_fields(message: Mapping[str, Any], tensors: Iterable[str]) -> dict[str, dict]:
    """The flat message -> ``{tensor: {suffix: array}}`` for the given tensor names."""
    out: dict[str, dict] = {t: {} for t in tensors}
    for key in message:
        t, sep, suffix = key.rpartition(SEP)
        if sep and t in out:
            out[t][suffix] = message[key]
    return out


# -- JSON data for arrays ------------------------------------------------------------------
def array_to_json(a: np.ndarray) -> dict[str, Any]:
    """A float32 array as JSON data: shape and base64 of its little-endian bytes (exact)."""
    a = np.ascontiguousarray(a, dtype=_F32)
    return {"shape": list(a.shape), "f32": base64.b64encode(a.tobytes()).decode("ascii")}


def array_from_json(d: Mapping[str, Any]) -> np.ndarray:
    raw = base64.b64decode(d["f32"])
    return np.frombuffer(raw, _F32).astype(np.float32).reshape(tuple(d["shape"]))


# -- error feedback ------------------------------------------------------------------------
class ErrorFeedback:
    """Error feedback (Stich et al. 2018; Karimireddy et al. 2019) around a compressor.

    Per tensor name it keeps the residual e (zero at first): ``encode(name, x)``
    compresses ``x + e`` and sets ``e <- (x + e) - decode(sent)``, so what compression
    loses is sent later: after T calls, the sum of the decoded messages plus e equals
    the sum of the inputs (to float32 rounding).  The receiver decodes with the plain
    compressor (``decode`` here is the compressor's).
    """

    def __init__(self, compressor: Compressor) -> None:
        self.compressor = compressor
        self.residuals: dict[str, np.ndarray] = {}

    @property
    def name(self) -> str:
        return self.compressor.name

    def fields(self, shape: Shape) -> FieldSpec:
        return self.compressor.fields(shape)

    def payload_bytes(self, shape: Shape) -> int:
        return self.compressor.payload_bytes(shape)

    def decode(self, fields: Mapping[str, Any], shape: Shape, *, seed: int | None = None):
        return self.compressor.decode(fields, shape, seed=seed)

    def encode(self, name: str, x: np.ndarray, *, seed: int | None = None,
               rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        x = np.asarray(x, dtype=np.float32)
        e = self.residuals.get(name)
        if e is not None and e.shape != x.shape:
            raise ValueError(f"error feedback: tensor {name!r} changed shape "
                             f"{e.shape} -> {x.shape}")
        target = x if e is None else x + e
        sent = self.compressor.encode(target, seed=seed, rng=rng)
        self.residuals[name] = target - self.compressor.decode(sent, x.shape, seed=seed)
        return sent

    def residual(self, name: str) -> np.ndarray | None:
        return self.residuals.get(name)

    def state(self) -> dict[str, Any]:
        """JSON data: ``{"residuals": {name: array_to_json(e)}}``."""
        return {"residuals": {k: array_to_json(v) for k, v in self.residuals.items()}}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.residuals = {k: array_from_json(v) for k, v in state["residuals"].items()}


# -- CHOCO-Gossip --------------------------------------------------------------------------
class Choco:
    """CHOCO-Gossip for ONE peer (Koloskova, Stich & Jaggi, ICML 2019, Algorithm 1;
    CHOCO-SGD, their Algorithm 2, adds a local step before it).

    The peer keeps public copies ``x_hat_j`` of itself (``me``) and of each in-neighbour
    j, per tensor name; all start at ``start[name]`` (the common initial parameters, if
    every peer starts from them) or at zeros.  A round, in this order:

    1. (CHOCO-SGD) the local step: ``x <- x - eta * grad``;
    2. ``q = message(name, x)``: ``q = Q(x - x_hat_me)``, and ``x_hat_me += decode(q)``
       (the sender's copy moves by the DECODED value, exactly as its receivers' copy of
       it will);  publish q to every out-neighbour;
    3. ``receive(j, name, q_j)`` for every in-neighbour's message of the round:
       ``x_hat_j += decode(q_j)``;
    4. ``x <- consensus(name, x, weights)``: ``x + gamma * sum_j w_ij (x_hat_j -
       x_hat_me)`` with the round's weight row ``{j: w_ij}`` (self included; its term is
       0).  The theory needs a symmetric doubly stochastic W (Metropolis weights are).

    What must be identical at both ends: ``decode`` (same compressor, settings, numpy;
    for randk the same ``seed``), so j's copy ``x_hat_j`` held by every out-neighbour is
    bit-identical to j's own ``x_hat_me``.  Every message must therefore be applied by
    every receiver exactly once, in order: a lost message desynchronises the copies for
    good (no renormalising: a neighbour not heard in a round keeps its copy, and its
    late message must still be received before its next one).  ``gamma`` in (0, 1] is
    the consensus step, tuned per compressor (the paper's theory value is tiny: about
    4e-5 for top-k at 1 % on an 8-ring; measured there, d = 1000, 0.01 - 0.03 converge,
    0.03 fastest, 0.05 stalls and 0.1 and above diverge: tests/unit/test_compress.py).
    """

    def __init__(self, compressor: Compressor, gamma: float, me: int,
                 shapes: Mapping[str, Shape],
                 start: Mapping[str, np.ndarray] | None = None) -> None:
        ok = isinstance(gamma, (int, float, np.integer, np.floating)) and not isinstance(
            gamma, (bool, np.bool_))
        if not ok or not math.isfinite(float(gamma)) or not 0 < float(gamma) <= 1:
            raise CompressorError("gamma", f"must lie in (0, 1], got {gamma!r}")
        self.compressor = compressor
        self.gamma = float(gamma)
        self.me = int(me)
        self.shapes = {k: tuple(int(s) for s in v) for k, v in shapes.items()}
        self.start: dict[str, np.ndarray] = {}
        for name, x0 in (start or {}).items():
            x0 = np.array(x0, dtype=np.float32)
            if x0.shape != self.shapes.get(name):
                raise ValueError(f"choco: start {name!r} has shape {x0.shape}, "
                                 f"not {self.shapes.get(name)}")
            self.start[name] = x0
        self.copies: dict[tuple[int, str], np.ndarray] = {}

    def public(self, peer: int, name: str) -> np.ndarray:
        """The public copy ``x_hat_peer`` of tensor ``name`` (made at the start value)."""
        key = (int(peer), name)
        c = self.copies.get(key)
        if c is None:
            if name not in self.shapes:
                raise KeyError(f"choco: unknown tensor {name!r}")
            x0 = self.start.get(name)
            c = x0.copy() if x0 is not None else np.zeros(self.shapes[name], np.float32)
            self.copies[key] = c
        return c

    def message(self, name: str, x: np.ndarray, *, seed: int | None = None,
                rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        own = self.public(self.me, name)
        x = np.asarray(x, dtype=np.float32)
        if x.shape != own.shape:
            raise ValueError(f"choco: {name!r} has shape {x.shape}, not {own.shape}")
        q = self.compressor.encode(x - own, seed=seed, rng=rng)
        own += self.compressor.decode(q, own.shape, seed=seed)
        return q

    def receive(self, j: int, name: str, q: Mapping[str, Any], *,
                seed: int | None = None) -> None:
        if int(j) == self.me:
            raise ValueError("choco: a peer's own message updates its copy in message()")
        copy = self.public(j, name)
        copy += self.compressor.decode(q, copy.shape, seed=seed)

    def consensus(self, name: str, x: np.ndarray, weights: Mapping[int, float]) -> np.ndarray:
        own = self.public(self.me, name)
        acc = np.zeros(own.shape, np.float32)
        for j, w in weights.items():
            if int(j) != self.me and w:
                acc += np.float32(w) * (self.public(j, name) - own)
        return np.asarray(x, dtype=np.float32) + np.float32(self.gamma) * acc

    def state(self) -> dict[str, Any]:
        """JSON data: ``{"copies": [[peer, name, array_to_json(x_hat)], ...]}`` (the
        constructor's arguments are not in it: a resumed peer passes the same ones)."""
        return {"copies": [[p, n, array_to_json(c)] for (p, n), c in self.copies.items()]}

    def load_state(self, state: Mapping[str, Any]) -> None:
        copies = {}
        for p, n, d in state["copies"]:
            c = array_from_json(d)
            if c.shape != self.shapes.get(n):
                raise ValueError(f"choco: saved copy {n!r} has shape {c.shape}")
            copies[(int(p), str(n))] = c
        self.copies = copies
