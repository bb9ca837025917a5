"""The synthetic-data game (Schlesinger & Flach 2025) with symmetric-learning HVAE peers.

Every step a peer samples fully observed tuples (z0, z1, x) from its model and
publishes them (bit-packed bools) on ``samples/<peer>/hvae``; it trains on a
batch of ``a_ii * batch`` of its own real images plus ``a_ij * batch`` of the
tuples most recently received from each neighbour j, used as fully observed
examples in both the p-step and the q-step.  ``self_weight = 1`` is the
non-cooperative baseline; a one-peer scenario on the pooled data is the
centralized one (see ``topologies/mnist-centralized.toml``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
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
    check_schema,
    config_error,
)
from p2pgame.algorithms.equilibrium import solve_equilibrium
from p2pgame.config import Scenario, ScenarioError
from p2pgame.data.image import ImageDataSpec, class_histograms, load_split, peer_images
from p2pgame.eval.images import ImageEvaluation, prepare_evaluator
from p2pgame.topology import Schedule, Topology

SPACE = "hvae"  # fully observed tuples (z0, z1, x): only between identical HVAE architectures
IMAGES = "x"  # images alone: any learner can take them, completing what it lacks
EVAL_KEYS = ("fid_all", "fid_own", "fid_other", "fid_inception", "class_mass", "own_mass",
             "unseen_mass", "ne_class_mass", "ne_own_mass", "tv_to_ne", "own_classes")


@dataclass(frozen=True)
class GameConfig:
    model: str = "hvae-mlp"
    batch: int = 500  # examples per step: a_ii * batch real + the rest synthetic
    lr: float = 0.0  # 0: the model's default learning rate (both p and q)
    eval_samples: int = 10000  # generated images for the final evaluation
    eval_every: int = 0  # >0: classifier-FID over time with eval_samples_during images
    eval_samples_during: int = 2000
    evaluator_epochs: int = 2
    checkpoint: bool = True
    inception_weights: str = ""  # pytorch-fid Inception weights file: also report standard FID

    def __post_init__(self) -> None:
        from p2pgame.models import MODELS

        known = [k for k in sorted(MODELS) if k.startswith(("hvae", "vae"))]
        if self.model not in known:
            raise config_error("model", f"{self.model!r} is not known; allowed: "
                                        f"{', '.join(known)}")
        for key in ("batch", "eval_samples", "eval_samples_during", "evaluator_epochs"):
            if getattr(self, key) < 1:
                raise config_error(key, f"must be >= 1, got {getattr(self, key)}")
        if self.lr < 0 or self.eval_every < 0:
            raise config_error("lr", "lr and eval_every must be >= 0")


def schemas(cfg: GameConfig) -> dict[str, dict[str, tuple[str, tuple[int, ...]]]]:
    """What a player can publish: an HVAE its tuples (z0, z1, x) on ``hvae`` and the images
    alone on ``x``; a VAE images only."""
    from p2pgame.models import HVAE_CONFIGS
    from p2pgame.models.hvae import sample_schema

    if not is_hvae(cfg):
        return {IMAGES: {"x": ("bool", (1, 28, 28))}}
    tuples = sample_schema(HVAE_CONFIGS[cfg.model])
    return {SPACE: tuples, IMAGES: {"x": tuples["x"]}}


def is_hvae(cfg: GameConfig) -> bool:
    return cfg.model.startswith("hvae")


def learnable(cfg: GameConfig) -> tuple[str, ...]:
    """An HVAE learns tuples (as fully observed examples) and images (completing the latents
    with its encoder); a VAE learns images only."""
    return (SPACE, IMAGES) if is_hvae(cfg) else (IMAGES,)


def default_spaces(cfg: GameConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return ((SPACE,), (SPACE,)) if is_hvae(cfg) else ((IMAGES,), (IMAGES,))


def ne_class_mass(scenario: Scenario, labels: np.ndarray, topology: Topology) -> np.ndarray:
    """Equilibrium class histograms of all peers (the game's linear system)."""
    hist = class_histograms(scenario.data, labels, scenario.n, scenario.seed)
    return solve_equilibrium(topology.weights, hist)


class SyntheticGame(Algorithm):
    heavy = True

    def __init__(self, ctx: PeerContext) -> None:
        super().__init__(ctx)
        import torch

        from p2pgame.models import SymmetricLearner, VAELearner, make_model

        config = self.config
        self.torch = torch
        self.device = torch.device(ctx.device)
        overrides: dict[str, Any] = {"seed": ctx.seed("model-init")}
        if config.lr:
            overrides.update(lr_p=config.lr, lr_q=config.lr)
        self.model = make_model(config.model, **overrides).to(self.device)
        self.hvae = is_hvae(config)
        self.learner = SymmetricLearner(self.model) if self.hvae else VAELearner(self.model)
        sc = ctx.scenario
        self.images, self.labels = peer_images(sc.data, sc.n, sc.seed, ctx.peer_id, ctx.data_root)
        self.images = self.images.to(self.device)
        self.own_classes = sorted(int(c) for c in self.labels.unique())
        self.schemas = schemas(config)
        self.learns = ctx.player.learns
        self.completed: dict[str, int] = {}  # space -> received examples completed by us
        self.samples_per_message = sc.comm.samples_per_message or config.batch
        dev = self.device
        self.gen = torch.Generator(device=dev).manual_seed(ctx.seed("model-sampling"))
        self.data_gen = torch.Generator().manual_seed(ctx.seed("data-order"))
        self.evaluation = ImageEvaluation(sc.data, ctx.data_root, config.evaluator_epochs,
                                          self.own_classes, self.device)

    # -- exchange ----------------------------------------------------------------------
    def publish(self, step: int) -> dict[str, dict[str, Any]]:
        spaces = self.ctx.player.publishes
        if not spaces:
            return {}
        # One draw per step; a player publishing both spaces sends the same images on each.
        tuples = {k: v.cpu().numpy()
                  for k, v in self.model.sample(self.samples_per_message, self.gen).items()}
        return {space: tuples if space == SPACE else {"x": tuples["x"]} for space in spaces}

    def check(self, env) -> str | None:
        if env.space not in self.learns:
            return "space"
        return check_schema(env, self.schemas[env.space])

    def _received(self, inbox: Inbox, j: int, step: int):
        """j's freshest message we learn from: its tuples if we take them, else its images."""
        for space in (SPACE, IMAGES):
            if space in self.learns:
                env = inbox.use(j, space, step)
                if env is not None:
                    return env
        return None

    def train_step(self, step: int, inbox: Inbox, topology: Topology) -> dict[str, float]:
        torch = self.torch
        cfg = self.config
        me = self.ctx.peer_id
        row = topology.row(me)
        n_own = round(row[me] * cfg.batch)
        synth: dict[str, list] = {"z0": [], "z1": [], "x": []}
        images: list = []  # received images alone: completed with our encoder like real ones
        missing = 0.0
        for j, w in row.items():
            if j == me or w <= 0:
                continue
            env = self._received(inbox, j, step)
            k = round(w * cfg.batch)
            if env is None:
                missing += w
                continue
            m = env.tensors["x"].shape[0]
            if k == 0 or m == 0:
                continue
            pick = torch.randint(0, m, (k,), generator=self.data_gen).numpy()
            if env.space == IMAGES:
                images.append(torch.from_numpy(np.ascontiguousarray(env.tensors["x"][pick])))
                if self.hvae:  # its encoder completes the latents the images lack
                    self.completed[IMAGES] = self.completed.get(IMAGES, 0) + k
                continue
            for f in synth:
                synth[f].append(torch.from_numpy(np.ascontiguousarray(env.tensors[f][pick])))
        if missing and row[me] > 0:
            # Neighbours not heard from yet: keep the batch size with own data.
            n_own += round(missing * cfg.batch)
        idx = torch.randint(0, len(self.images), (n_own,), generator=self.data_gen)
        real = self.images[idx.to(self.images.device)]
        if images:
            real = torch.cat([real, torch.cat(images).to(real.device, real.dtype)])
        if not self.hvae:
            loss = self.learner.step(real, self.gen)
            return {"elbo_loss": loss, "n_synthetic": float(real.shape[0] - n_own)}
        syn = None
        if synth["x"]:
            syn = {f: torch.cat(v).to(self.device) for f, v in synth.items()}
        out = self.learner.step(real, syn, self.gen, q_batch=n_own if n_own else None)
        return {"p_loss": out["p_loss"], "q_loss": out["q_loss"], "n_synthetic": out["n_p"] - n_own}

    # -- evaluation --------------------------------------------------------------------
    def generate(self, n: int):
        with self.torch.no_grad():
            g = self.torch.Generator(device=self.device).manual_seed(self.ctx.seed("eval"))
            means = self.model.sample_means(n, g)
        return (means > 0.5).float()

    def evaluate(self, n: int) -> tuple[dict[str, Any], Any]:
        self.model.eval()
        images = self.generate(n)
        metrics = self.evaluation.metrics(images)
        self.model.train()
        return metrics, images

    def probe(self, step: int) -> dict[str, Any]:
        cfg = self.config
        if cfg.eval_every and step % cfg.eval_every == 0 and step > 0:
            m, _ = self.evaluate(cfg.eval_samples_during)
            return {"fid_all": m["fid_all"], "own_mass": m["own_mass"]}
        return {}

    def final_metrics(self, n: int, inception: str | None = None) -> tuple[dict[str, Any], Any]:
        """Evaluation of the current model: classifier-FID, class mass against equilibrium."""
        from p2pgame.eval import total_variation

        ctx = self.ctx
        metrics, images = self.evaluate(n)
        all_labels = load_split(ctx.scenario.data, ctx.data_root)[1].numpy()
        ne = ne_class_mass(ctx.scenario, all_labels, ctx.schedule.final())[ctx.peer_id]
        metrics["ne_class_mass"] = [float(v) for v in ne]
        metrics["ne_own_mass"] = float(sum(ne[c] for c in self.own_classes))
        metrics["tv_to_ne"] = total_variation(metrics["class_mass"], ne)
        if inception:
            metrics["fid_inception"] = self.evaluation.standard_fid(images, inception)
        return metrics, images

    def finish(self) -> dict[str, Any]:
        from p2pgame.eval import grid_png

        out, images = self.final_metrics(self.config.eval_samples,
                                         self.config.inception_weights or None)
        self.ctx.artifact(f"samples/peer-{self.ctx.peer_id}.png", grid_png(images[:100]))
        if self.completed:
            out["completed"] = dict(self.completed)
        return out

    def checkpoint_state(self) -> Any | None:
        return self.model.state_dict() if self.config.checkpoint else None


class GameHooks(RunHooks):
    table_columns = ("fid_all", "fid_own", "fid_other", "unseen_mass", "tv_to_ne", "bytes_sent")

    def validate(self, schedule: Schedule) -> None:
        # Tuples carry an HVAE's latents, which mean something only to the same architecture.
        users = [p for p in self.scenario.players if SPACE in p.publishes + p.learns]
        for p in users[1:]:
            if p.algorithm.model != users[0].algorithm.model:
                raise ScenarioError(
                    f"peers: peers {users[0].peer} ({users[0].algorithm.model}) and {p.peer} "
                    f"({p.algorithm.model}) both use {SPACE!r}, whose latents only identical "
                    "architectures share; exchange 'x' (images) between different models")
        for t in schedule.topologies:
            try:
                solve_equilibrium(t.weights, np.zeros((self.scenario.n, 1)))
            except ValueError as e:
                raise ScenarioError(f"topology: {e}") from None

    def prepare(self, data_root: Path, log: Callable) -> None:
        # Fails with one clear line when the data set is missing, before any process starts.
        epochs = max(p.algorithm.evaluator_epochs for p in self.scenario.players)
        prepare_evaluator(self.scenario.data, data_root, epochs, log)

    def evaluate_run(self, run_dir: Path, data_root: Path, options: dict[str, Any],
                     log: Callable[[str], None]) -> dict[str, dict]:
        import torch

        from p2pgame.topology import build_schedule

        sc = self.scenario
        schedule = build_schedule(sc.topology, sc.steps, sc.seed)
        out = {}
        for player in sc.players:
            i = player.peer
            path = Path(run_dir) / "checkpoints" / f"peer-{i}.pt"
            if not path.is_file():
                raise ScenarioError(f"{path}: no checkpoint (run with algorithm.checkpoint = true)")
            ctx = PeerContext(i, sc, player, schedule, Path(data_root))
            peer = SyntheticGame(ctx)
            peer.model.load_state_dict(torch.load(path, map_location=peer.device,
                                                  weights_only=True))
            n = options.get("samples") or player.algorithm.eval_samples
            log(f"peer {i}: evaluating {n} samples")
            out[str(i)], _ = peer.final_metrics(n, options.get("inception"))
        return out

    def after_run(self, run_dir: Path, summary: dict) -> None:
        (run_dir / "evaluation.json").write_text(json.dumps(
            {p: {k: s.get(k) for k in EVAL_KEYS} for p, s in summary["peers"].items()},
            indent=1))


INFO = AlgorithmInfo(
    name="game",
    config=GameConfig,
    data=ImageDataSpec,
    spaces={SPACE: "samples", IMAGES: "samples"},
    default_spaces=default_spaces,
    schemas=schemas,
    learnable=learnable,
    peer=lambda: SyntheticGame,
    hooks=lambda: GameHooks,
    uses_torch=True,
)
