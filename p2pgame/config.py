"""Typed, frozen scenario configuration loaded from TOML.

A scenario file maps to :class:`Scenario`; every section becomes a frozen
dataclass that checks itself.  Errors are :class:`ScenarioError` and always name
the file, the key and what is allowed, so a bad file stops the launcher before
any process starts.
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ScenarioError(ValueError):
    """A scenario file or override is malformed."""


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _check_value(value: Any, tp: Any, where: str) -> Any:
    """Check (and lightly coerce) ``value`` against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(value, arg, where)
            except ScenarioError as e:
                errors.append(str(e))
        raise ScenarioError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
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
        return tuple(_check_value(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ScenarioError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    return value


def build(cls: type, table: Any, where: str) -> Any:
    """Build frozen dataclass ``cls`` from a TOML table, rejecting unknown keys."""
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
        kwargs[name] = _check_value(value, hints[name], f"{where}.{name}" if where else name)
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
        raise ScenarioError(f"{where}: {e}") from None
    except ValueError as e:
        raise ScenarioError(f"{where}: {e}") from None


def _one_of(value: str, allowed: typing.Iterable[str], key: str) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ScenarioError(f"{key} = {value!r} is not known; allowed: {', '.join(allowed)}")


def _at_least(value: float | int, low: float, key: str, strict: bool = False) -> None:
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
        _one_of(self.graph, GRAPH_KINDS, "graph")
        if self.graph == "edges" and not self.edges:
            raise ScenarioError("graph = 'edges' needs a non-empty 'edges' list of [src, dst]")
        for e in self.edges:
            if len(e) != 2:
                raise ScenarioError(f"edges: {list(e)!r} is not a [src, dst] pair")
        _at_least(self.p, 0.0, "p")
        if self.p > 1:
            raise ScenarioError(f"p = {self.p} must be <= 1")
        _at_least(self.at, 0, "at")


@dataclass(frozen=True)
class TopologySpec:
    n: int
    graph: str = "ring"
    directed: bool = False
    degree: int = 3
    p: float = 0.3
    k: int = 2
    m: int = 1
    rows: int = 0
    edges: tuple[tuple[int, ...], ...] = ()
    weights: str = "self_weight"
    self_weight: float | tuple[float, ...] = 0.5
    matrix: tuple[tuple[float, ...], ...] = ()
    schedule: tuple[dict, ...] = ()  # time-varying: graphs switched at given steps
    redraw_every: int = 0  # >0: redraw the (random) graph every K steps

    def __post_init__(self) -> None:
        _at_least(self.n, 1, "n")
        _one_of(self.weights, WEIGHT_RULES, "weights")
        if self.weights == "matrix" and not self.matrix:
            raise ScenarioError("weights = 'matrix' needs a 'matrix' (n rows of n numbers)")
        sw = self.self_weight
        values = sw if isinstance(sw, tuple) else (sw,)
        if isinstance(sw, tuple) and len(sw) != self.n:
            raise ScenarioError(f"self_weight: list of {len(sw)} values for n = {self.n} peers")
        for v in values:
            if not 0.0 <= v <= 1.0:
                raise ScenarioError(f"self_weight = {v} must lie in [0, 1]")
        _at_least(self.redraw_every, 0, "redraw_every")
        if self.redraw_every and self.schedule:
            raise ScenarioError("use either 'schedule' or 'redraw_every', not both")

    def base_graph(self) -> GraphSpec:
        return GraphSpec(
            graph=self.graph,
            directed=self.directed,
            degree=self.degree,
            p=self.p,
            k=self.k,
            m=self.m,
            rows=self.rows,
            edges=self.edges,
        )

    def graphs(self, where: str = "topology") -> tuple[GraphSpec, ...]:
        """The base graph followed by the scheduled ones, sorted by start step."""
        base = self.base_graph()
        out = [base]
        for i, entry in enumerate(self.schedule):
            merged = {f.name: getattr(base, f.name) for f in dataclasses.fields(GraphSpec)}
            merged.update(entry)
            if "at" not in entry:
                raise ScenarioError(f"{where}.schedule[{i}]: missing key 'at' (first step)")
            out.append(build(GraphSpec, merged, f"{where}.schedule[{i}]"))
        ats = [g.at for g in out]
        if ats != sorted(ats) or len(set(ats)) != len(ats):
            raise ScenarioError(f"{where}.schedule: 'at' steps must be increasing, got {ats}")
        return tuple(out)


@dataclass(frozen=True)
class LinkSpec:
    """Link emulation for one directed edge (or the scenario-wide default)."""

    delay_steps: int = 0
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    drop: float = 0.0
    bandwidth: float = 0.0  # bytes per second; 0 = unlimited
    burst: float = 0.0  # token bucket size in bytes; 0 = one message

    def __post_init__(self) -> None:
        _at_least(self.delay_steps, 0, "delay_steps")
        _at_least(self.latency_ms, 0.0, "latency_ms")
        _at_least(self.jitter_ms, 0.0, "jitter_ms")
        if not 0.0 <= self.drop < 1.0:
            raise ScenarioError(f"drop = {self.drop} must lie in [0, 1)")
        _at_least(self.bandwidth, 0.0, "bandwidth")
        _at_least(self.burst, 0.0, "burst")

    @property
    def is_ideal(self) -> bool:
        return self == LinkSpec()


LINK_KEYS = tuple(f.name for f in dataclasses.fields(LinkSpec))


@dataclass(frozen=True)
class CommSpec:
    mode: str = "sync"
    transport: str = "ipc"
    host: str = "127.0.0.1"
    samples_per_message: int = 0  # 0 = the algorithm's default
    publish_every: int = 1
    max_message_bytes: int = 64 * 2**20
    pack_bool: bool = True  # bit-pack bool tensors on the wire
    sync_timeout_s: float = 60.0  # how long a sync barrier waits before failing the peer
    delay_steps: int = 0
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    drop: float = 0.0
    bandwidth: float = 0.0
    burst: float = 0.0
    edges: tuple[dict, ...] = ()

    def __post_init__(self) -> None:
        _one_of(self.mode, ("sync", "async"), "mode")
        _one_of(self.transport, ("ipc", "tcp"), "transport")
        _at_least(self.samples_per_message, 0, "samples_per_message")
        _at_least(self.publish_every, 1, "publish_every")
        _at_least(self.max_message_bytes, 64, "max_message_bytes")
        _at_least(self.sync_timeout_s, 0.0, "sync_timeout_s", strict=True)
        self.default_link()  # validates the link keys

    def default_link(self) -> LinkSpec:
        return LinkSpec(**{k: getattr(self, k) for k in LINK_KEYS})

    def edge_links(self, n: int, where: str = "comm") -> dict[tuple[int, int], LinkSpec]:
        """Per-edge overrides: ``{(src, dst): LinkSpec}``."""
        out: dict[tuple[int, int], LinkSpec] = {}
        base = {k: getattr(self, k) for k in LINK_KEYS}
        for i, entry in enumerate(self.edges):
            w = f"{where}.edges[{i}]"
            if not isinstance(entry, dict):
                raise ScenarioError(f"{w}: expected a table with src, dst and link keys")
            entry = dict(entry)
            try:
                src, dst = entry.pop("src"), entry.pop("dst")
            except KeyError as e:
                raise ScenarioError(f"{w}: missing key {e.args[0]!r}") from None
            for name, v in (("src", src), ("dst", dst)):
                if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n:
                    raise ScenarioError(f"{w}.{name} = {v!r} is not a peer id in 0..{n - 1}")
            merged = dict(base)
            merged.update(entry)
            out[(src, dst)] = build(LinkSpec, merged, w)
        return out


@dataclass(frozen=True)
class RuntimeSpec:
    threads_per_peer: int = 0  # 0 = cores // peers, at least 1
    device: str = "auto"  # auto | cpu | cuda
    metrics_every: int = 0  # 0 = about 100 lines per run
    start_timeout_s: float = 120.0
    stop_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        _at_least(self.threads_per_peer, 0, "threads_per_peer")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ScenarioError(f"device = {self.device!r}; allowed: auto, cpu, cuda, cuda:N")
        _at_least(self.metrics_every, 0, "metrics_every")


@dataclass(frozen=True)
class Scenario:
    name: str
    topology: TopologySpec
    algorithm: dict
    seed: int = 0
    steps: int = 1000
    comm: CommSpec = field(default_factory=CommSpec)
    data: dict = field(default_factory=dict)
    runtime: RuntimeSpec = field(default_factory=RuntimeSpec)
    eval: dict = field(default_factory=dict)
    source: str = ""  # the file it came from, for error messages

    @property
    def n(self) -> int:
        return self.topology.n


SECTIONS = {
    "topology": TopologySpec,
    "comm": CommSpec,
    "runtime": RuntimeSpec,
}
TOP_KEYS = ("name", "seed", "steps", "topology", "comm", "algorithm", "data", "runtime", "eval")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], value) with the value read as a TOML literal."""
    if "=" not in text:
        raise ScenarioError(f"--set {text!r}: expected key=value, e.g. comm.drop=0.1")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ScenarioError(f"--set {text!r}: empty key")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word is a string
    return key.split("."), value


def apply_overrides(raw: dict, overrides: typing.Iterable[str]) -> dict:
    out = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ScenarioError(f"--set {text!r}: {part!r} is not a table")
            node = nxt
        node[path[-1]] = value
    return out


def scenario_from_dict(raw: dict, source: str = "<scenario>") -> Scenario:
    """Build and fully validate a scenario (topology weights included)."""
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise ScenarioError(
            f"{source}: unknown key {unknown[0]!r}; allowed: {', '.join(TOP_KEYS)}"
        )
    try:
        kwargs: dict[str, Any] = {"source": source}
        for key in ("name", "seed", "steps"):
            if key in raw:
                kwargs[key] = _check_value(raw[key], {"name": str}.get(key, int), key)
        if "name" not in kwargs:
            kwargs["name"] = Path(source).stem
        if "topology" not in raw:
            raise ScenarioError("missing section [topology]")
        if "algorithm" not in raw:
            raise ScenarioError("missing section [algorithm]")
        for key, cls in SECTIONS.items():
            if key in raw:
                kwargs[key] = build(cls, raw[key], key)
        for key in ("algorithm", "data", "eval"):
            if key in raw:
                kwargs[key] = _check_value(raw[key], dict, key)
        _at_least(kwargs.get("steps", 1000), 1, "steps")
        scenario = Scenario(**kwargs)
        # Deeper checks that need several sections at once.
        from p2pgame import topology as topo
        from p2pgame.algorithms import validate_algorithm

        schedule = topo.build_schedule(scenario)
        all_edges = {tuple(e) for t in schedule.topologies for e in t.edges}
        for k, (src, dst) in enumerate(scenario.comm.edge_links(scenario.n)):
            if (src, dst) not in all_edges:
                raise ScenarioError(
                    f"comm.edges[{k}]: {src} -> {dst} is not an edge of the topology "
                    "(an override applies to a link that exists)")
        validate_algorithm(scenario)
    except ScenarioError as e:
        raise ScenarioError(f"{source}: {e}") from None
    return scenario


def load_raw(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"{path}: scenario file not found")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: not valid TOML: {e}") from None


def load_scenario(path: str | Path, overrides: typing.Iterable[str] = ()) -> Scenario:
    raw = apply_overrides(load_raw(path), overrides)
    return scenario_from_dict(raw, str(path))


def to_plain(obj: Any) -> Any:
    """A JSON-friendly copy of a scenario (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj
