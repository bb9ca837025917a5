"""Scenario configuration: typed sections, unknown keys, overrides, cross-section checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from p2pgame.config import (
    LINK_KEYS,
    CommSpec,
    EdgeLinkSpec,
    LinkSpec,
    Scenario,
    ScenarioError,
    TopologySpec,
    to_plain,
)
from p2pgame.exchange.mixing import MixingConfig
from p2pgame.learners.expfam import ExpFamConfig
from p2pgame.scenario import (
    apply_overrides,
    load_raw,
    load_scenario,
    parse_override,
)
from p2pgame.scenario import (
    resolve as scenario_from_dict,
)

ROOT_TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"


def _error(path, overrides=()) -> str:
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, overrides)
    return str(info.value)


# --------------------------------------------------------------------------- loading


def _is_sweep(path: Path) -> bool:
    import tomllib

    return "grid" in tomllib.loads(path.read_text())


SHIPPED = sorted(ROOT_TOPOLOGIES.glob("*.toml"))
SHIPPED_SWEEPS = [p for p in SHIPPED if _is_sweep(p)]


def _check_resolves(scenario) -> None:
    """The checks a launch makes before any process starts, the exchange included."""
    from p2pgame.scenario import check_exchange
    from p2pgame.topology import build_schedule

    check_exchange(scenario, build_schedule(scenario.topology, scenario.steps, scenario.seed))


@pytest.mark.parametrize("path", [p for p in SHIPPED if p not in SHIPPED_SWEEPS],
                         ids=lambda p: p.name)
def test_every_shipped_scenario_resolves(path):
    """Every scenario file in topologies/ is valid, its exchange included: a shipped
    scenario must never stop at its first check."""
    _check_resolves(load_scenario(path))


@pytest.mark.parametrize("path", SHIPPED_SWEEPS, ids=lambda p: p.name)
def test_every_point_of_a_shipped_sweep_resolves(path):
    """Each point of a shipped sweep, baselines included, is a valid scenario with its
    overrides: a sweep must not fail at its fifth point."""
    from p2pgame.sweep import load_sweep

    spec = load_sweep(path)
    assert spec.points
    for point in spec.points:
        _check_resolves(load_scenario(point.scenario, point.overrides))


def test_shipped_expfam_scenarios_load():
    for name in ("expfam-ring8.toml", "expfam-ring8-async.toml", "expfam-timevarying.toml"):
        s = load_scenario(ROOT_TOPOLOGIES / name)
        assert isinstance(s, Scenario)
        # (samples, renormalised, x an exponential-family learner)
        assert s.exchange == MixingConfig(kind="samples", missing="renormalise")
        assert s.learner.kind in ("expfam-bernoulli", "expfam-gaussian")
        assert isinstance(s.learner, ExpFamConfig)
        assert all(isinstance(p.learner, ExpFamConfig) for p in s.players)
        assert s.source.endswith(name)
    s = load_scenario(ROOT_TOPOLOGIES / "expfam-ring8-async.toml")
    assert (s.n, s.comm.mode, s.comm.link.delay_steps, s.comm.link.drop) == (8, "async", 5, 0.1)
    assert s.comm.link == LinkSpec(delay_steps=5, drop=0.1)
    assert s.comm.link_of(0, 1) == LinkSpec(delay_steps=5, drop=0.1)  # no overrides


def test_valid_scenario_types_and_defaults(tiny_raw, write_scenario):
    s = load_scenario(write_scenario(tiny_raw))
    assert s.name == "tiny" and s.seed == 3 and s.steps == 50
    assert isinstance(s.topology, TopologySpec) and s.topology.n == 4 == s.n
    assert isinstance(s.comm, CommSpec) and s.comm.samples_per_message == 32
    assert s.comm.pack_bool is True and s.comm.max_message_bytes == 64 * 2**20
    assert s.runtime.threads_per_peer == 1
    # Frozen: sections cannot be mutated after validation.
    with pytest.raises(AttributeError):
        s.topology.n = 5  # type: ignore[misc]
    # A float field accepts a TOML integer and stores a float.
    tiny_raw["comm"]["latency_ms"] = 3
    latency = load_scenario(write_scenario(tiny_raw)).comm.link.latency_ms
    assert latency == 3.0 and isinstance(latency, float)
    # The name defaults to the file stem.
    del tiny_raw["name"]
    assert load_scenario(write_scenario(tiny_raw, "my-run.toml")).name == "my-run"


def test_to_plain_is_json_friendly(tiny_raw):
    import json

    plain = to_plain(scenario_from_dict(tiny_raw))
    assert json.loads(json.dumps(plain))["topology"]["n"] == 4
    assert plain["comm"]["edges"] == []
    assert plain["preset"] == "expfam"
    assert plain["exchange"] == {"kind": "samples", "missing": "renormalise"}
    assert plain["learner"]["kind"] == "expfam-bernoulli" and plain["learner"]["dim"] == 4
    assert plain["topology"]["graphs"][0]["graph"] == "ring"


def test_missing_file(tmp_path):
    msg = _error(tmp_path / "nope.toml")
    assert "nope.toml" in msg and "not found" in msg


def test_invalid_toml(write_scenario):
    path = write_scenario("name = \n[topology\n")
    msg = _error(path)
    assert str(path) in msg and "not valid TOML" in msg


# --------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    "section, allowed_sample",
    [
        (None, "topology"),
        ("topology", "self_weight"),
        ("comm", "delay_steps"),
        ("runtime", "stop_timeout_s"),
        ("algorithm", "lr_end"),
    ],
)
def test_unknown_key_names_file_key_and_allowed(tiny_raw, write_scenario, section, allowed_sample):
    (tiny_raw if section is None else tiny_raw[section])["bogus_key"] = 1
    path = write_scenario(tiny_raw)
    msg = _error(path)
    assert str(path) in msg
    assert "'bogus_key'" in msg
    assert "allowed" in msg and allowed_sample in msg
    if section is not None:
        assert section in msg


def test_unknown_key_in_edge_override(tiny_raw, write_scenario):
    tiny_raw["comm"]["edges"] = [{"src": 0, "dst": 1, "drop": 0.1},
                                 {"src": 1, "dst": 2, "dorp": 0.1}]
    path = write_scenario(tiny_raw)
    msg = _error(path)
    assert str(path) in msg and "comm.edges[1]" in msg and "'dorp'" in msg
    assert "allowed" in msg and "drop" in msg and "delay_steps" in msg


def test_unknown_key_in_schedule_entry(tiny_raw, write_scenario):
    tiny_raw["topology"]["schedule"] = [{"at": 10, "graph": "complete", "colour": "red"}]
    msg = _error(write_scenario(tiny_raw))
    assert "topology.schedule[0]" in msg and "'colour'" in msg and "allowed" in msg


def test_schedule_entry_needs_at_and_increasing(tiny_raw, write_scenario):
    tiny_raw["topology"]["schedule"] = [{"graph": "complete"}]
    assert "'at'" in _error(write_scenario(tiny_raw))
    tiny_raw["topology"]["schedule"] = [{"at": 20, "graph": "complete"},
                                        {"at": 10, "graph": "star"}]
    assert "increasing" in _error(write_scenario(tiny_raw))


def _new_form(raw: dict) -> dict:
    """``raw`` (the old form, [algorithm]) written in the new form ([exchange], [learner])."""
    from p2pgame.scenario import expand_preset

    return expand_preset(raw)[0]


def test_new_form_of_the_tiny_scenario_is_the_same_scenario(tiny_raw):
    new = _new_form(tiny_raw)
    assert "algorithm" not in new
    assert new["exchange"] == {"kind": "samples", "missing": "renormalise"}
    assert new["learner"] == {"kind": "expfam-bernoulli", "dim": 4, "n_data": 100, "batch": 32}
    old, now = scenario_from_dict(tiny_raw, "x.toml"), scenario_from_dict(new, "x.toml")
    assert (old.preset, now.preset) == ("expfam", "")
    import dataclasses

    assert dataclasses.replace(old, preset="") == now


# A file without [algorithm] is in the new form: it is asked for [exchange] and [learner].
@pytest.mark.parametrize("section, needle", [("topology", "missing section [topology]"),
                                             ("algorithm", "missing section [exchange]")])
def test_missing_section(tiny_raw, write_scenario, section, needle):
    del tiny_raw[section]
    msg = _error(write_scenario(tiny_raw))
    assert needle in msg


@pytest.mark.parametrize("section", ["topology", "exchange", "learner"])
def test_missing_section_new_form(tiny_raw, write_scenario, section):
    raw = _new_form(tiny_raw)
    del raw[section]
    msg = _error(write_scenario(raw))
    assert f"missing section [{section}]" in msg


# --------------------------------------------------------------------------- types & values


@pytest.mark.parametrize(
    "path, value, needle",
    [
        (("steps",), "ten", "steps: expected an integer"),
        (("steps",), True, "steps: expected an integer"),
        (("seed",), 1.5, "seed: expected an integer"),
        (("name",), 3, "name: expected a string"),
        (("topology", "n"), "four", "topology.n: expected an integer"),
        (("comm", "drop"), "high", "comm.drop: expected a number"),
        (("comm", "pack_bool"), 1, "comm.pack_bool: expected true or false"),
        (("topology", "edges"), 5, "topology.edges: expected a list"),
        (("topology", "self_weight"), "half", "topology.self_weight: expected"),
        (("comm",), 3, "comm: expected a table"),
    ],
)
def test_wrong_type(tiny_raw, write_scenario, path, value, needle):
    node = tiny_raw
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    p = write_scenario(tiny_raw)
    msg = _error(p)
    assert str(p) in msg and needle in msg


@pytest.mark.parametrize(
    "section, key, value, needle",
    [
        ("comm", "drop", 1.0, "drop"),
        ("comm", "drop", -0.1, "drop"),
        ("comm", "mode", "lockstep", "allowed: sync, async"),
        ("comm", "transport", "udp", "allowed: ipc, tcp"),
        ("comm", "publish_every", -1, "publish_every"),
        ("comm", "publish_from", -1, "publish_from"),
        ("comm", "max_message_bytes", 10, "max_message_bytes"),
        ("comm", "sync_timeout_s", 0.0, "sync_timeout_s"),
        ("comm", "bandwidth", -1.0, "bandwidth"),
        ("topology", "graph", "hypercube", "allowed:"),
        ("topology", "weights", "uniform", "allowed: self_weight, metropolis, matrix"),
        ("topology", "self_weight", 1.5, "self_weight"),
        ("topology", "self_weight", [0.5, 0.5], "self_weight"),
        ("topology", "n", 0, "n = 0"),
        ("runtime", "device", "tpu", "device"),
        ("algorithm", "family", "poisson", "algorithm.family"),
        ("algorithm", "lr", 0.0, "algorithm.lr"),
        ("algorithm", "name", "nope", "algorithm.name"),
    ],
)
def test_bad_values(tiny_raw, write_scenario, section, key, value, needle):
    tiny_raw[section][key] = value
    p = write_scenario(tiny_raw)
    msg = _error(p)
    assert str(p) in msg and needle in msg


def test_steps_must_be_positive(tiny_raw):
    tiny_raw["steps"] = 0
    with pytest.raises(ScenarioError, match="steps"):
        scenario_from_dict(tiny_raw, "x.toml")


# --------------------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    "text, path, value",
    [
        ("comm.drop=0.1", ["comm", "drop"], 0.1),
        ("steps = 30", ["steps"], 30),
        ("comm.pack_bool=false", ["comm", "pack_bool"], False),
        ("name=\"quoted\"", ["name"], "quoted"),
        ("name=bare-word", ["name"], "bare-word"),
        ("topology.self_weight=[0.2, 0.8]", ["topology", "self_weight"], [0.2, 0.8]),
        ("a.b.c={x = 1}", ["a", "b", "c"], {"x": 1}),
        ("comm.note=a=b", ["comm", "note"], "a=b"),
    ],
)
def test_parse_override_toml_literals(text, path, value):
    assert parse_override(text) == (path, value)


@pytest.mark.parametrize("text, needle", [("comm.drop", "key=value"), ("=1", "empty key"),
                                          ("a..b=1", "empty key"), ("comm.=1", "empty key")])
def test_parse_override_errors(text, needle):
    with pytest.raises(ScenarioError, match=needle):
        parse_override(text)


def test_apply_overrides_nested_and_not_in_place(tiny_raw):
    out = apply_overrides(tiny_raw, ["comm.drop=0.25", "runtime.metrics_every=5",
                                     "eval.extra.deep=true", "steps=7"])
    assert out["comm"]["drop"] == 0.25 and out["runtime"]["metrics_every"] == 5
    assert out["eval"] == {"extra": {"deep": True}}
    assert out["steps"] == 7
    assert "drop" not in tiny_raw["comm"] and tiny_raw["steps"] == 50  # input untouched
    with pytest.raises(ScenarioError, match="'steps' is not a table"):
        apply_overrides(tiny_raw, ["steps.x=1"])


def test_load_scenario_with_overrides(tiny_raw, write_scenario):
    p = write_scenario(tiny_raw)
    s = load_scenario(p, ["comm.drop=0.2", "comm.mode=async", "topology.graph=complete"])
    assert (s.comm.link.drop, s.comm.mode, s.topology.base_graph.graph) == (
        0.2, "async", "complete")
    # An override is checked like the file: an unknown key is named, and so is the
    # override (not the file).
    msg = _error(p, ["comm.dorp=0.2"])
    assert msg.startswith("--set comm.dorp=0.2: ") and str(p) not in msg
    assert "'dorp'" in msg and "allowed" in msg
    msg = _error(p, ["comm.drop=lots"])
    assert "comm.drop" in msg and "expected a number" in msg


def test_load_raw_keeps_toml_types(tiny_raw, write_scenario):
    raw = load_raw(write_scenario(tiny_raw))
    assert raw == tiny_raw


# --------------------------------------------------------------------------- weights & edges


def _matrix_raw(tiny_raw, matrix, graph="complete"):
    n = len(matrix)
    tiny_raw["topology"] = {"n": n, "graph": graph, "weights": "matrix", "matrix": matrix}
    return tiny_raw


def test_matrix_weights_valid(tiny_raw):
    m = [[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]]
    s = scenario_from_dict(_matrix_raw(tiny_raw, m))
    assert s.topology.matrix[1] == (0.2, 0.6, 0.2)


def test_matrix_rows_must_sum_to_one(tiny_raw):
    m = [[0.5, 0.25, 0.25], [0.2, 0.6, 0.3], [0.1, 0.1, 0.8]]
    with pytest.raises(ScenarioError, match=r"x\.toml: topology: weights: row 1 sums to 1\.1"):
        scenario_from_dict(_matrix_raw(tiny_raw, m), "x.toml")


def test_matrix_negative_weight(tiny_raw):
    m = [[1.5, -0.25, -0.25], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]]
    with pytest.raises(ScenarioError, match=r"entry \[0\]\[1\] = -0.25 must be non-negative"):
        scenario_from_dict(_matrix_raw(tiny_raw, m), "x.toml")


def test_matrix_wrong_shape_and_ragged(tiny_raw):
    with pytest.raises(ScenarioError, match="expected 3x3"):
        scenario_from_dict(_matrix_raw(tiny_raw, [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]))
    with pytest.raises(ScenarioError, match="rows must all have n numbers"):
        scenario_from_dict(_matrix_raw(tiny_raw, [[1.0], [0.0, 1.0], [0.5, 0.5]]))


def test_matrix_weight_on_non_edge(tiny_raw):
    m = [[0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.5, 0.0, 0.5]]  # [2][0] but line 0-1-2
    with pytest.raises(ScenarioError, match=r"\[2\]\[0\] = 0.5 but there is no edge 0 -> 2"):
        scenario_from_dict(_matrix_raw(tiny_raw, m, graph="line"))


def test_weights_matrix_needs_matrix(tiny_raw):
    tiny_raw["topology"]["weights"] = "matrix"
    with pytest.raises(ScenarioError, match="needs a 'matrix'"):
        scenario_from_dict(tiny_raw)


def test_explicit_edges_disconnected(tiny_raw, write_scenario):
    tiny_raw["topology"] = {"n": 4, "graph": "edges", "edges": [[0, 1], [2, 3]]}
    p = write_scenario(tiny_raw)
    msg = _error(p)
    assert str(p) in msg and "disconnected" in msg


@pytest.mark.parametrize(
    "edges, needle",
    [([[0, 1], [1, 4]], "peer 4 is not in 0..3"), ([[0, 0], [0, 1]], "self loop"),
     ([[0, 1, 2]], "not a [src, dst] pair"), ([], "needs a non-empty 'edges'")],
)
def test_explicit_edges_errors(tiny_raw, edges, needle):
    tiny_raw["topology"] = {"n": 4, "graph": "edges", "edges": edges}
    with pytest.raises(ScenarioError) as info:
        scenario_from_dict(tiny_raw)
    assert needle in str(info.value)


def test_metropolis_on_directed_graph_rejected(tiny_raw):
    tiny_raw["topology"].update(directed=True, weights="metropolis")
    with pytest.raises(ScenarioError, match="needs an undirected graph"):
        scenario_from_dict(tiny_raw)


def test_edge_overrides_valid(tiny_raw):
    tiny_raw["comm"]["drop"] = 0.05
    tiny_raw["comm"]["edges"] = [{"src": 0, "dst": 1, "delay_steps": 3},
                                 {"src": 3, "dst": 0, "drop": 0.5, "bandwidth": 1e4}]
    s = scenario_from_dict(tiny_raw)
    assert s.comm.edges == (
        EdgeLinkSpec(0, 1, LinkSpec(delay_steps=3, drop=0.05)),
        EdgeLinkSpec(3, 0, LinkSpec(drop=0.5, bandwidth=1e4)),
    )
    # Unmentioned keys come from the scenario-wide defaults.
    assert s.comm.link_of(0, 1) == LinkSpec(delay_steps=3, drop=0.05)
    assert s.comm.link_of(3, 0) == LinkSpec(drop=0.5, bandwidth=1e4)
    # Other edges (and the reverse of an overridden one) use the default link.
    assert s.comm.link_of(1, 0) == s.comm.link == LinkSpec(drop=0.05)
    assert set(LINK_KEYS) == {"delay_steps", "latency_ms", "jitter_ms", "drop", "bandwidth",
                              "burst", "buffer_bytes", "buffer_messages", "buffer_policy",
                              "jitter_dist", "jitter_sigma", "reorder", "trace"}


@pytest.mark.parametrize(
    "entry, needle",
    [({"src": 0, "dst": 9}, "comm.edges[0].dst = 9 is not a peer id in 0..3"),
     ({"src": True, "dst": 1}, "comm.edges[0].src"),
     ({"dst": 1}, "comm.edges[0]: missing key 'src'"),
     ({"src": 0, "dst": 1, "drop": 2.0}, "drop")],
)
def test_edge_override_errors(tiny_raw, entry, needle):
    tiny_raw["comm"]["edges"] = [entry]
    with pytest.raises(ScenarioError) as info:
        scenario_from_dict(tiny_raw, "x.toml")
    assert needle in str(info.value) and "x.toml" in str(info.value)


def test_edge_override_naming_a_non_edge_is_rejected(tiny_raw):
    tiny_raw["comm"]["edges"] = [{"src": 0, "dst": 2, "drop": 0.5}]  # ring 0-1-2-3-0
    with pytest.raises(ScenarioError, match=r"comm\.edges\[0\]"):
        scenario_from_dict(tiny_raw, "x.toml")


def test_schedule_and_redraw_are_exclusive(tiny_raw):
    tiny_raw["topology"].update(schedule=[{"at": 5, "graph": "complete"}], redraw_every=10)
    with pytest.raises(ScenarioError, match="not both"):
        scenario_from_dict(tiny_raw)


def test_link_spec_is_ideal():
    assert LinkSpec().is_ideal
    assert not LinkSpec(drop=0.1).is_ideal


# --------------------------------------------------------------------------- plain round trip


def _round_trip(s: Scenario) -> Scenario:
    import json

    from p2pgame.exchange import decode_scenario

    plain = to_plain(s)
    assert json.loads(json.dumps(plain)) == plain  # what travels to a peer is plain data
    return decode_scenario(json.loads(json.dumps(plain)))


def test_plain_round_trip_expfam_with_peers_and_edge_overrides(tiny_raw):
    tiny_raw["topology"].update(self_weight=[0.5, 0.4, 0.6, 0.5],
                                schedule=[{"at": 20, "graph": "complete"}])
    tiny_raw["comm"].update(drop=0.05, latency_ms=2,
                            edges=[{"src": 0, "dst": 1, "delay_steps": 3},
                                   {"src": 3, "dst": 0, "drop": 0.5, "bandwidth": 1e4}])
    tiny_raw["peers"] = [{"ids": [0, 2], "publishes": ["x", "mu"], "learns": ["x"],
                          "algorithm": {"lr": 0.1, "spread": 1.0}}]
    s = scenario_from_dict(tiny_raw, "rt.toml")
    # The fixture really exercises what the round trip must carry.
    assert s.player(0).learner == ExpFamConfig(kind="expfam-bernoulli", dim=4, n_data=100,
                                               batch=32, lr=0.1, spread=1.0)
    assert s.player(0).publishes == ("x", "mu") and s.player(1).publishes == ("x",)
    assert s.player(1).learner == s.learner and s.learner.lr == 0.2
    assert len(s.comm.edges) == 2 and len(s.topology.graphs) == 2
    assert s.topology.self_weight == (0.5, 0.4, 0.6, 0.5)
    back = _round_trip(s)
    assert back == s
    assert isinstance(back.learner, ExpFamConfig)
    assert isinstance(back.exchange, MixingConfig) and back.exchange.rule == "renormalise"
    assert all(isinstance(p.learner, ExpFamConfig) for p in back.players)
    assert isinstance(back.comm.edges[0], EdgeLinkSpec)
    assert isinstance(back.topology.self_weight, tuple)
    assert back.comm.link_of(3, 0) == LinkSpec(drop=0.5, bandwidth=1e4, latency_ms=2.0)
    assert back.data is None


def test_plain_round_trip_game_with_data_table():
    from p2pgame.data.image import ImageDataSpec
    from p2pgame.learners.images import HVAEConfig

    raw = {
        "name": "tiny-game", "seed": 1, "steps": 20,
        "topology": {"n": 3, "graph": "ring", "self_weight": 0.5},
        "comm": {"samples_per_message": 8},
        "data": {"dataset": "mnist", "split": "train", "noise": 0.01,
                 "partition": {"kind": "classes", "classes": [[0, 1], [2, 3], [4, 5]]}},
        "algorithm": {"name": "game", "model": "hvae-mlp", "batch": 16},
    }
    s = scenario_from_dict(raw, "game.toml")  # resolution needs no data files
    assert s.preset == "game"
    assert s.exchange == MixingConfig(kind="samples")
    assert s.learner == HVAEConfig(kind="hvae-mlp", batch=16)
    assert isinstance(s.data, ImageDataSpec) and s.data.noise == 0.01
    assert s.player(2).publishes == s.player(2).learns == ("hvae",)
    back = _round_trip(s)
    assert back == s
    assert isinstance(back.learner, HVAEConfig) and isinstance(back.data, ImageDataSpec)
    assert isinstance(back.exchange, MixingConfig) and back.exchange.rule == "fill"
    assert back.data.partition == {"kind": "classes", "classes": [[0, 1], [2, 3], [4, 5]]}


# --------------------------------------------------------------------------- [[peers]]


def test_peers_group_sets_its_peers_only(tiny_raw):
    tiny_raw["peers"] = [{"ids": [1], "algorithm": {"batch": 8}},
                         {"ids": [3], "publishes": ["x", "mu"]}]
    s = scenario_from_dict(tiny_raw)
    assert [p.peer for p in s.players] == [0, 1, 2, 3]
    assert [p.learner.batch for p in s.players] == [32, 8, 32, 32]
    assert s.player(3).publishes == ("x", "mu") and s.player(3).learns == ("x",)
    assert s.player(0).publishes == s.player(0).learns == ("x",)


def _peers_error(tiny_raw, peers, source="p.toml") -> str:
    tiny_raw["peers"] = peers
    with pytest.raises(ScenarioError) as info:
        scenario_from_dict(tiny_raw, source)
    msg = str(info.value)
    assert msg.startswith(f"{source}: ")
    return msg


@pytest.mark.parametrize("key", ["learns", "publishes"])
def test_peers_unknown_space_names_allowed_spaces(tiny_raw, key):
    msg = _peers_error(tiny_raw, [{"ids": [0], key: ["x", "theta"]}])
    assert f"peers[0].{key}" in msg and "'theta'" in msg
    # (the spaces it may name: what the learner publishes, or reads most informative first)
    assert re.search(r"only (mu, x|x, mu)$", msg), msg


@pytest.mark.parametrize("bad_id", [4, -1, 99])
def test_peers_id_out_of_range(tiny_raw, bad_id):
    msg = _peers_error(tiny_raw, [{"ids": [1]}, {"ids": [0, bad_id]}])
    assert "peers[1].ids" in msg and f"{bad_id} is not a peer id in 0..3" in msg


def test_peers_id_set_twice(tiny_raw):
    msg = _peers_error(tiny_raw, [{"ids": [0, 2]}, {"ids": [1, 2], "publishes": ["x", "mu"]}])
    assert "peers[1].ids" in msg and "peer 2" in msg and "already set" in msg
    msg = _peers_error(tiny_raw, [{"ids": [3, 3]}])
    assert "peers[0].ids" in msg and "peer 3" in msg


def test_peers_unknown_key_in_group(tiny_raw):
    msg = _peers_error(tiny_raw, [{"ids": [0], "lerns": ["x"]}])
    assert "peers[0]" in msg and "'lerns'" in msg
    # An old-form file names a group's learner settings "algorithm" (as it does in every
    # other message about them), so that is among the keys it is told it may use.
    allowed = msg.split("allowed: ", 1)[1].split(", ")
    assert {"algorithm", "ids", "learns", "publishes"} <= set(allowed), msg
    msg = _peers_error(_new_form(tiny_raw), [{"ids": [0], "lerns": ["x"]}])
    assert "peers[0]" in msg and "'lerns'" in msg
    assert "allowed: ids, learner, learns, publishes, runtime" in msg


def test_peers_unknown_algorithm_key_in_group(tiny_raw):
    msg = _peers_error(tiny_raw, [{"ids": [0], "algorithm": {"lrr": 0.1}}])
    assert "peers[0].algorithm" in msg and "'lrr'" in msg and "lr_end" in msg


def test_peers_group_needs_ids(tiny_raw):
    assert "missing key 'ids'" in _peers_error(tiny_raw, [{"learns": ["x"]}])
    assert "peers[0].ids" in _peers_error(tiny_raw, [{"ids": []}])
    assert "peers[0].ids[0]: expected an integer" in _peers_error(tiny_raw, [{"ids": [True]}])


def test_peers_exchange_checked_against_topology(tiny_raw):
    # Peer 1 learns only "mu" but its ring neighbours 0 and 2 publish only "x".
    msg = _peers_error(tiny_raw, [{"ids": [1], "learns": ["mu"]}])
    assert "peer 1 learns 'mu'" in msg


def test_data_table_refused_for_expfam(tiny_raw, write_scenario):
    tiny_raw["data"] = {"dataset": "mnist"}
    p = write_scenario(tiny_raw)
    msg = _error(p)
    assert str(p) in msg and "data: learner 'expfam-bernoulli' takes no [data]" in msg


def test_eval_top_level_key_is_unknown(tiny_raw, write_scenario):
    tiny_raw["eval"] = {"extra": 1}
    p = write_scenario(tiny_raw)
    msg = _error(p)
    assert str(p) in msg and "unknown key 'eval'" in msg
    assert "allowed" in msg and "peers" in msg and "runtime" in msg
    # Also when it arrives through an override.
    del tiny_raw["eval"]
    msg = _error(write_scenario(tiny_raw), ["eval.deep=true"])
    assert "unknown key 'eval'" in msg


# --------------------------------------------------------------------------- layering


def test_config_module_imports_nothing_from_p2pgame():
    import ast

    import p2pgame.config

    source = Path(p2pgame.config.__file__).read_text()
    tree = ast.parse(source)
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import in config.py: line {node.lineno}"
            imported.append(node.module or "")
    assert imported, "the walk found no imports at all: the check would be vacuous"
    offenders = [m for m in imported if m == "p2pgame" or m.startswith("p2pgame.")]
    assert not offenders, f"config.py imports {offenders}"
    # Nor through importlib.import_module / __import__ with a literal name.
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name in ("import_module", "__import__") and node.args:
                arg = node.args[0]
                assert not (isinstance(arg, ast.Constant)
                            and str(arg.value).startswith("p2pgame")), ast.unparse(node)


def test_overrides_index_arrays_of_tables():
    raw = {"peers": [{"ids": [0]}, {"ids": [1], "algorithm": {"lr": 1.0}}]}
    out = apply_overrides(raw, ["peers[1].algorithm.lr=0.5", "peers[0].algorithm.lr=2"])
    assert out["peers"][1]["algorithm"] == {"lr": 0.5}
    assert out["peers"][0]["algorithm"] == {"lr": 2}
    assert raw["peers"][1]["algorithm"] == {"lr": 1.0}  # not in place
    for text, needle in (("peers[2].x=1", "2 [[peers]] table(s); no item 2"),
                         ("peers[x].y=1", "expected name[index]"),
                         ("comm[0].x=1", "'comm' is not an array of tables")):
        with pytest.raises(ScenarioError, match=re.escape(needle)):
            apply_overrides({**raw, "comm": {}}, [text])


# --------------------------------------------------------------------------- issue 22


@pytest.mark.parametrize("key", ["runtime.peer_timeout_s", "runtime.start_timeout_s",
                                 "runtime.stop_timeout_s", "comm.sync_timeout_s",
                                 "comm.jitter_ms", "runtime.step_delay_ms", "comm.latency_ms",
                                 "topology.self_weight", "algorithm.lr"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_float_key_is_finite(tiny_raw, write_scenario, key, value):
    """No float key takes nan or inf (a frozen peer never detected, a step delay that
    never ends): one check of every float, blamed on the --set that gives it."""
    p = write_scenario(tiny_raw)
    msg = _error(p, [f"{key}={value}"])
    assert msg == f"--set {key}={value}: {key}: expected a finite number, got {value}"


def test_every_float_key_is_finite_in_the_file_too(tiny_raw, write_scenario):
    tiny_raw["comm"]["jitter_ms"] = "INF"  # (dump_toml writes no inf; patched below)
    p = write_scenario(tiny_raw)
    p.write_text(p.read_text().replace('"INF"', "inf"))
    assert _error(p) == f"{p}: comm.jitter_ms: expected a finite number, got inf"
    tiny_raw["comm"]["jitter_ms"] = 0.0
    tiny_raw["peers"] = [{"ids": [0], "algorithm": {"data_mean": [0.5, 0.5, 0.5, 0.5]}}]
    p = write_scenario(tiny_raw)
    p.write_text(p.read_text().replace("0.5, 0.5, 0.5, 0.5", "0.5, nan, 0.5, 0.5"))
    assert "peers[0].algorithm.data_mean[1]: expected a finite number, got nan" in _error(p)


@pytest.mark.parametrize("override, needle", [
    ("comm.send_hwm=9223372036854775808", "comm.send_hwm: 9223372036854775808 is out of "
                                          "range; allowed: -2147483648..2147483647"),
    ("comm.send_hwm=2147483648", "comm.send_hwm: 2147483648 is out of range"),
    ("steps=2147483648", "steps: 2147483648 is out of range"),
    ("comm.delay_steps=-9223372036854775809", "comm.delay_steps: -9223372036854775809 is out"),
    ("topology.edges=[[0, 18446744073709551616]]", "topology.edges[0][1]: 18446744073709551616"),
    ("seed=18446744073709551616", "seed: 18446744073709551616 is out of range; allowed: "
                                  "-9223372036854775808..9223372036854775807"),
    ("comm.max_message_bytes=9223372036854775808", "comm.max_message_bytes: 92233720368547758"),
    ("comm.latency_ms=" + "9" * 400, "comm.latency_ms: expected a finite number, got <an "
                                     "integer of 1329 bits>"),
])
def test_every_int_key_fits_its_c_type(tiny_raw, write_scenario, override, needle):
    """An int fits the C type it reaches: a C int (zmq's SNDHWM: a larger one crashed every
    peer with OverflowError) unless its field says wider (seeds, byte counts)."""
    msg = _error(write_scenario(tiny_raw), [override])
    assert msg.startswith(f"--set {override[:40]}") and needle in msg


def test_wide_int_keys_take_64_bit_values(tiny_raw):
    s = scenario_from_dict(apply_overrides(tiny_raw, [
        "seed=9223372036854775807", "comm.max_message_bytes=8589934592"]))
    assert (s.seed, s.comm.max_message_bytes) == (2**63 - 1, 2**33)


def test_number_rules_follow_field_metadata():
    """A field may declare inf meaningful, or a wider int; the default is neither."""
    from dataclasses import dataclass, field

    from p2pgame.config import INT64, build

    @dataclass(frozen=True)
    class Spec:
        limit: float = field(default=1.0, metadata={"inf": True})
        count: int = field(default=0, metadata={"int_range": INT64})
        other: float = 0.0

    assert build(Spec, {"limit": float("inf"), "count": 2**40}, "s") == Spec(float("inf"),
                                                                             2**40)
    for table, needle in (({"limit": float("nan")}, "s.limit: expected a finite number"),
                          ({"other": float("inf")}, "s.other: expected a finite number"),
                          ({"count": 2**63}, "s.count: 9223372036854775808 is out of range")):
        with pytest.raises(ScenarioError, match=re.escape(needle)):
            build(Spec, table, "s")


@pytest.mark.parametrize("where", [("name",), ("comm", "mode"), ("algorithm", "family"),
                                   ("comm", "pack_bool"), ("topology", "x" * 10**6)])
def test_a_huge_value_is_quoted_short(tiny_raw, write_scenario, where):
    """A 1 MB value comes back as one short line, not a 1 MB one."""
    node = tiny_raw
    for part in where[:-1]:
        node = node[part]
    node[where[-1]] = "x" * 10**6
    p = write_scenario(tiny_raw)
    msg = _error(p)
    assert msg.startswith(f"{p}: ") and "..." in msg
    assert len(msg.split("; allowed: ")[0]) < len(str(p)) + 200 and "\n" not in msg
    msg = _error(p, ["comm.drop=" + '"' + "y" * 10**6 + '"'])
    assert len(msg.split("; allowed: ")[0]) < len(str(p)) + 200


def test_an_algorithms_own_check_is_not_prefixed_twice(tiny_raw):
    """ "algorithm: algorithm.family: ..." was the error of an algorithm's own check."""
    tiny_raw["algorithm"]["family"] = "nope"
    with pytest.raises(ScenarioError) as info:
        scenario_from_dict(tiny_raw, "x.toml")
    assert str(info.value) == ("x.toml: algorithm.family: 'nope' is not known; "
                               "allowed: bernoulli, gaussian")
    tiny_raw["algorithm"]["family"] = "bernoulli"
    tiny_raw["peers"] = [{"ids": [1], "algorithm": {"lr": 2.0}}]
    with pytest.raises(ScenarioError) as info:
        scenario_from_dict(tiny_raw, "x.toml")
    assert str(info.value).startswith("x.toml: peers[0].algorithm.lr: lr and lr_end")


