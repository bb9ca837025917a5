"""GAN learners (``dcgan-mlp``, ``dcgan-conv``): a discriminator D and a generator G as two
named parts, for Diffusion GAN (Wang, Pavan & Sayed) under the ``params`` exchange.

Steps alternate by part: step r adapts D if ``r % (n_d + n_g) < n_d``, else G
(:meth:`GANLearner.adapted`), one stochastic-gradient step of its loss.  A parameter
exchange publishes the part a step adapted and combines it at the next step, before
that step's own adaptation: adapt-then-combine per part (``exchange/params.py``).

The GAN trains on grey-level images in [-1, 1] (``data.binarize`` and ``data.noise``
are not used); for the shared evaluation, whose evaluator CNN works on binary images,
generated images are thresholded like the real ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from p2pgame.data.image import peer_part
from p2pgame.learners.base import (
    Batch,
    ImageLearnerConfig,
    LearnerContext,
    Schema,
    at_least,
    config_error,
)
from p2pgame.learners.images import TorchImageLearner, cached_parts, parameter_schema

PARTS = ("D", "G")
OPTIMIZERS = ("sgd", "adam")
G_LOSSES = ("nonsaturating", "minimax")


@dataclass(frozen=True)
class GANConfig(ImageLearnerConfig):
    batch: int = 64
    lr: float = 0.05  # mu of the paper (both parts)
    optimizer: str = "sgd"  # sgd | adam (moments stay local; only parameters are exchanged)
    betas: tuple[float, float] = (0.5, 0.999)
    n_d: int = 5  # D steps per iteration
    n_g: int = 1  # G steps per iteration
    g_loss: str = "nonsaturating"  # -log D(G(z)); "minimax": log(1 - D(G(z))) as in eq. (3)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, allowed in (("optimizer", OPTIMIZERS), ("g_loss", G_LOSSES)):
            if getattr(self, key) not in allowed:
                raise config_error(
                    key, f"{getattr(self, key)!r} is not known; allowed: {', '.join(allowed)}")
        at_least(self, 1, "batch", "n_d", "n_g")
        if self.eval_samples < 2:
            raise config_error("eval_samples", "must be >= 2")
        if not self.lr > 0:
            raise config_error("lr", f"must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise config_error("betas", f"must be two numbers in [0, 1), got {list(self.betas)}")

    def part_at(self, step: int) -> str:
        return "D" if step % (self.n_d + self.n_g) < self.n_d else "G"


class GANLearner(TorchImageLearner):
    kind = "dcgan"
    Config = GANConfig
    grey_gan = True
    uses_evaluator = True

    def __init__(self, cfg: Any, ctx: LearnerContext) -> None:
        super().__init__(cfg, ctx)
        from p2pgame.eval.images import ImageEvaluation
        from p2pgame.models import make_model

        self.model = make_model(cfg.kind, seed=ctx.seed("model-init")).to(self.device)
        self.model.train()
        self.opt = {p: self._optimizer(self.model.parts[p]) for p in PARTS}
        sc = ctx.scenario
        images, labels = peer_part(sc.data, sc.n, sc.seed, ctx.peer_id, ctx.data_root)
        if len(labels) == 0:
            raise ValueError(f"peer {ctx.peer_id} got no images from the partition")
        self.images = images.float().div(127.5).sub(1.0).unsqueeze(1).to(self.device)
        self.own_classes = sorted(int(c) for c in labels.unique())
        self.last_loss = {"D": float("nan"), "G": float("nan")}
        self.evaluation = ImageEvaluation(sc.data, ctx.data_root, cfg.evaluator_epochs,
                                          self.own_classes, self.device)

    def _optimizer(self, module):
        cfg = self.cfg
        if cfg.optimizer == "adam":
            return torch.optim.Adam(module.parameters(), lr=cfg.lr, betas=cfg.betas)
        return torch.optim.SGD(module.parameters(), lr=cfg.lr)

    @classmethod
    def parts(cls, cfg: Any) -> dict[str, Schema]:
        def build():
            from p2pgame.models import make_model

            model = make_model(cfg.kind, seed=0)
            return {p: parameter_schema(model.parts[p]) for p in PARTS}

        return cached_parts(("gan", cfg.kind), build)

    @property
    def n_own(self) -> int:
        return len(self.images)

    def named_parameters(self, part: str) -> dict[str, torch.nn.Parameter]:
        return dict(self.model.parts[part].named_parameters())

    def adapted(self, step: int) -> tuple[str, ...]:
        return (self.cfg.part_at(step),)

    def learn(self, step: int, batch: Batch) -> dict[str, float]:
        """One local stochastic-gradient step on the part of ``step`` (eq. 10a)."""
        cfg, model = self.cfg, self.model
        part = cfg.part_at(step)
        z = model.noise(cfg.batch, self.gen)
        if part == "D":
            idx = torch.randint(0, len(self.images), (cfg.batch,), generator=self.data_gen)
            loss = model.d_loss(self.images[idx.to(self.images.device)], z)
        else:
            loss = model.g_loss(z, saturating=cfg.g_loss == "minimax")
        opt = self.opt[part]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        self.last_loss[part] = float(loss.detach())
        out = {f"{p.lower()}_loss": v for p, v in self.last_loss.items() if v == v}  # no NaN
        out["g_round"] = float(part == "G")
        return out

    # -- evaluation ----------------------------------------------------------------------
    def generate(self, n: int, batch: int = 1000) -> torch.Tensor:
        """``n`` generated images in [0, 1] (eval mode, a fixed seed)."""
        from p2pgame.models.dcgan import to_unit

        g = torch.Generator(device=self.device).manual_seed(self.ctx.seed("eval"))
        self.model.eval()
        out = []
        with torch.no_grad():
            for i in range(0, n, batch):
                out.append(to_unit(self.model.sample(min(batch, n - i), g)).cpu())
        self.model.train()
        return torch.cat(out)

    def evaluate(self, n: int) -> tuple[dict[str, Any], torch.Tensor]:
        from p2pgame.eval import binarize

        images = self.generate(n)
        metrics = self.evaluation.metrics(binarize(images))
        d, g = self.last_loss["D"], self.last_loss["G"]
        metrics.update(
            classes_generated=sum(1 for m in metrics["class_mass"] if m >= 0.03),
            model=self.cfg.kind,
            param_count=self.model.param_count(),
            param_count_D=self.model.param_count("D"),
            param_count_G=self.model.param_count("G"),
            d_loss=d if d == d else None, g_loss=g if g == g else None)
        return metrics, images

    def flat(self) -> np.ndarray:
        return self.model.flat().numpy().astype(np.float32)
