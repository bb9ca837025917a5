"""Learners on binarised MNIST-like images: binary HVAEs and a convolutional VAE.

* ``hvae-mlp`` / ``hvae-conv``: binary HVAE, symmetric learning; tuples on ``hvae``
  (only between identical architectures), images on ``x``;
* ``vae-conv``: convolutional VAE trained by the ELBO; images on ``x``, or their
  Bernoulli means on ``px`` (:data:`MEANS`).

Each keeps its private images, draws its own examples with its ``data-order`` stream and
picks what it takes of a received message with the same stream
(:meth:`TorchImageLearner.picked`).  Evaluated by classifier-FID and class mass against
the data set's evaluator CNN (trained once by the launcher, :class:`ImageHooks`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from p2pgame.config import ScenarioError
from p2pgame.data.image import (
    ImageDataSpec,
    class_histograms,
    load_split,
    partition_indices,
    peer_images,
)
from p2pgame.learners.base import (
    Batch,
    GeneratorCopy,
    ImageLearnerConfig,
    Learner,
    LearnerContext,
    LearnerHooks,
    Schema,
    at_least,
    examples_in,
)

HVAE, IMAGES, PAIRS, CS = "hvae", "x", "cx", "cs"
# "px": for each z drawn from the prior, the decoder's Bernoulli means p(x = 1 | z) as
# float16, instead of one binary draw x of them.  A learner trained by maximum
# likelihood on factorised Bernoulli pixels learns from them as soft targets: the
# expected loss over the draws of x given z, without their pixel noise.  16 bits a pixel
# instead of 1 (bench/RESULTS.md, section 9: the demo's exchange).
MEANS = "px"
EVAL_KEYS = ("fid_all", "fid_own", "fid_other", "fid_inception", "tstr_accuracy", "class_mass", "own_mass",
             "unseen_mass", "ne_class_mass", "ne_own_mass", "tv_to_ne", "own_classes",
             "accuracy", "accuracy_style", "prior", "tv_prior_to_ne", "classes_generated")


@dataclass
class Picked:
    """The examples a step took of one neighbour's message on one space (torch)."""

    space: str
    tensors: dict[str, torch.Tensor]