def test_an_error_of_an_override_is_blamed_on_it(tiny_raw, write_scenario):
    """Not on the file: the file alone is valid."""
    p = write_scenario(tiny_raw)
    msg = _error(p, ["comm.drop=0.1", "comm.jitter_ms=-1", "steps=10"])
    assert msg == "--set comm.jitter_ms=-1: comm: jitter_ms = -1.0 must be >= 0.0"
    assert str(p) not in msg
    # Overrides valid alone, refused together: the one that completes the combination.
    tiny_raw["comm"]["mode"] = "async"
    msg = _error(write_scenario(tiny_raw), ["runtime.restart=1", 'comm.mode="sync"'])
    assert msg.startswith('--set comm.mode="sync": runtime.restart needs comm.mode = "async"')
    # The file's own error stays the file's, whatever the overrides.
    tiny_raw["comm"]["drop"] = 2.0
    p = write_scenario(tiny_raw)
    assert _error(p, ["steps=10"]) == f"{p}: comm: drop = 2.0 must lie in [0, 1)"
    assert _error(p, ["comm.dorp=1"]).startswith("--set comm.dorp=1: comm: unknown key 'dorp'")


def test_cli_refuses_a_bad_override_in_one_line(tiny_raw, write_scenario, tmp_path, capsys):
    """``p2pgame run``: exit 2, one line naming the --set, nothing prepared or started."""
    from p2pgame.cli import main

    p = write_scenario(tiny_raw)
    for override in ("comm.jitter_ms=inf", "comm.send_hwm=9223372036854775808",
                     "runtime.step_delay_ms=inf", "runtime.peer_timeout_s=nan"):
        code = main(["run", str(p), "--set", override, "--out", str(tmp_path / "runs")])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith(f"error: --set {override}: ")
        assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("preset, kind", [("game", "vae-conv"), ("diffgan", "dcgan-conv")])
