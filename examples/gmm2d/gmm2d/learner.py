"""A Gaussian mixture on 2-D points: a p2pgame learner that lives outside p2pgame.

Registered by this package's entry points (``pyproject.toml``, group
``p2pgame.learners``) and named in a scenario as ``[learner] kind = "gmm2d"``.  Only the
learner protocol of ``p2pgame.learners.base`` is used; nothing in p2pgame knows it.

* Data: each peer owns ``n_data`` private 2-D points drawn from its own ``clusters`` true
  isotropic Gaussian clusters.  All peers' clusters lie on one circle of radius
  ``spread``, interleaved (peer i's clusters at angles of its own), so a peer alone never
  sees most of the network's data.
* Model: a ``components``-component diagonal Gaussian mixture (``means``, ``log_var``,
  ``logits``), learnt by stochastic (online) EM (Cappe & Moulines 2009): each step takes
  the responsibilities of its batch (own points plus received ones), moves the mixture's
  expected sufficient statistics a step ``lr`` toward the batch's, and sets the
  parameters from them (the M-step).  The statistics are recomputed from the parameters
  every step, so the parameters are the whole state: the params exchange can average
  them and nothing else goes stale.
* Spaces: ``pts`` (``x``: float32 points, 2 per example), what it publishes under the
  samples exchange.  Parts: ``model`` (the three tensors), what the params exchange
  averages; its generator (``generator``) is the same three tensors, which the model
  exchange sends and a receiver's ``GMMCopy`` draws points from.
* Metrics (``evaluate``): held-out log-likelihood per point on the network's data (the
  union of every peer's true clusters, ``ll_all``), on its own clusters (``ll_own``) and on
  the others' (``ll_other``), next to the true mixture's own (``ll_true_all``); the share
  of the model's mass near each true cluster (``cluster_mass``, within 3 of its standard
  deviation), and under the samples exchange its distance to the game's equilibrium.

``WrongShapeLearner`` (kind ``gmm2d-wrong-shape``) is a TEST FIXTURE: it declares the same
spaces but publishes 3-D points, so that p2pgame's check of declared against published
schemas can be seen refusing a plugin (``tests/integration/test_plugin.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p2pgame.learners.base import (
    Batch,
    GeneratorCopy,
    Learner,
    LearnerConfig,
    LearnerContext,
    LearnerHooks,
    Schema,
    at_least,
    config_error,
)
from p2pgame.rng import generator

MIN_VAR = 1e-3  # variance floor of a component (a component on one point collapses)
MASS_FLOOR = 1e-6  # no component's weight falls to 0 (its log stays finite)
NEAR = 3.0  # a point is "near" a true cluster within NEAR of its standard deviation
PROBE_POINTS = 1000  # held-out points of a probe (evaluate uses eval_samples)
LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class GMMConfig(LearnerConfig):
    """The ``[learner]`` keys of gmm2d (each peer may set its own in ``[[peers]]``)."""

    components: int = 6  # K, the model's mixture components
    clusters: int = 2  # true clusters of this peer's own data
    n_data: int = 2000  # this peer's private points
    batch: int = 128  # points per step (own share = a_ii * batch); 0: all own points
    lr: float = 0.05  # stochastic EM step size, in (0, 1]
    spread: float = 3.0  # radius of the circle the true clusters' centres lie on
    cluster_std: float = 0.4  # standard deviation of each true cluster
    eval_samples: int = 4000  # held-out points (and model draws) of the final evaluation
    eval_every: int = 0  # >0: held-out log-likelihood in the metrics every K steps

    def __post_init__(self) -> None:
        at_least(self, 1, "components", "clusters", "n_data", "eval_samples")
        at_least(self, 0, "batch", "eval_every")
        if not 0 < self.lr <= 1:
            raise config_error("lr", f"must lie in (0, 1] (a stochastic EM step), got {self.lr}")
        if not (math.isfinite(self.spread) and self.spread >= 0):
            raise config_error("spread", f"must be finite and >= 0, got {self.spread}")
        if not (math.isfinite(self.cluster_std) and self.cluster_std > 0):
            raise config_error("cluster_std", f"must be finite and > 0, got {self.cluster_std}")


# -- the network's true clusters: the same on every peer, from the scenario alone ----------

@dataclass(frozen=True)
class Cluster:
    peer: int
    centre: np.ndarray  # (2,)
    std: float


def gmm_players(scenario: Any) -> dict[int, GMMConfig]:
    return {p.peer: p.learner for p in scenario.players if isinstance(p.learner, GMMConfig)}


def true_clusters(scenario: Any) -> list[Cluster]:
    """Every peer's true clusters, peer by peer.  The centres are evenly spaced on a circle
    and interleaved (the c-th clusters of all peers, then the (c+1)-th ...), turned by an
    angle drawn from the scenario seed: every peer computes the same layout."""
    players = gmm_players(scenario)
    order = [(c, i) for c in range(max((p.clusters for p in players.values()), default=0))
             for i in sorted(players) if c < players[i].clusters]
    offset = generator(scenario.seed, "gmm2d", "layout").uniform(0.0, 2 * math.pi)
    at = {key: offset + 2 * math.pi * k / len(order) for k, key in enumerate(order)}
    return [Cluster(i, players[i].spread * np.array([math.cos(at[c, i]), math.sin(at[c, i])]),
                    players[i].cluster_std)
            for i in sorted(players) for c in range(players[i].clusters)]


def draw_points(clusters: list[Cluster], weights: np.ndarray, n: int,
                rng: np.random.Generator) -> np.ndarray:
    """n points of the mixture of ``clusters`` with ``weights``, float32 (n, 2)."""
    which = rng.choice(len(clusters), size=n, p=weights / weights.sum())
    centres = np.stack([c.centre for c in clusters])[which]
    stds = np.array([c.std for c in clusters])[which, None]
    return (centres + stds * rng.standard_normal((n, 2))).astype(np.float32)


def peer_weights(clusters: list[Cluster], peers: set[int]) -> np.ndarray:
    """Each peer of ``peers`` alike, and its clusters alike within it (0 for the others)."""
    count = {i: sum(c.peer == i for c in clusters) for i in peers}
    return np.array([1.0 / (len(peers) * count[c.peer]) if c.peer in peers else 0.0
                     for c in clusters])


def true_log_likelihood(clusters: list[Cluster], weights: np.ndarray, x: np.ndarray) -> float:
    w = weights / weights.sum()
    keep = w > 0
    means = np.stack([c.centre for c in clusters])[keep]
    var = np.array([[c.std ** 2] * 2 for c in clusters])[keep]
    return float(np.mean(mixture_log_prob(x, means, np.log(var), np.log(w[keep]))))


# -- the mixture -------------------------------------------------------------------------

def logsumexp(z: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(z, axis=axis, keepdims=True)
    return np.squeeze(m + np.log(np.sum(np.exp(z - m), axis=axis, keepdims=True)), axis=axis)


def log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    return z - np.expand_dims(logsumexp(z, axis=axis), axis)


def component_log_prob(x: np.ndarray, means: np.ndarray, log_var: np.ndarray) -> np.ndarray:
    """(N, K): log N(x_n; mean_k, diag exp(log_var_k))."""
    d2 = (x[:, None, :] - means[None, :, :]) ** 2 / np.exp(log_var)[None, :, :]
    return -0.5 * (np.sum(d2, axis=2) + np.sum(log_var, axis=1)[None, :] + 2 * LOG_2PI)


def mixture_log_prob(x: np.ndarray, means: np.ndarray, log_var: np.ndarray,
                     log_w: np.ndarray) -> np.ndarray:
    return logsumexp(component_log_prob(np.asarray(x, dtype=np.float64), means, log_var)
                     + log_w, axis=1)


def pick(m: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """k indices into a message of m examples, each once before any is taken twice."""
    rounds = -(-k // m)
    return np.concatenate([rng.permutation(m) for _ in range(rounds)])[:k]


def draw_mixture(means: np.ndarray, log_var: np.ndarray, logits: np.ndarray, n: int,
                 rng: np.random.Generator) -> np.ndarray:
    w = np.exp(log_softmax(np.asarray(logits, dtype=np.float64)))
    k = rng.choice(len(w), size=n, p=w / w.sum())
    std = np.exp(0.5 * np.asarray(log_var, dtype=np.float64)[k])
    return (np.asarray(means, dtype=np.float64)[k]
            + std * rng.standard_normal((n, 2))).astype(np.float32)


class GMMCopy(GeneratorCopy):
    """A neighbour's mixture held by a receiver (the ``model`` exchange)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.tensors: dict[str, np.ndarray] = {}

    def load(self, tensors: dict[str, np.ndarray]) -> None:
        self.tensors = {k: np.array(v, dtype=np.float64) for k, v in tensors.items()}

    def sample(self, n: int, spaces: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
        t = self.tensors
        return {space: {"x": draw_mixture(t["means"], t["log_var"], t["logits"], n, self.rng)}
                for space in spaces if space == "pts"}


class GMMHooks(LearnerHooks):
    """Launcher side: the columns of the table ``p2pgame run`` prints, and a check."""

    table_columns = ("ll_all", "ll_own", "ll_other", "unseen_mass", "tv_to_ne")

    def validate(self, schedule: Any) -> None:
        others = [p for p in self.scenario.players if not isinstance(p.learner, GMMConfig)]
        if others:
            p = others[0]
            raise config_error("kind", f"peer {p.peer} runs {p.learner.kind!r}; a gmm2d "
                                       "scenario's peers must all be gmm2d learners (the "
                                       "network's true clusters are theirs)")


class GMMLearner(Learner):
    kind = "gmm2d"
    Config = GMMConfig
    data = None  # no [data] section: each peer draws its own points from the scenario seed
    uses_torch = False  # a peer never imports torch
    heavy = False  # a step takes microseconds: it runs on the event loop
    resumable = True  # resume_state / load_resume_state below
    hooks = GMMHooks
    takes_weights = False  # learns from k examples picked of each message
    statistic_key = "cluster_mass"  # the summary key whose equilibrium the mixing predicts

    # -- declared ahead of any run --------------------------------------------------------
    @classmethod
    def spaces(cls, cfg: Any) -> dict[str, Schema]:
        return {"pts": {"x": ("float32", (2,))}}

    @classmethod
    def parts(cls, cfg: Any) -> dict[str, Schema]:
        k = cfg.components
        return {"model": {"means": ("float32", (k, 2)), "log_var": ("float32", (k, 2)),
                          "logits": ("float32", (k,))}}

    @classmethod
    def generator(cls, cfg: Any) -> Schema:
        # the model exchange: a copy draws points from the mixture's three tensors
        return cls.parts(cfg)["model"]

    @classmethod
    def default_spaces(cls, cfg: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("pts",), ("pts",)

    @classmethod
    def data_statistics(cls, scenario: Any, data_root: Path) -> np.ndarray | None:
        """Each peer's share of every true cluster (its own alike, the others' 0): the
        mixing exchange's equilibrium of these rows is the cluster mass each model should
        reach (``ne_cluster_mass``)."""
        clusters = true_clusters(scenario)
        return np.stack([peer_weights(clusters, {i}) if any(c.peer == i for c in clusters)
                         else np.zeros(len(clusters)) for i in range(scenario.n)])

    # -- a peer's learner -----------------------------------------------------------------
    def __init__(self, cfg: Any, ctx: LearnerContext) -> None:
        super().__init__(cfg, ctx)
        sc = ctx.scenario
        me = ctx.peer_id
        self.clusters = true_clusters(sc)
        self.mine = {me}
        self.others = set(gmm_players(sc)) - self.mine
        # Own points: this peer's own stream, so each peer's data differ.
        self.points = draw_points(self.clusters, peer_weights(self.clusters, self.mine),
                                  cfg.n_data, generator(sc.seed, "gmm2d", "data", me))
        self.data_rng = np.random.default_rng(ctx.seed("data-order"))
        self.sample_rng = np.random.default_rng(ctx.seed("sampling"))
        # The initial mixture is drawn from the SCENARIO seed, not the peer's: every peer
        # starts from the same components.  A mixture's components have no order of their
        # own (any permutation is the same model), so parameter averaging only means
        # something when component k is "the same" component on every peer: starting
        # aligned, and averaged often, they stay aligned.  From per-peer draws, the params
        # exchange would average unrelated components into a blur.
        init = generator(sc.seed, "gmm2d", "init", cfg.components)
        scale = max(cfg.spread, cfg.cluster_std)
        self.means = init.normal(0.0, 0.5 * scale, (cfg.components, 2))
        self.log_var = np.full((cfg.components, 2), 2 * math.log(scale))
        self.logits = np.full(cfg.components, -math.log(cfg.components))
        self.probe_every = cfg.eval_every
        self._probe_points: np.ndarray | None = None
        self._target: np.ndarray | None = None

    @property
    def n_own(self) -> int:
        return len(self.points)

    # -- sampling -------------------------------------------------------------------------
    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return draw_mixture(self.means, self.log_var, self.logits, n, rng)

    def sample(self, n: int, spaces: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
        return {space: {"x": self.draw(n, self.sample_rng)} for space in spaces
                if space == "pts"}

    # -- learning -------------------------------------------------------------------------
    def batch_points(self, batch: Batch) -> np.ndarray:
        """The step's points: ``batch.own`` own ones (None: all of them), and ``k`` picked
        of each received message."""
        parts = []
        if batch.own is None:
            parts.append(self.points)
        elif batch.own > 0:
            parts.append(self.points[self.data_rng.integers(0, self.n_own, batch.own)])
        for r in batch.received:
            x = np.asarray(r.tensors["x"], dtype=np.float64)
            x = x[pick(len(x), r.k, self.data_rng)]
            parts.append(x[np.all(np.isfinite(x), axis=1)])  # a broken peer's NaNs: dropped
        if not parts:
            return np.zeros((0, 2))
        return np.concatenate(parts).astype(np.float64)

    def learn(self, step: int, batch: Batch) -> dict[str, float]:
        x = self.batch_points(batch)
        if len(x) == 0:
            return {}
        log_w = log_softmax(self.logits)
        joint = component_log_prob(x, self.means, self.log_var) + log_w
        resp = np.exp(log_softmax(joint, axis=1))  # the E-step: responsibilities
        batch_ll = float(np.mean(logsumexp(joint, axis=1)))  # before the step
        # Expected sufficient statistics: the model's (from its parameters) and the batch's.
        w = np.exp(log_w)
        var = np.exp(self.log_var)
        s0 = w
        s1 = w[:, None] * self.means
        s2 = w[:, None] * (var + self.means ** 2)
        lr = self.cfg.lr
        s0 = (1 - lr) * s0 + lr * resp.mean(axis=0)
        s1 = (1 - lr) * s1 + lr * (resp.T @ x) / len(x)
        s2 = (1 - lr) * s2 + lr * (resp.T @ (x * x)) / len(x)
        # The M-step.
        s0 = np.maximum(s0, MASS_FLOOR)
        self.means = s1 / s0[:, None]
        self.log_var = np.log(np.maximum(s2 / s0[:, None] - self.means ** 2, MIN_VAR))
        self.logits = np.log(s0 / s0.sum())
        return {"ll_batch": batch_ll, "points": float(len(x))}

    # -- parameters (the params exchange) -------------------------------------------------
    def tensors(self, part: str) -> dict[str, np.ndarray]:
        return {"means": self.means.astype(np.float32),
                "log_var": self.log_var.astype(np.float32),
                "logits": self.logits.astype(np.float32)}

    def load_tensors(self, part: str, values: dict[str, np.ndarray]) -> None:
        # Kept as given (float32 -> float64 is exact), so tensors() gives back the same
        # bits: after a combine on a complete graph every peer holds the same model.
        self.means = np.asarray(values["means"], dtype=np.float64)
        self.log_var = np.asarray(values["log_var"], dtype=np.float64)
        self.logits = np.asarray(values["logits"], dtype=np.float64)

    # -- the model exchange ---------------------------------------------------------------
    def generator_tensors(self) -> dict[str, np.ndarray]:
        return self.tensors("model")

    def generator_copy(self, sender: int) -> GMMCopy:
        return GMMCopy(np.random.default_rng(self.ctx.seed("model-copy", sender)))

    # -- metrics --------------------------------------------------------------------------
    def log_likelihood(self, x: np.ndarray) -> float:
        return float(np.mean(mixture_log_prob(x, self.means, self.log_var,
                                              log_softmax(self.logits))))

    def heldout(self, peers: set[int], n: int, name: str) -> np.ndarray:
        """n held-out points of ``peers``' clusters, the same on every peer."""
        rng = generator(self.ctx.scenario.seed, "gmm2d", "heldout", name)
        return draw_points(self.clusters, peer_weights(self.clusters, peers), n, rng)

    @property
    def target(self) -> np.ndarray | None:
        """The equilibrium's cluster mass of this peer (the mixing exchange), or None."""
        if self._target is None and self.ctx.equilibrium is not None:
            self._target = np.asarray(self.ctx.equilibrium(), dtype=np.float64)
        return self._target

    def evaluate(self, n: int) -> tuple[dict[str, Any], Any]:
        every = self.mine | self.others
        network = self.heldout(every, n, "network")
        out: dict[str, Any] = {
            "ll_all": self.log_likelihood(network),
            "ll_own": self.log_likelihood(self.heldout(self.mine, n, f"peer-{self.ctx.peer_id}")),
            "ll_true_all": true_log_likelihood(self.clusters,
                                               peer_weights(self.clusters, every), network),
        }
        if self.others:
            out["ll_other"] = self.log_likelihood(
                self.heldout(self.others, n, f"others-of-{self.ctx.peer_id}"))
        draws = self.draw(n, np.random.default_rng(self.ctx.seed("evaluation")))
        mass = np.array([float(np.mean(np.linalg.norm(draws - c.centre, axis=1) < NEAR * c.std))
                         for c in self.clusters])
        own = np.array([c.peer in self.mine for c in self.clusters])
        out["cluster_mass"] = [round(float(m), 6) for m in mass]
        out["own_mass"] = float(mass[own].sum())
        out["unseen_mass"] = float(mass[~own].sum())
        if self.target is not None:
            out["ne_cluster_mass"] = [round(float(m), 6) for m in self.target]
            out["tv_to_ne"] = float(0.5 * np.abs(mass - self.target).sum())
        out["weights"] = [round(float(w), 6) for w in np.exp(log_softmax(self.logits))]
        out["means"] = [[round(float(v), 4) for v in row] for row in self.means]
        return out, None  # no images: no sample grid

    def probe(self, step: int) -> dict[str, Any]:
        if self._probe_points is None:
            self._probe_points = self.heldout(self.mine | self.others, PROBE_POINTS, "probe")
        return {"ll_all": self.log_likelihood(self._probe_points)}

    # -- resuming (async runs with runtime.restart / --resume) ----------------------------
    # (state() stays None: p2pgame writes checkpoints with torch.save, and this learner
    # never imports torch; the resume state below is JSON.)
    def resume_state(self) -> dict[str, Any]:
        return {"means": self.means.tolist(), "log_var": self.log_var.tolist(),
                "logits": self.logits.tolist(),
                "data_rng": self.data_rng.bit_generator.state,
                "sample_rng": self.sample_rng.bit_generator.state}

    def load_resume_state(self, state: dict[str, Any]) -> None:
        self.means = np.asarray(state["means"], dtype=np.float64)
        self.log_var = np.asarray(state["log_var"], dtype=np.float64)
        self.logits = np.asarray(state["logits"], dtype=np.float64)
        self.data_rng.bit_generator.state = state["data_rng"]
        self.sample_rng.bit_generator.state = state["sample_rng"]


class WrongShapeLearner(GMMLearner):
    """TEST FIXTURE (kind ``gmm2d-wrong-shape``), not a learner to use: it declares the
    spaces of :class:`GMMLearner` (``pts``: 2-D points) but publishes 3-D points, so that
    p2pgame's check of published against declared schemas refuses it."""

    kind = "gmm2d-wrong-shape"

    def sample(self, n: int, spaces: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
        return {space: {"x": np.zeros((n, 3), dtype=np.float32)} for space in spaces}
