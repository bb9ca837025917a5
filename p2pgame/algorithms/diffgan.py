"""Diffusion GAN (Wang, Pavan & Sayed): adapt-then-combine over a network of GANs.

Every peer owns a GAN (discriminator D, generator G) and private images.  Rounds
alternate by part: round r is a D round if ``r % (n_d + n_g) < n_d``, else a G
round.  Algorithm 1 (adapt a part, then average it with the neighbours' freshly
adapted copies under the combination matrix A) is mapped onto the peer loop:

* ``publish(r)`` publishes psi_{r-1}, the part adapted at step r - 1, on
  ``params/<peer>/D`` or ``params/<peer>/G`` (step 0: both initial parts);
* ``train_step(r)`` first combines that part,
  ``w = sum_j a_ij psi_j`` over itself and the in-neighbours whose round-r
  message arrived (renormalising the weights when one is missing or late), then
  takes the local stochastic-gradient step on the part of round r, giving psi_r.

So each part sees adapt, combine, adapt, combine, ... exactly as in Algorithm 1;
parameters travel, never samples.  ``combine = false`` is the non-cooperative
baseline (nothing is published); a one-peer scenario on pooled data is the
centralized one.

The GAN trains on grey-level images in [-1, 1] (``data.binarize`` and
``data.noise`` are not used); for the shared evaluation, whose evaluator CNN
works on binary images, generated images are thresholded like the real ones.
"""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from p2pgame.algorithms.base import (
    Algorithm,
    AlgorithmInfo,
    Inbox,
    PeerContext,
    RunHooks,
    config_error,
)
from p2pgame.bus.traffic import mean_message_bytes
from p2pgame.config import ScenarioError
from p2pgame.data.image import ImageDataSpec, peer_part
from p2pgame.eval.disagreement import disagreement_curve, write_disagreement
from p2pgame.eval.images import ImageEvaluation, prepare_evaluator
from p2pgame.topology import Schedule, Topology

PARTS = ("D", "G")
WIRE_DTYPES = ("float32", "float16")
OPTIMIZERS = ("sgd", "adam")
G_LOSSES = ("nonsaturating", "minimax")
SNAPSHOT_DIR = "params"


def _gan_models() -> list[str]:
    from p2pgame.models import MODELS

    return sorted(k for k in MODELS if k.startswith("dcgan"))


