"""Scenario resolution: a raw TOML table (plus ``--set`` overrides) -> a typed :class:`Scenario`.

Every key is checked here, before any process starts: each section is built
into its frozen dataclass (unknown keys are errors), the algorithm's own
Config and data spec are looked up in the registry, per-peer settings
(``[[peers]]``) become one :class:`PlayerSpec` per peer, and the checks that
need several sections at once run last (the topology and its weights, link
overrides on real edges, which peer learns which space from whom, the
algorithm's own checks).  Errors are :class:`ScenarioError` naming the file
(or the ``--set`` override that causes them), the key and what is allowed.

The scenario file's layout stays flat where users expect it: the first
graph's keys sit in ``[topology]`` and the default link's keys in ``[comm]``;
the resolver nests them (``TopologySpec.graphs``, ``CommSpec.link``).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import re
import tomllib
import typing
from pathlib import Path
from typing import Any

from p2pgame.bus.topics import TopicError, check_space_names
from p2pgame.config import (
    GRAPH_KEYS,
    LINK_KEYS,
    PACE_KEYS,
    CommSpec,
    EdgeLinkSpec,
    GraphSpec,
    LinkSpec,
    PaceSpec,
    PlayerSpec,
    RuntimeSpec,
    Scenario,
    ScenarioError,
    TopologySpec,
    at_least,
    build,
    check_value,
    clip,
    one_of,
    parse_availability,
    parse_compute_trace,
    parse_mahimahi,
    short,
    with_device_profile,
    with_link_profile,
)
from p2pgame.exchange import EXCHANGES, exchange_class, method
from p2pgame.learners import config_class, known, learner_class
from p2pgame.learners.base import schema_text
from p2pgame.topology import Schedule, build_schedule

TOP_KEYS = ("name", "seed", "steps", "topology", "comm", "exchange", "learner", "data", "runtime",
            "peers", "algorithm")
TOPOLOGY_KEYS = ("n", *GRAPH_KEYS, "weights", "self_weight", "matrix", "schedule", "redraw_every")
COMM_KEYS = tuple(k for k in CommSpec.__dataclass_fields__ if k not in ("link",)) + LINK_KEYS + (
    "profile",)
PEER_KEYS = ("ids", "publishes", "learns", "learner", "runtime")
PRESETS = ("game", "diffgan", "expfam")


# --------------------------------------------------------------------------- raw files


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], value) with the value read as a TOML literal."""
    if "=" not in text:
        raise ScenarioError(f"{_option(text)}: expected key=value, e.g. comm.drop=0.1")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ScenarioError(f"{_option(text)}: empty key")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word is a string
    except (ValueError, RecursionError) as e:  # an integer of 5000 digits; deep nesting
        raise ScenarioError(f"{_option(text)}: not a value p2pgame can read "
                            f"({_unreadable(e)})") from None
    return key.split("."), value


def _option(text: str) -> str:
    """``--set key=value`` as an error message names it: short, and on one line."""
    return f"--set {clip(text) if text.isprintable() else short(text)}"


def _unreadable(e: Exception) -> str:
    return "nested too deeply" if isinstance(e, RecursionError) else clip(str(e), 80)


class Overridden(dict):
    """A raw scenario with ``--set`` overrides applied (what :func:`apply_overrides`
    returns).  It keeps the file's own table and the overrides, so that :func:`resolve`
    blames an error on the override that causes it rather than on the file."""

    base: dict
    overrides: tuple[str, ...]


def apply_overrides(raw: dict, overrides: typing.Iterable[str]) -> dict:
    """Set each ``key=value``; a key part ``name[k]`` is item k of the array of tables
    ``name`` (``peers[1].algorithm.lr=1e-4``: the second ``[[peers]]`` group)."""
    overrides = tuple(overrides)
    out = Overridden(copy.deepcopy(raw))
    out.base = getattr(raw, "base", raw)
    out.overrides = getattr(raw, "overrides", ()) + overrides
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            name, index = _indexed(part, text)
            nxt = node.setdefault(name, {})
            if index is not None:
                if not isinstance(nxt, list):
                    raise ScenarioError(f"{_option(text)}: {short(name)} is not an array "
                                        f"of tables ([[{clip(name)}]])")
                if not 0 <= index < len(nxt):
                    raise ScenarioError(f"{_option(text)}: there are {len(nxt)} "
                                        f"[[{clip(name)}]] table(s); no item {index}")
                nxt = nxt[index]
            if not isinstance(nxt, dict):
                raise ScenarioError(f"{_option(text)}: {short(part)} is not a table")
            node = nxt
        node[path[-1]] = value
    return out


def _indexed(part: str, text: str) -> tuple[str, int | None]:
    """``"peers[1]"`` -> ("peers", 1); ``"comm"`` -> ("comm", None)."""
    if not part.endswith("]"):
        return part, None
    name, _, index = part[:-1].partition("[")
    if not name or not index.isdigit():
        raise ScenarioError(f"{_option(text)}: {short(part)}: expected name[index], "
                            "e.g. peers[0]")
    return name, int(index)


