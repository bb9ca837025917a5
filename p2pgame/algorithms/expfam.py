"""Exponential-family players of the synthetic-data game, checked against the closed form.

Each player owns a private synthetic data set and a model of one family:

* ``bernoulli``: product-Bernoulli over binary vectors, sufficient statistic x;
* ``gaussian``: diagonal Gaussian, sufficient statistics (x, x^2).

A player learns by stochastic natural-gradient steps on its log-likelihood:
for an exponential family the natural gradient of the expected log-likelihood
w.r.t. the natural parameters is ``E_batch[phi] - mu``, so the step is a move
of the mean parameters toward the batch moments, ``mu <- mu + lr (phi_bar - mu)``.
The batch mixes own real data and neighbours' received samples in the
proportions of the player's weight row.  The fixed point is the game's Nash
equilibrium, which :func:`solve_equilibrium` gives in closed form.
Players exchange on two spaces: ``x`` (samples, the game proper) and ``mu``
(the mean parameters themselves, as a ``params`` topic: the infinite-sample
limit of the game, with the same equilibrium and no sampling noise).  By
default a player publishes and learns ``x``; ``[[peers]]`` can change both.
Pure numpy: these peers never import torch, so many of them fit on one machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p2pgame.algorithms.base import (
    Algorithm,
    AlgorithmInfo,
    Inbox,
    PeerContext,
    RunHooks,
    check_relay_weights,
    check_schema,
    config_error,
    dense_row,
    sparse_row,
)
from p2pgame.algorithms.equilibrium import solve_equilibrium
from p2pgame.config import Scenario
from p2pgame.rng import generator
from p2pgame.shared import shared_with
from p2pgame.topology import Schedule, Topology, build_schedule

FAMILIES = ("bernoulli", "gaussian")
SPACES = {"x": "samples", "mu": "params"}


@dataclass(frozen=True)
class ExpFamConfig:
    family: str = "bernoulli"
    dim: int = 16
    n_data: int = 2000  # size of each player's private data set (0: none, a relay)
    batch: int = 512  # examples per step (own share = a_ii * batch)
    lr: float = 0.2
    lr_end: float = 0.005  # learning rate reached at the last step
    decay_from: float = 0.3  # fraction of the run after which lr decays geometrically
    spread: float = 2.0  # how different the players' data distributions are
    # The moments of the player's data, given instead of a drawn data set (its own share
    # of every batch is then exact): d means for bernoulli, d means then d second moments
    # for gaussian.
    data_mean: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise config_error("family", f"{self.family!r} is not known; allowed: bernoulli, gaussian")
        for key in ("dim", "batch"):
            if getattr(self, key) < 1:
                raise config_error(key, f"must be >= 1, got {getattr(self, key)}")
        if self.n_data < 0:
            raise config_error("n_data", f"must be >= 0 (0: no data), got {self.n_data}")
        if self.data_mean:
            self._check_data_mean()
        if not 0 < self.lr <= 1 or not 0 < self.lr_end <= 1:
            raise config_error("lr", "lr and lr_end must lie in (0, 1]")
        if not 0 <= self.decay_from <= 1:
            raise config_error("decay_from", "must lie in [0, 1]")


    @property
    def has_data(self) -> bool:
        return bool(self.data_mean) or self.n_data > 0

    def _check_data_mean(self) -> None:
        m = np.asarray(self.data_mean, dtype=np.float64)
        d = self.dim
        want = d if self.family == "bernoulli" else 2 * d
        if m.shape != (want,):
            what = "d means" if self.family == "bernoulli" else "d means then d second moments"
            raise config_error("data_mean", f"{len(m)} values for dim = {d} ({self.family}: "
                                            f"{what}, {want} values)")
        if not np.all(np.isfinite(m)):
            raise config_error("data_mean", "values must be finite")
        if self.family == "bernoulli" and ((m < 0) | (m > 1)).any():
            raise config_error("data_mean", "bernoulli means must lie in [0, 1]")
        if self.family == "gaussian" and (m[d:] < m[:d] ** 2).any():
            k = int(np.argmax(m[d:] < m[:d] ** 2))
            raise config_error("data_mean", f"second moment {k} ({m[d + k]}) is below its "
                                            f"mean squared ({m[k] ** 2}): not a distribution")


def schemas(cfg: ExpFamConfig) -> dict[str, dict[str, tuple[str, tuple[int, ...]]]]:
    """What a player publishes: samples on ``x``, its mean parameters on ``mu``."""
    stats = cfg.dim if cfg.family == "bernoulli" else 2 * cfg.dim
    return {"x": {"x": ("bool" if cfg.family == "bernoulli" else "float32", (cfg.dim,))},
            "mu": {"mu": ("float64", (stats,))}}


def make_data(cfg: ExpFamConfig, seed: int, peer: int) -> np.ndarray:
    """Peer ``peer``'s private data: its own distribution, drawn from its own stream."""
    rng = generator(seed, "expfam-data", peer)
    if cfg.family == "bernoulli":
        p = 1.0 / (1.0 + np.exp(-rng.normal(0.0, cfg.spread, cfg.dim)))
        return rng.random((cfg.n_data, cfg.dim)) < p
    mean = rng.normal(0.0, cfg.spread, cfg.dim)
    std = rng.uniform(0.5, 1.5, cfg.dim)
    return (mean + std * rng.standard_normal((cfg.n_data, cfg.dim))).astype(np.float32)


