"""Scenario configuration: typed sections, unknown keys, overrides, cross-section checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pgame.config import (
    LINK_KEYS,
    CommSpec,
    LinkSpec,
    Scenario,
    ScenarioError,
    TopologySpec,
    apply_overrides,
    load_raw,
    load_scenario,
    parse_override,
    scenario_from_dict,
    to_plain,
)

ROOT_TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"


def _error(path, overrides=()) -> str:
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, overrides)
    return str(info.value)


# --------------------------------------------------------------------------- loading


def test_shipped_expfam_scenarios_load():
    for name in ("expfam-ring8.toml", "expfam-ring8-async.toml", "expfam-timevarying.toml"):
        s = load_scenario(ROOT_TOPOLOGIES / name)
        assert isinstance(s, Scenario)
        assert s.algorithm["name"] == "expfam"
        assert s.source.endswith(name)
    s = load_scenario(ROOT_TOPOLOGIES / "expfam-ring8-async.toml")
    assert (s.n, s.comm.mode, s.comm.delay_steps, s.comm.drop) == (8, "async", 5, 0.1)
    assert s.comm.default_link() == LinkSpec(delay_steps=5, drop=0.1)


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
    assert load_scenario(write_scenario(tiny_raw)).comm.latency_ms == 3.0
    # The name defaults to the file stem.
    del tiny_raw["name"]
    assert load_scenario(write_scenario(tiny_raw, "my-run.toml")).name == "my-run"


def test_to_plain_is_json_friendly(tiny_raw):
    import json

    plain = to_plain(scenario_from_dict(tiny_raw))
    assert json.loads(json.dumps(plain))["topology"]["n"] == 4
    assert plain["comm"]["edges"] == []


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


@pytest.mark.parametrize("section", ["topology", "algorithm"])
def test_missing_section(tiny_raw, write_scenario, section):
    del tiny_raw[section]
    msg = _error(write_scenario(tiny_raw))
    assert f"[{section}]" in msg


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
        ("comm", "publish_every", 0, "publish_every"),
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
    assert (s.comm.drop, s.comm.mode, s.topology.graph) == (0.2, "async", "complete")
    # An override is checked like the file: an unknown key is named.
    msg = _error(p, ["comm.dorp=0.2"])
    assert str(p) in msg and "'dorp'" in msg and "allowed" in msg
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
    links = s.comm.edge_links(s.n)
    assert set(links) == {(0, 1), (3, 0)}
    # Unmentioned keys come from the scenario-wide defaults.
    assert links[(0, 1)] == LinkSpec(delay_steps=3, drop=0.05)
    assert links[(3, 0)] == LinkSpec(drop=0.5, bandwidth=1e4)
    assert set(LINK_KEYS) == {"delay_steps", "latency_ms", "jitter_ms", "drop", "bandwidth",
                              "burst"}


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
