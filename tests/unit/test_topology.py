"""Graphs, mixing weights, spectral gap and time-varying schedules."""

from __future__ import annotations

import json
import math

import networkx as nx
import numpy as np
import pytest

from p2pgame.config import GraphSpec, ScenarioError, TopologySpec
from p2pgame.scenario import resolve
from p2pgame.topology import (
    Schedule,
    Topology,
    build_graph,
    build_schedule,
    make_topology,
    metropolis_weights,
    schedule_from_plain,
    schedule_to_plain,
    self_weight_matrix,
    validate_weights,
)


def _undirected_edges(g: nx.DiGraph) -> set[frozenset[int]]:
    return {frozenset(e) for e in g.edges}


def _assert_symmetric_graph(g: nx.DiGraph) -> None:
    for u, v in g.edges:
        assert g.has_edge(v, u), f"undirected graph lacks {v}->{u}"


# --------------------------------------------------------------------------- graph kinds


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_ring(n):
    g = build_graph(GraphSpec(graph="ring"), n, seed=0)
    _assert_symmetric_graph(g)
    expected = 1 if n == 2 else n
    assert len(_undirected_edges(g)) == expected
    if n > 2:
        assert all(g.in_degree(i) == 2 for i in range(n))
        assert _undirected_edges(g) == {frozenset((i, (i + 1) % n)) for i in range(n)}


@pytest.mark.parametrize("n", [2, 4, 7])
def test_complete(n):
    g = build_graph(GraphSpec(graph="complete"), n, seed=0)
    assert g.number_of_edges() == n * (n - 1)
    assert all(g.in_degree(i) == n - 1 for i in range(n))


def test_single_peer_complete_graph():
    g = build_graph(GraphSpec(graph="complete"), 1, seed=0)
    assert g.number_of_nodes() == 1 and g.number_of_edges() == 0
    with pytest.raises(ScenarioError, match="needs n >= 2"):
        build_graph(GraphSpec(graph="ring"), 1, seed=0)


def test_line_and_star():
    line = build_graph(GraphSpec(graph="line"), 5, seed=0)
    assert len(_undirected_edges(line)) == 4
    assert [line.in_degree(i) for i in range(5)] == [1, 2, 2, 2, 1]
    star = build_graph(GraphSpec(graph="star"), 6, seed=0)
    assert len(_undirected_edges(star)) == 5
    assert star.in_degree(0) == 5 and all(star.in_degree(i) == 1 for i in range(1, 6))


@pytest.mark.parametrize(
    "kind, n, rows, n_edges, degrees",
    [
        ("grid", 9, 0, 12, {2, 3, 4}),  # 3x3
        ("grid", 12, 0, 17, {2, 3, 4}),  # 3x4 (rows = largest divisor <= sqrt(n))
        ("grid", 12, 2, 16, {2, 3}),  # 2x6
        ("grid", 5, 0, 4, {1, 2}),  # prime: a 1x5 line
        ("torus", 9, 0, 18, {4}),
        ("torus", 12, 0, 24, {4}),
    ],
)
def test_grid_and_torus(kind, n, rows, n_edges, degrees):
    g = build_graph(GraphSpec(graph=kind, rows=rows), n, seed=0)
    _assert_symmetric_graph(g)
    assert len(_undirected_edges(g)) == n_edges
    assert {g.in_degree(i) for i in range(n)} == degrees


def test_grid_rows_must_divide_n():
    with pytest.raises(ScenarioError, match="does not divide"):
        build_graph(GraphSpec(graph="grid", rows=5), 12, seed=0)


@pytest.mark.parametrize("n, d", [(6, 3), (10, 4), (8, 5)])
def test_random_regular(n, d):
    g = build_graph(GraphSpec(graph="random_regular", degree=d), n, seed=11)
    _assert_symmetric_graph(g)
    assert all(g.in_degree(i) == d and g.out_degree(i) == d for i in range(n))
    assert len(_undirected_edges(g)) == n * d // 2


