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
* ``vae-conv``: convolutional VAE trained by the ELBO; images on ``x``, or their
  Bernoulli means on ``px`` (below);
* ``joint-cx``: the paper's Fashion-MNIST player (``models/joint.py``), gray images;
  labelled pairs on ``cx``, images on ``x``.  Its ``x`` carries gray float16 images,
  so it cannot share ``x`` with the binary families (the scenario check says so).

PolyMNIST (the paper's Sec. IV-C, ``models/poly.py``): players on different
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
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from p2pgame.data.image import load_split, peer_images, peer_part
from p2pgame.shared import shared

HVAE, IMAGES, PAIRS, CS = "hvae", "x", "cx", "cs"
# "px": for each z drawn from the prior, the decoder's Bernoulli means p(x = 1 | z) as
# float16, instead of one binary draw x of them.  A learner trained by maximum
# likelihood on factorised Bernoulli pixels learns from them as soft targets: the
# expected loss over the draws of x given z, without their pixel noise.  16 bits a pixel
# instead of 1 (bench/RESULTS.md, section 9: the demo's exchange).
MEANS = "px"
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
    def reads(cls, cfg: Any) -> dict[str, Schema]:
        """The schemas it checks received messages against: what it publishes, unless it
        learns spaces it never publishes (PolyMNIST's main player)."""
        return cls.schemas(cfg)

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

        overrides: dict[str, Any] = {"seed": ctx.seed("model-init"), "refine": cfg.refine,
                                     "prior_components": cfg.prior_components}
        if cfg.lr:
            overrides["lr_p"] = cfg.lr
        self.model = make_model(cfg.model, **overrides).to(device)
        self.learner = VAELearner(self.model)
        super().__init__(cfg, ctx, device)

    @staticmethod
    def schemas(cfg: Any) -> dict[str, Schema]:
        return {IMAGES: {"x": ("bool", (1, 28, 28))}, MEANS: {"x": ("float16", (1, 28, 28))}}

    @staticmethod
    def learnable(cfg: Any) -> tuple[str, ...]:
        return (MEANS, IMAGES)

    @classmethod
    def default_spaces(cls, cfg: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return (IMAGES,), (IMAGES,)  # images, as every binary family; ``px`` when asked

    def sample(self, n: int, spaces: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
        if MEANS not in spaces:
            x = self.model.sample(n, self.gen, mean=self.cfg.sample_mode == "mean")["x"]
            return {s: {"x": x.cpu().numpy()} for s in spaces}
        # both spaces from the same z: the images are draws (or thresholds) of the means
        means = self.model.sample_means(n, self.gen)
        out = {MEANS: {"x": means.to(torch.float16).cpu().numpy()}}
        if IMAGES in spaces:
            x = means > 0.5 if self.cfg.sample_mode == "mean" else torch.bernoulli(
                means, generator=self.gen).bool()
            out[IMAGES] = {"x": x.cpu().numpy()}
        return out

    def learn(self, own_idx: torch.Tensor, received: list[Received]) -> dict[str, float]:
        real = self.images[own_idx.to(self.images.device)].float()
        # binary images and means (``px``, soft targets of the same Bernoulli likelihood)
        parts = [real, *(r.tensors["x"].to(real.device, torch.float32) for r in received)]
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


# --------------------------------------------------------------------------- PolyMNIST


def _mask_schema() -> Schema:
    return {"c": ("uint8", ()), "s": ("bool", (1, 28, 28))}


class CSPlayer(Player):
    """``cs-vae``: a conditional binary VAE p(s|c) on a label and a digit mask, nothing else:
    it never sees (or receives, or sends) a colour image."""

    family = "cs"

    def __init__(self, cfg: Any, ctx: Any, device: torch.device) -> None:
        super().__init__(cfg, ctx, device)
        part = _poly_part(ctx)
        self.c = torch.from_numpy(part["c"].astype(np.int64)).to(device)
        self.s = torch.from_numpy(part["s"]).unsqueeze(1).to(device)  # bool [m, 1, 28, 28]
        self.own_classes = sorted(int(v) for v in self.c.unique())
        self._build_model(cfg, ctx)

    def _build_model(self, cfg: Any, ctx: Any) -> None:
        from p2pgame.models.poly import CSVAE, CSConfig, CSLearner

        cc = CSConfig(gibbs_steps=cfg.gibbs_steps, **({"lr": cfg.lr} if cfg.lr else {}))
        self.model = CSVAE(cc, seed=ctx.seed("model-init")).to(self.device)
        self.learner = CSLearner(self.model)

    @staticmethod
    def schemas(cfg: Any) -> dict[str, Schema]:
        return {CS: _mask_schema()}

    @staticmethod
    def learnable(cfg: Any) -> tuple[str, ...]:
        return (CS,)

    @property
    def n_own(self) -> int:
        return len(self.c)

    def sample(self, n: int, spaces: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
        with torch.no_grad():
            drawn = self.model.sample(n, self.gen)
        return {CS: {"c": drawn["c"].to(torch.uint8).cpu().numpy(),
                     "s": (drawn["s"] > 0.5).cpu().numpy()}}

    def learn(self, own_idx: torch.Tensor, received: list[Received]) -> dict[str, float]:
        idx = own_idx.to(self.c.device)
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

    def probe(self, n: int) -> dict[str, Any]:
        return {}


class CSDataPlayer(CSPlayer):
    """``cs-data``: publishes pairs drawn from its own real (c, s) data; learns nothing."""

    family = "cs-data"

    def _build_model(self, cfg: Any, ctx: Any) -> None:
        self.model = torch.nn.Module()  # nothing to learn or save

    @staticmethod
    def learnable(cfg: Any) -> tuple[str, ...]:
        return ()

    @classmethod
    def default_spaces(cls, cfg: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return (CS,), ()

    def sample(self, n: int, spaces: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
        idx = torch.randint(0, len(self.c), (n,), generator=self.data_gen)
        return {CS: {"c": self.c[idx].to(torch.uint8).cpu().numpy(),
                     "s": self.s[idx].cpu().numpy()}}

    def learn(self, own_idx: torch.Tensor, received: list[Received]) -> dict[str, float]:
        return {}

    def evaluate(self, n: int) -> tuple[dict[str, Any], torch.Tensor]:
        return {"own_classes": self.own_classes}, self.s[:100].float()


class PolyPlayer(Player):
    """``poly-main``: the main PolyMNIST player (c, d, z, s, x); ``poly-classifier``: the
    baseline classifier on x alone.  Both score the digit accuracy per style on the test
    split (``eval_test`` examples; the main player by Gibbs inference, x clamped)."""

    family = "poly"

    def __init__(self, cfg: Any, ctx: Any, device: torch.device) -> None:
        super().__init__(cfg, ctx, device)
        part = _poly_part(ctx)
        self.c = torch.from_numpy(part["c"].astype(np.int64)).to(device)
        self.d = torch.from_numpy(part["d"].astype(np.int64)).to(device)
        self.x = _colour(part["x"]).to(device)
        self.alone = cfg.model == "poly-classifier"
        lr = {"lr": cfg.lr} if cfg.lr else {}
        if self.alone:
            from p2pgame.models.poly import XClassifier

            self.model = XClassifier(seed=ctx.seed("model-init"), **lr).to(device)
        else:
            from p2pgame.models.poly import MainConfig, PolyLearner, PolyMain

            mc = MainConfig(gibbs_sweeps=cfg.gibbs_sweeps, infer_sweeps=cfg.infer_sweeps, **lr)
            self.model = PolyMain(mc, seed=ctx.seed("model-init")).to(device)
            self.learner = PolyLearner(self.model)
        self.last_cs: tuple[torch.Tensor, torch.Tensor] | None = None  # for the grid

    @staticmethod
    def schemas(cfg: Any) -> dict[str, Schema]:
        return {}  # publishes nothing

    @classmethod
    def reads(cls, cfg: Any) -> dict[str, Schema]:
        return {CS: _mask_schema()}

    @staticmethod
    def learnable(cfg: Any) -> tuple[str, ...]:
        return () if cfg.model == "poly-classifier" else (CS,)

    @classmethod
    def default_spaces(cls, cfg: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return (), cls.learnable(cfg)

    @property
    def n_own(self) -> int:
        return len(self.c)

    def sample(self, n: int, spaces: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
        return {}

    def learn(self, own_idx: torch.Tensor, received: list[Received]) -> dict[str, float]:
        idx = own_idx.to(self.c.device)
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

    def probe(self, n: int) -> dict[str, Any]:
        return self.per_style(n)


def _colour(x: np.ndarray) -> torch.Tensor:
    """uint8 [m, 28, 28, 3] -> float [m, 3, 28, 28] in [0, 1]."""
    from p2pgame.models.poly import image_tensors

    return image_tensors(x)[0]


def _poly_part(ctx: Any, split: str | None = None) -> dict[str, np.ndarray]:
    """This peer's PolyMNIST examples (or a whole ``split``): see ``data.image.poly_part``."""
    from p2pgame.data.image import poly_part

    sc = ctx.scenario
    return poly_part(sc.data, sc.n, sc.seed, ctx.peer_id, ctx.data_root, split)


FAMILIES: dict[str, type[Player]] = {c.family: c for c in (
    HVAEPlayer, VAEPlayer, JointPlayer, CSPlayer, CSDataPlayer, PolyPlayer)}


def family(model: str) -> type[Player]:
    """The Player class of a model name: by its full name, else its family (the first part)."""
    return FAMILIES.get(model) or FAMILIES[model.split("-")[0]]
