"""Communication graphs and mixing weights, built with networkx.

Convention: ``weights[i, j]`` is the share peer *i* gives to what peer *j* sends
(``weights[i, i]`` is the share of its own data); an edge ``j -> i`` means i
subscribes to j.  Every row sums to one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx
import numpy as np

from p2pgame.config import GraphSpec, ScenarioError, TopologySpec
from p2pgame.rng import derive_seed

TOL = 1e-6


def build_graph(spec: GraphSpec, n: int, seed: int) -> nx.DiGraph:
    """The directed communication graph of ``spec`` on peers 0..n-1."""
    kind = spec.graph
    if kind not in ("complete", "edges") and n < 2:
        raise ScenarioError(f"graph = {kind!r} needs n >= 2 peers, got {n}")
    create = nx.DiGraph if spec.directed else nx.Graph
    if kind == "complete":
        g = nx.complete_graph(n, create_using=create)
    elif kind == "ring":
        g = nx.cycle_graph(n, create_using=create)
    elif kind == "line":
        g = nx.path_graph(n, create_using=create)
    elif kind == "star":
        g = nx.star_graph(n - 1, create_using=create)
    elif kind in ("grid", "torus"):
        rows = spec.rows or max(r for r in range(1, int(math.isqrt(n)) + 1) if n % r == 0)
        if n % rows:
            raise ScenarioError(f"rows = {rows} does not divide n = {n} for a {kind}")
        g = nx.grid_2d_graph(rows, n // rows, periodic=(kind == "torus"))
        g = nx.convert_node_labels_to_integers(g, ordering="sorted")
    elif kind == "random_regular":
        if spec.degree >= n or (spec.degree * n) % 2:
            raise ScenarioError(
                f"degree = {spec.degree}: a random regular graph needs degree < n and "
                f"degree * n even (n = {n})"
            )
        g = nx.random_regular_graph(spec.degree, n, seed=seed)
    elif kind == "erdos_renyi":
        g = nx.gnp_random_graph(n, spec.p, seed=seed, directed=spec.directed)
    elif kind == "watts_strogatz":
        if not 1 <= spec.k < n:
            raise ScenarioError(f"k = {spec.k} must lie in 1..{n - 1} for watts_strogatz")
        g = nx.watts_strogatz_graph(n, spec.k, spec.p, seed=seed)
    elif kind == "barabasi_albert":
        if not 1 <= spec.m < n:
            raise ScenarioError(f"m = {spec.m} must lie in 1..{n - 1} for barabasi_albert")
        g = nx.barabasi_albert_graph(n, spec.m, seed=seed)
    elif kind == "edges":
        g = create()
        g.add_nodes_from(range(n))
        for src, dst in spec.edges:
            for v in (src, dst):
                if not 0 <= v < n:
                    raise ScenarioError(f"edges: peer {v} is not in 0..{n - 1}")
            if src == dst:
                raise ScenarioError(f"edges: self loop [{src}, {dst}] is not allowed")
            g.add_edge(src, dst)
    else:  # pragma: no cover - GraphSpec validates kinds
        raise ScenarioError(f"graph = {kind!r} is not known")
    dg = g.to_directed() if not g.is_directed() else g
    dg = nx.DiGraph(dg)
    dg.add_nodes_from(range(n))
    if n > 1 and not nx.is_weakly_connected(dg):
        raise ScenarioError(f"graph = {kind!r} on {n} peers is disconnected")
    return dg


def metropolis_weights(g: nx.DiGraph) -> np.ndarray:
    """Metropolis-Hastings weights: doubly stochastic on an undirected graph."""
    n = g.number_of_nodes()
    for u, v in g.edges:
        if not g.has_edge(v, u):
            raise ScenarioError(
                f"weights = 'metropolis' needs an undirected graph; edge {u}->{v} has no reverse"
            )
    deg = [g.in_degree(i) for i in range(n)]
    a = np.zeros((n, n))
    for i in range(n):
        for j in g.predecessors(i):
            a[i, j] = 1.0 / (1 + max(deg[i], deg[j]))
        a[i, i] = 1.0 - a[i].sum()
    return a


def self_weight_matrix(g: nx.DiGraph, self_weight: float | tuple[float, ...]) -> np.ndarray:
    """``a_ii = alpha_i``; the rest spread uniformly over i's in-neighbours."""
    n = g.number_of_nodes()
    alphas = self_weight if isinstance(self_weight, tuple) else (self_weight,) * n
    a = np.zeros((n, n))
    for i in range(n):
        nbrs = sorted(g.predecessors(i))
        if not nbrs:
            a[i, i] = 1.0
            continue
        a[i, i] = alphas[i]
        for j in nbrs:
            a[i, j] = (1.0 - alphas[i]) / len(nbrs)
    return a