def test_an_old_form_kind_key_is_never_dropped_in_silence(preset, kind):
    """[algorithm] takes the learner's keys, ``kind`` among them (an unknown key's message
    lists it as allowed): a kind written there is used, or refused; never replaced by the
    preset's default model without a word."""
    raw = {"topology": {"n": 2, "graph": "complete"},
           "data": {"dataset": "mnist", "partition": {"kind": "iid"}},
           "algorithm": {"name": preset, "kind": kind}}
    with pytest.raises(ScenarioError) as info:
        scenario_from_dict({**raw, "algorithm": {"name": preset, "bogus": 1}}, "x.toml")
    assert "kind" in str(info.value).split("allowed: ")[1].split(", ")
    try:
        s = scenario_from_dict(raw, "x.toml")
    except ScenarioError:
        return  # refused: fine
    assert s.learner.kind == kind, f"[algorithm] kind = {kind!r} ran as {s.method_name}"


def test_checkpoints_only_where_a_run_can_be_resumed(tiny_raw):
    """runtime.checkpoint_every saves resume states for --resume, which continues async
    runs of resumable algorithms only: a sync run was accepted, then could not resume."""
    tiny_raw["runtime"]["checkpoint_every"] = 10
    with pytest.raises(ScenarioError, match=re.escape(
            'x.toml: runtime.checkpoint_every needs comm.mode = "async": a sync run cannot '
            "be resumed")):
        scenario_from_dict(tiny_raw, "x.toml")
    tiny_raw["comm"]["mode"] = "async"
    assert scenario_from_dict(tiny_raw).runtime.checkpoint_every == 10
    game = load_raw(ROOT_TOPOLOGIES / "mnist-demo.toml")
    game["comm"] = {**game.get("comm", {}), "mode": "async"}
    game.setdefault("runtime", {})["checkpoint_every"] = 10
    with pytest.raises(ScenarioError, match="checkpoint_every: learner 'vae-conv' cannot "
                                            "resume"):
        scenario_from_dict(game, "g.toml")


