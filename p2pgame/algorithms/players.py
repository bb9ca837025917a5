"""The learner families of the synthetic-data game, each behind one small interface.

A :class:`Player` owns its model and its private data, and knows

* what it can publish (``schemas``: space -> fields, dtypes and shapes) and which spaces
  it can learn from (``learnable``, most informative first), both known before any run;
* ``sample(n, spaces)``: ``n`` examples on each of the spaces it publishes, one draw;
* ``learn(own_idx, received)``: one step on its own examples plus picked received ones,
  completing what a received example lacks from its own model (latents from its
  encoder, a label from its classifier), counted per space in ``completed``;
* ``evaluate(n)``: its metrics and images for the sample grid.

Families (``algorithm.model``):

* ``hvae-mlp`` / ``hvae-conv``: binary HVAE, symmetric learning; tuples on ``hvae``
  (only between identical architectures), images on ``x``;
* ``vae-conv``: convolutional VAE trained by the ELBO; images on ``x``;
* ``joint-cx``: the paper's Fashion-MNIST player (``models/joint.py``), gray images;
  labelled pairs on ``cx``, images on ``x``.  Its ``x`` carries gray float16 images,
  so it cannot share ``x`` with the binary families (the scenario check says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from p2pgame.data.image import load_split, peer_images, peer_part
from p2pgame.shared import shared

HVAE, IMAGES, PAIRS = "hvae", "x", "cx"
Schema = dict[str, tuple[str, tuple[int, ...]]]


@dataclass
class Received:
    """The examples picked from one neighbour's message on one space."""

    space: str
    tensors: dict[str, torch.Tensor]