def validate_weights(a: np.ndarray, g: nx.DiGraph, rule: str) -> None:
    n = g.number_of_nodes()
    if a.shape != (n, n):
        raise ScenarioError(f"matrix: expected {n}x{n}, got {a.shape[0]}x{a.shape[1]}")
    if not np.all(np.isfinite(a)) or (a < -TOL).any():
        i, j = np.argwhere(~(a >= -TOL))[0]
        raise ScenarioError(f"weights: entry [{i}][{j}] = {a[i, j]} must be non-negative")
    sums = a.sum(axis=1)
    for i, s in enumerate(sums):
        if abs(s - 1.0) > TOL:
            raise ScenarioError(f"weights: row {i} sums to {s:.6g}, must sum to 1")
    for i, j in zip(*np.nonzero(a > TOL), strict=True):
        if i != j and not g.has_edge(j, i):
            raise ScenarioError(
                f"weights: [{i}][{j}] = {a[i, j]:.4g} but there is no edge {j} -> {i}"
            )
    if rule == "metropolis" and np.abs(a.sum(axis=0) - 1.0).max() > TOL:
        raise ScenarioError("weights: the Metropolis matrix is not doubly stochastic")
    # Every peer without data of its own must learn, through the weights, from one with data.
    influence = nx.DiGraph()
    influence.add_nodes_from(range(n))
    influence.add_edges_from((int(j), int(i)) for i, j in zip(*np.nonzero(a > TOL), strict=True))
    sources = [i for i in range(n) if a[i, i] > TOL]
    if not sources:
        raise ScenarioError("weights: no peer gives weight to its own data")
    reached = set(sources)
    for s in sources:
        reached |= nx.descendants(influence, s)
    missing = sorted(set(range(n)) - reached)
    if missing:
        raise ScenarioError(
            f"weights: peer {missing[0]} has no data and is not reachable from a peer with data"
        )


@dataclass(frozen=True)
class Topology:
    """One graph with its weights; immutable."""

    n: int
    edges: tuple[tuple[int, int], ...]
    weights: np.ndarray

    def in_neighbours(self, i: int) -> tuple[int, ...]:
        return tuple(sorted(s for s, d in self.edges if d == i))

    def out_neighbours(self, i: int) -> tuple[int, ...]:
        return tuple(sorted(d for s, d in self.edges if s == i))

    def row(self, i: int) -> dict[int, float]:
        """Non-zero weights of peer i's row, self included."""
        return {j: float(w) for j, w in enumerate(self.weights[i]) if w > TOL or j == i}

    def second_eigenvalue_modulus(self) -> float:
        ev = np.sort(np.abs(np.linalg.eigvals(self.weights)))[::-1]
        return float(ev[1]) if len(ev) > 1 else 0.0


