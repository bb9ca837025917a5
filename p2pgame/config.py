"""The scenario as data: frozen, typed dataclasses that check themselves.

This module imports nothing from p2pgame.  It holds the shapes of a resolved
:class:`Scenario` and the generic machinery to build them from TOML tables
(:func:`build`) and from plain data (:func:`from_plain`, :func:`to_plain`).
Turning a raw scenario file into a ``Scenario`` (algorithm registry lookups,
checks across sections) is :mod:`p2pgame.scenario`'s job.

Errors are :class:`ScenarioError` and name the key and what is allowed; the
resolver prefixes them with the file, so a bad scenario stops the launcher
before any process starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any


class ScenarioError(ValueError):
    """A scenario file or override is malformed."""


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def check_value(value: Any, tp: Any, where: str) -> Any:
    """Check (and lightly coerce) ``value`` against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check_value(value, arg, where)
            except ScenarioError:
                pass
        raise ScenarioError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ScenarioError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScenarioError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ScenarioError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ScenarioError(f"{where}: expected a string, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ScenarioError(f"{where}: expected a list, got {value!r}")
        (inner, *_rest) = typing.get_args(tp) or (Any,)
        return tuple(check_value(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ScenarioError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    return value


def build(cls: type, table: Any, where: str) -> Any:
    """Build frozen dataclass ``cls`` from a TOML table, rejecting unknown keys."""
    if dataclasses.is_dataclass(table) and isinstance(table, cls):
        return table
    if not isinstance(table, dict):
        raise ScenarioError(f"{where}: expected a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ScenarioError(
            f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in table.items():
        kwargs[name] = check_value(value, hints[name], f"{where}.{name}" if where else name)
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
    except ScenarioError as e:
        raise ScenarioError(f"{where}: {e}" if where else str(e)) from None
    except ValueError as e:
        raise ScenarioError(f"{where}: {e}" if where else str(e)) from None


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
        raise ScenarioError(f"{key} = {value!r} is not known; allowed: {', '.join(allowed)}")


def at_least(value: float | int, low: float, key: str, strict: bool = False) -> None:
    if value < low or (strict and value == low):
        rel = ">" if strict else ">="
        raise ScenarioError(f"{key} = {value!r} must be {rel} {low}")


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
                raise ScenarioError(f"edges: {list(e)!r} is not a [src, dst] pair")
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

    @property
    def buffer_limit_bytes(self) -> float:
        """The waiting queue's byte limit in effect (inf: none)."""
        if self.buffer_bytes > 0:
            return self.buffer_bytes
        return self.bandwidth if self.bandwidth > 0 else float("inf")

    @property
    def is_ideal(self) -> bool:
        return self == LinkSpec()


LINK_KEYS = tuple(f.name for f in dataclasses.fields(LinkSpec))


@dataclass(frozen=True)
class EdgeLinkSpec:
    """A per-edge override: the link ``src -> dst`` behaves as ``link``."""

    src: int
    dst: int
    link: LinkSpec


@dataclass(frozen=True)
class CommSpec:
    """How peers exchange.  In a scenario file the default link's keys sit in ``[comm]``."""

    mode: str = "sync"
    transport: str = "ipc"
    host: str = "127.0.0.1"
    samples_per_message: int = 0  # 0 = the algorithm's default
    publish_every: int = 1
    max_message_bytes: int = 64 * 2**20
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
        at_least(self.publish_every, 1, "publish_every")
        at_least(self.max_message_bytes, 64, "max_message_bytes")
        at_least(self.send_hwm, 0, "send_hwm")
        at_least(self.max_samples_per_message, 1, "max_samples_per_message")
        one_of(self.security, ("none", "curve"), "security")
        at_least(self.sync_timeout_s, 0.0, "sync_timeout_s", strict=True)

    def link_of(self, src: int, dst: int) -> LinkSpec:
        """The link ``src -> dst``: its override if there is one, else the default."""
        for e in self.edges:
            if (e.src, e.dst) == (src, dst):
                return e.link
        return self.link


BACKENDS = ("local", "ray")
RAY_STRATEGIES = ("pack", "spread")
PLACEMENTS = ("auto", "process", "workers")


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

    def __post_init__(self) -> None:
        if not 0 < self.speed <= 1:
            raise ScenarioError(f"speed = {self.speed!r} must lie in (0, 1] "
                                "(a slow-down: 0.1 is ten times slower)")
        at_least(self.step_delay_ms, 0.0, "step_delay_ms")
        one_of(self.step_delay_dist, PACE_DISTS, "step_delay_dist")

    @property
    def is_natural(self) -> bool:
        return self.speed == 1 and self.step_delay_ms == 0


PACE_KEYS = tuple(f.name for f in dataclasses.fields(PaceSpec))


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
    start_timeout_s: float = 120.0
    stop_timeout_s: float = 10.0
    # A peer silent this long in the measured phase (no heartbeat) is declared failed.
    peer_timeout_s: float = 30.0
    # A failed peer is started again up to ``restart`` times, from its latest resume state
    # (every ``checkpoint_every`` steps; 0: steps / 20).
    restart: int = 0
    checkpoint_every: int = 0
    pace: PaceSpec = PaceSpec()  # in a scenario file its keys sit in [runtime]

    def __post_init__(self) -> None:
        at_least(self.threads_per_peer, 0, "threads_per_peer")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ScenarioError(f"device = {self.device!r}; allowed: auto, cpu, cuda, cuda:N")
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
        at_least(self.peer_timeout_s, 0, "peer_timeout_s", strict=True)
        at_least(self.restart, 0, "restart")
        at_least(self.checkpoint_every, 0, "checkpoint_every")


@dataclass(frozen=True)
class PlayerSpec:
    """What one peer runs: its algorithm settings and the spaces it publishes and learns.

    ``algorithm`` is the algorithm's own frozen Config (the scenario's
    ``[algorithm]`` with the peer's ``[[peers]]`` overrides applied).
    """

    peer: int
    algorithm: Any
    publishes: tuple[str, ...] = ()
    learns: tuple[str, ...] = ()
    pace: PaceSpec = PaceSpec()


@dataclass(frozen=True)
class Scenario:
    """A resolved scenario: every key typed and checked, one player per peer."""

    name: str
    algorithm_name: str
    topology: TopologySpec
    algorithm: Any  # the algorithm's Config (the default of every player)
    players: tuple[PlayerSpec, ...] = ()
    seed: int = 0
    steps: int = 1000
    comm: CommSpec = field(default_factory=CommSpec)
    data: Any = None  # the algorithm's data spec (e.g. data.image.ImageDataSpec), or None
    runtime: RuntimeSpec = field(default_factory=RuntimeSpec)
    source: str = ""  # the file it came from, for error messages

    @property
    def n(self) -> int:
        return self.topology.n

    def player(self, peer: int) -> PlayerSpec:
        return self.players[peer]


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