class Player:
    """One learner family as a player of the game (see the module docstring)."""

    family: ClassVar[str] = ""
    # (summary key of the model's class histogram, key of its distance to the equilibrium)
    class_mass_keys: ClassVar[tuple[str, str] | None] = None

    def __init__(self, cfg: Any, ctx: Any, device: torch.device) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.device = device
        self.completed: dict[str, int] = {}
        self.gen = torch.Generator(device=device).manual_seed(ctx.seed("model-sampling"))
        self.data_gen = torch.Generator().manual_seed(ctx.seed("data-order"))

    # -- declared ahead of any run ------------------------------------------------------
    @staticmethod
    def schemas(cfg: Any) -> dict[str, Schema]:
        raise NotImplementedError

    @staticmethod
    def learnable(cfg: Any) -> tuple[str, ...]:
        raise NotImplementedError

    @classmethod
    def default_spaces(cls, cfg: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
        first = cls.learnable(cfg)[:1]
        return first, first

    # -- the game -----------------------------------------------------------------------
    @property
    def n_own(self) -> int:
        raise NotImplementedError

    def sample(self, n: int, spaces: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
        raise NotImplementedError

    def learn(self, own_idx: torch.Tensor, received: list[Received]) -> dict[str, float]:
        raise NotImplementedError

    def evaluate(self, n: int) -> tuple[dict[str, Any], torch.Tensor]:
        raise NotImplementedError

    def probe(self, n: int) -> dict[str, Any]:
        raise NotImplementedError

    def count(self, space: str, k: int) -> None:
        self.completed[space] = self.completed.get(space, 0) + k

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)


# --------------------------------------------------------------------------- binary images


class BinaryImagePlayer(Player):
    """Families on binarised MNIST-like images, evaluated by classifier-FID and class mass."""

    class_mass_keys = ("class_mass", "tv_to_ne")

    def __init__(self, cfg: Any, ctx: Any, device: torch.device) -> None:
        super().__init__(cfg, ctx, device)
        from p2pgame.eval.images import ImageEvaluation

        sc = ctx.scenario
        self.images, self.labels = peer_images(sc.data, sc.n, sc.seed, ctx.peer_id, ctx.data_root)
        self.images = self.images.to(device)
        self.own_classes = sorted(int(c) for c in self.labels.unique())
        self.evaluation = ImageEvaluation(sc.data, ctx.data_root, cfg.evaluator_epochs,
                                          self.own_classes, device)

    @property
    def n_own(self) -> int:
        return len(self.images)

    def generate(self, n: int) -> torch.Tensor:
        with torch.no_grad():
            g = torch.Generator(device=self.device).manual_seed(self.ctx.seed("eval"))
            means = self.model.sample_means(n, g)
        return (means > 0.5).float()

    def evaluate(self, n: int) -> tuple[dict[str, Any], torch.Tensor]:
        self.model.eval()
        images = self.generate(n)
        metrics = self.evaluation.metrics(images)
        self.model.train()
        return metrics, images

    def probe(self, n: int) -> dict[str, Any]:
        m, _ = self.evaluate(n)
        return {"fid_all": m["fid_all"], "own_mass": m["own_mass"]}


class HVAEPlayer(BinaryImagePlayer):
    family = "hvae"

    def __init__(self, cfg: Any, ctx: Any, device: torch.device) -> None:
        from p2pgame.models import SymmetricLearner, make_model

        overrides: dict[str, Any] = {"seed": ctx.seed("model-init")}
        if cfg.lr:
            overrides.update(lr_p=cfg.lr, lr_q=cfg.lr)
        self.model = make_model(cfg.model, **overrides).to(device)
        self.learner = SymmetricLearner(self.model)
        super().__init__(cfg, ctx, device)

    @staticmethod
    def schemas(cfg: Any) -> dict[str, Schema]:
        from p2pgame.models import HVAE_CONFIGS
        from p2pgame.models.hvae import sample_schema

        tuples = sample_schema(HVAE_CONFIGS[cfg.model])
        return {HVAE: tuples, IMAGES: {"x": tuples["x"]}}

    @staticmethod
    def learnable(cfg: Any) -> tuple[str, ...]:
        return (HVAE, IMAGES)  # tuples as fully observed examples; images completed

    def sample(self, n: int, spaces: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
        # One draw per step; a player publishing both spaces sends the same images on each.
        drawn = self.model.sample(n, self.gen, mean=self.cfg.sample_mode == "mean")
        tuples = {k: v.cpu().numpy() for k, v in drawn.items()}
        return {s: tuples if s == HVAE else {"x": tuples["x"]} for s in spaces}

    def learn(self, own_idx: torch.Tensor, received: list[Received]) -> dict[str, float]:
        real = self.images[own_idx.to(self.images.device)]
        n_own = len(real)
        images = [r.tensors["x"] for r in received if r.space == IMAGES]
        if images:  # our encoder completes the latents the images lack, as for real ones
            self.count(IMAGES, sum(len(x) for x in images))
            real = torch.cat([real, torch.cat(images).to(real.device, real.dtype)])
        tuples = [r.tensors for r in received if r.space == HVAE]
        syn = None
        if tuples:
            syn = {f: torch.cat([t[f] for t in tuples]).to(self.device) for f in ("z0", "z1", "x")}
        out = self.learner.step(real, syn, self.gen, q_batch=n_own if n_own else None)
        return {"p_loss": out["p_loss"], "q_loss": out["q_loss"],
                "n_synthetic": out["n_p"] - n_own}


class VAEPlayer(BinaryImagePlayer):
    family = "vae"

    def __init__(self, cfg: Any, ctx: Any, device: torch.device) -> None:
        from p2pgame.models import VAELearner, make_model

        overrides: dict[str, Any] = {"seed": ctx.seed("model-init")}
        if cfg.lr:
            overrides["lr_p"] = cfg.lr
        self.model = make_model(cfg.model, **overrides).to(device)
        self.learner = VAELearner(self.model)
        super().__init__(cfg, ctx, device)

    @staticmethod
    def schemas(cfg: Any) -> dict[str, Schema]:
        return {IMAGES: {"x": ("bool", (1, 28, 28))}}

    @staticmethod
    def learnable(cfg: Any) -> tuple[str, ...]:
        return (IMAGES,)

    def sample(self, n: int, spaces: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
        x = self.model.sample(n, self.gen, mean=self.cfg.sample_mode == "mean")["x"]
        return {s: {"x": x.cpu().numpy()} for s in spaces}

    def learn(self, own_idx: torch.Tensor, received: list[Received]) -> dict[str, float]:
        real = self.images[own_idx.to(self.images.device)]
        parts = [real, *(r.tensors["x"].to(real.device, real.dtype) for r in received)]
        loss = self.learner.step(torch.cat(parts), self.gen)
        return {"elbo_loss": loss, "n_synthetic": float(sum(len(p) for p in parts[1:]))}


# --------------------------------------------------------------------------- labelled gray images


class JointPlayer(Player):
    """``joint-cx``: classifier plus conditional HVAE on gray images (``models/joint.py``)."""

    family = "joint"
    class_mass_keys = ("prior", "tv_prior_to_ne")  # only with learn_prior

    def __init__(self, cfg: Any, ctx: Any, device: torch.device) -> None:
        super().__init__(cfg, ctx, device)
        from p2pgame.models.joint import JointConfig, JointCX, JointLearner

        jc = JointConfig(capacity=cfg.capacity, learn_prior=cfg.learn_prior,
                         lr=cfg.lr or 1e-3, prior_lr=cfg.prior_lr)
        self.model = JointCX(jc, seed=ctx.seed("model-init")).to(device)
        self.learner = JointLearner(self.model, cfg.method)
        sc = ctx.scenario
        images, labels = peer_part(sc.data, sc.n, sc.seed, ctx.peer_id, ctx.data_root)
        self.images = (images.float() / 255.0).unsqueeze(1).to(device)  # gray, in [0, 1]
        self.labels = labels.to(device)
        self.own_classes = sorted(int(c) for c in labels.unique())
        self.noise_gen = torch.Generator(device=device).manual_seed(ctx.seed("pixel-noise"))
        self._test: tuple[torch.Tensor, torch.Tensor] | None = None

    @staticmethod
    def schemas(cfg: Any) -> dict[str, Schema]:
        x = ("float16", (1, 28, 28))
        return {PAIRS: {"c": ("uint8", ()), "x": x}, IMAGES: {"x": x}}

    @staticmethod
    def learnable(cfg: Any) -> tuple[str, ...]:
        return (PAIRS, IMAGES)  # pairs as they are; images labelled by the classifier

    @property
    def n_own(self) -> int:
        return len(self.images)

    def sample(self, n: int, spaces: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
        s = self.model.sample(n, self.gen, mean=self.cfg.sample_mode == "mean")
        x = s["x"].to(torch.float16).cpu().numpy()
        c = s["c"].to(torch.uint8).cpu().numpy()
        return {sp: {"c": c, "x": x} if sp == PAIRS else {"x": x} for sp in spaces}

    def learn(self, own_idx: torch.Tensor, received: list[Received]) -> dict[str, float]:
        idx = own_idx.to(self.images.device)
        x = self.images[idx]
        if self.cfg.noise_std:
            x = x + self.cfg.noise_std * torch.randn(x.shape, generator=self.noise_gen,
                                                     device=x.device)
        dev = self.device
        labelled = [(r.tensors["c"].to(dev).long(), r.tensors["x"].to(dev).float())
                    for r in received if r.space == PAIRS]
        unlabelled = [r.tensors["x"].to(dev).float() for r in received if r.space == IMAGES]
        n_pairs = sum(len(c) for c, _ in labelled)
        n_images = sum(len(x) for x in unlabelled)
        # Our own model completes the latents of pairs, and the label and latents of images.
        if n_pairs:
            self.count(PAIRS, n_pairs)
        if n_images:
            self.count(IMAGES, n_images)
        out = self.learner.step(self.labels[idx], x, labelled, unlabelled, self.gen)
        out["n_synthetic"] = float(n_pairs + n_images)
        return out

    # -- evaluation --------------------------------------------------------------------
    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._test is None:
            x, y = load_split(self.ctx.scenario.data, Path(self.ctx.data_root), "test")
            # One float copy per process and device, shared by its peers (read-only).
            self._test = shared(("joint-test-set", id(x), str(self.device)), lambda: (
                (x.float() / 255.0).unsqueeze(1).to(self.device), y.to(self.device)))
        return self._test

    def accuracy(self, n: int | None = None) -> float:
        x, y = self.test_set()
        if n:
            x, y = x[:n], y[:n]
        self.model.eval()
        with torch.no_grad():
            acc = float((self.model.predict(x) == y).float().mean())
        self.model.train()
        return acc

    def evaluate(self, n: int) -> tuple[dict[str, Any], torch.Tensor]:
        k = self.model.config.n_classes
        g = torch.Generator(device=self.device).manual_seed(self.ctx.seed("eval"))
        c = torch.arange(10 * k, device=self.device) // 10  # one row of the grid per class
        with torch.no_grad():
            images = self.model.sample(len(c), g, c=c, mean=True)["x"].clamp(0, 1)
        metrics: dict[str, Any] = {"accuracy": self.accuracy(),
                                   "own_classes": self.own_classes,
                                   "sigma": float(self.model.log_sigma.detach().exp())}
        if self.model.config.learn_prior:
            metrics["prior"] = [float(v) for v in self.model.prior()]
        return metrics, images

    def probe(self, n: int) -> dict[str, Any]:
        out: dict[str, Any] = {"accuracy": self.accuracy(n)}
        if self.model.config.learn_prior:
            out["prior"] = [round(float(v), 5) for v in self.model.prior()]
        return out


FAMILIES: dict[str, type[Player]] = {c.family: c for c in (HVAEPlayer, VAEPlayer, JointPlayer)}


def family(model: str) -> type[Player]:
    """The Player class of a model name: its family is the name's first part."""
    return FAMILIES[model.split("-")[0]]