def load_text(text: str, source: str) -> dict:
    """A scenario given as TOML text (``source`` names it in errors: ``<string>``)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        nor = "" if "\n" in text else " (nor the path of an existing file)"
        raise ScenarioError(f"{source}: not valid TOML{nor}: {e}") from None
    except (ValueError, RecursionError) as e:  # an integer of 5000 digits; deep nesting
        raise ScenarioError(f"{source}: not a scenario p2pgame can read ({_unreadable(e)})"
                            ) from None


def load_raw(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"{path}: scenario file not found")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ScenarioError(f"{path}: not valid TOML: not UTF-8 text (byte {e.start})") from None
    except (ValueError, RecursionError) as e:  # an integer of 5000 digits; deep nesting
        raise ScenarioError(f"{path}: not a scenario p2pgame can read ({_unreadable(e)})"
                            ) from None
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read the scenario file: {e.strerror or e}"
                            ) from None


def load_scenario(path: str | Path, overrides: typing.Iterable[str] = ()) -> Scenario:
    raw = apply_overrides(load_raw(path), overrides)
    return resolve(raw, str(path))


# --------------------------------------------------------------------------- sections


def _table(value: Any, where: str, allowed: tuple[str, ...]) -> dict:
    if not isinstance(value, dict):
        raise ScenarioError(f"{where}: expected a table, got {short(value)}")
    unknown = sorted(set(value) - set(allowed), key=str)
    if unknown:
        raise ScenarioError(
            f"{where}: unknown key {short(unknown[0])}; allowed: {', '.join(sorted(allowed))}")
    return value


def resolve_topology(table: Any) -> TopologySpec:
    table = _table(table, "topology", TOPOLOGY_KEYS)
    base = build(GraphSpec, {k: table[k] for k in GRAPH_KEYS if k in table}, "topology")
    graphs = [base]
    schedule = check_value(table.get("schedule", ()), tuple[dict, ...], "topology.schedule")
    for i, entry in enumerate(schedule):
        where = f"topology.schedule[{i}]"
        if "at" not in entry:
            raise ScenarioError(f"{where}: missing key 'at' (first step)")
        merged = {k: getattr(base, k) for k in GRAPH_KEYS}
        merged.update(entry)
        graphs.append(build(GraphSpec, merged, where))
    rest = {k: table[k] for k in ("n", "weights", "self_weight", "matrix", "redraw_every")
            if k in table}
    return build(TopologySpec, {**rest, "graphs": tuple(graphs)}, "topology")


def _traced(link: LinkSpec, where: str, source: str) -> LinkSpec:
    """A link with ``trace``: its Mahimahi file read (:func:`_read_beside`) into
    ``trace_ms``."""
    if not link.trace:
        return link
    key = f"{where}.trace"
    text = _read_beside(link.trace, key, source)
    return dataclasses.replace(link, trace_ms=parse_mahimahi(text, f"{key} = {short(link.trace)}"))


def _read_beside(name: str, key: str, source: str) -> str:
    """The text of a file a scenario names (relative to the scenario file; to the working
    folder for a scenario given as text); errors name ``key``."""
    path = Path(name)
    if not path.is_absolute() and Path(source).is_file():
        path = Path(source).resolve().parent / path
    try:
        return path.read_text()
    except FileNotFoundError:
        raise ScenarioError(f"{key} = {short(name)}: no such file ({path})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScenarioError(f"{key} = {short(name)}: cannot read it "
                            f"({getattr(e, 'strerror', None) or e})") from None


def _compute_traced(players: tuple, source: str) -> tuple:
    """Each peer's ``compute_trace`` file read into its pace (``compute_trace_s``), and its
    ``availability`` file into its offline windows (each file read once)."""
    read: dict[tuple[str, str], Any] = {}

    def beside(key: str, name: str, parse: Any) -> Any:
        if (key, name) not in read:
            read[key, name] = parse(_read_beside(name, f"runtime.{key}", source),
                                    f"runtime.{key} = {short(name)}")
        return read[key, name]

    out = []
    for p in players:
        pace = p.pace
        if pace.availability and not pace.offline:
            pace = dataclasses.replace(
                pace, offline=beside("availability", pace.availability, parse_availability))
        if pace.compute_trace and not pace.compute_trace_s:
            pace = dataclasses.replace(pace, compute_trace_s=beside(
                "compute_trace", pace.compute_trace, parse_compute_trace))
        out.append(p if pace is p.pace else dataclasses.replace(p, pace=pace))
    return tuple(out)


def resolve_comm(table: Any, n: int, source: str = "<scenario>") -> CommSpec:
    table = _table(table, "comm", COMM_KEYS)
    link = build(LinkSpec, with_link_profile(
        {k: table[k] for k in (*LINK_KEYS, "profile") if k in table}, "comm"), "comm")
    link = _traced(link, "comm", source)
    edges = []
    for i, entry in enumerate(check_value(table.get("edges", ()), tuple[Any, ...], "comm.edges")):
        w = f"comm.edges[{i}]"
        if not isinstance(entry, dict):
            raise ScenarioError(f"{w}: expected a table with src, dst and link keys")
        entry = dict(entry)
        try:
            src, dst = entry.pop("src"), entry.pop("dst")
        except KeyError as e:
            raise ScenarioError(f"{w}: missing key {e.args[0]!r}") from None
        entry = with_link_profile(entry, w)
        for name, v in (("src", src), ("dst", dst)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n:
                raise ScenarioError(f"{w}.{name} = {short(v)} is not a peer id in 0..{n - 1}")
        for k, e in enumerate(edges):
            if (e.src, e.dst) == (src, dst):
                raise ScenarioError(f"{w}: {src} -> {dst} is already overridden by comm.edges[{k}]")
        merged = {k: getattr(link, k) for k in LINK_KEYS}
        merged.update(entry)
        if "trace" not in entry and "bandwidth" in entry:  # (the edge's own cap wins)
            merged["trace"] = ""
        if "trace" in entry and "bandwidth" not in entry:  # (... or its own trace)
            merged["bandwidth"] = 0.0
        edge = build(LinkSpec, merged, w)
        edge = (_traced(edge, w, source) if "trace" in entry
                else dataclasses.replace(edge, trace_ms=link.trace_ms if edge.trace else ()))
        edges.append(EdgeLinkSpec(src, dst, edge))
    rest = {k: table[k] for k in COMM_KEYS if k in table and k not in LINK_KEYS
            and k not in ("edges", "profile")}
    return build(CommSpec, {**rest, "link": link, "edges": tuple(edges)}, "comm")


def _spaces(value: Any, where: str, allowed: dict[str, Any], who: str, verb: str,
            what: str) -> tuple[str, ...]:
    names = check_value(value, tuple[str, ...], where)
    for s in names:
        if s not in allowed:
            raise ScenarioError(
                f"{where}: {who} cannot {verb} {short(s)}: {what} can {verb} only "
                f"{', '.join(allowed) or 'nothing'}")
    if len(set(names)) != len(names):
        raise ScenarioError(f"{where}: a space is listed twice in {short(list(names))}")
    return names


# (device_profile: a name for a speed, expanded by with_device_profile)
PACE_TABLE_KEYS = (*PACE_KEYS, "device_profile")
RUNTIME_KEYS = tuple(k for k in RuntimeSpec.__dataclass_fields__ if k != "pace") + PACE_TABLE_KEYS


def check_restart(scenario: Scenario) -> None:
    """``runtime.restart``: what a restarted peer needs to rejoin a run in progress."""
    if scenario.comm.mode != "async":
        raise ScenarioError(
            'runtime.restart needs comm.mode = "async": a restarted peer resumes at its last '
            "checkpoint, and in sync mode it would need rounds its neighbours have moved past")
    if scenario.runtime.backend != "local":
        raise ScenarioError('runtime.restart works with runtime.backend = "local" only (yet)')
    if not method(scenario).resumable:
        raise ScenarioError(f"runtime.restart: learner {_kinds(scenario)} cannot resume a "
                            "peer yet (the expfam learners can)")


def check_checkpoints(scenario: Scenario) -> None:
    """``runtime.checkpoint_every``: resume states are only worth saving if ``--resume``
    can continue from them (launch._resumable)."""
    if scenario.comm.mode != "async":
        raise ScenarioError(
            'runtime.checkpoint_every needs comm.mode = "async": a sync run cannot be resumed '
            "(each peer keeps only its latest state, and sync peers must resume at one "
            "common step)")
    if not method(scenario).resumable:
        raise ScenarioError(f"runtime.checkpoint_every: learner {_kinds(scenario)} cannot "
                            "resume a peer yet (the expfam learners can)")


def _kinds(scenario: Scenario) -> str:
    return ", ".join(repr(k) for k in sorted({p.learner.kind for p in scenario.players}))


def resolve_runtime(table: Any) -> RuntimeSpec:
    """[runtime]: the pace keys (a peer's default speed) sit flat in it, like [comm]'s links."""
    table = _table(table, "runtime", RUNTIME_KEYS)
    pace = build(PaceSpec, with_device_profile(
        {k: table[k] for k in PACE_TABLE_KEYS if k in table}, "runtime"), "runtime")
    rest = {k: v for k, v in table.items() if k not in PACE_TABLE_KEYS}
    return dataclasses.replace(build(RuntimeSpec, rest, "runtime"), pace=pace)


def _learner_config(table: Any, where: str) -> Any:
    """A learner table (``kind`` and the family's own keys) -> its frozen Config."""
    if not isinstance(table, dict):
        raise ScenarioError(f"{where}: expected a table, got {short(table)}")
    kind = table.get("kind")
    if not isinstance(kind, str):
        raise ScenarioError(f"{where}.kind is required; allowed: {', '.join(known())}")
    one_of(kind, known(), f"{where}.kind")
    fields = config_class(kind).__dataclass_fields__
    for key in table:
        if key not in fields:
            owners = [k for k in known() if key in _fields_of(k)]
            if owners:  # a key of another family: say whose
                raise ScenarioError(f"{where}.{key}: applies only to {', '.join(owners)} "
                                    f"learners, not {kind!r}")
    return build(config_class(kind), table, where)


def _fields_of(kind: str) -> tuple[str, ...]:
    try:
        return tuple(config_class(kind).__dataclass_fields__)
    except ScenarioError:  # a plugin that cannot be loaded owns nothing here
        return ()


def resolve_players(raw_peers: Any, table: dict, n: int, exchange: Any,
                    pace: PaceSpec | None = None) -> tuple:
    """One PlayerSpec per peer: the [learner] defaults, then each [[peers]] group's settings
    (its ``learner`` table may change any key, ``kind`` included; its ``runtime`` table may
    set the pace keys: a straggler)."""
    pace = pace or PaceSpec()
    ecls = exchange_class(exchange.kind)
    base = _learner_config(table, "learner")

    def spaces_of(cfg: Any, group: dict, where: str, who: str
                  ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        lcls = learner_class(cfg.kind)
        ecls.validate_pair(exchange, lcls, cfg, where)
        d_pub, d_learn = ecls.default_spaces(exchange, lcls, cfg)
        what = f"its learner ({cfg.kind}) under exchange {exchange.kind!r}"
        publishes = _spaces(group.get("publishes", d_pub), f"{where}.publishes",
                            ecls.spaces(exchange, lcls, cfg), who, "publish", what)
        learns = _spaces(group.get("learns", d_learn), f"{where}.learns",
                         ecls.reads(exchange, lcls, cfg), who, "learn from", what)
        return publishes, learns

    pub, learn = spaces_of(base, {}, "learner", "a peer")
    players: dict[int, PlayerSpec] = {}
    groups = check_value(raw_peers, tuple[Any, ...], "peers")
    for k, group in enumerate(groups):
        where = f"peers[{k}]"
        group = _table(group, where, PEER_KEYS)
        if "ids" not in group:
            raise ScenarioError(f"{where}: missing key 'ids' (the peers this group sets)")
        ids = check_value(group["ids"], tuple[int, ...], f"{where}.ids")
        if not ids:
            raise ScenarioError(f"{where}.ids: name at least one peer")
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ScenarioError(f"{where}.ids: peer {twice[0]} is listed twice")
        overrides = group.get("learner", {})
        if not isinstance(overrides, dict):
            raise ScenarioError(f"{where}.learner: expected a table, got {short(overrides)}")
        merged = {**table, **overrides}
        if overrides.get("kind", table.get("kind")) != table.get("kind") and isinstance(
                overrides.get("kind"), str) and overrides["kind"] in known():
            # Another family for this group: of [learner] it inherits the keys its family
            # knows (batch, lr, ...), not the default family's own ones.
            mine = _fields_of(overrides["kind"])
            merged = {**{k: v for k, v in table.items() if k in mine}, **overrides}
        cfg = _learner_config(merged, f"{where}.learner")
        own_pace = with_device_profile(
            _table(group.get("runtime", {}), f"{where}.runtime", PACE_TABLE_KEYS),
            f"{where}.runtime")
        inherited = dataclasses.asdict(pace)
        if "availability" in own_pace:  # (the group's own windows replace the default's)
            inherited["offline"] = ()
        if "offline" in own_pace:
            inherited["availability"] = ""
        group_pace = build(PaceSpec, {**inherited, **own_pace}, f"{where}.runtime")
        who = f"peer{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}"
        publishes, learns = spaces_of(cfg, group, where, who)
        for i in ids:
            if not 0 <= i < n:
                raise ScenarioError(f"{where}.ids: {i} is not a peer id in 0..{n - 1}")
            if i in players:
                raise ScenarioError(f"{where}.ids: peer {i} is already set by an earlier group")
            players[i] = PlayerSpec(i, cfg, publishes, learns, group_pace)
    return base, tuple(players.get(i, PlayerSpec(i, base, pub, learn, pace)) for i in range(n))


def resolve_exchange(table: Any) -> Any:
    if not isinstance(table, dict):
        raise ScenarioError(f"exchange: expected a table, got {short(table)}")
    kind = table.get("kind")
    if not isinstance(kind, str):
        raise ScenarioError(f"exchange.kind is required; allowed: {', '.join(EXCHANGES)}")
    one_of(kind, EXCHANGES, "exchange.kind")
    return build(exchange_class(kind).Config, table, "exchange")


# --------------------------------------------------------------------------- checks


def check_exchange(scenario: Scenario, schedule: Schedule) -> None:
    """Who learns what from whom: every weighted edge carries a space its receiver learns,
    with the schema the receiver reads it with."""
    ecls = exchange_class(scenario.exchange.kind)
    ex = scenario.exchange
    try:
        check_space_names(method(scenario).spaces)
    except TopicError as e:
        raise ScenarioError(f"exchange {ex.kind!r}: {e}") from None

    def declared(p: Any) -> dict:
        return ecls.spaces(ex, learner_class(p.learner.kind), p.learner)

    def reads(p: Any) -> dict:
        return ecls.reads(ex, learner_class(p.learner.kind), p.learner)

    # Spaces whose content only the same kind of learner can read (an HVAE's tuples
    # carry its latents, which mean something only to the same architecture).
    users: dict[str, tuple[int, str]] = {}
    for p in scenario.players:
        bound = learner_class(p.learner.kind).kind_bound_spaces(p.learner)
        for s in {*p.publishes, *p.learns} & set(bound):
            if s not in users:
                users[s] = (p.peer, p.learner.kind)
            elif users[s][1] != p.learner.kind:
                j, kind = users[s]
                raise ScenarioError(
                    f"peers: peers {j} ({kind}) and {p.peer} ({p.learner.kind}) both use "
                    f"{s!r}, whose content only identical learners share; exchange another "
                    "space (e.g. 'x', images) between different learners")
    # Every publisher of a space publishes the same fields, dtypes and shapes.  (Parameters:
    # the exchange's own check names the first tensor that differs, ParamsHooks.validate.)
    same_schemas = ex.kind != "params"
    first: dict[str, tuple[int, Any]] = {}
    for p in scenario.players if same_schemas else ():
        mine = declared(p)
        for s in p.publishes:
            if s not in first:
                first[s] = (p.peer, mine[s])
            elif first[s][1] != mine[s]:
                j, theirs = first[s]
                raise ScenarioError(
                    f"peers: peers {j} ({scenario.player(j).learner.kind}) and {p.peer} "
                    f"({p.learner.kind}) both publish {s!r} but with different schemas "
                    f"({schema_text(theirs)} vs {schema_text(mine[s])})")
    for i in range(scenario.n):
        me = scenario.player(i)
        in_peers = schedule.union_in(i)
        for s in me.learns:
            if in_peers and not any(s in scenario.player(j).publishes for j in in_peers):
                raise ScenarioError(
                    f"peers: peer {i} learns {s!r} but none of its in-neighbours "
                    f"{list(in_peers)} publishes it")
        my_reads = reads(me)
        for j in in_peers:
            them = scenario.player(j)
            common = [s for s in them.publishes if s in me.learns]
            # A learner reads a space with its own schema of it (e.g. gray float16 images
            # are not binary ones, though both travel on 'x').
            theirs = declared(them)
            for s in common if same_schemas else ():
                if my_reads[s] != theirs[s]:
                    raise ScenarioError(
                        f"peers: peer {i} ({me.learner.kind}) learns {s!r} as "
                        f"{schema_text(my_reads[s])} but its in-neighbour peer {j} "
                        f"({them.learner.kind}) publishes {s!r} as {schema_text(theirs[s])}")
            weighted = any(t.weights[i, j] > 0 for t in schedule.topologies)
            if weighted and them.publishes and not common:
                raise ScenarioError(
                    f"peers: peer {i} gives weight to peer {j} but learns none of the spaces "
                    f"it publishes ({', '.join(them.publishes)}; peer {i} learns "
                    f"{', '.join(me.learns) or 'nothing'})")
            if ecls.partial_rounds and common and set(common) != set(them.publishes):
                raise ScenarioError(
                    f"peers: peer {i} learns only {common} of peer {j}'s spaces "
                    f"{list(them.publishes)}; exchange {ex.kind!r} publishes a varying subset "
                    "per round, so a receiver must take all of them to know a round is "
                    "complete")


def resolve(raw: dict, source: str = "<scenario>") -> Scenario:
    """Build and fully validate a scenario (topology weights included).

    An error names the file, or the ``--set`` override that causes it when ``raw`` came
    from :func:`apply_overrides`."""
    try:
        return _resolve(raw, source)
    except ScenarioError as e:
        msg = str(e)
    culprit = _culprit(raw, source, msg) if isinstance(raw, Overridden) else None
    blame = source if culprit is None else _option(culprit)
    raise ScenarioError(f"{blame}{msg}" if msg.startswith(": ") else f"{blame}: {msg}")


def _culprit(raw: Overridden, source: str, msg: str) -> str | None:
    """The override that causes error ``msg``: the first whose addition to the file (and
    to the overrides before it) gives that error.  None: the file alone gives it."""
    for k in range(len(raw.overrides)):
        try:
            _resolve(apply_overrides(raw.base, raw.overrides[:k]), source)
        except ScenarioError as e:
            if str(e) == msg:
                return None if k == 0 else raw.overrides[k - 1]
    return raw.overrides[-1] if raw.overrides else None


# A run folder's prefix: one file name, not a path.
NAME_RE = re.compile(r"[^/\\\x00-\x1f\x7f]{1,100}")


MAX_EPOCHS = 10000  # topology epochs (redrawn graphs) a run may have


def _resolve(raw: dict, source: str) -> Scenario:
    """:func:`resolve` without the blame: errors name the key, not the file."""
    _table(raw, "", TOP_KEYS)
    if "algorithm" in raw:
        raw, preset = expand_preset(raw)
        try:
            return dataclasses.replace(_resolve_sections(raw, source), preset=preset)
        except ScenarioError as e:  # named as the file names them: algorithm.<key>
            raise ScenarioError(_preset_names(str(e))) from None
    return _resolve_sections(raw, source)


def _resolve_sections(raw: dict, source: str) -> Scenario:
    kwargs: dict[str, Any] = {"source": source}
    for key in ("name", "seed", "steps"):
        if key in raw:
            kwargs[key] = check_value(raw[key], {"name": str}.get(key, int), key,
                                      Scenario.__dataclass_fields__[key].metadata)
    if "name" in raw and (not NAME_RE.fullmatch(kwargs["name"]) or kwargs["name"] in (".", "..")):
        raise ScenarioError(f"name = {short(kwargs['name'])}: the run folder's prefix must be "
                            "a file name of 1 to 100 characters (no '/', no control "
                            "characters)")
    kwargs.setdefault("name", Path(source).stem)
    at_least(kwargs.get("steps", 1000), 1, "steps")
    if "topology" not in raw:
        raise ScenarioError("missing section [topology]")
    topology = resolve_topology(raw["topology"])
    n = topology.n
    steps = kwargs.get("steps", Scenario.__dataclass_fields__["steps"].default)
    if topology.redraw_every and steps / topology.redraw_every > MAX_EPOCHS:
        raise ScenarioError(
            f"topology.redraw_every = {topology.redraw_every} with steps = {steps} draws "
            f"{-(-steps // topology.redraw_every)} graphs; at most {MAX_EPOCHS}: raise "
            "redraw_every")
    for key in ("exchange", "learner"):
        if key not in raw:
            raise ScenarioError(f"missing section [{key}] (see README, \"Scenarios\": "
                                "[exchange] kind = ..., [learner] kind = ...)")
    exchange = resolve_exchange(raw["exchange"])
    table = raw["learner"]
    if not isinstance(table, dict):  # (its keys are the learner Config's to check)
        raise ScenarioError(f"learner: expected a table, got {short(table)}")
    runtime = resolve_runtime(raw.get("runtime", {}))
    base, players = resolve_players(raw.get("peers", ()), table, n, exchange, runtime.pace)
    players = _compute_traced(players, source)
    data_specs = {learner_class(p.learner.kind).data for p in players}
    if len(data_specs) > 1:
        kinds = sorted({p.learner.kind for p in players})
        raise ScenarioError(f"peers: learners {', '.join(kinds)} read different kinds of "
                            "[data]; one scenario has one data section")
    spec = data_specs.pop()
    if spec is None:
        if "data" in raw:
            raise ScenarioError(f"data: learner {base.kind!r} takes no [data] section")
        data = None
    else:
        data = build(spec, raw.get("data", {}), "data")
    scenario = Scenario(
        topology=topology,
        exchange=exchange,
        learner=base,
        players=players,
        comm=resolve_comm(raw.get("comm", {}), n, source),
        data=data,
        runtime=runtime,
        **kwargs,
    )
    # Deeper checks that need several sections at once.
    if scenario.runtime.restart:
        check_restart(scenario)
    if scenario.runtime.checkpoint_every:
        check_checkpoints(scenario)
    if scenario.runtime.backend == "ray" and importlib.util.find_spec("ray") is None:
        raise ScenarioError('runtime.backend = "ray": Ray is not installed; '
                            'pip install "p2pgame[ray]" (or ".[ray]" in a checkout)')
    if scenario.runtime.backend == "ray" and scenario.comm.transport != "tcp":
        raise ScenarioError(
            'runtime.backend = "ray" needs comm.transport = "tcp": peers on different '
            "machines cannot reach each other's ipc sockets (and comm.host = \"node\" "
            "to bind on each node's own address when the cluster spans machines)")
    schedule = build_schedule(scenario.topology, scenario.steps, scenario.seed)
    all_edges = {tuple(e) for t in schedule.topologies for e in t.edges}
    for k, e in enumerate(scenario.comm.edges):
        if (e.src, e.dst) not in all_edges:
            raise ScenarioError(
                f"comm.edges[{k}]: {e.src} -> {e.dst} is not an edge of the topology "
                "(an override applies to a link that exists)")
    if scenario.runtime.clock == "virtual":
        check_virtual_clock(scenario, all_edges)
    else:
        away = next((p.peer for p in scenario.players if p.pace.goes_offline), None)
        if away is not None:
            raise ScenarioError(f"peer {away}: runtime offline windows need runtime.clock = "
                                '"virtual" (they are virtual times)')
        traced = next((p.peer for p in scenario.players if p.pace.compute_trace), None)
        if traced is not None:
            raise ScenarioError(f"peer {traced}: runtime.compute_trace needs runtime.clock = "
                                '"virtual" (on the real clock a step takes what the host takes)')
        if scenario.runtime.compute != "model":
            raise ScenarioError(f"runtime.compute = {scenario.runtime.compute!r} needs "
                                'runtime.clock = "virtual" (on the real clock a step takes '
                                "what the host takes anyway)")
    check_exchange(scenario, schedule)
    method(scenario).hooks()(scenario).validate(schedule)
    return scenario


def check_virtual_clock(scenario: Scenario, edges: set[tuple[int, int]]) -> None:
    """``runtime.clock = "virtual"``: what this clock runs (yet), and lookahead on every
    edge, without which the peers could wait for each other for ever (a peer steps at
    virtual time t once each in-neighbour's promise plus the link's least latency is past
    t; a sender promises its next step's time, so either its step takes virtual time or
    the link has a latency)."""
    if scenario.comm.mode != "async":
        raise ScenarioError('runtime.clock = "virtual" needs comm.mode = "async" (a sync run '
                            "is deterministic on the real clock already: every step waits "
                            "for its rounds)")
    if scenario.runtime.compute == "measured":
        traced = next((p.peer for p in scenario.players if p.pace.compute_trace), None)
        if traced is not None:
            raise ScenarioError(f'peer {traced}: runtime.compute = "measured" and a '
                                "runtime.compute_trace both give its step times; keep one")
    for src, dst in sorted(edges):
        link = scenario.comm.link_of(src, dst)
        if link.rate > 0 and link.buffer_policy == "oldest":
            raise ScenarioError(
                f'comm: edge {src} -> {dst}: buffer_policy = "oldest" is not modelled on the '
                'virtual clock (a drop would change the fate of messages sent before it); '
                'use "tail"')
        pace = scenario.player(src).pace
        least = min(pace.compute_trace_s) if pace.compute_trace_s else scenario.runtime.compute_s
        if link.latency_ms == 0 and least == 0 and pace.step_delay_ms == 0:
            raise ScenarioError(
                f"comm: edge {src} -> {dst} has no lookahead on the virtual clock (peer "
                f"{src}'s steps take no virtual time and the link none either): the peers "
                "could wait for each other for ever; set runtime.compute_s > 0 (or "
                "compute times > 0 in its compute_trace), or a latency_ms > 0 on the link")


scenario_from_dict = resolve  # the name the tests and older scripts know


# --------------------------------------------------------------------------- presets
#
# The old form names an "algorithm" that fuses what is exchanged with who learns:
# [algorithm] name = "game" | "diffgan" | "expfam".  Each is a preset for an
# (exchange, learner) pair; a file in that form runs as the pair, and the launcher tells
# how to write it now (:func:`preset_notice`).

EXPFAM_FAMILIES = ("bernoulli", "gaussian")


def expand_preset(raw: dict) -> tuple[dict, str]:
    """``raw`` with [algorithm] (and [[peers]] algorithm tables) as [exchange] + [learner]."""
    for key in ("exchange", "learner"):
        if key in raw:
            raise ScenarioError(f"[algorithm] (the old form) and [{key}] cannot be used "
                                "together: write [exchange] and [learner] alone")
    algo = raw["algorithm"]
    if not isinstance(algo, dict):
        raise ScenarioError(f"algorithm: expected a table, got {short(algo)}")
    name = algo.get("name")
    if not isinstance(name, str):
        raise ScenarioError(f"algorithm.name is required; allowed: {', '.join(PRESETS)} (or "
                            "write [exchange] kind = ... and [learner] kind = ...)")
    one_of(name, PRESETS, "algorithm.name")
    table = {k: v for k, v in algo.items() if k != "name"}
    if "kind" in table:
        raise ScenarioError("algorithm.kind: not a key of the old form (it names the model with "
                            "'model'); or write [exchange] and [learner] kind = ...")
    out = {k: v for k, v in raw.items() if k != "algorithm"}
    peers = [dict(g) if isinstance(g, dict) else g for g in raw.get("peers", ()) or ()]
    if name == "game":
        exchange = {"kind": "samples"}
        learner = _renamed(table, "model", "hvae-mlp")
    elif name == "expfam":
        exchange = {"kind": "samples", "missing": "renormalise"}
        learner = _expfam_table(table, "algorithm")
    else:
        combine = table.pop("combine", True)
        if not isinstance(combine, bool):
            raise ScenarioError(f"algorithm.combine: expected true or false, got "
                                f"{short(combine)}")
        exchange = {"kind": "params" if combine else "none"}
        for key in ("wire_dtype", "snapshots"):
            if key in table:
                value = table.pop(key)
                if combine:
                    exchange[key] = value
        peer_models = table.pop("peer_models", {})
        learner = _renamed(table, "model", "dcgan-mlp")
        peers = _peer_models(peer_models, peers, out)
    for k, group in enumerate(peers):
        if isinstance(group, dict) and "algorithm" in group:
            own = group.pop("algorithm")
            if not isinstance(own, dict):
                raise ScenarioError(f"peers[{k}].algorithm: expected a table, got {short(own)}")
            group["learner"] = (_expfam_table(own, f"peers[{k}].algorithm", partial=True)
                                if name == "expfam" else _renamed(own, "model", None))
    out["exchange"], out["learner"] = exchange, learner
    if peers:
        out["peers"] = peers
    return out, name


def _renamed(table: dict, old: str, default: str | None) -> dict:
    """``table`` with its ``old`` key (the model's name) as ``kind``."""
    out = {k: v for k, v in table.items() if k != old}
    if old in table:
        out["kind"] = table[old]
    elif default is not None:
        out["kind"] = default
    return {"kind": out.pop("kind"), **out} if "kind" in out else out


def _expfam_table(table: dict, where: str, partial: bool = False) -> dict:
    out = {k: v for k, v in table.items() if k != "family"}
    if "family" in table or not partial:
        family = table.get("family", "bernoulli")
        if family not in EXPFAM_FAMILIES:
            raise ScenarioError(f"{where}.family: {short(family)} is not known; allowed: "
                                f"{', '.join(EXPFAM_FAMILIES)}")
        out = {"kind": f"expfam-{family}", **out}
    return out


def _peer_models(peer_models: Any, peers: list, raw: dict) -> list:
    """Diffusion GAN's ``peer_models`` as [[peers]] groups with a learner kind each."""
    if not isinstance(peer_models, dict):
        raise ScenarioError(f"algorithm.peer_models: expected a table, got {short(peer_models)}")
    n = raw.get("topology", {}).get("n") if isinstance(raw.get("topology"), dict) else None
    for key, model in peer_models.items():
        if not (key.isdigit() and (not isinstance(n, int) or int(key) < n)):
            bound = f" in 0..{n - 1}" if isinstance(n, int) else ""
            raise ScenarioError(f"algorithm.peer_models.{clip(key, 20)}: is not a peer "
                                f"id{bound}")
        i = int(key)
        for k, group in enumerate(peers):
            ids = group.get("ids", []) if isinstance(group, dict) else []
            if isinstance(ids, list) and i in ids:
                if ids != [i]:
                    raise ScenarioError(
                        f"algorithm.peer_models.{key}: peer {i} is in the group peers[{k}] "
                        f"with others; write peers = [{{ ids = [{i}], learner = {{ kind = "
                        f"{json.dumps(model)} }} }}] in the new form")
                group.setdefault("algorithm", {})["model"] = model
                break
        else:
            peers.append({"ids": [i], "algorithm": {"model": model}})
    return peers


_PRESET_NAMES = (("exchange.wire_dtype", "algorithm.wire_dtype"),
                 ("exchange.snapshots", "algorithm.snapshots"),
                 ("learner.kind", "algorithm.model"), ("learner", "algorithm"))


def _preset_names(msg: str) -> str:
    """An error of the expanded scenario, naming keys as an old-form file writes them."""
    for new, old in _PRESET_NAMES:
        # only as a key: "learner.lr:", "[learner]", "peers[0].learner.kind ="
        msg = re.sub(rf"(?<![A-Za-z_]){re.escape(new)}(?=[.:\]]| =)", old, msg)
    head, sep, allowed = msg.partition("; allowed: ")  # a list of keys: the file's names
    if sep and "learner" in allowed.split(", "):
        msg = head + sep + ", ".join(sorted("algorithm" if k == "learner" else k
                                            for k in allowed.split(", ")))
    return msg


def preset_notice(raw: dict) -> str | None:
    """For a file in the old form, how to write it now (None: it is in the new form)."""
    if not isinstance(raw, dict) or "algorithm" not in raw:
        return None
    try:
        new, name = expand_preset(raw)
    except ScenarioError:
        return None
    lines = [f"[algorithm] name = {json.dumps(name)} is the old form: it runs as "
             f"exchange {new['exchange']['kind']!r} x learner {new['learner'].get('kind')!r}."
             " Write it now as:"]
    for section in ("exchange", "learner"):
        lines.append(f"  [{section}]")
        lines += [f"  {k} = {json.dumps(v)}" for k, v in new[section].items()]
    if any(isinstance(g, dict) and "learner" in g for g in new.get("peers", ())):
        lines.append("  and in [[peers]], learner = { ... } instead of algorithm = { ... }")
    return "\n".join(lines)