def test_cuda_device_refused_when_none_is_visible(monkeypatch):
    """``runtime.device = "cuda"`` without a visible GPU: refused before any peer starts
    (every peer failed on its own torch error)."""
    import torch

    from p2pgame.exchange import method
    from p2pgame.launch import resolve_devices

    def devices(device: str, count: int) -> list[str]:
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        s = load_scenario(ROOT_TOPOLOGIES / "mnist-demo.toml", [f'runtime.device="{device}"'])
        return resolve_devices(s, method(s))

    for device in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(ScenarioError, match=re.escape(
                f"runtime.device = '{device}': no CUDA device is visible")):
            devices(device, 0)
    with pytest.raises(ScenarioError, match=r"'cuda:2': only 2 CUDA device\(s\) are visible"):
        devices("cuda:2", 2)
    assert devices("cuda:1", 2) == ["cuda:1", "cuda:1"]
    assert devices("auto", 0) == ["cpu", "cpu"]


def test_cuda_device_refused_for_an_algorithm_without_torch():
    """expfam computes with numpy: cuda there used to run on the CPU in silence."""
    from p2pgame.exchange import method
    from p2pgame.launch import resolve_devices

    s = load_scenario(ROOT_TOPOLOGIES / "expfam-ring8.toml", ['runtime.device="cuda"'])
    with pytest.raises(ScenarioError, match="samples x expfam-bernoulli computes with numpy"):
        resolve_devices(s, method(s))


