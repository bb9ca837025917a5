"""PolyMNIST learners (the paper's Sec. IV-C, ``models/poly.py``): players on different
probability spaces.

* ``cs-vae``: knows only (c, s), a digit label and its binary mask: a conditional
  binary VAE p(s|c); publishes its "limiting" Gibbs samples on ``cs``;
* ``cs-data``: publishes pairs of its own real (c, s) data on ``cs`` (the paper's
  "+ real MNIST (c, s)" row, over the bus like any other peer);
* ``poly-main``: the main player on (c, d, z, s, x); learns from its own (c, d, x) and
  from received ``cs`` pairs, completing what each lacks by Gibbs sampling with its own
  conditionals (counted per variable in ``completed``: ``cs.d``, ``cs.z``, ``cs.x``,
  ``own.z``, ``own.s``); publishes nothing;
* ``poly-classifier``: the baseline, a classifier of c from x alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from p2pgame.learners.base import (
    Batch,
    ImageLearnerConfig,
    LearnerContext,
    Schema,
    at_least,
)
from p2pgame.learners.images import CS, TorchImageLearner


def _mask_schema() -> Schema:
    return {"c": ("uint8", ()), "s": ("bool", (1, 28, 28))}


@dataclass(frozen=True)
class CSConfig(ImageLearnerConfig):
    gibbs_steps: int = 100  # Gibbs steps behind each published "limiting" sample

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self, 0, "gibbs_steps")


class CSLearner(TorchImageLearner):
    """``cs-vae``: a conditional binary VAE p(s|c) on a label and a digit mask, nothing else:
    it never sees (or receives, or sends) a colour image."""

    kind = "cs-vae"
    Config = CSConfig

    def __init__(self, cfg: Any, ctx: LearnerContext) -> None:
        super().__init__(cfg, ctx)
        part = _poly_part(ctx)
        self.c = torch.from_numpy(part["c"].astype(np.int64)).to(self.device)
        self.s = torch.from_numpy(part["s"]).unsqueeze(1).to(self.device)  # bool [m,1,28,28]
        self.own_classes = sorted(int(v) for v in self.c.unique())
        self._build_model(cfg, ctx)

    def _build_model(self, cfg: Any, ctx: LearnerContext) -> None:
        from p2pgame.models.poly import CSVAE
        from p2pgame.models.poly import CSConfig as ModelConfig
        from p2pgame.models.poly import CSLearner as Trainer

        cc = ModelConfig(gibbs_steps=cfg.gibbs_steps, **({"lr": cfg.lr} if cfg.lr else {}))
        self.model = CSVAE(cc, seed=ctx.seed("model-init")).to(self.device)
        self.learner = Trainer(self.model)

    @classmethod
    def spaces(cls, cfg: Any) -> dict[str, Schema]:
        return {CS: _mask_schema()}

    @property
    def n_own(self) -> int:
        return len(self.c)

    def sample(self, n: int, spaces: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
        with torch.no_grad():
            drawn = self.model.sample(n, self.gen)
        return {CS: {"c": drawn["c"].to(torch.uint8).cpu().numpy(),
                     "s": (drawn["s"] > 0.5).cpu().numpy()}}

    def learn(self, step: int, batch: Batch) -> dict[str, float]:
        received = self.picked(batch)
        idx = self.own_indices(batch).to(self.c.device)
        cs = [(self.c[idx], self.s[idx].float())]
        cs += [(r.tensors["c"].to(self.device).long(), r.tensors["s"].to(self.device).float())
               for r in received]
        c = torch.cat([a for a, _ in cs])
        s = torch.cat([b for _, b in cs])
        out = self.learner.step(c, s, self.gen)
        out["n_synthetic"] = float(len(c) - len(idx))
        return out

    def evaluate(self, n: int) -> tuple[dict[str, Any], torch.Tensor]:
        """Ten limiting samples per digit (a grid row each)."""
        g = torch.Generator(device=self.device).manual_seed(self.ctx.seed("eval"))
        c = torch.arange(100, device=self.device) // 10
        with torch.no_grad():
            s = self.model.sample(len(c), g, c=c)["s"]
        return {"own_classes": self.own_classes}, s.float()


class CSDataLearner(CSLearner):
    """``cs-data``: publishes pairs drawn from its own real (c, s) data; learns nothing."""

    kind = "cs-data"
    Config = ImageLearnerConfig

    def _build_model(self, cfg: Any, ctx: LearnerContext) -> None:
        self.model = torch.nn.Module()  # nothing to learn or save

    @classmethod
    def reads(cls, cfg: Any) -> dict[str, Schema]:
        return {}

    @classmethod
    def default_spaces(cls, cfg: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return (CS,), ()

    def sample(self, n: int, spaces: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
        idx = torch.randint(0, len(self.c), (n,), generator=self.data_gen)
        return {CS: {"c": self.c[idx].to(torch.uint8).cpu().numpy(),
                     "s": self.s[idx].cpu().numpy()}}

    def learn(self, step: int, batch: Batch) -> dict[str, float]:
        return {}

    def evaluate(self, n: int) -> tuple[dict[str, Any], torch.Tensor]:
        return {"own_classes": self.own_classes}, self.s[:100].float()


@dataclass(frozen=True)
class PolyClassifierConfig(ImageLearnerConfig):
    eval_test: int = 0  # test images scored (0: the whole test split)

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self, 0, "eval_test")


@dataclass(frozen=True)
class PolyMainConfig(PolyClassifierConfig):
    gibbs_sweeps: int = 10  # sweeps completing each example's missing variables
    infer_sweeps: int = 100  # sweeps of the inference that classifies a test image

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self, 1, "gibbs_sweeps", "infer_sweeps")


class PolyLearner(TorchImageLearner):
    """``poly-main``: the main PolyMNIST player (c, d, z, s, x); ``poly-classifier``: the
    baseline classifier on x alone.  Both score the digit accuracy per style on the test
    split (``eval_test`` examples; the main player by Gibbs inference, x clamped)."""

    kind = "poly-main"
    Config = PolyMainConfig
    scores_accuracy = True
    alone = False

    def __init__(self, cfg: Any, ctx: LearnerContext) -> None:
        super().__init__(cfg, ctx)
        part = _poly_part(ctx)
        self.c = torch.from_numpy(part["c"].astype(np.int64)).to(self.device)
        self.d = torch.from_numpy(part["d"].astype(np.int64)).to(self.device)
        self.x = _colour(part["x"]).to(self.device)
        lr = {"lr": cfg.lr} if cfg.lr else {}
        if self.alone:
            from p2pgame.models.poly import XClassifier

            self.model = XClassifier(seed=ctx.seed("model-init"), **lr).to(self.device)
        else:
            from p2pgame.models.poly import MainConfig, PolyMain
            from p2pgame.models.poly import PolyLearner as Trainer

            mc = MainConfig(gibbs_sweeps=cfg.gibbs_sweeps, infer_sweeps=cfg.infer_sweeps, **lr)
            self.model = PolyMain(mc, seed=ctx.seed("model-init")).to(self.device)
            self.learner = Trainer(self.model)
        self.last_cs: tuple[torch.Tensor, torch.Tensor] | None = None  # for the grid

    @classmethod
    def spaces(cls, cfg: Any) -> dict[str, Schema]:
        return {}  # publishes nothing

    @classmethod
    def reads(cls, cfg: Any) -> dict[str, Schema]:
        return {} if cls.alone else {CS: _mask_schema()}

    @classmethod
    def default_spaces(cls, cfg: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return (), tuple(cls.reads(cfg))

    @property
    def n_own(self) -> int:
        return len(self.c)

    def learn(self, step: int, batch: Batch) -> dict[str, float]:
        received = self.picked(batch)
        idx = self.own_indices(batch).to(self.c.device)
        if self.alone:
            return {"c_loss": float(self.model.step(self.x[idx], self.c[idx]))}
        own = {"c": self.c[idx], "d": self.d[idx], "x": self.x[idx]} if len(idx) else None
        cs = None
        pairs = [r for r in received if r.space == CS]
        if pairs:
            cs = {"c": torch.cat([r.tensors["c"] for r in pairs]).to(self.device).long(),
                  "s": torch.cat([r.tensors["s"] for r in pairs]).to(self.device).float()}
            self.last_cs = (cs["c"], cs["s"])
        out = self.learner.step(own, cs, self.gen)
        n_own, n_cs = (len(idx) if own else 0), (len(cs["c"]) if cs else 0)
        for var, k in (("own.z", n_own), ("own.s", n_own), ("cs.d", n_cs), ("cs.z", n_cs),
                       ("cs.x", n_cs)):
            if k:
                self.count(var, k)
        out["n_synthetic"] = float(n_cs)
        # A conditional that learnt from nothing this step has no loss (NaN): left out.
        return {k: float(v) for k, v in out.items() if np.isfinite(v)}

    # -- evaluation --------------------------------------------------------------------
    def test_set(self, n: int | None = None) -> tuple[torch.Tensor, ...]:
        a = _poly_part(self.ctx, "test")
        k = min(n or len(a["c"]), len(a["c"]))
        return (_colour(a["x"][:k]).to(self.device),
                torch.from_numpy(a["c"][:k].astype(np.int64)).to(self.device),
                torch.from_numpy(a["d"][:k].astype(np.int64)).to(self.device))

    def per_style(self, n: int | None = None) -> dict[str, Any]:
        """Digit accuracy on each style's test images, and their average."""
        x, c, d = self.test_set(n)
        self.model.eval()
        with torch.no_grad():
            if self.alone:
                pred = torch.cat([self.model.predict(x[i:i + 1000])
                                  for i in range(0, len(x), 1000)])
            else:
                g = torch.Generator(device=self.device).manual_seed(self.ctx.seed("eval"))
                pred = self.model.predict(x, g)
        self.model.train()
        right = (pred == c).float()
        styles = [float(right[d == k].mean()) if (d == k).any() else float("nan")
                  for k in range(5)]
        return {"accuracy_style": styles, "accuracy": float(np.nanmean(styles))}

    def evaluate(self, n: int) -> tuple[dict[str, Any], torch.Tensor]:
        metrics = self.per_style(self.cfg.eval_test or None)
        if self.alone:
            return metrics, self.x[:50]
        # 5 styles (rows) x 10 digits: completed from received (c, s), else own test masks.
        if self.last_cs is not None:
            c_all, s_all = self.last_cs
        else:
            a = _poly_part(self.ctx, "test")
            c_all = torch.from_numpy(a["c"][:2000].astype(np.int64)).to(self.device)
            s_all = torch.from_numpy(a["s"][:2000]).unsqueeze(1).float().to(self.device)
        picks = []
        for digit in range(10):
            where = torch.nonzero(c_all == digit).flatten()
            picks.append(int(where[0]) if len(where) else 0)
        pick = torch.tensor(picks, device=self.device).repeat(5)
        d = torch.arange(50, device=self.device) // 10
        g = torch.Generator(device=self.device).manual_seed(self.ctx.seed("eval-grid"))
        with torch.no_grad():
            images = self.model.generate(c_all[pick], s_all[pick], g, d=d)
        return metrics, images.clamp(0, 1)

    def probe(self, step: int) -> dict[str, Any]:
        every = self.cfg.eval_every
        if every and step % every == 0 and step > 0:
            return self.per_style(self.cfg.eval_samples_during)
        return {}


class PolyClassifierLearner(PolyLearner):
    kind = "poly-classifier"
    Config = PolyClassifierConfig
    alone = True


def _colour(x: np.ndarray) -> torch.Tensor:
    """uint8 [m, 28, 28, 3] -> float [m, 3, 28, 28] in [0, 1]."""
    from p2pgame.models.poly import image_tensors

    return image_tensors(x)[0]


def _poly_part(ctx: Any, split: str | None = None) -> dict[str, np.ndarray]:
    """This peer's PolyMNIST examples (or a whole ``split``): see ``data.image.poly_part``."""
    from p2pgame.data.image import poly_part

    sc = ctx.scenario
    return poly_part(sc.data, sc.n, sc.seed, ctx.peer_id, ctx.data_root, split)