def make_topology(spec: TopologySpec, graph: GraphSpec, seed: int) -> Topology:
    g = build_graph(graph, spec.n, seed)
    if spec.weights == "metropolis":
        a = metropolis_weights(g)
    elif spec.weights == "self_weight":
        a = self_weight_matrix(g, spec.self_weight)
    else:
        try:
            a = np.asarray(spec.matrix, dtype=float)
        except ValueError:
            raise ScenarioError("matrix: rows must all have n numbers") from None
    validate_weights(a, g, spec.weights)
    return Topology(n=spec.n, edges=tuple(sorted((int(u), int(v)) for u, v in g.edges)), weights=a)


@dataclass(frozen=True)
class Schedule:
    """The topology in force at each step (static, scheduled, or redrawn)."""

    starts: tuple[int, ...]
    topologies: tuple[Topology, ...]

    def at(self, step: int) -> Topology:
        idx = 0
        for k, s in enumerate(self.starts):
            if s <= step:
                idx = k
        return self.topologies[idx]

    @property
    def static(self) -> bool:
        return len(self.topologies) == 1

    def final(self) -> Topology:
        return self.topologies[-1]

    def union_in(self, i: int) -> tuple[int, ...]:
        return tuple(sorted({j for t in self.topologies for j in t.in_neighbours(i)}))

    def union_out(self, i: int) -> tuple[int, ...]:
        return tuple(sorted({j for t in self.topologies for j in t.out_neighbours(i)}))


def build_schedule(spec: TopologySpec, steps: int, seed: int) -> Schedule:
    """The topology in force at every step of a run of ``steps`` steps."""
    if spec.redraw_every:
        graph = spec.base_graph
        starts, tops = [], []
        for epoch, start in enumerate(range(0, steps, spec.redraw_every)):
            # A random draw may come out disconnected: redraw (seeded) until it is not.
            for attempt in range(100):
                draw_seed = derive_seed(seed, "topology", epoch, attempt)
                try:
                    top = make_topology(spec, graph, draw_seed)
                    break
                except ScenarioError as e:
                    if "disconnected" not in str(e) and "reachable" not in str(e):
                        raise ScenarioError(f"topology: {e}") from None
            else:
                raise ScenarioError(
                    "topology.redraw_every: 100 draws in a row were disconnected; raise p or degree"
                )
            starts.append(start)
            tops.append(top)
        return Schedule(tuple(starts), tuple(tops))
    tops = []
    for k, g in enumerate(spec.graphs):
        where = "topology" if k == 0 else f"topology.schedule[{k - 1}]"
        try:
            tops.append(make_topology(spec, g, derive_seed(seed, "topology", k)))
        except ScenarioError as e:
            raise ScenarioError(f"{where}: {e}") from None
    return Schedule(tuple(g.at for g in spec.graphs), tuple(tops))


def schedule_to_plain(schedule: Schedule) -> dict:
    """The schedule as plain data (peers receive it instead of rebuilding the graphs)."""
    # Weights as their nonzero entries (row, column, value): a thousand-peer ring is three
    # thousand numbers, not a million.  Floats survive exactly (no rounding).
    def nonzero(w: np.ndarray) -> list[list]:
        rows, cols = np.nonzero(w)
        return [[int(r), int(c), float(w[r, c])] for r, c in zip(rows, cols, strict=True)]

    return {
        "starts": list(schedule.starts),
        "topologies": [
            {"n": t.n, "edges": [list(e) for e in t.edges], "weights": nonzero(t.weights)}
            for t in schedule.topologies
        ],
    }


def schedule_from_plain(data: dict) -> Schedule:
    def dense(n: int, entries: list[list]) -> np.ndarray:
        w = np.zeros((n, n))
        for r, c, v in entries:
            w[int(r), int(c)] = float(v)
        return w

    tops = tuple(
        Topology(n=t["n"], edges=tuple((int(a), int(b)) for a, b in t["edges"]),
                 weights=dense(t["n"], t["weights"]))
        for t in data["topologies"]
    )
    return Schedule(tuple(int(s) for s in data["starts"]), tops)