def test_a_ray_address_with_no_cluster_is_one_line(monkeypatch):
    ray = pytest.importorskip("ray")
    from p2pgame.launch import backends

    def no_cluster(**kw):
        raise ConnectionError("Could not find any running Ray instance.\nPlease start one")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    with pytest.raises(ScenarioError, match=r"runtime.ray_address = 'auto': no Ray cluster "
                                            r"there .*ray start --head") as e:
        backends.connect_ray("auto")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("device", ["cudax", "cuda:", "cuda:-1", "cuda:1:2", "CPU"])
def test_device_names_are_checked(tiny_raw, device):
    tiny_raw["runtime"]["device"] = device
    with pytest.raises(ScenarioError, match="allowed: auto, cpu, cuda, cuda:N"):
        scenario_from_dict(tiny_raw)


def test_a_bad_sweep_point_is_named(tiny_raw, write_scenario, tmp_path, capsys):
    from p2pgame.cli import main
    from p2pgame.sweep import load_sweep

    write_scenario(tiny_raw, "base.toml")
    sweep = tmp_path / "s.toml"
    sweep.write_text('scenario = "base.toml"\nset = ["steps=10"]\n'
                     '[grid]\n"comm.jitter_ms" = [0.0, 1.0]\n"comm.drop" = [0.0, 1.5]\n')
    with pytest.raises(ScenarioError) as info:
        load_sweep(sweep)
    assert str(info.value) == (
        f"{sweep}: point 2/4 (comm.jitter_ms=0.0,comm.drop=1.5): --set comm.drop=1.5: "
        "comm: drop = 1.5 must lie in [0, 1)")
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {sweep}: point 2/4") and err.count("\n") == 1