def data_moments(cfg: ExpFamConfig, seed: int, peer: int) -> np.ndarray:
    """The moments of a player's own data: given, drawn, or zeros for a player without data
    (whose own weight the resolver insists is 0, so they never count)."""
    if cfg.data_mean:
        return np.asarray(cfg.data_mean, dtype=np.float64)
    if cfg.n_data == 0:
        return np.zeros(cfg.dim if cfg.family == "bernoulli" else 2 * cfg.dim)
    return moments(cfg, make_data(cfg, seed, peer))


def moments(cfg: ExpFamConfig, x: np.ndarray) -> np.ndarray:
    """Mean of the sufficient statistics over a batch."""
    x = x.astype(np.float64)
    if cfg.family == "bernoulli":
        return x.mean(axis=0)
    return np.concatenate([x.mean(axis=0), (x * x).mean(axis=0)])


def equilibrium(scenario: Scenario, topology: Topology) -> np.ndarray:
    """The analytic equilibrium mean parameters of all players (n x d)."""
    return solve_equilibrium(topology.weights, all_moments(scenario))


def all_moments(scenario: Scenario) -> np.ndarray:
    return np.stack([data_moments(p.algorithm, scenario.seed, p.peer) for p in scenario.players])


class ExpFamPlayer(Algorithm):
    def __init__(self, ctx: PeerContext) -> None:
        super().__init__(ctx)
        cfg = self.config
        # Own data: drawn (sampled into batches), given as moments (exact), or none (a relay).
        self.data = make_data(cfg, ctx.scenario.seed, ctx.peer_id) if (
            cfg.n_data and not cfg.data_mean) else None
        self.given = np.asarray(cfg.data_mean, dtype=np.float64) if cfg.data_mean else None
        self.effective = np.zeros(ctx.scenario.n)  # lr-discounted weights actually applied
        self.data_rng = np.random.default_rng(ctx.seed("data-order"))
        self.sample_rng = np.random.default_rng(ctx.seed("sampling"))
        d = cfg.dim
        # Start from the uninformed model: p = 1/2, or N(0, 1).
        self.mu = np.full(d, 0.5) if cfg.family == "bernoulli" else np.r_[np.zeros(d), np.ones(d)]
        self.samples_per_message = ctx.scenario.comm.samples_per_message or cfg.batch
        self.steps = ctx.scenario.steps
        # Solved once per process: the peers of a worker share the scenario (which
        # determines the schedule).
        final = ctx.schedule.final()
        self.target = shared_with(ctx.scenario, "expfam-equilibrium",
                                  lambda: equilibrium(ctx.scenario, final))[ctx.peer_id]
        self.schemas = schemas(cfg)
        self.learns = ctx.player.learns

    resumable = True

    def resume_state(self) -> dict[str, Any]:
        # JSON keeps floats exact (repr) and the RNGs' 128-bit integers whole.
        return {"mu": self.mu.tolist(), "effective": self.effective.tolist(),
                "data_rng": self.data_rng.bit_generator.state,
                "sample_rng": self.sample_rng.bit_generator.state}

    def load_resume_state(self, state: dict[str, Any]) -> None:
        self.mu = np.asarray(state["mu"], dtype=np.float64)
        self.effective = np.asarray(state["effective"], dtype=np.float64)
        self.data_rng.bit_generator.state = state["data_rng"]
        self.sample_rng.bit_generator.state = state["sample_rng"]

    def lr_at(self, step: int) -> float:
        cfg = self.config
        start = int(cfg.decay_from * self.steps)
        if step < start or self.steps - start <= 1:
            return cfg.lr
        frac = (step - start) / (self.steps - 1 - start)
        return float(cfg.lr * (cfg.lr_end / cfg.lr) ** frac)

    def sample(self, n: int) -> np.ndarray:
        d = self.config.dim
        if self.config.family == "bernoulli":
            return self.sample_rng.random((n, d)) < self.mu
        mean, second = self.mu[:d], self.mu[d:]
        std = np.sqrt(np.maximum(second - mean * mean, 1e-6))
        return (mean + std * self.sample_rng.standard_normal((n, d))).astype(np.float32)

    def publish(self, step: int) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for space in self.ctx.player.publishes:
            if space == "x":
                out["x"] = {"x": self.sample(self.samples_per_message)}
            else:
                out["mu"] = {"mu": self.mu[None, :].copy()}
        return out

    def check(self, env) -> str | None:
        if env.space not in self.learns:
            return "space"
        return check_schema(env, self.schemas[env.space])

    def _neighbour_moments(self, inbox: Inbox, j: int, step: int) -> np.ndarray | None:
        """What j's model says: its mean parameters if we learn them, else its samples' moments."""
        if "mu" in self.learns:
            env = inbox.use(j, "mu", step)
            if env is not None:
                return env.tensors["mu"][0]
        if "x" in self.learns:
            env = inbox.use(j, "x", step)
            if env is not None and len(env.tensors["x"]):
                return moments(self.config, env.tensors["x"])
        return None

    def train_step(self, step: int, inbox: Inbox, topology: Topology) -> dict[str, float]:
        cfg = self.config
        me = self.ctx.peer_id
        row = topology.row(me)
        # Weighted moments over the sources we hold; missing ones renormalise the rest.
        parts, weights = [], []
        sources = []
        if row[me] > 0 and (self.data is not None or self.given is not None):
            if self.given is not None:
                parts.append(self.given)
            else:
                n_own = max(1, round(row[me] * cfg.batch))
                idx = self.data_rng.integers(0, len(self.data), n_own)
                parts.append(moments(cfg, self.data[idx]))
            weights.append(row[me])
            sources.append(me)
        for j, w in row.items():
            if j == me or w <= 0:
                continue
            m = self._neighbour_moments(inbox, j, step)
            if m is None:
                continue
            parts.append(m)
            weights.append(w)
            sources.append(j)
        if not parts:
            return {"lr": 0.0}
        w = np.asarray(weights) / np.sum(weights)
        phi = np.einsum("k,kd->d", w, np.stack(parts))
        lr = self.lr_at(step)
        self.mu = self.mu + lr * (phi - self.mu)
        # The weights this step applied, discounted as the step itself is: mu is, to first
        # order, this discounted average of what each source said (see ``finish``).
        applied = np.zeros_like(self.effective)
        applied[sources] = w
        self.effective = (1 - lr) * self.effective + lr * applied
        return {"lr": lr, "coverage": float(np.sum(weights))}

    def probe(self, step: int) -> dict[str, Any]:
        return {"ne_max_abs": float(np.max(np.abs(self.mu - self.target)))}

    def finish(self) -> dict[str, Any]:
        """Final metrics, and the row of weights the run effectively applied.

        A step renormalises its row over the sources it holds (a neighbour not heard
        from yet is left out); once anything has arrived from a neighbour, its freshest
        message is reused, so drops and delays change staleness but not the weights.
        ``effective_row`` is the weights applied, averaged with the discount of the
        updates (``mu`` is a discounted sum of the steps' targets), normalised.
        """
        total = self.effective.sum()
        row = self.effective / total if total > 0 else self.effective
        return {
            "ne_max_abs": float(np.max(np.abs(self.mu - self.target))),
            "mu": [round(float(v), 6) for v in self.mu],
            "effective_row": sparse_row(row),
        }


