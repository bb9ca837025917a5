"""The synthetic-data game (Schlesinger & Flach 2025): players exchange samples, not parameters.

Every step a peer draws samples from its model and publishes them on the spaces it
publishes (``samples/<peer>/<space>``); it trains on ``a_ii * batch`` of its own
examples plus ``a_ij * batch`` picked from the freshest message of each neighbour j.
What a received example lacks (an HVAE's latents, a label) the learner completes
from its own model.  The learner families live in ``algorithms/players.py``: binary
HVAEs (tuples on ``hvae``, images on ``x``), a convolutional VAE (``x``) and the
paper's joint label-and-image player (``cx``, ``x``).  ``self_weight = 1`` is the
non-cooperative baseline; a one-peer scenario on the pooled data is the centralized
one (see ``topologies/mnist-centralized.toml``).
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
    check_relay_weights,
    check_schema,
    config_error,
    sparse_row,
)
from p2pgame.algorithms.equilibrium import solve_equilibrium
from p2pgame.algorithms.players import (
    CS,
    HVAE,
    IMAGES,
    MEANS,
    PAIRS,
    BinaryImagePlayer,
    Player,
    Received,
    family,
)
from p2pgame.config import Scenario, ScenarioError, one_of
from p2pgame.data.image import ImageDataSpec, class_histograms, load_split, partition_indices
from p2pgame.shared import shared_with
from p2pgame.topology import Schedule, Topology, build_schedule

EVAL_KEYS = ("fid_all", "fid_own", "fid_other", "fid_inception", "class_mass", "own_mass",
             "unseen_mass", "ne_class_mass", "ne_own_mass", "tv_to_ne", "own_classes",
             "accuracy", "accuracy_style", "prior", "tv_prior_to_ne")
JOINT_MODELS = ("joint-cx",)
JOINT_KEYS = ("capacity", "method", "learn_prior", "prior_lr", "noise_std")
# PolyMNIST's players (models/poly.py).
POLY_MODELS = ("cs-vae", "cs-data", "poly-main", "poly-classifier")
# Keys of one family or a few: each applies to the models named, and is refused elsewhere.
MODEL_KEYS = {"gibbs_steps": ("cs-vae",), "gibbs_sweeps": ("poly-main",),
              "infer_sweeps": ("poly-main",), "eval_test": ("poly-main", "poly-classifier"),
              "refine": ("vae-conv",), "prior_components": ("vae-conv",)}


@dataclass(frozen=True)
class GameConfig:
    model: str = "hvae-mlp"  # the learner family and size: see algorithms/players.py
    batch: int = 500  # examples per step: a_ii * batch real + the rest received; 0: see below
    lr: float = 0.0  # 0: the model's default learning rate (every module)
    eval_samples: int = 10000  # generated images for the final evaluation
    eval_every: int = 0  # >0: metrics over time (classifier-FID or test accuracy)
    eval_samples_during: int = 2000
    evaluator_epochs: int = 2
    checkpoint: bool = True
    inception_weights: str = ""  # pytorch-fid Inception weights file: also report standard FID
    # What a player publishes of x: "sample" (a draw of p(x|...)) or "mean" (the decoder's
    # mean, thresholded at 0.5 for binary images: the paper's "limiting" samples).
    sample_mode: str = "sample"
    # joint-cx only (the paper's Fashion-MNIST player):
    capacity: int = 4  # 1..4, the paper's capacity ladder, weakest to strongest
    method: str = "symmetric"  # or "discriminative"
    learn_prior: bool = False  # learn p(c) (a categorical) instead of a fixed uniform one
    prior_lr: float = 0.0  # 0: lr
    noise_std: float = 0.01  # Gaussian noise on own gray images, every step
    # PolyMNIST only:
    gibbs_steps: int = 100  # cs-vae: Gibbs steps behind each published "limiting" sample
    gibbs_sweeps: int = 10  # poly-main: sweeps completing each example's missing variables
    infer_sweeps: int = 100  # poly-main: sweeps of the inference that classifies a test image
    eval_test: int = 0  # poly-*: test images scored (0: the whole test split)
    # vae-conv only: 3x3 convolutions added to the decoder at 14 x 14 (models/vae.py)
    refine: int = 0
    # vae-conv only: 0, the prior p(z) is N(0, I); K > 0, a learnt mixture of K Gaussians
    prior_components: int = 0

    def __post_init__(self) -> None:
        from p2pgame.models import MODELS
        from p2pgame.models.joint import CAPACITIES, METHODS

        known = sorted({k for k in MODELS if k.startswith(("hvae", "vae", "joint"))}
                       | set(POLY_MODELS))
        if self.model not in known:
            raise config_error("model", f"{self.model!r} is not known; allowed: "
                                        f"{', '.join(known)}")
        for key in ("eval_samples", "eval_samples_during", "evaluator_epochs"):
            if getattr(self, key) < 1:
                raise config_error(key, f"must be >= 1, got {getattr(self, key)}")
        if self.batch < 0:
            raise config_error("batch", f"must be >= 0 (0: the whole local set), got {self.batch}")
        for key in ("lr", "eval_every", "prior_lr", "noise_std", "gibbs_steps", "eval_test",
                    "refine", "prior_components"):
            if getattr(self, key) < 0:
                raise config_error(key, f"must be >= 0, got {getattr(self, key)}")
        if self.capacity not in CAPACITIES:
            raise config_error("capacity", f"{self.capacity}; allowed: {sorted(CAPACITIES)}")
        one_of(self.sample_mode, ("sample", "mean"), "algorithm.sample_mode")
        if self.method not in METHODS:
            raise config_error("method", f"{self.method!r}; allowed: {', '.join(METHODS)}")
        if self.model not in JOINT_MODELS:
            defaults = GameConfig.__dataclass_fields__
            for key in JOINT_KEYS:
                if getattr(self, key) != defaults[key].default:
                    raise config_error(key, f"applies only to {', '.join(JOINT_MODELS)} "
                                            f"players, not {self.model!r}")
        for key in ("gibbs_sweeps", "infer_sweeps"):
            if getattr(self, key) < 1:
                raise config_error(key, f"must be >= 1, got {getattr(self, key)}")
        defaults = GameConfig.__dataclass_fields__
        for key, models in MODEL_KEYS.items():
            if self.model not in models and getattr(self, key) != defaults[key].default:
                raise config_error(key, f"applies only to {', '.join(models)} players, "
                                        f"not {self.model!r}")


def player_class(cfg: GameConfig) -> type[Player]:
    return family(cfg.model)


def schemas(cfg: GameConfig) -> dict[str, dict[str, tuple[str, tuple[int, ...]]]]:
    """What a player can publish, per space (declared before any model exists)."""
    return player_class(cfg).schemas(cfg)


def learnable(cfg: GameConfig) -> tuple[str, ...]:
    return player_class(cfg).learnable(cfg)


def default_spaces(cfg: GameConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return player_class(cfg).default_spaces(cfg)


def ne_class_mass(scenario: Scenario, labels: np.ndarray, topology: Topology) -> np.ndarray:
    """Equilibrium class histograms of all peers (the game's linear system)."""
    hist = class_histograms(scenario.data, labels, scenario.n, scenario.seed)
    return solve_equilibrium(topology.weights, hist)


class SyntheticGame(Algorithm):
    """The exchange: what to publish, which received examples enter a step, evaluation.

    The learning itself is the player's (``algorithms/players.py``).  A step takes
    ``a_ij * T`` examples from neighbour j's freshest message and ``a_ii * T`` own ones,
    where ``T = batch``, or with ``batch = 0`` ``T = (own set size) / a_ii``: the whole
    local set every step, received examples in proportion (the paper's Fashion-MNIST).
    """

    heavy = True

    def __init__(self, ctx: PeerContext) -> None:
        super().__init__(ctx)
        import torch

        self.torch = torch
        self.device = torch.device(ctx.device)
        self.player = player_class(self.config)(self.config, ctx, self.device)
        self.probe_every = self.config.eval_every
        self.schemas = player_class(self.config).reads(self.config)
        self.learns = ctx.player.learns
        # Most informative first: a neighbour's tuples (or pairs) before its bare images.
        self.preference = [s for s in learnable(self.config) if s in self.learns]
        sc = ctx.scenario
        self.samples_per_message = sc.comm.samples_per_message or self.config.batch or (
            self.player.n_own)
        # The share of each source in the batches (a neighbour not heard from yet is
        # replaced by own data), summed over steps: the weights effectively applied.
        self.shares = np.zeros(sc.n)
        self.share_steps = 0

    # -- exchange ----------------------------------------------------------------------
    def publish(self, step: int) -> dict[str, dict[str, Any]]:
        spaces = self.ctx.player.publishes
        if not spaces:
            return {}
        return self.player.sample(self.samples_per_message, spaces)

    def check(self, env) -> str | None:
        if env.space not in self.learns:
            return "space"
        return check_schema(env, self.schemas[env.space])

    def _received(self, inbox: Inbox, j: int, step: int):
        """j's freshest message on the most informative space we learn of it."""
        for space in self.preference:
            env = inbox.use(j, space, step)
            if env is not None:
                return env
        return None

    def train_step(self, step: int, inbox: Inbox, topology: Topology) -> dict[str, float]:
        torch = self.torch
        me = self.ctx.peer_id
        row = topology.row(me)
        n_local = self.player.n_own
        whole = self.config.batch == 0
        total = self.config.batch or (n_local / row[me] if row[me] > 0 else n_local)
        n_own = n_local if whole else round(row[me] * total)
        received: list[Received] = []
        counts = np.zeros(self.ctx.scenario.n)  # examples per source in this step's batch
        missing = 0.0
        for j, w in row.items():
            if j == me or w <= 0:
                continue
            env = self._received(inbox, j, step)
            k = round(w * total)
            if env is None:
                missing += w
                continue
            m = _examples(env.tensors)
            if k == 0 or m == 0:
                continue
            pick = pick_received(m, k, self.player.data_gen).numpy()
            counts[j] = k
            received.append(Received(env.space, {
                f: torch.from_numpy(np.ascontiguousarray(t[pick])) for f, t in env.tensors.items()}))
        if whole:
            idx = torch.arange(n_local)
        elif n_local == 0:  # a relay: it learns from what it receives alone
            idx = torch.zeros(0, dtype=torch.long)
        else:
            if missing and row[me] > 0:
                # Neighbours not heard from yet: keep the batch size with own data.
                n_own += round(missing * total)
            idx = torch.randint(0, n_local, (n_own,), generator=self.player.data_gen)
        counts[me] = len(idx)
        if counts.sum() == 0:  # a relay that has heard nothing yet (async): nothing to learn
            return {}
        self.shares += counts / counts.sum()
        self.share_steps += 1
        return self.player.learn(idx, received)

    # -- evaluation --------------------------------------------------------------------
    def probe(self, step: int) -> dict[str, Any]:
        cfg = self.config
        if cfg.eval_every and step % cfg.eval_every == 0 and step > 0:
            return self.player.probe(cfg.eval_samples_during)
        return {}

    def final_metrics(self, n: int, inception: str | None = None) -> tuple[dict[str, Any], Any]:
        """Evaluation of the current model, and its class histogram against the equilibrium."""
        from p2pgame.eval import total_variation

        ctx = self.ctx
        player = self.player
        metrics, images = player.evaluate(n)
        mass_key, tv_key = player.class_mass_keys or (None, None)
        if mass_key in metrics:
            final = ctx.schedule.final()
            ne = shared_with(ctx.scenario, "game-ne-class-mass", lambda: ne_class_mass(
                ctx.scenario, load_split(ctx.scenario.data, ctx.data_root)[1].numpy(),
                final))[ctx.peer_id]
            metrics["ne_class_mass"] = [float(v) for v in ne]
            metrics["ne_own_mass"] = float(sum(ne[c] for c in player.own_classes))
            metrics[tv_key] = total_variation(metrics[mass_key], ne)
        if inception and isinstance(player, BinaryImagePlayer):
            metrics["fid_inception"] = player.evaluation.standard_fid(images, inception)
        return metrics, images

    def finish(self) -> dict[str, Any]:
        from p2pgame.eval import grid_png

        out, images = self.final_metrics(self.config.eval_samples,
                                         self.config.inception_weights or None)
        self.ctx.artifact(f"samples/peer-{self.ctx.peer_id}.png", grid_png(images[:100]))
        if self.player.completed:
            out["completed"] = dict(self.player.completed)
        if self.share_steps:
            out["effective_row"] = sparse_row(self.shares / self.share_steps, 6)
        return out

    def checkpoint_state(self) -> Any | None:
        return self.player.state_dict() if self.config.checkpoint else None


def pick_received(m: int, k: int, generator: Any) -> Any:
    """k indices into a message of m examples, each example once before any is taken twice
    (shuffles of the message, end to end).  Picking with replacement would leave about a
    third of a message unused when k = m (1 - 1/e distinct), and repeat others: fewer
    distinct received examples a step for the same cost."""
    import torch

    rounds = -(-k // m)
    return torch.cat([torch.randperm(m, generator=generator) for _ in range(rounds)])[:k]


def _examples(tensors) -> int:
    """How many examples a message holds (its first field's length), read from the header
    where the mapping can (nothing unpacked)."""
    name = next(iter(tensors))
    spec = getattr(tensors, "spec", None)
    return spec(name)[1][0] if spec else len(tensors[name])


class GameHooks(RunHooks):
    @property
    def table_columns(self) -> tuple[str, ...]:
        models = {p.algorithm.model for p in self.scenario.players}
        cols: tuple[str, ...] = ()
        if models - set(JOINT_MODELS) - set(POLY_MODELS):
            cols += ("fid_all", "fid_own", "fid_other", "unseen_mass", "tv_to_ne")
        if models & {*JOINT_MODELS, "poly-main", "poly-classifier"}:
            cols += ("accuracy",)
            if any(p.algorithm.learn_prior for p in self.scenario.players):
                cols += ("tv_prior_to_ne",)
        return (*cols, "bytes_sent")

    def _binary_players(self) -> list:
        return [p for p in self.scenario.players
                if issubclass(player_class(p.algorithm), BinaryImagePlayer)]

    def validate(self, schedule: Schedule) -> None:
        # Tuples carry an HVAE's latents, which mean something only to the same architecture.
        users = [p for p in self.scenario.players if HVAE in p.publishes + p.learns]
        for p in users[1:]:
            if p.algorithm.model != users[0].algorithm.model:
                raise ScenarioError(
                    f"peers: peers {users[0].peer} ({users[0].algorithm.model}) and {p.peer} "
                    f"({p.algorithm.model}) both use {HVAE!r}, whose latents only identical "
                    "architectures share; exchange 'x' (images) between different models")
        for t in schedule.topologies:
            try:
                solve_equilibrium(t.weights, np.zeros((self.scenario.n, 1)))
            except ValueError as e:
                raise ScenarioError(f"topology: {e}") from None
        # Peers without data (relays), known from the scenario alone: an empty class set.
        part = self.scenario.data.partition
        if part.get("kind") == "classes":
            sets = part.get("classes", [])
            if not isinstance(sets, list) or not all(isinstance(c, list) for c in sets):
                raise ScenarioError("data.partition.classes: expected a list of lists of "
                                    "class numbers, one per peer")
            self._check_relays([i for i, c in enumerate(sets) if not c], schedule,
                               lambda i: f"data.partition.classes[{i}] is empty")

    def _check_relays(self, empty: list[int], schedule: Schedule, why) -> None:
        """A peer without data must give its own data no weight, and learn in batches."""
        check_relay_weights({i: why(i) for i in empty}, schedule)
        for i in empty:
            if self.scenario.player(i).algorithm.batch == 0:
                raise ScenarioError(
                    f"{why(i)}: peer {i} has no data, so algorithm.batch = 0 (the whole local "
                    "set every step) means nothing for it; give it a batch size")

    def prepare(self, data_root: Path, log: Callable) -> None:
        # Fails with one clear line when the data set is missing, before any process starts.
        # Only players of binary images are scored by the evaluator CNN; joint players by
        # their own classifier's test accuracy.
        # Every partition kind, from the labels alone (seconds), before the evaluator trains.
        labels = load_split(self.scenario.data, data_root)[1].numpy()
        sc = self.scenario
        sizes = [len(p) for p in partition_indices(sc.data, labels, sc.n, sc.seed)]
        schedule = build_schedule(sc.topology, sc.steps, sc.seed)
        self._check_relays([i for i, k in enumerate(sizes) if k == 0], schedule,
                           lambda i: f"data.partition ({sc.data.partition.get('kind')})")
        binary = self._binary_players()
        if binary:
            epochs = max(p.algorithm.evaluator_epochs for p in binary)
            # Imported here: the evaluator pulls in torchvision, which resolving a
            # scenario (and refusing a bad one) does not need.
            from p2pgame.eval.images import prepare_evaluator

            prepare_evaluator(self.scenario.data, data_root, epochs, log)
        else:
            load_split(self.scenario.data, data_root, "test")

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
            try:
                state = torch.load(path, map_location=peer.device, weights_only=True)
                peer.player.load_state_dict(state)
            except Exception as e:  # (a file the user's run folder holds: any failure to
                # read it, torch's UnpicklingError of a weights-only load included, is theirs)
                raise ScenarioError(f"{path}: not a readable checkpoint of this run's "
                                    f"players ({' '.join(str(e).split())[:120]})") from None
            n = options.get("samples") or player.algorithm.eval_samples
            log(f"peer {i}: evaluating {n} samples")
            out[str(i)], _ = peer.final_metrics(n, options.get("inception"))
        return out

    def after_run(self, run_dir: Path, summary: dict) -> None:
        (run_dir / "evaluation.json").write_text(json.dumps(
            {p: {k: s.get(k) for k in EVAL_KEYS} for p, s in summary["peers"].items()},
            indent=1))
        styled = {p: s["accuracy_style"] for p, s in sorted(summary["peers"].items())
                  if s.get("accuracy_style")}
        if styled:  # PolyMNIST: the paper's table, one row per scoring peer
            lines = ["peer,model," + ",".join(f"m{k}" for k in range(5)) + ",avg"]
            for p, acc in styled.items():
                model = self.scenario.player(int(p)).algorithm.model
                lines.append(f"{p},{model}," + ",".join(f"{a:.4f}" for a in acc)
                             + f",{float(np.nanmean(acc)):.4f}")
            (run_dir / "accuracy_per_style.csv").write_text("\n".join(lines) + "\n")


INFO = AlgorithmInfo(
    name="game",
    config=GameConfig,
    data=ImageDataSpec,
    spaces={HVAE: "samples", IMAGES: "samples", MEANS: "samples", PAIRS: "samples",
            CS: "samples"},
    default_spaces=default_spaces,
    schemas=schemas,
    learnable=learnable,
    peer=lambda: SyntheticGame,
    hooks=lambda: GameHooks,
    uses_torch=True,
)