@pytest.mark.parametrize("text, needle", [
    ("v = " + "9" * 5000, "not a scenario p2pgame can read (Exceeds the limit"),
    ("v = " + "[" * 3000 + "]" * 3000, "not a scenario p2pgame can read (nested too deeply)"),
    (b"name = \"\xff\"", "not valid TOML: not UTF-8 text (byte 8)"),
])
def test_unreadable_scenario_files_are_refused(tmp_path, text, needle):
    p = tmp_path / "s.toml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    msg = _error(p)
    assert msg.startswith(f"{p}: ") and needle in msg and len(msg) < 300


@pytest.mark.parametrize("literal, needle", [
    ("9" * 5000, "not a value p2pgame can read"), ("[" * 3000, "nested too deeply")])
def test_unreadable_override_values_are_refused(literal, needle):
    with pytest.raises(ScenarioError, match=needle) as info:
        parse_override(f"comm.drop={literal}")
    assert str(info.value).startswith("--set comm.drop=") and len(str(info.value)) < 200


@pytest.mark.parametrize("name", ["../../elsewhere", "a/b", "", "x" * 101, "..", "tab\there"])
def test_run_name_is_a_file_name(tiny_raw, name):
    """``name`` is the run folder's prefix: never a path out of --out."""
    tiny_raw["name"] = name
    with pytest.raises(ScenarioError, match="the run folder's prefix must be a file name"):
        scenario_from_dict(tiny_raw)