class ExpFamHooks(RunHooks):
    table_columns = ("ne_max_abs", "ne_eff_max_abs")

    def validate(self, schedule: Schedule) -> None:
        players = self.scenario.players
        first = players[0].algorithm
        for p in players[1:]:
            c = p.algorithm
            if (c.family, c.dim) != (first.family, first.dim):
                raise config_error(
                    "family", f"every player needs one family and dim for a common equilibrium; "
                    f"peer 0 has {first.family}/{first.dim}, peer {p.peer} {c.family}/{c.dim}")
        for t in schedule.topologies:
            try:
                solve_equilibrium(t.weights, np.zeros((self.scenario.n, 1)))
            except ValueError as e:
                raise config_error("name", f"expfam: {e}") from None
        check_relay_weights({p.peer: "peers (algorithm.n_data = 0)"
                             for p in players if not p.algorithm.has_data}, schedule)

    def after_run(self, run_dir: Path, summary: dict) -> None:
        """The equilibrium the weights effectively applied predict, next to the ideal one."""
        peers = summary.get("peers", {})
        n = self.scenario.n
        if sorted(peers) != sorted(str(i) for i in range(n)):
            return
        rows = np.array([dense_row(peers[str(i)].get("effective_row", {}), n)
                         for i in range(n)])
        summary["effective_weights"] = [sparse_row(r) for r in rows]
        try:
            predicted = solve_equilibrium(rows, all_moments(self.scenario))
        except ValueError:  # some peer effectively saw no data: no unique prediction
            return
        final = equilibrium(self.scenario, build_schedule(
            self.scenario.topology, self.scenario.steps, self.scenario.seed).final())
        summary["ne_shift_max_abs"] = float(np.max(np.abs(predicted - final)))
        for i in range(n):
            mu = np.asarray(peers[str(i)]["mu"])
            peers[str(i)]["ne_eff_max_abs"] = float(np.max(np.abs(mu - predicted[i])))
            peers[str(i)]["predicted_mu"] = [round(float(v), 6) for v in predicted[i]]


INFO = AlgorithmInfo(
    name="expfam",
    config=ExpFamConfig,
    data=None,
    spaces=SPACES,
    default_spaces=lambda cfg: (("x",), ("x",)),
    schemas=schemas,
    peer=lambda: ExpFamPlayer,
    hooks=lambda: ExpFamHooks,
)