@pytest.mark.parametrize("n, d", [(5, 3), (4, 4)])
def test_random_regular_impossible(n, d):
    with pytest.raises(ScenarioError, match="degree"):
        build_graph(GraphSpec(graph="random_regular", degree=d), n, seed=0)


@pytest.mark.parametrize(
    "spec",
    [
        GraphSpec(graph="erdos_renyi", p=0.5),
        GraphSpec(graph="watts_strogatz", k=4, p=0.2),
        GraphSpec(graph="barabasi_albert", m=2),
        GraphSpec(graph="random_regular", degree=3),
    ],
    ids=lambda s: s.graph,
)
def test_random_graphs_connected_and_seeded(spec):
    n = 12
    seen = set()
    for seed in range(6):
        try:
            g = build_graph(spec, n, seed)
        except ScenarioError as e:  # a disconnected draw is reported, never returned
            assert "disconnected" in str(e)
            continue
        assert nx.is_strongly_connected(g)
        assert sorted(g.edges) == sorted(build_graph(spec, n, seed).edges)  # deterministic
        seen.add(tuple(sorted(g.edges)))
    assert len(seen) >= 3, "different seeds should give different graphs"


def test_barabasi_albert_m1_is_a_tree():
    g = build_graph(GraphSpec(graph="barabasi_albert", m=1), 10, seed=4)
    assert len(_undirected_edges(g)) == 9 and nx.is_strongly_connected(g)


def test_erdos_renyi_disconnected_is_an_error():
    with pytest.raises(ScenarioError, match="disconnected"):
        build_graph(GraphSpec(graph="erdos_renyi", p=0.0), 5, seed=0)


@pytest.mark.parametrize("spec, needle", [
    (GraphSpec(graph="watts_strogatz", k=6), "k = 6"),
    (GraphSpec(graph="barabasi_albert", m=6), "m = 6"),
])
def test_random_graph_parameter_errors(spec, needle):
    with pytest.raises(ScenarioError, match=needle):
        build_graph(spec, 6, seed=0)


def test_explicit_edges_undirected_and_directed():
    edges = ((0, 1), (1, 2), (2, 3))
    g = build_graph(GraphSpec(graph="edges", edges=edges), 4, seed=0)
    assert sorted(g.edges) == [(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2)]
    dg = build_graph(GraphSpec(graph="edges", edges=edges, directed=True), 4, seed=0)
    assert sorted(dg.edges) == sorted(edges)
    with pytest.raises(ScenarioError, match="disconnected"):
        build_graph(GraphSpec(graph="edges", edges=((0, 1), (2, 3))), 4, seed=0)


def test_directed_ring_and_star():
    ring = build_graph(GraphSpec(graph="ring", directed=True), 5, seed=0)
    assert sorted(ring.edges) == [(i, (i + 1) % 5) for i in range(5)]
    assert all(ring.in_degree(i) == 1 for i in range(5))
    star = build_graph(GraphSpec(graph="star", directed=True), 4, seed=0)
    assert sorted(star.edges) == [(0, 1), (0, 2), (0, 3)]
    a = self_weight_matrix(star, 0.3)
    assert a[0].tolist() == [1.0, 0.0, 0.0, 0.0]  # the hub hears no one
    np.testing.assert_allclose(a[1], [0.7, 0.3, 0.0, 0.0])


# --------------------------------------------------------------------------- weights


def test_metropolis_three_node_line_by_hand():
    g = build_graph(GraphSpec(graph="line"), 3, seed=0)
    a = metropolis_weights(g)
    third = 1.0 / 3.0
    expected = np.array([[2 * third, third, 0.0],
                         [third, third, third],
                         [0.0, third, 2 * third]])
    np.testing.assert_allclose(a, expected)


