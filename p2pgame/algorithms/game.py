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

from p2pgame.algorithms.base import Algorithm, Inbox, PeerContext, check_schema, config_error
from p2pgame.algorithms.equilibrium import solve_equilibrium
from p2pgame.algorithms.imagedata import class_histograms, data_spec, load_split, peer_images
from p2pgame.algorithms.imageeval import ImageEvaluation, prepare_evaluator
from p2pgame.config import Scenario, ScenarioError
from p2pgame.topology import Topology, build_schedule

SPACE = "hvae"
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

        if self.model not in MODELS or not self.model.startswith("hvae"):
            known = ", ".join(k for k in sorted(MODELS) if k.startswith("hvae"))
            raise config_error("model", f"{self.model!r} is not known; allowed: {known}")
        for key in ("batch", "eval_samples", "eval_samples_during", "evaluator_epochs"):
            if getattr(self, key) < 1:
                raise config_error(key, f"must be >= 1, got {getattr(self, key)}")
        if self.lr < 0 or self.eval_every < 0:
            raise config_error("lr", "lr and eval_every must be >= 0")


def ne_class_mass(scenario: Scenario, labels: np.ndarray, topology: Topology) -> np.ndarray:
    """Equilibrium class histograms of all peers (the game's linear system)."""
    return solve_equilibrium(topology.weights, class_histograms(scenario, labels))


