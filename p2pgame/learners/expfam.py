"""Exponential-family learners, checked against the game's closed form.

Each player owns a private synthetic data set and a model of one family:

* ``expfam-bernoulli``: product-Bernoulli over binary vectors, sufficient statistic x;
* ``expfam-gaussian``: diagonal Gaussian, sufficient statistics (x, x^2).

A player learns by stochastic natural-gradient steps on its log-likelihood: for an
exponential family the natural gradient of the expected log-likelihood w.r.t. the
natural parameters is ``E_batch[phi] - mu``, so the step is a move of the mean
parameters toward the batch moments, ``mu <- mu + lr (phi_bar - mu)``.  The batch mixes
own real data and what arrived, in the proportions of the weight row
(``exchange/mixing.py``), renormalised over what the step holds.  The fixed point is
the game's Nash equilibrium, in closed form (``exchange/equilibrium.py``).

Two spaces: ``x`` (samples: the game proper) and ``mu`` (the mean parameters, the
moments exchange: the infinite-sample limit of the game, with the same equilibrium and
no sampling noise).  Pure numpy: these peers never import torch, so many fit on one
machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p2pgame.learners.base import (
    Batch,
    Learner,
    LearnerConfig,
    LearnerContext,
    LearnerHooks,
    Schema,
    at_least,
    config_error,
)
from p2pgame.rng import generator

FAMILIES = ("bernoulli", "gaussian")


@dataclass(frozen=True)
class ExpFamConfig(LearnerConfig):
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
        at_least(self, 1, "dim", "batch")
        at_least(self, 0, "n_data", why="(0: no data)")
        if self.data_mean:
            self._check_data_mean()
        if not 0 < self.lr <= 1 or not 0 < self.lr_end <= 1:
            raise config_error("lr", "lr and lr_end must lie in (0, 1]")
        if not 0 <= self.decay_from <= 1:
            raise config_error("decay_from", "must lie in [0, 1]")

    @property
    def family(self) -> str:
        return self.kind.removeprefix("expfam-") or "bernoulli"

    @property
    def has_data(self) -> bool:
        return bool(self.data_mean) or self.n_data > 0

    @property
    def stats(self) -> int:
        return self.dim if self.family == "bernoulli" else 2 * self.dim

    def _check_data_mean(self) -> None:
        m = np.asarray(self.data_mean, dtype=np.float64)
        d = self.dim
        if m.shape != (self.stats,):
            what = "d means" if self.family == "bernoulli" else "d means then d second moments"
            raise config_error("data_mean", f"{len(m)} values for dim = {d} ({self.family}: "
                                            f"{what}, {self.stats} values)")
        if not np.all(np.isfinite(m)):
            raise config_error("data_mean", "values must be finite")
        if self.family == "bernoulli" and ((m < 0) | (m > 1)).any():
            raise config_error("data_mean", "bernoulli means must lie in [0, 1]")
        if self.family == "gaussian" and (m[d:] < m[:d] ** 2).any():
            k = int(np.argmax(m[d:] < m[:d] ** 2))
            raise config_error("data_mean", f"second moment {k} ({m[d + k]}) is below its "
                                            f"mean squared ({m[k] ** 2}): not a distribution")


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
        return np.zeros(cfg.stats)
    return moments(cfg, make_data(cfg, seed, peer))


def moments(cfg: ExpFamConfig, x: np.ndarray) -> np.ndarray:
    """Mean of the sufficient statistics over a batch."""
    x = x.astype(np.float64)
    if cfg.family == "bernoulli":
        return x.mean(axis=0)
    return np.concatenate([x.mean(axis=0), (x * x).mean(axis=0)])


def all_moments(scenario: Any) -> np.ndarray:
    return np.stack([data_moments(p.learner, scenario.seed, p.peer) for p in scenario.players])


class ExpFamHooks(LearnerHooks):
    table_columns = ("ne_max_abs", "ne_eff_max_abs")

    def validate(self, schedule: Any) -> None:
        players = self.scenario.players
        first = players[0].learner
        for p in players[1:]:
            c = p.learner
            if (c.kind, c.dim) != (first.kind, first.dim):
                raise config_error(
                    "kind", f"every player needs one family and dim for a common equilibrium; "
                    f"peer 0 has {first.kind}/{first.dim}, peer {p.peer} {c.kind}/{c.dim}")

    def no_data(self) -> dict[int, str]:
        return {p.peer: "peers (learner.n_data = 0)" for p in self.scenario.players
                if not p.learner.has_data}


class ExpFamLearner(Learner):
    kind = "expfam-bernoulli"
    Config = ExpFamConfig
    uses_torch = False
    heavy = False
    resumable = True
    hooks = ExpFamHooks
    takes_weights = True  # learns from whole messages, each with its weight
    statistic_key = "mu"  # the model's own statistic in its summary (the equilibrium's)

    @classmethod
    def spaces(cls, cfg: Any) -> dict[str, Schema]:
        """What a player publishes: samples on ``x``, its mean parameters on ``mu``."""
        return {"x": {"x": ("bool" if cfg.family == "bernoulli" else "float32", (cfg.dim,))},
                "mu": {"mu": ("float64", (cfg.stats,))}}

    @classmethod
    def reads(cls, cfg: Any) -> dict[str, Schema]:
        s = cls.spaces(cfg)
        return {"mu": s["mu"], "x": s["x"]}  # the model itself before samples of it

    @classmethod
    def moment_spaces(cls, cfg: Any) -> tuple[str, ...]:
        return ("mu",)

    @classmethod
    def parts(cls, cfg: Any) -> dict[str, Schema]:
        return {"mu": {"mu": ("float32", (cfg.stats,))}}

    @classmethod
    def default_spaces(cls, cfg: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("x",), ("x",)

    @classmethod
    def data_statistics(cls, scenario: Any, data_root: Path) -> np.ndarray | None:
        return all_moments(scenario)

    def __init__(self, cfg: Any, ctx: LearnerContext) -> None:
        super().__init__(cfg, ctx)
        # Own data: drawn (sampled into batches), given as moments (exact), or none (a relay).
        self.data = make_data(cfg, ctx.scenario.seed, ctx.peer_id) if (
            cfg.n_data and not cfg.data_mean) else None
        self.given = np.asarray(cfg.data_mean, dtype=np.float64) if cfg.data_mean else None
        self.data_rng = np.random.default_rng(ctx.seed("data-order"))
        self.sample_rng = np.random.default_rng(ctx.seed("sampling"))
        d = cfg.dim
        # Start from the uninformed model: p = 1/2, or N(0, 1).
        self.mu = np.full(d, 0.5) if cfg.family == "bernoulli" else np.r_[np.zeros(d), np.ones(d)]
        self.steps = ctx.scenario.steps
        self._target: np.ndarray | None = None

    @property
    def n_own(self) -> int:
        return len(self.data) if self.data is not None else (1 if self.given is not None else 0)

    @property
    def target(self) -> np.ndarray | None:
        if self._target is None and self.ctx.equilibrium is not None:
            self._target = self.ctx.equilibrium()
        return self._target

    def resume_state(self) -> dict[str, Any]:
        # JSON keeps floats exact (repr) and the RNGs' 128-bit integers whole.
        return {"mu": self.mu.tolist(), "data_rng": self.data_rng.bit_generator.state,
                "sample_rng": self.sample_rng.bit_generator.state}

    def load_resume_state(self, state: dict[str, Any]) -> None:
        self.mu = np.asarray(state["mu"], dtype=np.float64)
        self.data_rng.bit_generator.state = state["data_rng"]
        self.sample_rng.bit_generator.state = state["sample_rng"]

    def lr_at(self, step: int) -> float:
        cfg = self.cfg
        start = int(cfg.decay_from * self.steps)
        if step < start or self.steps - start <= 1:
            return cfg.lr
        frac = (step - start) / (self.steps - 1 - start)
        return float(cfg.lr * (cfg.lr_end / cfg.lr) ** frac)

    memory = lr_at  # mu is a discounted sum of the steps' targets, discounted by lr

    def draw(self, n: int) -> np.ndarray:
        d = self.cfg.dim
        if self.cfg.family == "bernoulli":
            return self.sample_rng.random((n, d)) < self.mu
        mean, second = self.mu[:d], self.mu[d:]
        std = np.sqrt(np.maximum(second - mean * mean, 1e-6))
        return (mean + std * self.sample_rng.standard_normal((n, d))).astype(np.float32)

    def sample(self, n: int, spaces: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
        out: dict[str, dict[str, np.ndarray]] = {}
        for space in spaces:
            if space == "x":
                out["x"] = {"x": self.draw(n)}
            else:
                out["mu"] = {"mu": self.mu[None, :].copy()}
        return out

    def tensors(self, part: str) -> dict[str, np.ndarray]:
        return {"mu": self.mu.astype(np.float32)}

    def load_tensors(self, part: str, values: dict[str, np.ndarray]) -> None:
        self.mu = np.asarray(values["mu"], dtype=np.float64)

    def _weights(self, batch: Batch):
        cfg = self.cfg
        parts, weights, sources = [], [], []
        if batch.own_weight > 0 and (self.data is not None or self.given is not None):
            if self.given is not None:
                parts.append(self.given)
            else:
                idx = self.data_rng.integers(0, len(self.data), max(1, batch.own or 0))
                parts.append(moments(cfg, self.data[idx]))
            weights.append(batch.own_weight)
            sources.append(self.ctx.peer_id)
        for r in batch.received:
            if r.space == "mu":
                parts.append(r.tensors["mu"][0])
            else:
                parts.append(moments(cfg, r.tensors["x"]))
            weights.append(r.weight)
            sources.append(r.sender)
        return parts, sources, weights

    def learn(self, step: int, batch: Batch) -> dict[str, float]:
        parts, _sources, weights = self._weights(batch)
        if not parts:
            return {"lr": 0.0}
        w = np.asarray(weights) / np.sum(weights)
        phi = np.einsum("k,kd->d", w, np.stack(parts))
        lr = self.lr_at(step)
        self.mu = self.mu + lr * (phi - self.mu)
        return {"lr": lr, "coverage": float(np.sum(weights))}

    def probe(self, step: int) -> dict[str, Any]:
        target = self.target
        return {} if target is None else {"ne_max_abs": float(np.max(np.abs(self.mu - target)))}

    def finish(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mu": [round(float(v), 6) for v in self.mu]}
        if self.target is not None:
            out["ne_max_abs"] = float(np.max(np.abs(self.mu - self.target)))
        return out


class ExpFamGaussianLearner(ExpFamLearner):
    kind = "expfam-gaussian"