@pytest.mark.parametrize(
    "spec, n",
    [
        (GraphSpec(graph="ring"), 7),
        (GraphSpec(graph="star"), 6),
        (GraphSpec(graph="grid"), 12),
        (GraphSpec(graph="barabasi_albert", m=2), 10),
        (GraphSpec(graph="erdos_renyi", p=0.6), 9),
    ],
    ids=lambda x: getattr(x, "graph", str(x)),
)
def test_metropolis_doubly_stochastic_and_symmetric(spec, n):
    g = build_graph(spec, n, seed=1)
    a = metropolis_weights(g)
    np.testing.assert_allclose(a.sum(axis=1), 1.0)
    np.testing.assert_allclose(a.sum(axis=0), 1.0)
    np.testing.assert_allclose(a, a.T)
    assert (a >= 0).all()
    off = a - np.diag(np.diag(a))
    assert {(int(j), int(i)) for i, j in zip(*np.nonzero(off), strict=True)} == set(g.edges)
    validate_weights(a, g, "metropolis")


def test_metropolis_needs_undirected():
    g = build_graph(GraphSpec(graph="ring", directed=True), 4, seed=0)
    with pytest.raises(ScenarioError, match="undirected"):
        metropolis_weights(g)


def test_self_weight_rows():
    g = build_graph(GraphSpec(graph="star"), 4, seed=0)
    a = self_weight_matrix(g, 0.4)
    np.testing.assert_allclose(np.diag(a), 0.4)
    np.testing.assert_allclose(a.sum(axis=1), 1.0)
    np.testing.assert_allclose(a[0, 1:], 0.2)  # hub spreads 0.6 over 3 leaves
    np.testing.assert_allclose(a[2], [0.6, 0.0, 0.4, 0.0])
    per_peer = self_weight_matrix(g, (1.0, 0.0, 0.5, 0.25))
    np.testing.assert_allclose(np.diag(per_peer), [1.0, 0.0, 0.5, 0.25])
    np.testing.assert_allclose(per_peer.sum(axis=1), 1.0)
    assert per_peer[0, 1:].tolist() == [0.0, 0.0, 0.0]
    validate_weights(per_peer, g, "self_weight")


def test_validate_weights_errors():
    g = build_graph(GraphSpec(graph="line"), 3, seed=0)
    good = metropolis_weights(g)
    with pytest.raises(ScenarioError, match="expected 3x3"):
        validate_weights(np.eye(2), g, "matrix")
    bad = good.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ScenarioError, match="non-negative"):
        validate_weights(bad, g, "matrix")
    bad = good.copy()
    bad[1] = [0.6, 0.6, -0.2]
    with pytest.raises(ScenarioError, match=r"\[1\]\[2\] = -0.2"):
        validate_weights(bad, g, "matrix")
    bad = good.copy()
    bad[2, 2] = 0.9
    with pytest.raises(ScenarioError, match="row 2 sums to"):
        validate_weights(bad, g, "matrix")
    bad = good.copy()
    bad[0] = [0.5, 0.25, 0.25]  # 2 -> 0 is not an edge of the line
    with pytest.raises(ScenarioError, match="no edge 2 -> 0"):
        validate_weights(bad, g, "matrix")
    # Row-stochastic but not column-stochastic: fine as a matrix, not as Metropolis.
    lopsided = np.array([[0.5, 0.5, 0.0], [0.1, 0.8, 0.1], [0.0, 0.5, 0.5]])
    validate_weights(lopsided, g, "matrix")
    with pytest.raises(ScenarioError, match="doubly stochastic"):
        validate_weights(lopsided, g, "metropolis")
    # Nobody values own data.
    with pytest.raises(ScenarioError, match="no peer gives weight to its own data"):
        validate_weights(np.array([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5], [0.0, 1.0, 0.0]]), g,
                         "matrix")
    # Peers 1 and 2 have no data and only listen to each other.
    with pytest.raises(ScenarioError, match="peer 1 has no data and is not reachable"):
        validate_weights(np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), g,
                         "matrix")


# --------------------------------------------------------------------------- spectra


def _topology(n, graph="ring", weights="metropolis", **kw) -> Topology:
    spec = TopologySpec(n=n, graphs=(GraphSpec(graph=graph),), weights=weights, **kw)
    return make_topology(spec, spec.base_graph, seed=0)


