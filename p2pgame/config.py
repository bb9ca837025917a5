"""The scenario as data: frozen, typed dataclasses that check themselves.

This module imports nothing from p2pgame.  It holds the shapes of a resolved
:class:`Scenario` and the generic machinery to build them from TOML tables
(:func:`build`) and from plain data (:func:`from_plain`, :func:`to_plain`).
Turning a raw scenario file into a ``Scenario`` (algorithm registry lookups,
checks across sections) is :mod:`p2pgame.scenario`'s job.

Errors are :class:`ScenarioError` and name the key and what is allowed, quoting
at most a short prefix of a bad value; the resolver prefixes them with the file
(or the ``--set`` override that causes them), so a bad scenario stops the
launcher before any process starts.
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from typing import Any


class ScenarioError(ValueError):
    """A scenario file or override is malformed."""


class _OutOfRange(ScenarioError):
    """A number of the right type but not allowed (a union reports it, not its arms)."""


# Every number is checked by type (check_value), so no key escapes: a float must be
# finite, an int must fit the C type it reaches.  That is a C int unless the field's
# metadata says otherwise: {"int_range": INT64} (seeds; byte counts for 64-bit socket
# options), {"inf": True} (a float where inf means something; no key has one yet).
C_INT = (-2**31, 2**31 - 1)
MAX_PEERS = 4096
INT64 = (-2**63, 2**63 - 1)
WIDE = {"int_range": INT64}

QUOTE_CHARS = 60  # an error message quotes at most this much of a value


class _Repr(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 200:  # repr() refuses ints of more than 4300 digits
            return f"<an integer of {x.bit_length()} bits>"
        return super().repr_int(x, level)


_REPR = _Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = QUOTE_CHARS
_REPR.maxlevel = 3


def clip(text: str, limit: int = QUOTE_CHARS) -> str:
    """``text``, cut to ``limit`` characters with an ellipsis."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def short(value: Any) -> str:
    """The repr of ``value`` for an error message: one line, at most QUOTE_CHARS long
    (a 1 MB string, a deep table or a huge integer stays a short quote)."""
    try:
        text = _REPR.repr(value)
    except (ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    return clip(text)


# A duration (a key named ``*_s`` or ``*_ms``) of more than a week is a slip, not a
# setting: a timeout of 1e300 s never fires, as inf would not.
WEEK_S = 7 * 86400.0
DURATION_UNITS = {"_s": 1.0, "_ms": 1000.0}


def _check_number(value: Any, where: str, meta: typing.Mapping) -> None:
    """The range rules for a number (an int or float where an int or float is wanted)."""
    if isinstance(value, float) and not math.isfinite(value):
        if not (math.isinf(value) and meta.get("inf")):
            raise _OutOfRange(f"{where}: expected a finite number, got {short(value)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        key = where.rsplit(".", 1)[-1]
        for suffix, per_s in DURATION_UNITS.items():
            if key.endswith(suffix) and abs(value) > WEEK_S * per_s:
                raise _OutOfRange(f"{where}: {short(value)} is longer than a week; allowed: "
                                  f"at most {WEEK_S * per_s:g}")
    if isinstance(value, int) and not isinstance(value, bool):
        low, high = meta.get("int_range", C_INT)
        if not low <= value <= high:
            raise _OutOfRange(f"{where}: {short(value)} is out of range; allowed: "
                              f"{low}..{high}")


def _check_nested_numbers(value: Any, where: str) -> None:
    """Numbers inside a free-form table (e.g. data.partition): the default rules."""
    stack = [(value, where)]
    while stack:
        v, w = stack.pop()
        if isinstance(v, dict):
            stack.extend((x, f"{w}.{clip(k, 20) if k.isprintable() else short(k)}")
                         for k, x in v.items())  # (TOML keys are strings)
        elif isinstance(v, (list, tuple)):
            stack.extend((x, f"{w}[{i}]") for i, x in enumerate(v))
        elif isinstance(v, (int, float)):
            _check_number(v, w, {})


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def check_value(value: Any, tp: Any, where: str, meta: typing.Mapping | None = None) -> Any:
    """Check (and lightly coerce) ``value`` against the annotation ``tp``; ``meta`` is the
    field's metadata (the range rules of its numbers)."""
    meta = meta or {}
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check_value(value, arg, where, meta)
            except _OutOfRange:
                raise
            except ScenarioError:
                pass
        raise ScenarioError(f"{where}: expected {_type_name(tp)}, got {short(value)}")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ScenarioError(f"{where}: expected a number, got {short(value)}")
        try:
            value = float(value)
        except OverflowError:  # an int beyond any float
            raise _OutOfRange(f"{where}: expected a finite number, got {short(value)}") from None
        _check_number(value, where, meta)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScenarioError(f"{where}: expected an integer, got {short(value)}")
        _check_number(value, where, meta)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ScenarioError(f"{where}: expected true or false, got {short(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ScenarioError(f"{where}: expected a string, got {short(value)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ScenarioError(f"{where}: expected a list, got {short(value)}")
        (inner, *_rest) = typing.get_args(tp) or (Any,)
        return tuple(check_value(v, inner, f"{where}[{i}]", meta) for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ScenarioError(f"{where}: expected a table, got {short(value)}")
        _check_nested_numbers(value, where)
        return dict(value)
    return value


def _prefixed(where: str, msg: str) -> str:
    """``where: msg``; a message that names its key under where's last part (an
    algorithm's own checks say "algorithm.lr: ...") is not prefixed twice."""
    if not where:
        return msg
    head = where.rsplit(".", 1)[-1]
    if msg.startswith(head + "."):
        return where + msg[len(head):]
    return f"{where}: {msg}"


def _shorten_quotes(msg: str, values: typing.Iterable[Any]) -> str:
    """``msg`` with every long or unprintable value it quotes cut short: a dataclass's
    own checks quote its fields, and what they hold, in full."""
    found, stack = [], list(values)
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack += [*v.keys(), *v.values()]
        elif isinstance(v, (list, tuple)):
            stack += v
        if isinstance(v, (str, dict, list, tuple)):
            try:
                found.append((repr(v), v))
            except RecursionError:
                pass
    for text, v in sorted(found, key=lambda tv: -len(tv[0])):  # outer values first
        if len(text) > QUOTE_CHARS:
            msg = msg.replace(text, short(v))
        if isinstance(v, str) and (len(v) > QUOTE_CHARS or not v.isprintable()):
            msg = msg.replace(v, short(v))  # quoted without repr, e.g. in a key's name
    return msg


def build(cls: type, table: Any, where: str) -> Any:
    """Build frozen dataclass ``cls`` from a TOML table, rejecting unknown keys."""
    if dataclasses.is_dataclass(table) and isinstance(table, cls):
        return table
    if not isinstance(table, dict):
        raise ScenarioError(f"{where}: expected a table, got {short(table)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(table) - set(fields), key=str)
    if unknown:
        raise ScenarioError(
            f"{where}: unknown key {short(unknown[0])}; allowed: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in table.items():
        kwargs[name] = check_value(value, hints[name], f"{where}.{name}" if where else name,
                                   fields[name].metadata)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ScenarioError(f"{where}: missing required key {missing[0]!r}")
    try:
        return cls(**kwargs)
    except ValueError as e:  # ScenarioError included
        raise ScenarioError(_prefixed(where, _shorten_quotes(str(e), kwargs.values()))) from None


def to_plain(obj: Any) -> Any:
    """A JSON- and msgpack-friendly copy (dataclasses become tables, tuples lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def one_of(value: str, allowed: typing.Iterable[str], key: str) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ScenarioError(f"{key} = {short(value)} is not known; allowed: {', '.join(allowed)}")


def at_least(value: float | int, low: float, key: str, strict: bool = False) -> None:
    if value < low or (strict and value == low):
        rel = ">" if strict else ">="
        raise ScenarioError(f"{key} = {short(value)} must be {rel} {low}")


GRAPH_KINDS = (
    "complete",
    "ring",
    "line",
    "star",
    "grid",
    "torus",
    "random_regular",
    "erdos_renyi",
    "watts_strogatz",
    "barabasi_albert",
    "edges",
)
WEIGHT_RULES = ("self_weight", "metropolis", "matrix")


@dataclass(frozen=True)
class GraphSpec:
    """One communication graph.  An edge ``[j, i]`` means j sends to i."""

    graph: str = "ring"
    directed: bool = False
    degree: int = 3  # random_regular
    p: float = 0.3  # erdos_renyi, watts_strogatz rewiring
    k: int = 2  # watts_strogatz neighbours
    m: int = 1  # barabasi_albert attachments
    rows: int = 0  # grid/torus; 0 = as square as possible
    edges: tuple[tuple[int, ...], ...] = ()
    at: int = 0  # first step this graph is active (time-varying schedules)

    def __post_init__(self) -> None:
        one_of(self.graph, GRAPH_KINDS, "graph")
        if self.graph == "edges" and not self.edges:
            raise ScenarioError("graph = 'edges' needs a non-empty 'edges' list of [src, dst]")
        for e in self.edges:
            if len(e) != 2:
                raise ScenarioError(f"edges: {short(list(e))} is not a [src, dst] pair")
        at_least(self.p, 0.0, "p")
        if self.p > 1:
            raise ScenarioError(f"p = {self.p} must be <= 1")
        at_least(self.at, 0, "at")


GRAPH_KEYS = tuple(f.name for f in dataclasses.fields(GraphSpec) if f.name != "at")


@dataclass(frozen=True)
class TopologySpec:
    """The graphs (the first, then the scheduled ones) and the weight rule.

    In a scenario file the first graph's keys sit directly in ``[topology]``;
    the resolver gathers them into ``graphs[0]``.
    """

    n: int
    graphs: tuple[GraphSpec, ...] = (GraphSpec(),)
    weights: str = "self_weight"
    self_weight: float | tuple[float, ...] = 0.5
    matrix: tuple[tuple[float, ...], ...] = ()
    redraw_every: int = 0  # >0: redraw the (random) graph every K steps

    def __post_init__(self) -> None:
        at_least(self.n, 1, "n")
        if self.n > MAX_PEERS:  # (resolving the graph alone takes minutes beyond)
            raise ScenarioError(f"n = {self.n}: at most {MAX_PEERS} peers (the scale tested "
                                "is 1024)")
        one_of(self.weights, WEIGHT_RULES, "weights")
        if self.weights == "matrix" and not self.matrix:
            raise ScenarioError("weights = 'matrix' needs a 'matrix' (n rows of n numbers)")
        sw = self.self_weight
        values = sw if isinstance(sw, tuple) else (sw,)
        if isinstance(sw, tuple) and len(sw) != self.n:
            raise ScenarioError(f"self_weight: list of {len(sw)} values for n = {self.n} peers")
        for v in values:
            if not 0.0 <= v <= 1.0:
                raise ScenarioError(f"self_weight = {v} must lie in [0, 1]")
        at_least(self.redraw_every, 0, "redraw_every")
        if not self.graphs:
            raise ScenarioError("graphs: at least one graph")
        if self.redraw_every and len(self.graphs) > 1:
            raise ScenarioError("use either 'schedule' or 'redraw_every', not both")
        ats = [g.at for g in self.graphs]
        if ats[0] != 0 or ats != sorted(ats) or len(set(ats)) != len(ats):
            raise ScenarioError(f"schedule: 'at' steps must be increasing, got {ats}")

    @property
    def base_graph(self) -> GraphSpec:
        return self.graphs[0]


MAHIMAHI_BYTES = 1500  # what one line of a Mahimahi trace lets cross the link


def trace_period_ms(trace: tuple[int, ...]) -> int:
    """A Mahimahi trace repeats with the period of its last timestamp (at least 1 ms)."""
    return max(trace[-1], 1)


def parse_mahimahi(text: str, where: str) -> tuple[int, ...]:
    """A Mahimahi trace (Netravali et al., USENIX ATC 2015): one line per delivery
    opportunity of 1500 bytes, its time in milliseconds (integers, non-decreasing; a
    time repeated is several opportunities in that millisecond); the trace wraps around
    after its last timestamp.  ``where`` names the file in errors."""
    out: list[int] = []
    for k, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if not line.isdigit():
            raise ScenarioError(f"{where}: line {k}: {short(line)} is not a time in "
                                "milliseconds (a Mahimahi trace: one integer per line)")
        t = int(line)
        if out and t < out[-1]:
            raise ScenarioError(f"{where}: line {k}: {t} ms comes before {out[-1]} ms (the "
                                "times of a trace never go back)")
        out.append(t)
    if not out or out[-1] == 0:
        raise ScenarioError(f"{where}: no delivery opportunity after 0 ms (an empty trace, "
                            "or one that never moves on)")
    return tuple(out)


@dataclass(frozen=True)
class LinkProfile:
    """A named link (``comm.profile`` or an edge's ``profile``): what it sets, and where
    the figures come from.  A peer-to-peer edge is limited by its sender's uplink, so the
    bandwidth is the source's upload figure."""

    bandwidth: float  # bytes per second (0: the profile says nothing about it)
    latency_ms: float  # one way
    source: str


# Firefox DevTools' network throttling presets (mozilla-central,
# devtools/client/shared/components/throttling/profiles.js: upload and latency, with its
# K = 1024 bits), and the geostationary orbit's light-time.
_KBIT = 1024 / 8  # bytes per second in one of the presets' Kbit/s
_FIREFOX = "Firefox DevTools throttling preset"
LINK_PROFILES: dict[str, LinkProfile] = {
    "gprs": LinkProfile(20 * _KBIT, 500.0, f"{_FIREFOX} GPRS"),
    "2g": LinkProfile(50 * _KBIT, 300.0, f"{_FIREFOX} Regular 2G"),
    "good-2g": LinkProfile(150 * _KBIT, 150.0, f"{_FIREFOX} Good 2G"),
    "3g": LinkProfile(250 * _KBIT, 100.0, f"{_FIREFOX} Regular 3G"),
    "good-3g": LinkProfile(750 * _KBIT, 40.0, f"{_FIREFOX} Good 3G"),
    "lte": LinkProfile(3 * 1024 * _KBIT, 20.0, f"{_FIREFOX} Regular 4G / LTE"),
    "dsl": LinkProfile(1024 * _KBIT, 5.0, f"{_FIREFOX} DSL"),
    "wifi": LinkProfile(15 * 1024 * _KBIT, 2.0, f"{_FIREFOX} Wi-Fi"),
    # Up to the satellite and down again: 2 x 35,786 km at the speed of light.  Only the
    # latency: a satellite link's bandwidth depends on the service (set bandwidth).
    "geo-satellite": LinkProfile(0.0, 2 * 35_786 / 299_792.458 * 1000,
                                 "geostationary altitude 35,786 km, up and down at c"),
}


@dataclass(frozen=True)
class DeviceProfile:
    """A named device (``runtime.device_profile``): its speed relative to the host class
    that ``compute_s`` describes, and where the figure comes from."""

    speed: float
    source: str


# Chrome DevTools' CPU throttling rates (devtools-frontend, CPUThrottlingRates:
# MID_TIER_MOBILE = 4, LOW_TIER_MOBILE = 6 times slower than the desktop running it).
DEVICE_PROFILES: dict[str, DeviceProfile] = {
    "desktop": DeviceProfile(1.0, "the reference: compute_s as given"),
    "mid-tier-mobile": DeviceProfile(1 / 4, "Chrome DevTools CPUThrottlingRates.MID_TIER_MOBILE = 4"),
    "low-tier-mobile": DeviceProfile(1 / 6, "Chrome DevTools CPUThrottlingRates.LOW_TIER_MOBILE = 6"),
}


def _named(name: Any, known: dict[str, Any], where: str, what: str) -> Any:
    """The profile ``name`` names in ``known``; else one line naming the key and the names."""
    if not isinstance(name, str) or name not in known:
        raise ScenarioError(f"{where} = {short(name)}: not {what}; known: {', '.join(known)}")
    return known[name]


def with_link_profile(table: dict, where: str) -> dict:
    """A link table with its ``profile`` (if any) expanded: the profile's bandwidth and
    latency_ms, under the keys the table gives itself (those win; a trace gives the
    bandwidth instead of the profile)."""
    if "profile" not in table:
        return table
    table = dict(table)
    prof = _named(table.pop("profile"), LINK_PROFILES, f"{where}.profile", "a link profile")
    out = {"latency_ms": prof.latency_ms}
    if prof.bandwidth > 0 and "trace" not in table:
        out["bandwidth"] = prof.bandwidth
    return {**out, **table}


def with_device_profile(table: dict, where: str) -> dict:
    """A pace table with its ``device_profile`` (if any) expanded into ``speed``."""
    if "availability" in table and "offline" in table:
        raise ScenarioError(f"{where}: offline = {short(table['offline'])} and availability = "
                            f"{short(table['availability'])} both give the peer's offline "
                            "windows; set one of them")
    if "device_profile" not in table:
        return table
    table = dict(table)
    name = table.pop("device_profile")
    prof = _named(name, DEVICE_PROFILES, f"{where}.device_profile", "a device profile")
    if "speed" in table:
        raise ScenarioError(f"{where}: speed = {short(table['speed'])} and device_profile = "
                            f"{short(name)} both set the peer's speed; set one of them")
    return {**table, "speed": prof.speed}


BUFFER_POLICIES = ("tail", "oldest")
JITTER_DISTS = ("uniform", "exponential", "lognormal")


@dataclass(frozen=True)
class LinkSpec:
    """Link emulation for one directed edge (or the scenario-wide default)."""

    delay_steps: int = 0
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    drop: float = 0.0
    bandwidth: float = 0.0  # bytes per second; 0 = unlimited
    burst: float = 0.0  # token bucket size in bytes; 0 = one message
    # The bottleneck's queue (only with a bandwidth cap): bytes and messages waiting behind
    # the one being transmitted.  buffer_bytes = 0: one second of the cap; buffer_messages
    # = 0: no limit on the count.  A full buffer drops the arrival ("tail") or the oldest
    # waiting message ("oldest").
    buffer_bytes: float = 0.0
    buffer_messages: int = 0
    buffer_policy: str = "tail"
    # The random part of the latency, added to latency_ms: U[0, jitter_ms) ("uniform"),
    # exponential with mean jitter_ms, or log-normal with median jitter_ms and shape
    # jitter_sigma.
    jitter_dist: str = "uniform"
    jitter_sigma: float = 1.0
    reorder: bool = False  # True: each message leaves after its own latency (may overtake)
    # A Mahimahi bandwidth trace instead of a constant cap: the file (relative to the
    # scenario file) as given, and its delivery opportunities (ms) as read by the resolver.
    trace: str = ""
    trace_ms: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        at_least(self.delay_steps, 0, "delay_steps")
        at_least(self.latency_ms, 0.0, "latency_ms")
        at_least(self.jitter_ms, 0.0, "jitter_ms")
        if not 0.0 <= self.drop < 1.0:
            raise ScenarioError(f"drop = {self.drop} must lie in [0, 1)")
        at_least(self.bandwidth, 0.0, "bandwidth")
        at_least(self.burst, 0.0, "burst")
        at_least(self.buffer_bytes, 0.0, "buffer_bytes")
        at_least(self.buffer_messages, 0, "buffer_messages")
        one_of(self.buffer_policy, BUFFER_POLICIES, "buffer_policy")
        one_of(self.jitter_dist, JITTER_DISTS, "jitter_dist")
        at_least(self.jitter_sigma, 0.0, "jitter_sigma", strict=True)
        if not isinstance(self.reorder, bool):
            raise ScenarioError(f"reorder = {self.reorder!r} must be true or false")
        if self.trace and self.bandwidth > 0:
            raise ScenarioError(f"trace = {short(self.trace)} and bandwidth = "
                                f"{short(self.bandwidth)}: a trace gives the link's bandwidth; "
                                "set one of them")

    @property
    def rate(self) -> float:
        """The link's bandwidth in bytes per second (a trace's mean; 0: unlimited)."""
        if self.trace_ms:
            return MAHIMAHI_BYTES * len(self.trace_ms) / (trace_period_ms(self.trace_ms) / 1000)
        return self.bandwidth

    @property
    def buffer_limit_bytes(self) -> float:
        """The waiting queue's byte limit in effect (inf: none): one second of the rate
        unless ``buffer_bytes`` says otherwise."""
        if self.buffer_bytes > 0:
            return self.buffer_bytes
        return self.rate if self.rate > 0 else float("inf")

    @property
    def is_ideal(self) -> bool:
        return self == LinkSpec()


LINK_KEYS = tuple(f.name for f in dataclasses.fields(LinkSpec) if f.name != "trace_ms")


@dataclass(frozen=True)
class EdgeLinkSpec:
    """A per-edge override: the link ``src -> dst`` behaves as ``link``."""

    src: int
    dst: int
    link: LinkSpec


def is_round(step: int, every: int, start: int = 0) -> bool:
    """Whether ``step`` is a round: ``start``, then every ``every`` steps (0: only it)."""
    if step < start:
        return False
    return step == start if every == 0 else (step - start) % every == 0


def round_at(q: int, every: int, start: int = 0) -> int:
    """The newest round at or before step ``q`` (-1: none yet)."""
    if q < start:
        return -1
    return start if every == 0 else q - (q - start) % every


@dataclass(frozen=True)
class CommSpec:
    """How peers exchange.  In a scenario file the default link's keys sit in ``[comm]``."""

    mode: str = "sync"
    transport: str = "ipc"
    host: str = "127.0.0.1"
    samples_per_message: int = 0  # 0 = the algorithm's default
    # Rounds: a peer publishes at step ``publish_from`` and every ``publish_every`` steps
    # after it (0: that once); before ``publish_from`` every peer learns alone.
    publish_every: int = 1
    publish_from: int = 0
    max_message_bytes: int = field(default=64 * 2**20, metadata=WIDE)  # ZMQ_MAXMSGSIZE: int64
    # Messages a PUB socket queues per subscriber before it drops for that subscriber
    # (a stalled listener cannot grow the publisher); 0: unlimited.
    send_hwm: int = 64
    # Samples in one message on a samples topic, at most (more: refused as "samples"),
    # so a valid header cannot make a receiver unpack millions of samples.
    max_samples_per_message: int = 65536
    # "curve": every socket of the run encrypted, and only the run's peers admitted
    # (ZeroMQ CURVE, keys drawn per run); "none": plain (the README's decoder can listen).
    security: str = "none"
    pack_bool: bool = True  # bit-pack bool tensors on the wire
    sync_timeout_s: float = 60.0  # how long a sync barrier waits before failing the peer
    link: LinkSpec = LinkSpec()
    edges: tuple[EdgeLinkSpec, ...] = ()

    def __post_init__(self) -> None:
        one_of(self.mode, ("sync", "async"), "mode")
        one_of(self.transport, ("ipc", "tcp"), "transport")
        at_least(self.samples_per_message, 0, "samples_per_message")
        at_least(self.publish_every, 0, "publish_every")  # 0: once, at publish_from
        at_least(self.publish_from, 0, "publish_from")
        at_least(self.max_message_bytes, 64, "max_message_bytes")
        at_least(self.send_hwm, 0, "send_hwm")
        at_least(self.max_samples_per_message, 1, "max_samples_per_message")
        one_of(self.security, ("none", "curve"), "security")
        at_least(self.sync_timeout_s, 0.0, "sync_timeout_s", strict=True)

    def is_round(self, step: int) -> bool:
        """Whether peers publish at ``step``."""
        return is_round(step, self.publish_every, self.publish_from)

    def link_of(self, src: int, dst: int) -> LinkSpec:
        """The link ``src -> dst``: its override if there is one, else the default."""
        for e in self.edges:
            if (e.src, e.dst) == (src, dst):
                return e.link
        return self.link


BACKENDS = ("local", "ray")
RAY_STRATEGIES = ("pack", "spread")
PLACEMENTS = ("auto", "process", "workers")
CLOCKS = ("real", "virtual")
COMPUTE_SOURCES = ("model", "measured")  # runtime.compute (the virtual clock's step time)


PACE_DISTS = ("constant", "uniform", "exponential")


@dataclass(frozen=True)
class PaceSpec:
    """How fast a peer steps, independent of the machine: stragglers on purpose.

    After each training step the peer sleeps ``(1/speed - 1)`` times the step's
    compute time plus a drawn delay: ``step_delay_ms`` ("constant"), U[0, 2 x
    step_delay_ms) ("uniform") or exponential with that mean ("exponential"),
    from the peer's own seeded stream.  Receiving goes on while it sleeps.
    """

    speed: float = 1.0  # 0.1: every step takes 10x its compute time
    step_delay_ms: float = 0.0
    step_delay_dist: str = "constant"
    # (The virtual clock) when the peer is away: [from, to) in virtual seconds, in order.
    # A step that starts in a window is skipped (its time passes; the peer neither trains
    # nor publishes, and takes no message in: what arrives waits on its links).
    offline: tuple[tuple[float, float], ...] = ()
    # ... and/or a seeded on/off process: online for Exp(online_mean_s) virtual seconds,
    # then offline for Exp(offline_mean_s), and so on (0 and 0: none).
    online_mean_s: float = 0.0
    offline_mean_s: float = 0.0
    # (The virtual clock) a step's compute time from a file instead of runtime.compute_s:
    # one number of seconds a line, step k taking line k (wrapping around); the file as
    # given (relative to the scenario file) and its times as read by the resolver.
    compute_trace: str = ""
    compute_trace_s: tuple[float, ...] = ()
    # (The virtual clock) the offline windows from a file (relative to the scenario file):
    # one window a line, "FROM TO" in virtual seconds; read into ``offline``.
    availability: str = ""

    def __post_init__(self) -> None:
        if not 0 < self.speed <= 1:
            raise ScenarioError(f"speed = {short(self.speed)} must lie in (0, 1] "
                                "(a slow-down: 0.1 is ten times slower)")
        at_least(self.step_delay_ms, 0.0, "step_delay_ms")
        one_of(self.step_delay_dist, PACE_DISTS, "step_delay_dist")
        for key in ("online_mean_s", "offline_mean_s"):
            v = getattr(self, key)
            at_least(v, 0.0, key)
            if not math.isfinite(v):
                raise ScenarioError(f"{key} = {v} must be a finite number of seconds")
        if (self.online_mean_s > 0) != (self.offline_mean_s > 0):
            raise ScenarioError(f"online_mean_s = {self.online_mean_s:g} and offline_mean_s = "
                                f"{self.offline_mean_s:g}: the on/off process needs both > 0 "
                                "(or both 0: none)")
        last = 0.0
        for k, window in enumerate(self.offline):
            if len(window) != 2:
                raise ScenarioError(f"offline[{k}] = {short(list(window))}: expected "
                                    "[from, to] (virtual seconds)")
            a, b = window
            if not (math.isfinite(a) and math.isfinite(b)) or not last <= a < b:
                raise ScenarioError(
                    f"offline[{k}] = [{a:g}, {b:g}]: each window [from, to) must have "
                    f"0 <= from < to, finite, after the one before it (which ends at {last:g})")
            last = b

    @property
    def is_natural(self) -> bool:
        return self.speed == 1 and self.step_delay_ms == 0

    @property
    def goes_offline(self) -> bool:
        return bool(self.offline) or self.offline_mean_s > 0

    def is_away(self, t: float) -> bool:
        """Whether virtual time ``t`` falls in one of the peer's offline windows (the
        on/off process aside: :class:`p2pgame.peer.stepping.Availability`)."""
        return any(a <= t < b for a, b in self.offline)


PACE_KEYS = tuple(f.name for f in dataclasses.fields(PaceSpec) if f.name != "compute_trace_s")


def parse_availability(text: str, where: str) -> tuple[tuple[float, float], ...]:
    """An availability file: one offline window a line, ``FROM TO`` (virtual seconds, the
    peer away in [FROM, TO)), in order; blank lines and ``#`` comments aside.  ``where``
    names the file in errors."""
    out: list[tuple[float, float]] = []
    for k, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            a, b = (float(x) for x in line.split())
        except ValueError:
            raise ScenarioError(f"{where}: line {k}: {short(line)} is not a window FROM TO "
                                "(two numbers of virtual seconds)") from None
        last = out[-1][1] if out else 0.0
        if not (math.isfinite(a) and math.isfinite(b)) or not last <= a < b:
            raise ScenarioError(f"{where}: line {k}: [{a:g}, {b:g}) must have 0 <= FROM < TO, "
                                f"finite, after the window before it (which ends at {last:g})")
        out.append((a, b))
    return tuple(out)


def parse_compute_trace(text: str, where: str) -> tuple[float, ...]:
    """A per-step compute-time trace: one time in seconds a line (finite, >= 0), blank
    lines and ``#`` comments aside.  ``where`` names the file in errors."""
    out: list[float] = []
    for k, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            t = float(line)
        except ValueError:
            t = math.nan
        if not math.isfinite(t) or t < 0:
            raise ScenarioError(f"{where}: line {k}: {short(line)} is not a compute time in "
                                "seconds (a number >= 0)")
        out.append(t)
    if not out:
        raise ScenarioError(f"{where}: no compute time in it (one number of seconds a line)")
    return tuple(out)


TARGET_RE = re.compile(r"\s*([A-Za-z0-9_./-]+)\s*(<=|>=|<|>)\s*([-+0-9.eE]+|[-+]?inf)\s*")


def parse_target(text: str) -> tuple[str, str, float]:
    """``runtime.target``: ``"ne_max_abs<=0.02"`` -> (key, operator, threshold)."""
    m = TARGET_RE.fullmatch(text) if isinstance(text, str) else None
    value = None
    if m:
        try:
            value = float(m.group(3))
        except ValueError:
            value = None
    if m is None or value is None or math.isnan(value):
        raise ScenarioError(f"target = {short(text)}: expected KEY<=X, KEY<X, KEY>=X or KEY>X "
                            '(a metrics line\'s key and a number, e.g. "ne_max_abs<=0.02")')
    return m.group(1), m.group(2), value


def target_met(op: str, value: float, threshold: float) -> bool:
    return {"<=": value <= threshold, "<": value < threshold, ">=": value >= threshold,
            ">": value > threshold}[op]


@dataclass(frozen=True)
class RuntimeSpec:
    threads_per_peer: int = 0  # 0 = cores // peers, at least 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    backend: str = "local"  # how peers are started (launch.backends)
    # Where peers live: "process" (one OS process each), "workers" (asyncio tasks in
    # ``workers`` worker processes; 0 = one per core) or "auto" (processes up to
    # max(8, 2 x cores) peers, workers beyond).  Never changes what peers exchange.
    placement: str = "auto"
    workers: int = 0
    # backend = "ray": workers are Ray actors, one placement-group bundle each.
    ray_address: str = ""  # "": this process's Ray, else RAY_ADDRESS, else a local one
    ray_strategy: str = "spread"  # pack | spread (the placement group's strategy)
    worker_cpus: float = 1.0  # CPUs per worker's bundle
    worker_gpus: float = 0.0  # GPUs (a fraction allowed) per worker's bundle
    gpu_memory_fraction: float = 0.0  # cap on each process's CUDA allocator (0: none)
    metrics_every: int = 0  # 0 = about 100 lines per run
    # TensorBoard event files of the metrics, edges and sample grids: tensorboard/ in the
    # run folder (launch/tensorboard.py).
    tensorboard: bool = True
    start_timeout_s: float = 120.0
    stop_timeout_s: float = 10.0
    # A peer silent this long in the measured phase (no heartbeat) is declared failed.
    peer_timeout_s: float = 30.0
    # A failed peer is started again up to ``restart`` times, from its latest resume state
    # (every ``checkpoint_every`` steps; 0: steps / 20).
    restart: int = 0
    checkpoint_every: int = 0
    # "real": a peer steps as fast as the host lets it and messages take the time the
    # host takes (async results depend on the host's load); "virtual": each peer keeps a
    # virtual clock, a step takes ``compute_s`` virtual seconds (divided by the peer's
    # speed, plus its step_delay_ms), links delay in virtual time, and a peer steps at
    # virtual time t with exactly the messages that arrived by t (async only).
    clock: str = "real"
    compute_s: float = 0.01  # a step's modelled compute time on the virtual clock
    # (The virtual clock) where a step's compute time comes from: "model" (compute_s, a
    # compute trace, the pace: deterministic) or "measured" (compute_scale x the host's
    # wall time of the peer's previous training step; its first step takes compute_s):
    # the run then depends on the host again, and its summary says so.
    compute: str = "model"
    compute_scale: float = 1.0
    # Time to quality: "KEY<=X" (or <, >=, >): the summary gives, per peer, the first
    # metrics line whose KEY (a metrics line's key, its namespace optional) met it.
    target: str = ""
    pace: PaceSpec = PaceSpec()  # in a scenario file its keys sit in [runtime]

    def __post_init__(self) -> None:
        at_least(self.threads_per_peer, 0, "threads_per_peer")
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]{1,4})?", self.device):
            raise ScenarioError(f"device = {short(self.device)}; allowed: auto, cpu, cuda, "
                                "cuda:N")
        one_of(self.backend, BACKENDS, "backend")
        one_of(self.placement, PLACEMENTS, "placement")
        at_least(self.workers, 0, "workers")
        one_of(self.ray_strategy, RAY_STRATEGIES, "ray_strategy")
        at_least(self.worker_cpus, 0, "worker_cpus")
        at_least(self.worker_gpus, 0, "worker_gpus")
        if not 0 <= self.gpu_memory_fraction <= 1:
            raise ScenarioError(f"gpu_memory_fraction = {self.gpu_memory_fraction} must lie "
                                "in [0, 1] (0: no cap)")
        at_least(self.metrics_every, 0, "metrics_every")
        if not isinstance(self.tensorboard, bool):
            raise ScenarioError(f"tensorboard = {self.tensorboard!r} must be true or false")
        at_least(self.peer_timeout_s, 0, "peer_timeout_s", strict=True)
        at_least(self.restart, 0, "restart")
        at_least(self.checkpoint_every, 0, "checkpoint_every")
        one_of(self.clock, CLOCKS, "clock")
        if self.target:
            parse_target(self.target)
        at_least(self.compute_s, 0.0, "compute_s")
        if not math.isfinite(self.compute_s):
            raise ScenarioError(f"compute_s = {self.compute_s} must be a finite number of "
                                "seconds")
        one_of(self.compute, COMPUTE_SOURCES, "compute")
        at_least(self.compute_scale, 0.0, "compute_scale", strict=True)


@dataclass(frozen=True)
class PlayerSpec:
    """What one peer runs: its learner's settings and the spaces it publishes and learns.

    ``learner`` is the learner family's own frozen Config (the scenario's ``[learner]``
    with the peer's ``[[peers]]`` overrides applied).
    """

    peer: int
    learner: Any
    publishes: tuple[str, ...] = ()
    learns: tuple[str, ...] = ()
    pace: PaceSpec = PaceSpec()


@dataclass(frozen=True)
class Scenario:
    """A resolved scenario: every key typed and checked, one player per peer."""

    name: str
    topology: TopologySpec
    exchange: Any  # the exchange's Config ([exchange]: what travels, how it is combined)
    learner: Any  # the learner's Config ([learner]: the default of every player)
    players: tuple[PlayerSpec, ...] = ()
    seed: int = field(default=0, metadata=WIDE)  # only ever hashed (rng.derive_seed)
    steps: int = 1000
    comm: CommSpec = field(default_factory=CommSpec)
    data: Any = None  # the learner's data spec (e.g. data.image.ImageDataSpec), or None
    runtime: RuntimeSpec = field(default_factory=RuntimeSpec)
    source: str = ""  # the file it came from, for error messages
    preset: str = ""  # the old [algorithm] name the file used (game, diffgan, expfam), if any

    @property
    def n(self) -> int:
        return self.topology.n

    @property
    def method_name(self) -> str:
        """``<exchange> x <learner>``, for messages."""
        kinds = sorted({p.learner.kind for p in self.players} or {self.learner.kind})
        return f"{self.exchange.kind} x {', '.join(kinds)}"

    def player(self, peer: int) -> PlayerSpec:
        return self.players[peer]

    @property
    def deterministic(self) -> bool:
        """Whether the host's load and scheduling are out of the results: a sync run (every
        step waits for its rounds, on either clock), or the virtual clock with modelled
        compute (not ``runtime.compute = "measured"``)."""
        rt = self.runtime
        return self.comm.mode == "sync" or (rt.clock == "virtual" and rt.compute == "model")


def from_plain(cls: type, data: Any, decoders: dict[str, Any] | None = None) -> Any:
    """Rebuild dataclass ``cls`` from :func:`to_plain`'s output.

    Fields typed ``Any`` hold objects this module does not know (an
    algorithm's Config); ``decoders`` maps their field name to a function of
    the plain value (and the partly decoded table) that rebuilds them.
    """
    decoders = decoders or {}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        kwargs[f.name] = _from_plain_value(hints[f.name], data[f.name], f.name, decoders, kwargs)
    return cls(**kwargs)


def _from_plain_value(tp: Any, value: Any, name: str, decoders: dict, partial: dict) -> Any:
    if name in decoders and tp is Any:
        return decoders[name](value, partial)
    origin = typing.get_origin(tp)
    if value is None:
        return None
    if dataclasses.is_dataclass(tp):
        return from_plain(tp, value, decoders)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if isinstance(value, list):
            tup = [a for a in args if typing.get_origin(a) in (list, tuple)]
            if tup:
                return _from_plain_value(tup[0], value, name, decoders, partial)
        return value
    if origin in (list, tuple):
        (inner, *_rest) = typing.get_args(tp) or (Any,)
        return tuple(_from_plain_value(inner, v, name, decoders, partial) for v in value)
    return value