class SyntheticGame(Algorithm):
    Config = GameConfig
    kinds = ("samples",)
    heavy = True

    @classmethod
    def validate(cls, scenario: Scenario) -> None:
        cls.make_config(scenario)
        data_spec(scenario)
        for t in build_schedule(scenario).topologies:
            try:
                solve_equilibrium(t.weights, np.zeros((scenario.n, 1)))
            except ValueError as e:
                raise ScenarioError(f"topology: {e}") from None

    @classmethod
    def prepare(cls, scenario: Scenario, data_root: Path, log: Callable) -> None:
        # Fails with one clear line when the data set is missing, before any process starts.
        prepare_evaluator(scenario, data_root, cls.make_config(scenario).evaluator_epochs, log)

    def __init__(self, ctx: PeerContext, config: GameConfig) -> None:
        super().__init__(ctx, config)
        import torch

        from p2pgame.models import SymmetricLearner, make_model

        self.torch = torch
        self.device = torch.device(ctx.device)
        overrides: dict[str, Any] = {"seed": ctx.seed("model-init")}
        if config.lr:
            overrides.update(lr_p=config.lr, lr_q=config.lr)
        self.model = make_model(config.model, **overrides).to(self.device)
        self.learner = SymmetricLearner(self.model)
        self.images, self.labels = peer_images(ctx.scenario, ctx.peer_id, ctx.data_root)
        self.images = self.images.to(self.device)
        self.own_classes = sorted(int(c) for c in self.labels.unique())
        self.schema = {k: (dt, tuple(s)) for k, (dt, s) in self.model.schema().items()}
        self.samples_per_message = ctx.scenario.comm.samples_per_message or config.batch
        dev = self.device
        self.gen = torch.Generator(device=dev).manual_seed(ctx.seed("model-sampling"))
        self.data_gen = torch.Generator().manual_seed(ctx.seed("data-order"))
        self.stream = torch.cuda.Stream(device=dev) if dev.type == "cuda" else None
        self.evaluation = ImageEvaluation(ctx.scenario, ctx.data_root, config.evaluator_epochs,
                                          self.own_classes, self.device)

    # -- exchange ----------------------------------------------------------------------
    def outgoing(self, step: int) -> dict[str, dict[str, Any]]:
        with self._on_stream():
            tuples = self.model.sample(self.samples_per_message, self.gen)
        return {SPACE: {k: v.cpu().numpy() for k, v in tuples.items()}}

    def check(self, env) -> str | None:
        if env.space != SPACE:
            return "space"
        return check_schema(env, self.schema)

    def _on_stream(self):
        import contextlib

        return self.torch.cuda.stream(self.stream) if self.stream else contextlib.nullcontext()

    def train_step(self, step: int, inbox: Inbox, topology: Topology) -> dict[str, float]:
        torch = self.torch
        cfg = self.config
        me = self.ctx.peer_id
        row = topology.row(me)
        n_own = round(row[me] * cfg.batch)
        synth: dict[str, list] = {"z0": [], "z1": [], "x": []}
        missing = 0.0
        for j, w in row.items():
            if j == me or w <= 0:
                continue
            env = inbox.use(j, SPACE, step)
            k = round(w * cfg.batch)
            if env is None:
                missing += w
                continue
            m = env.tensors["x"].shape[0]
            if k == 0 or m == 0:
                continue
            pick = torch.randint(0, m, (k,), generator=self.data_gen).numpy()
            for f in synth:
                synth[f].append(torch.from_numpy(np.ascontiguousarray(env.tensors[f][pick])))
        if missing and row[me] > 0:
            # Neighbours not heard from yet: keep the batch size with own data.
            n_own += round(missing * cfg.batch)
        idx = torch.randint(0, len(self.images), (n_own,), generator=self.data_gen)
        real = self.images[idx.to(self.images.device)]
        syn = None
        if synth["x"]:
            syn = {f: torch.cat(v).to(self.device) for f, v in synth.items()}
        with self._on_stream():
            out = self.learner.step(real, syn, self.gen, q_batch=n_own if n_own else None)
        return {"p_loss": out["p_loss"], "q_loss": out["q_loss"], "n_synthetic": out["n_p"] - n_own}

    # -- evaluation --------------------------------------------------------------------
    def generate(self, n: int):
        with self.torch.no_grad(), self._on_stream():
            g = self.torch.Generator(device=self.device).manual_seed(self.ctx.seed("eval"))
            means = self.model.sample_means(n, g)
        return (means > 0.5).float()

    def evaluate(self, n: int) -> dict[str, Any]:
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

    def final_metrics(self, n: int, inception: str | None = None) -> dict[str, Any]:
        """Evaluation of the current model: classifier-FID, class mass against equilibrium."""
        from p2pgame.eval import total_variation

        ctx = self.ctx
        metrics, images = self.evaluate(n)
        self.evaluation.save_grid(images, ctx.run_dir, ctx.peer_id)
        all_labels = load_split(data_spec(ctx.scenario), ctx.data_root)[1].numpy()
        ne = ne_class_mass(ctx.scenario, all_labels, ctx.schedule.final())[ctx.peer_id]
        metrics["ne_class_mass"] = [float(v) for v in ne]
        metrics["ne_own_mass"] = float(sum(ne[c] for c in self.own_classes))
        metrics["tv_to_ne"] = total_variation(metrics["class_mass"], ne)
        if inception:
            metrics["fid_inception"] = self.evaluation.standard_fid(images, inception)
        return metrics

    def finish(self) -> dict[str, Any]:
        ctx = self.ctx
        out = self.final_metrics(self.config.eval_samples, self.config.inception_weights or None)
        if self.config.checkpoint:
            path = ctx.run_dir / "checkpoints" / f"peer-{ctx.peer_id}.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            self.torch.save(self.model.state_dict(), path)
        return out

    @classmethod
    def evaluate_run(cls, scenario: Scenario, run_dir: Path, data_root: Path,
                     options: dict[str, Any], log: Callable[[str], None]) -> dict[str, dict]:
        import torch

        config = cls.make_config(scenario)
        schedule = build_schedule(scenario)
        out = {}
        for i in range(scenario.n):
            path = Path(run_dir) / "checkpoints" / f"peer-{i}.pt"
            if not path.is_file():
                raise ScenarioError(f"{path}: no checkpoint (run with algorithm.checkpoint = true)")
            ctx = PeerContext(i, scenario, schedule, Path(run_dir), Path(data_root))
            peer = cls(ctx, config)
            peer.model.load_state_dict(torch.load(path, map_location=peer.device,
                                                  weights_only=True))
            log(f"peer {i}: evaluating {options.get('samples') or config.eval_samples} samples")
            out[str(i)] = peer.final_metrics(options.get("samples") or config.eval_samples,
                                             options.get("inception"))
        return out

    @classmethod
    def after_run(cls, scenario: Scenario, run_dir: Path, summary: dict) -> None:
        summary["table_columns"] = [
            "fid_all", "fid_own", "fid_other", "unseen_mass", "tv_to_ne", "bytes_sent",
        ]
        (run_dir / "evaluation.json").write_text(json.dumps(
            {p: {k: s.get(k) for k in EVAL_KEYS} for p, s in summary["peers"].items()},
            indent=1))