@pytest.mark.parametrize("n", [3, 5, 8])
def test_second_eigenvalue_complete_metropolis_is_zero(n):
    top = _topology(n, graph="complete")
    np.testing.assert_allclose(top.weights, np.full((n, n), 1.0 / n))
    assert top.second_eigenvalue_modulus() == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("n", [5, 8, 12])
def test_second_eigenvalue_ring(n):
    # Metropolis on a ring: 1/3 everywhere -> eigenvalues 1/3 + 2/3 cos(2 pi k / n).
    ring = _topology(n)
    expected = max(abs(1 / 3 + 2 / 3 * math.cos(2 * math.pi * k / n)) for k in range(1, n))
    assert ring.second_eigenvalue_modulus() == pytest.approx(expected, abs=1e-9)
    if n == 8:
        assert expected == pytest.approx(1 / 3 + 2 / 3 * math.cos(math.pi / 4))
    # Self weight alpha: eigenvalues alpha + (1 - alpha) cos(2 pi k / n).
    alpha = 0.3
    sw = _topology(n, weights="self_weight", self_weight=alpha)
    expected = max(abs(alpha + (1 - alpha) * math.cos(2 * math.pi * k / n)) for k in range(1, n))
    assert sw.second_eigenvalue_modulus() == pytest.approx(expected, abs=1e-9)


def test_topology_accessors():
    top = _topology(4, weights="self_weight", self_weight=0.5)
    assert top.in_neighbours(0) == (1, 3) and top.out_neighbours(0) == (1, 3)
    assert top.row(0) == {0: 0.5, 1: 0.25, 3: 0.25}
    assert len(top.edges) == 8 and top.edges == tuple(sorted(top.edges))


# --------------------------------------------------------------------------- schedules


def _scenario(topology: dict, steps: int = 100, seed: int = 0):
    return resolve({
        "steps": steps, "seed": seed, "topology": topology,
        "algorithm": {"name": "expfam", "dim": 2, "n_data": 10, "batch": 4},
    })


def _schedule(topology: dict, steps: int = 100, seed: int = 0) -> Schedule:
    """The schedule of a raw [topology] table (resolved like a scenario file)."""
    s = _scenario(topology, steps, seed)
    return build_schedule(s.topology, s.steps, s.seed)


def test_static_schedule():
    sched = _schedule({"n": 4})
    assert sched.static and sched.starts == (0,)
    assert sched.at(0) is sched.at(99) is sched.final()


def test_schedule_switches_at_given_steps():
    sched = _schedule({
        "n": 6, "graph": "ring", "self_weight": 0.4,
        "schedule": [{"at": 30, "graph": "star"}, {"at": 70, "graph": "complete"}],
    })
    assert sched.starts == (0, 30, 70) and not sched.static
    assert len(sched.at(0).edges) == len(sched.at(29).edges) == 12  # ring
    assert len(sched.at(30).edges) == len(sched.at(69).edges) == 10  # star
    assert len(sched.at(70).edges) == len(sched.at(10**6).edges) == 30  # complete
    assert sched.final() is sched.at(70)
    np.testing.assert_allclose(np.diag(sched.at(50).weights), 0.4)  # weights rule kept
    # Union of neighbours over the schedule: peer 1 hears 0 and 2 (ring), then all (complete).
    assert sched.union_in(1) == (0, 2, 3, 4, 5)
    assert sched.union_out(0) == (1, 2, 3, 4, 5)


def test_schedule_entries_become_graphs_inheriting_the_base_graph():
    s = _scenario({"n": 6, "graph": "random_regular", "degree": 3, "directed": False,
                   "schedule": [{"at": 30, "degree": 4}, {"at": 70, "graph": "complete"}]})
    base, mid, last = s.topology.graphs
    assert s.topology.base_graph is base
    assert (base.graph, base.degree, base.at) == ("random_regular", 3, 0)
    # Unmentioned keys of a schedule entry come from the first graph.
    assert (mid.graph, mid.degree, mid.at) == ("random_regular", 4, 30)
    assert (last.graph, last.at) == ("complete", 70)
    sched = build_schedule(s.topology, s.steps, s.seed)
    assert all(len(sched.at(40).in_neighbours(i)) == 4 for i in range(6))