def pick_received(m: int, k: int, generator: Any) -> torch.Tensor:
    """k indices into a message of m examples, each example once before any is taken twice
    (shuffles of the message, end to end).  Picking with replacement would leave about a
    third of a message unused when k = m (1 - 1/e distinct), and repeat others: fewer
    distinct received examples a step for the same cost."""
    rounds = -(-k // m)
    return torch.cat([torch.randperm(m, generator=generator) for _ in range(rounds)])[:k]


class TorchImageLearner(Learner):
    """Shared by the torch learners of image data: seeded streams, picking, own indices,
    the equilibrium class mass (under the mixing exchange), checkpoints."""

    data = ImageDataSpec
    hooks: ClassVar[type]  # ImageHooks, set below

    def __init__(self, cfg: Any, ctx: LearnerContext) -> None:
        super().__init__(cfg, ctx)
        self.device = torch.device(ctx.device)
        self.gen = torch.Generator(device=self.device).manual_seed(ctx.seed("model-sampling"))
        self.data_gen = torch.Generator().manual_seed(ctx.seed("data-order"))
        self.probe_every = getattr(cfg, "eval_every", 0)

    @classmethod
    def data_statistics(cls, scenario: Any, data_root: Path) -> np.ndarray | None:
        labels = load_split(scenario.data, data_root)[1].numpy()
        return class_histograms(scenario.data, labels, scenario.n, scenario.seed)

    def picked(self, batch: Batch) -> list[Picked]:
        """``k`` examples of each received message, picked without replacement first."""
        out = []
        for r in batch.received:
            pick = pick_received(examples_in(r.tensors), r.k, self.data_gen).numpy()
            out.append(Picked(r.space, {f: torch.from_numpy(np.ascontiguousarray(t[pick]))
                                        for f, t in r.tensors.items()}))
        return out

    def own_indices(self, batch: Batch) -> torch.Tensor:
        if batch.own is None:
            return torch.arange(self.n_own)
        if self.n_own == 0 or batch.own == 0:  # a relay: it learns from what it receives
            return torch.zeros(0, dtype=torch.long)
        return torch.randint(0, self.n_own, (batch.own,), generator=self.data_gen)

    def with_equilibrium(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """The class mass the mixing exchange's equilibrium predicts, and the distance."""
        from p2pgame.eval import total_variation

        mass_key, tv_key = self.class_mass_keys or (None, None)
        if mass_key in metrics and self.ctx.equilibrium is not None:
            ne = self.ctx.equilibrium()
            metrics["ne_class_mass"] = [float(v) for v in ne]
            metrics["ne_own_mass"] = float(sum(ne[c] for c in self.own_classes))
            metrics[tv_key] = total_variation(metrics[mass_key], ne)
        return metrics

    def state(self) -> Any | None:
        return self.model.state_dict() if getattr(self.cfg, "checkpoint", True) else None

    def load_state(self, state: Any) -> None:
        self.model.load_state_dict(state)

    # Parameters: every named parameter of ``exchanged_module()`` (buffers and optimiser
    # state are not parameters), less those the family keeps local.
    keep_local: ClassVar[tuple[str, ...]] = ()

    def exchanged_module(self) -> torch.nn.Module:
        return self.model

    # The model exchange: the parameters whose names start with these make the generator
    # (a copy built by ``build_model`` and loaded with them draws as the sender's model).
    generator_prefixes: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def build_model(cls, cfg: Any, seed: int = 0) -> torch.nn.Module:
        """The family's model for ``cfg`` on the CPU (schemas; generator copies)."""
        raise NotImplementedError

    def draw(self, model: Any, n: int, spaces: tuple[str, ...], gen: torch.Generator
             ) -> dict[str, dict[str, np.ndarray]]:
        """``n`` examples of ``model`` on each space (``sample`` with the own model); a
        family that publishes no examples (the GAN's parameters) draws none."""
        return {}

    def sample(self, n: int, spaces: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
        return self.draw(self.model, n, spaces, self.gen)

    @classmethod
    def generator(cls, cfg: Any) -> Schema:
        if not cls.generator_prefixes:
            return {}

        def build():
            schema = {k: ("float32", tuple(v.shape))
                      for k, v in cls.build_model(cfg).named_parameters()
                      if k.startswith(cls.generator_prefixes)}
            return {"generator": schema}

        return cached_parts(("generator", cls.kind, repr(cfg)), build)["generator"]

    def generator_tensors(self) -> dict[str, np.ndarray]:
        return {k: np.array(v.detach().cpu().numpy(), dtype=np.float32, copy=True)
                for k, v in self.model.named_parameters()
                if k.startswith(self.generator_prefixes)}

    def generator_copy(self, sender: int) -> TorchCopy:
        model = self.build_model(self.cfg).to(self.device)
        model.eval()
        gen = torch.Generator(device=self.device).manual_seed(
            self.ctx.seed("model-copy", sender))
        return TorchCopy(self, model, gen)

    def named_parameters(self, part: str) -> dict[str, torch.nn.Parameter]:
        return {k: v for k, v in self.exchanged_module().named_parameters()
                if not k.startswith(self.keep_local)}

    def tensors(self, part: str) -> dict[str, np.ndarray]:
        return {k: np.array(v.detach().cpu().numpy(), dtype=np.float32, copy=True)
                for k, v in self.named_parameters(part).items()}

    def load_tensors(self, part: str, values: dict[str, np.ndarray]) -> None:
        live = self.named_parameters(part)
        with torch.no_grad():
            for k, v in live.items():
                v.copy_(torch.from_numpy(np.asarray(values[k])).to(v.device, v.dtype))


class TorchCopy(GeneratorCopy):
    """A neighbour's generator held by a torch learner: a model of the learner's own
    architecture whose generator parameters are the neighbour's (the rest is unused)."""

    def __init__(self, learner: TorchImageLearner, model: torch.nn.Module,
                 gen: torch.Generator) -> None:
        self.learner = learner
        self.model = model
        self.gen = gen
        self.live = {k: v for k, v in model.named_parameters()
                     if k.startswith(learner.generator_prefixes)}

    def load(self, tensors: dict[str, np.ndarray]) -> None:
        with torch.no_grad():
            for k, v in self.live.items():
                v.copy_(torch.from_numpy(np.asarray(tensors[k])).to(v.device, v.dtype))

    def sample(self, n: int, spaces: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
        return self.learner.draw(self.model, n, spaces, self.gen)


def parameter_schema(module: torch.nn.Module, keep_local: tuple[str, ...] = ()) -> Schema:
    return {k: ("float32", tuple(v.shape)) for k, v in module.named_parameters()
            if not k.startswith(keep_local)}


_PARTS_CACHE: dict[Any, dict[str, Schema]] = {}


def cached_parts(key: Any, build: Any) -> dict[str, Schema]:
    """Parameter schemas are declared before any run by building the model once on the
    CPU (seconds at most); cached per process."""
    if key not in _PARTS_CACHE:
        _PARTS_CACHE[key] = build()
    return _PARTS_CACHE[key]


class BinaryImageLearner(TorchImageLearner):
    """Families on binarised images, evaluated by classifier-FID and class mass."""

    class_mass_keys = ("class_mass", "tv_to_ne")

    def __init__(self, cfg: Any, ctx: LearnerContext) -> None:
        super().__init__(cfg, ctx)
        from p2pgame.eval.images import ImageEvaluation

        sc = ctx.scenario
        self.images, self.labels = peer_images(sc.data, sc.n, sc.seed, ctx.peer_id, ctx.data_root)
        self.images = self.images.to(self.device)
        self.own_classes = sorted(int(c) for c in self.labels.unique())
        self.evaluation = ImageEvaluation(sc.data, ctx.data_root, cfg.evaluator_epochs,
                                          self.own_classes, self.device)

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
        metrics = self.with_equilibrium(metrics)
        if self.cfg.tstr:
            metrics["tstr_accuracy"] = self.evaluation.tstr(images, self.ctx.seed("tstr"))
        if self.cfg.inception_weights:
            metrics["fid_inception"] = self.evaluation.standard_fid(images,
                                                                    self.cfg.inception_weights)
        return metrics, images

    def probe(self, step: int) -> dict[str, Any]:
        every = self.cfg.eval_every
        if every and step % every == 0 and step > 0:
            m, _ = self.evaluate_quick(self.cfg.eval_samples_during)
            return {"fid_all": m["fid_all"], "own_mass": m["own_mass"]}
        return {}

    def evaluate_quick(self, n: int) -> tuple[dict[str, Any], torch.Tensor]:
        self.model.eval()
        images = self.generate(n)
        metrics = self.evaluation.metrics(images)
        self.model.train()
        return metrics, images


@dataclass(frozen=True)
class HVAEConfig(ImageLearnerConfig):
    """``hvae-mlp`` / ``hvae-conv``: no keys of their own (the size is the kind)."""


class HVAELearner(BinaryImageLearner):
    kind = "hvae"
    Config = HVAEConfig

    def __init__(self, cfg: Any, ctx: LearnerContext) -> None:
        from p2pgame.models import SymmetricLearner, make_model

        overrides: dict[str, Any] = {"seed": ctx.seed("model-init")}
        if cfg.lr:
            overrides.update(lr_p=cfg.lr, lr_q=cfg.lr)
        self.model = make_model(cfg.kind, **overrides).to(ctx.device)
        self.learner = SymmetricLearner(self.model)
        super().__init__(cfg, ctx)

    @classmethod
    def spaces(cls, cfg: Any) -> dict[str, Schema]:
        from p2pgame.models import HVAE_CONFIGS
        from p2pgame.models.hvae import sample_schema

        tuples = sample_schema(HVAE_CONFIGS[cfg.kind])
        return {HVAE: tuples, IMAGES: {"x": tuples["x"]}}

    @classmethod
    def kind_bound_spaces(cls, cfg: Any) -> tuple[str, ...]:
        return (HVAE,)  # tuples carry latents: only between identical architectures

    generator_prefixes = ("p_",)  # p(z1 | z0) and p(x | z0, z1); z0's prior is fixed

    @classmethod
    def build_model(cls, cfg: Any, seed: int = 0) -> torch.nn.Module:
        from p2pgame.models import make_model

        return make_model(cfg.kind, seed=seed)

    @classmethod
    def parts(cls, cfg: Any) -> dict[str, Schema]:
        return cached_parts(("hvae", cfg.kind),
                            lambda: {"model": parameter_schema(cls.build_model(cfg))})

    def draw(self, model: Any, n: int, spaces: tuple[str, ...], gen: torch.Generator
             ) -> dict[str, dict[str, np.ndarray]]:
        # One draw per step; a learner publishing both spaces sends the same images on each.
        drawn = model.sample(n, gen, mean=self.cfg.sample_mode == "mean")
        tuples = {k: v.cpu().numpy() for k, v in drawn.items()}
        return {s: tuples if s == HVAE else {"x": tuples["x"]} for s in spaces}

    def learn(self, step: int, batch: Batch) -> dict[str, float]:
        received = self.picked(batch)
        real = self.images[self.own_indices(batch).to(self.images.device)]
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


@dataclass(frozen=True)
class VAEConfig(ImageLearnerConfig):
    # 3x3 convolutions added to the decoder at 14 x 14 (models/vae.py)
    refine: int = 0
    # 0: the prior p(z) is N(0, I); K > 0: a learnt mixture of K Gaussians.  A mixture
    # prior is kept local under parameter exchange (its components are not aligned
    # between peers: averaging them would merge unrelated modes).
    prior_components: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self, 0, "refine", "prior_components")


class VAELearner(BinaryImageLearner):
    kind = "vae"
    Config = VAEConfig
    keep_local = ("prior_",)

    def __init__(self, cfg: Any, ctx: LearnerContext) -> None:
        from p2pgame.models import VAELearner as Trainer
        from p2pgame.models import make_model

        overrides: dict[str, Any] = {"seed": ctx.seed("model-init"), "refine": cfg.refine,
                                     "prior_components": cfg.prior_components}
        if cfg.lr:
            overrides["lr_p"] = cfg.lr
        self.model = make_model(cfg.kind, **overrides).to(ctx.device)
        self.learner = Trainer(self.model)
        super().__init__(cfg, ctx)

    @classmethod
    def spaces(cls, cfg: Any) -> dict[str, Schema]:
        return {IMAGES: {"x": ("bool", (1, 28, 28))}, MEANS: {"x": ("float16", (1, 28, 28))}}

    @classmethod
    def reads(cls, cfg: Any) -> dict[str, Schema]:
        s = cls.spaces(cfg)
        return {MEANS: s[MEANS], IMAGES: s[IMAGES]}

    @classmethod
    def default_spaces(cls, cfg: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return (IMAGES,), (IMAGES,)  # images, as every binary family; ``px`` when asked

    # The decoder and the prior (a mixture prior is the model's, though kept local under
    # parameter averaging); the encoder stays home.
    generator_prefixes = ("from_z.", "dec.", "prior_")

    @classmethod
    def build_model(cls, cfg: Any, seed: int = 0) -> torch.nn.Module:
        from p2pgame.models import make_model

        return make_model(cfg.kind, seed=seed, refine=cfg.refine,
                          prior_components=cfg.prior_components)

    @classmethod
    def parts(cls, cfg: Any) -> dict[str, Schema]:
        return cached_parts(("vae", cfg.kind, cfg.refine, cfg.prior_components),
                            lambda: {"model": parameter_schema(cls.build_model(cfg),
                                                               cls.keep_local)})

    def draw(self, model: Any, n: int, spaces: tuple[str, ...], gen: torch.Generator
             ) -> dict[str, dict[str, np.ndarray]]:
        if MEANS not in spaces:
            x = model.sample(n, gen, mean=self.cfg.sample_mode == "mean")["x"]
            return {s: {"x": x.cpu().numpy()} for s in spaces}
        # both spaces from the same z: the images are draws (or thresholds) of the means
        means = model.sample_means(n, gen)
        out = {MEANS: {"x": means.to(torch.float16).cpu().numpy()}}
        if IMAGES in spaces:
            x = means > 0.5 if self.cfg.sample_mode == "mean" else torch.bernoulli(
                means, generator=gen).bool()
            out[IMAGES] = {"x": x.cpu().numpy()}
        return out

    def learn(self, step: int, batch: Batch) -> dict[str, float]:
        received = self.picked(batch)
        real = self.images[self.own_indices(batch).to(self.images.device)].float()
        # binary images and means (``px``, soft targets of the same Bernoulli likelihood)
        parts = [real, *(r.tensors["x"].to(real.device, torch.float32) for r in received)]
        loss = self.learner.step(torch.cat(parts), self.gen)
        return {"elbo_loss": loss, "n_synthetic": float(sum(len(p) for p in parts[1:]))}


class ImageHooks(LearnerHooks):
    """Launcher side of every image learner (the game's families and the GAN)."""

    @property
    def table_columns(self) -> tuple[str, ...]:
        from p2pgame.learners import learner_class

        classes = {learner_class(p.learner.kind) for p in self.scenario.players}
        cols: tuple[str, ...] = ()
        if any(issubclass(c, BinaryImageLearner) for c in classes):
            cols += ("fid_all", "fid_own", "fid_other", "unseen_mass", "tv_to_ne",
                     "tstr_accuracy")
        if any(getattr(c, "grey_gan", False) for c in classes):
            cols += tuple(k for k in ("fid_all", "fid_own", "fid_other", "unseen_mass",
                                      "classes_generated") if k not in cols)
        if any(getattr(c, "scores_accuracy", False) for c in classes):
            cols += ("accuracy",)
            if any(getattr(p.learner, "learn_prior", False) for p in self.scenario.players):
                cols += ("tv_prior_to_ne",)
        return cols

    def _evaluated(self) -> list:
        """Players scored by the evaluator CNN (binary images and GANs)."""
        from p2pgame.learners import learner_class

        return [p for p in self.scenario.players
                if getattr(learner_class(p.learner.kind), "uses_evaluator", False)]

    def no_data(self) -> dict[int, str]:
        part = self.scenario.data.partition
        if part.get("kind") != "classes":
            return {}
        sets = part.get("classes", [])
        if not isinstance(sets, list) or not all(isinstance(c, list) for c in sets):
            raise ScenarioError("data.partition.classes: expected a list of lists of "
                                "class numbers, one per peer")
        return {i: f"data.partition.classes[{i}] is empty" for i, c in enumerate(sets) if not c}

    def check_relays(self, empty: dict[int, str]) -> None:
        """A peer without data must learn in batches (it has no local set to go through)."""
        for i, why in sorted(empty.items()):
            if self.scenario.player(i).learner.batch == 0:
                raise ScenarioError(
                    f"{why}: peer {i} has no data, so learner.batch = 0 (the whole local "
                    "set every step) means nothing for it; give it a batch size")

    def validate(self, schedule: Any) -> None:
        self.check_relays(self.no_data())

    def prepare(self, data_root: Path, log: Any) -> dict[int, str]:
        # Fails with one clear line when the data set is missing, before any process starts.
        # Every partition kind, from the labels alone (seconds), before the evaluator trains.
        sc = self.scenario
        labels = load_split(sc.data, data_root)[1].numpy()
        sizes = [len(p) for p in partition_indices(sc.data, labels, sc.n, sc.seed)]
        empty = {i: f"data.partition ({sc.data.partition.get('kind')})"
                 for i, k in enumerate(sizes) if k == 0}
        self.check_relays(empty)
        scored = self._evaluated()
        if scored:
            epochs = max(p.learner.evaluator_epochs for p in scored)
            # Imported here: the evaluator pulls in torchvision, which resolving a
            # scenario (and refusing a bad one) does not need.
            from p2pgame.eval.images import prepare_evaluator

            prepare_evaluator(sc.data, data_root, epochs, log)
        else:
            load_split(sc.data, data_root, "test")
        return empty

    def evaluate_run(self, run_dir: Path, data_root: Path, options: dict[str, Any],
                     log: Any) -> dict[str, dict]:
        from p2pgame.learners import learner_class

        sc = self.scenario
        out = {}
        for player in sc.players:
            i = player.peer
            path = Path(run_dir) / "checkpoints" / f"peer-{i}.pt"
            if not path.is_file():
                raise ScenarioError(f"{path}: no checkpoint (run with learner.checkpoint = true)")
            ctx = LearnerContext(i, sc, player.learner, Path(data_root),
                                 equilibrium=self.equilibrium_of(i))
            learner = learner_class(player.learner.kind)(player.learner, ctx)
            try:
                state = torch.load(path, map_location=learner.device, weights_only=True)
                learner.load_state(state)
            except Exception as e:  # (a file the user's run folder holds: any failure to
                # read it, torch's UnpicklingError of a weights-only load included, is theirs)
                raise ScenarioError(f"{path}: not a readable checkpoint of this run's "
                                    f"learners ({' '.join(str(e).split())[:120]})") from None
            n = options.get("samples") or player.learner.eval_samples
            log(f"peer {i}: evaluating {n} samples")
            if options.get("inception") and hasattr(learner, "cfg"):
                import dataclasses

                learner.cfg = dataclasses.replace(learner.cfg,
                                                  inception_weights=options["inception"])
            out[str(i)], _ = learner.evaluate(n)
        return out

    # Set by the composite hooks when the exchange has an equilibrium: peer -> its row.
    equilibrium_of: Any = staticmethod(lambda i: None)

    def after_run(self, run_dir: Path, summary: dict) -> None:
        (run_dir / "evaluation.json").write_text(json.dumps(
            {p: {k: s.get(k) for k in EVAL_KEYS if k in s} for p, s in summary["peers"].items()},
            indent=1))
        styled = {p: s["accuracy_style"] for p, s in sorted(summary["peers"].items())
                  if s.get("accuracy_style")}
        if styled:  # PolyMNIST: the paper's table, one row per scoring peer
            lines = ["peer,model," + ",".join(f"m{k}" for k in range(5)) + ",avg"]
            for p, acc in styled.items():
                model = self.scenario.player(int(p)).learner.kind
                lines.append(f"{p},{model}," + ",".join(f"{a:.4f}" for a in acc)
                             + f",{float(np.nanmean(acc)):.4f}")
            (run_dir / "accuracy_per_style.csv").write_text("\n".join(lines) + "\n")


TorchImageLearner.hooks = ImageHooks
BinaryImageLearner.uses_evaluator = True  # type: ignore[attr-defined]