@dataclass(frozen=True)
class DiffGANConfig:
    model: str = "dcgan-mlp"
    batch: int = 64
    lr: float = 0.05  # mu of the paper (both parts)
    optimizer: str = "sgd"  # sgd | adam (moments stay local; only parameters are combined)
    betas: tuple[float, float] = (0.5, 0.999)
    n_d: int = 5  # D rounds per iteration
    n_g: int = 1  # G rounds per iteration
    combine: bool = True  # false: non-cooperative baseline
    wire_dtype: str = "float32"  # float32 | float16 on the wire
    g_loss: str = "nonsaturating"  # -log D(G(z)); "minimax": log(1 - D(G(z))) as in eq. (3)
    eval_samples: int = 10000
    evaluator_epochs: int = 2
    snapshots: int = 20  # parameter snapshots for the disagreement curve (0: none)
    checkpoint: bool = True
    peer_models: dict = field(default_factory=dict)  # {"<peer id>": model name}

    def __post_init__(self) -> None:
        known = _gan_models()
        for where, name in [("model", self.model)] + [
            (f"peer_models.{k}", v) for k, v in self.peer_models.items()
        ]:
            if name not in known:
                raise config_error(where, f"{name!r} is not known; allowed: {', '.join(known)}")
        for key, allowed in (("optimizer", OPTIMIZERS), ("wire_dtype", WIRE_DTYPES),
                             ("g_loss", G_LOSSES)):
            if getattr(self, key) not in allowed:
                raise config_error(
                    key, f"{getattr(self, key)!r} is not known; allowed: {', '.join(allowed)}")
        for key in ("batch", "eval_samples", "evaluator_epochs", "n_d", "n_g"):
            if getattr(self, key) < 1:
                raise config_error(key, f"must be >= 1, got {getattr(self, key)}")
        if self.eval_samples < 2:
            raise config_error("eval_samples", "must be >= 2")
        if self.snapshots < 0:
            raise config_error("snapshots", f"must be >= 0, got {self.snapshots}")
        if not self.lr > 0:
            raise config_error("lr", f"must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise config_error("betas", f"must be two numbers in [0, 1), got {list(self.betas)}")

    def model_of(self, peer: int) -> str:
        return self.peer_models.get(str(peer), self.model)

    def part_at(self, step: int) -> str:
        return "D" if step % (self.n_d + self.n_g) < self.n_d else "G"


def snapshot_steps(steps: int, count: int) -> list[int]:
    """``count`` evenly spaced steps in [0, steps - 1], the same on every peer."""
    if count <= 0 or steps <= 0:
        return []
    if count == 1 or steps == 1:
        return [steps - 1]
    return sorted({round(k * (steps - 1) / (count - 1)) for k in range(count)})


def weighted_average(terms: list[tuple[float, dict[str, Any]]]) -> dict[str, np.ndarray]:
    """``sum_j w_j x_j / sum_j w_j`` field by field, in float32."""
    total = sum(w for w, _ in terms)
    if not terms or total <= 0:
        raise ValueError("weighted_average needs at least one term with positive weight")
    out: dict[str, np.ndarray] = {}
    for name in terms[0][1]:
        acc = np.multiply(terms[0][1][name], np.float32(terms[0][0] / total), dtype=np.float32)
        tmp = np.empty_like(acc)
        for w, x in terms[1:]:
            np.multiply(x[name], np.float32(w / total), out=tmp, dtype=np.float32)
            acc += tmp
        out[name] = acc
    return out


class DiffusionGAN(Algorithm):
    heavy = True

    def __init__(self, ctx: PeerContext) -> None:
        super().__init__(ctx)
        import torch

        from p2pgame.models import make_model

        config = self.config
        self.torch = torch
        self.device = torch.device(ctx.device)
        self.model_name = config.model_of(ctx.peer_id)
        self.model = make_model(self.model_name, seed=ctx.seed("model-init")).to(self.device)
        self.model.train()
        self.opt = {p: self._optimizer(self.model.parts[p]) for p in PARTS}
        images, labels = self._own_images()
        self.images = images.to(self.device)
        self.own_classes = sorted(int(c) for c in labels.unique())
        self.wire = np.dtype(config.wire_dtype)
        self.schema = {p: self.model.part_schema(p) for p in PARTS}
        self.gen = torch.Generator(device=self.device).manual_seed(ctx.seed("model-sampling"))
        self.data_gen = torch.Generator().manual_seed(ctx.seed("data-order"))
        self.snap_steps = set(snapshot_steps(ctx.scenario.steps, config.snapshots))
        self.combine_rounds = 0
        self.used: dict[tuple[int, str], int] = {}  # (neighbour, part) -> step last combined
        self.combine_renormalised = 0
        self.combine_missing: Counter[int] = Counter()
        self.last_loss = {"D": float("nan"), "G": float("nan")}
        self.snapshot_meta_sent = False
        self.evaluation = ImageEvaluation(ctx.scenario.data, ctx.data_root,
                                          config.evaluator_epochs, self.own_classes, self.device)

    def _optimizer(self, module):
        torch, cfg = self.torch, self.config
        if cfg.optimizer == "adam":
            return torch.optim.Adam(module.parameters(), lr=cfg.lr, betas=cfg.betas)
        return torch.optim.SGD(module.parameters(), lr=cfg.lr)

    def _own_images(self):
        """Grey-level images in [-1, 1] ``[n, 1, 28, 28]`` and labels of this peer's part."""
        sc = self.ctx.scenario
        images, labels = peer_part(sc.data, sc.n, sc.seed, self.ctx.peer_id, self.ctx.data_root)
        if len(labels) == 0:
            raise ValueError(f"peer {self.ctx.peer_id} got no images from the partition")
        return images.float().div(127.5).sub(1.0).unsqueeze(1), labels

    # -- exchange ------------------------------------------------------------------------
    def part_tensors(self, part: str) -> dict[str, np.ndarray]:
        """A part's tensors as the wire carries them (copies: the live ones keep training)."""
        return {k: np.array(v.detach().cpu().numpy(), dtype=self.wire, copy=True)
                for k, v in self.model.part_state(part).items()}

    def publish(self, step: int) -> dict[str, dict[str, Any]]:
        if not self.config.combine:
            return {}
        return {p: self.part_tensors(p) for p in self.exchanged_parts(step)}

    def exchanged_parts(self, step: int) -> tuple[str, ...]:
        """Parts published at the start of ``step`` and combined in it.

        Every step (``comm.publish_every = 1``, the paper): the part adapted in the
        previous step (both at step 0).  Every K steps (the combine period): both parts.
        """
        every = self.ctx.scenario.comm.publish_every
        if step % every:
            return ()
        if step == 0 or every > 1:
            return PARTS
        return (self.config.part_at(step - 1),)

    def check(self, env) -> str | None:
        if env.space not in self.schema:
            return "space"
        expected = self.schema[env.space]
        if set(env.tensors) != set(expected):
            return "architecture"
        for name, shape in expected.items():
            t = env.tensors[name]
            if tuple(t.shape) != tuple(shape):
                return "architecture"
            if np.dtype(t.dtype).name not in WIRE_DTYPES:
                return "dtype"
        return None

    def combine(self, part: str, step: int, inbox: Inbox, topology: Topology) -> list[int]:
        """ATC combine of ``part`` with the round-``step`` messages; returns missing peers."""
        torch = self.torch
        me = self.ctx.peer_id
        row = topology.row(me)
        live = self.model.part_state(part)
        own = {k: v.detach().cpu().numpy() for k, v in live.items()}
        terms: list[tuple[float, dict[str, Any]]] = [(row[me], own)]
        missing = []
        for j, w in row.items():
            if j == me or w <= 0:
                continue
            env = inbox.use(j, part, step)
            # Use each neighbour message once: the round's own (sync), or whatever newer one
            # has arrived since the last combine (late under delays / async); else renormalise.
            if (env is None or env.space != part or env.step > step
                    or env.step <= self.used.get((j, part), -1)):
                missing.append(j)
                continue
            self.used[(j, part)] = env.step
            terms.append((w, env.tensors))
        if len(terms) == 1 and not missing:
            return []  # no neighbours: nothing to combine
        if terms[0][0] <= 0 and len(terms) == 1:
            return missing  # own weight 0 and nobody heard: keep the adapted part
        avg = weighted_average(terms)
        with torch.no_grad():
            for k, v in live.items():
                v.copy_(torch.from_numpy(avg[k]).to(v.device, v.dtype))
        self.combine_rounds += 1
        if missing:
            self.combine_renormalised += 1
            self.combine_missing.update(missing)
        return missing

    def adapt(self, part: str) -> float:
        """One local stochastic-gradient step on ``part`` (eq. 10a)."""
        torch, cfg, model = self.torch, self.config, self.model
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
        value = float(loss.detach())
        self.last_loss[part] = value
        return value

    def train_step(self, step: int, inbox: Inbox, topology: Topology) -> dict[str, float]:
        cfg = self.config
        missing: list[int] = []
        if cfg.combine:
            for p in self.exchanged_parts(step):
                missing += self.combine(p, step, inbox, topology)
        if step in self.snap_steps:
            self._snapshot(step)
        part = cfg.part_at(step)
        self.adapt(part)
        out = {f"{p.lower()}_loss": v for p, v in self.last_loss.items() if v == v}  # no NaN
        out.update(g_round=float(part == "G"), missing=float(len(missing)))
        return out

    def _snapshot(self, step: int) -> None:
        """Report the parameter vector; the launcher writes it for the disagreement curve."""
        me = self.ctx.peer_id
        buf = io.BytesIO()
        np.save(buf, self.model.flat().numpy().astype(np.float32))
        self.ctx.artifact(f"{SNAPSHOT_DIR}/peer-{me}-step-{step:09d}.npy", buf.getvalue())
        if not self.snapshot_meta_sent:
            self.snapshot_meta_sent = True
            sizes = {p: int(sum(v.numel() for v in self.model.part_state(p).values()))
                     for p in PARTS}
            self.ctx.artifact(f"{SNAPSHOT_DIR}/peer-{me}.json",
                              json.dumps({"model": self.model_name, "sizes": sizes}).encode())

    # -- evaluation ----------------------------------------------------------------------
    def generate(self, n: int, batch: int = 1000):
        """``n`` generated images in [0, 1] (eval mode, a fixed seed)."""
        from p2pgame.models.dcgan import to_unit

        torch = self.torch
        g = torch.Generator(device=self.device).manual_seed(self.ctx.seed("eval"))
        self.model.eval()
        out = []
        with torch.no_grad():
            for i in range(0, n, batch):
                out.append(to_unit(self.model.sample(min(batch, n - i), g)).cpu())
        self.model.train()
        return torch.cat(out)

    def finish(self) -> dict[str, Any]:
        from p2pgame.eval import binarize, grid_png

        cfg = self.config
        images = self.generate(cfg.eval_samples)
        metrics = self.evaluation.metrics(binarize(images))
        self.ctx.artifact(f"samples/peer-{self.ctx.peer_id}.png", grid_png(images[:100]))
        return {
            **metrics,
            "classes_generated": sum(1 for m in metrics["class_mass"] if m >= 0.03),
            "model": self.model_name,
            "param_count": self.model.param_count(),
            "param_count_D": self.model.param_count("D"),
            "param_count_G": self.model.param_count("G"),
            "wire_dtype": cfg.wire_dtype,
            "combine_rounds": self.combine_rounds,
            "combine_renormalised": self.combine_renormalised,
            "combine_missing": {str(k): v for k, v in sorted(self.combine_missing.items())},
            "d_loss": self.last_loss["D"] if self.last_loss["D"] == self.last_loss["D"] else None,
            "g_loss": self.last_loss["G"] if self.last_loss["G"] == self.last_loss["G"] else None,
        }

    def checkpoint_state(self) -> Any | None:
        return self.model.state_dict() if self.config.checkpoint else None


class DiffusionGANHooks(RunHooks):
    table_columns = ("fid_all", "fid_own", "fid_other", "unseen_mass", "classes_generated",
                     "bytes_sent")

    def validate(self, schedule: Schedule) -> None:
        sc = self.scenario
        cfg = sc.algorithm
        n = sc.n
        for key in cfg.peer_models:
            if not (isinstance(key, str) and key.isdigit() and int(key) < n):
                raise config_error(f"peer_models.{key}", f"is not a peer id in 0..{n - 1}")
        models = {p.peer: p.algorithm.model_of(p.peer) for p in sc.players}
        combine = {p.algorithm.combine for p in sc.players}
        if len(combine) > 1:
            raise config_error("combine", "must be the same for every peer")
        if cfg.combine and len(set(models.values())) > 1:
            groups: dict[str, list[int]] = {}
            for p, m in models.items():
                groups.setdefault(m, []).append(p)
            desc = "; ".join(f"peer{'s' if len(ps) > 1 else ''} {', '.join(map(str, ps))}: {m}"
                             for m, ps in sorted(groups.items()))
            raise config_error(
                "peer_models",
                f"combine = true averages parameters, so every peer needs the same "
                f"architecture; got {desc}. Use one model or set combine = false")
        has_edges = any(t.edges for t in schedule.topologies)
        if not cfg.combine and sc.comm.mode == "sync" and has_edges:
            raise ScenarioError(
                "algorithm.combine = false publishes nothing, so a sync barrier would wait "
                "forever for the neighbours; set comm.mode = 'async'")

    def prepare(self, data_root: Path, log: Callable) -> None:
        epochs = max(p.algorithm.evaluator_epochs for p in self.scenario.players)
        prepare_evaluator(self.scenario.data, data_root, epochs, log)

    def after_run(self, run_dir: Path, summary: dict) -> None:
        sc = self.scenario
        cfg = sc.algorithm
        peers = summary.get("peers", {})
        for pid, s in peers.items():
            steps = s.get("steps") or 0
            s["bytes_sent_per_step"] = s.get("bytes_sent", 0) / steps if steps else 0.0
            # Bytes of one message per part, as the bus counted them (header + payload).
            for part in PARTS:
                per = mean_message_bytes(s.get("traffic_out", []), f"params/{pid}/{part}")
                if per is not None:
                    s[f"wire_bytes_{part}"] = per
        topo_path = run_dir / "topology.json"
        if "second_eigenvalue_modulus" not in summary and topo_path.exists():
            epochs = json.loads(topo_path.read_text())["epochs"]
            summary["second_eigenvalue_modulus"] = epochs[-1]["second_eigenvalue_modulus"]
        lam = summary.get("second_eigenvalue_modulus")
        if lam is not None and lam < 1:
            # Theorem 1's scale mu^2 lambda^2 / (1 - lambda)^2 (without the gradient bounds).
            summary["disagreement_theory_scale"] = cfg.lr**2 * lam**2 / (1 - lam) ** 2
        (run_dir / "evaluation.json").write_text(json.dumps(
            {p: {k: s.get(k) for k in ("fid_all", "fid_own", "fid_other", "class_mass",
                                       "unseen_mass", "classes_generated", "own_classes")}
             for p, s in peers.items()}, indent=1))
        rows = disagreement_curve(run_dir / SNAPSHOT_DIR, sc.n)
        if rows:
            summary["disagreement"] = [[r["step"], r["all"]] for r in rows]
            summary["disagreement_final"] = rows[-1]["all"]
            summary["disagreement_D"] = [[r["step"], r["D"]] for r in rows]
            summary["disagreement_G"] = [[r["step"], r["G"]] for r in rows]
            write_disagreement(run_dir, rows, sc.name)
        shutil.rmtree(run_dir / SNAPSHOT_DIR, ignore_errors=True)


def _default_spaces(cfg: DiffGANConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return (PARTS, PARTS) if cfg.combine else ((), ())


INFO = AlgorithmInfo(
    name="diffgan",
    config=DiffGANConfig,
    data=ImageDataSpec,
    spaces={p: "params" for p in PARTS},
    default_spaces=_default_spaces,
    peer=lambda: DiffusionGAN,
    hooks=lambda: DiffusionGANHooks,
    partial_rounds=True,
    uses_torch=True,
)
