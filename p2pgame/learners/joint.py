"""``joint-cx``: the paper's Fashion-MNIST player (``models/joint.py``): a classifier and
a conditional HVAE on gray images; labelled pairs on ``cx``, images on ``x``.  Its ``x``
carries gray float16 images, so it cannot share ``x`` with the binary families (the
scenario check says so).  Scored by its classifier's test accuracy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from p2pgame.data.image import load_split, peer_part
from p2pgame.learners.base import (
    Batch,
    ImageLearnerConfig,
    LearnerContext,
    Schema,
    at_least,
    config_error,
)
from p2pgame.learners.images import IMAGES, PAIRS, TorchImageLearner, parameter_schema
from p2pgame.shared import shared


@dataclass(frozen=True)
class JointLearnerConfig(ImageLearnerConfig):
    capacity: int = 4  # 1..4, the paper's capacity ladder, weakest to strongest
    method: str = "symmetric"  # or "discriminative"
    learn_prior: bool = False  # learn p(c) (a categorical) instead of a fixed uniform one
    prior_lr: float = 0.0  # 0: lr
    noise_std: float = 0.01  # Gaussian noise on own gray images, every step

    def __post_init__(self) -> None:
        super().__post_init__()
        from p2pgame.models.joint import CAPACITIES, METHODS

        if self.capacity not in CAPACITIES:
            raise config_error("capacity", f"{self.capacity}; allowed: {sorted(CAPACITIES)}")
        if self.method not in METHODS:
            raise config_error("method", f"{self.method!r}; allowed: {', '.join(METHODS)}")
        at_least(self, 0, "prior_lr", "noise_std")


class JointLearner(TorchImageLearner):
    kind = "joint"
    Config = JointLearnerConfig
    class_mass_keys = ("prior", "tv_prior_to_ne")  # only with learn_prior
    scores_accuracy = True

    def __init__(self, cfg: Any, ctx: LearnerContext) -> None:
        super().__init__(cfg, ctx)
        from p2pgame.models.joint import JointCX
        from p2pgame.models.joint import JointLearner as Trainer

        self.model = JointCX(self._model_config(cfg), seed=ctx.seed("model-init")).to(self.device)
        self.learner = Trainer(self.model, cfg.method)
        sc = ctx.scenario
        images, labels = peer_part(sc.data, sc.n, sc.seed, ctx.peer_id, ctx.data_root)
        self.images = (images.float() / 255.0).unsqueeze(1).to(self.device)  # gray, in [0, 1]
        self.labels = labels.to(self.device)
        self.own_classes = sorted(int(c) for c in labels.unique())
        self.noise_gen = torch.Generator(device=self.device).manual_seed(ctx.seed("pixel-noise"))
        self._test: tuple[torch.Tensor, torch.Tensor] | None = None

    @staticmethod
    def _model_config(cfg: Any) -> Any:
        from p2pgame.models.joint import JointConfig

        return JointConfig(capacity=cfg.capacity, learn_prior=cfg.learn_prior,
                           lr=cfg.lr or 1e-3, prior_lr=cfg.prior_lr)

    @classmethod
    def spaces(cls, cfg: Any) -> dict[str, Schema]:
        x = ("float16", (1, 28, 28))
        return {PAIRS: {"c": ("uint8", ()), "x": x}, IMAGES: {"x": x}}

    @classmethod
    def parts(cls, cfg: Any) -> dict[str, Schema]:
        from p2pgame.learners.images import cached_parts

        def build():
            from p2pgame.models.joint import JointCX

            return {"model": parameter_schema(JointCX(cls._model_config(cfg), seed=0))}

        return cached_parts(("joint", cfg.capacity, cfg.learn_prior), build)

    @property
    def n_own(self) -> int:
        return len(self.images)

    def sample(self, n: int, spaces: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
        s = self.model.sample(n, self.gen, mean=self.cfg.sample_mode == "mean")
        x = s["x"].to(torch.float16).cpu().numpy()
        c = s["c"].to(torch.uint8).cpu().numpy()
        return {sp: {"c": c, "x": x} if sp == PAIRS else {"x": x} for sp in spaces}

    def learn(self, step: int, batch: Batch) -> dict[str, float]:
        received = self.picked(batch)
        idx = self.own_indices(batch).to(self.images.device)
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
        return self.with_equilibrium(metrics), images

    def probe(self, step: int) -> dict[str, Any]:
        every = self.cfg.eval_every
        if not (every and step % every == 0 and step > 0):
            return {}
        out: dict[str, Any] = {"accuracy": self.accuracy(self.cfg.eval_samples_during)}
        if self.model.config.learn_prior:
            out["prior"] = [round(float(v), 5) for v in self.model.prior()]
        return out