def test_build_schedule_from_spec_without_a_scenario():
    spec = TopologySpec(n=5, graphs=(GraphSpec(graph="ring"), GraphSpec(graph="star", at=10)),
                        weights="metropolis")
    sched = build_schedule(spec, steps=20, seed=0)
    assert sched.starts == (0, 10)
    assert len(sched.at(9).edges) == 10 and len(sched.at(10).edges) == 8
    for t in sched.topologies:
        np.testing.assert_allclose(t.weights.sum(axis=0), 1.0)  # metropolis kept


def test_scheduled_graph_error_names_the_entry():
    spec = TopologySpec(n=5, graphs=(GraphSpec(graph="ring"),
                                     GraphSpec(graph="random_regular", degree=3, at=10)))
    with pytest.raises(ScenarioError, match=r"topology\.schedule\[0\]: degree = 3"):
        build_schedule(spec, steps=20, seed=0)


def test_schedule_plain_round_trip():
    sched = _schedule({"n": 5, "graph": "ring", "schedule": [{"at": 4, "graph": "complete"}]},
                      steps=10)
    plain = schedule_to_plain(sched)
    assert json.loads(json.dumps(plain)) == plain  # JSON-friendly
    back = schedule_from_plain(plain)
    assert back.starts == sched.starts
    assert len(back.topologies) == len(sched.topologies)
    for a, b in zip(back.topologies, sched.topologies, strict=True):
        assert (a.n, a.edges) == (b.n, b.edges)
        np.testing.assert_array_equal(a.weights, b.weights)
    assert back.union_in(0) == sched.union_in(0)


def test_schedule_from_shipped_timevarying_file():
    from pathlib import Path

    from p2pgame.scenario import load_scenario

    s = load_scenario(Path(__file__).resolve().parents[2] / "topologies/expfam-timevarying.toml")
    sched = build_schedule(s.topology, s.steps, s.seed)
    assert sched.starts == (0, 600, 1000)
    assert len(sched.at(599).edges) == 12 and len(sched.at(600).edges) == 10


def test_redraw_every_reproducible_from_seed():
    topo = {"n": 10, "graph": "random_regular", "degree": 3, "redraw_every": 25}
    a = _schedule(topo, steps=100, seed=5)
    b = _schedule(topo, steps=100, seed=5)
    c = _schedule(topo, steps=100, seed=6)
    assert a.starts == (0, 25, 50, 75)
    edges = [t.edges for t in a.topologies]
    assert edges == [t.edges for t in b.topologies]
    for t in a.topologies:
        np.testing.assert_allclose(t.weights.sum(axis=1), 1.0)
    assert len(set(edges)) > 1, "redrawn graphs should differ between epochs"
    assert edges != [t.edges for t in c.topologies], "another seed should draw other graphs"
    assert a.at(49) is a.topologies[1] and a.at(50) is a.topologies[2]


def test_redraw_retries_disconnected_draws():
    # p = 0.25 on 8 peers is often disconnected; every epoch must still be connected.
    sched = _schedule({"n": 8, "graph": "erdos_renyi", "p": 0.25, "redraw_every": 10},
                      steps=80, seed=1)
    assert len(sched.topologies) == 8
    for t in sched.topologies:
        g = nx.DiGraph(list(t.edges))
        g.add_nodes_from(range(8))
        assert nx.is_weakly_connected(g)


def test_redraw_gives_up_on_hopeless_graphs():
    spec = TopologySpec(n=6, graphs=(GraphSpec(graph="erdos_renyi", p=0.0),), redraw_every=10)
    with pytest.raises(ScenarioError, match="redraw_every"):
        build_schedule(spec, steps=20, seed=0)
    # The resolver builds the schedule too, so a scenario file with it is refused up front.
    with pytest.raises(ScenarioError, match="redraw_every"):
        _scenario({"n": 6, "graph": "erdos_renyi", "p": 0.0, "redraw_every": 10}, steps=20)
