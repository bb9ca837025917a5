"""Hierarchical VAE with binary latents, trained by symmetric equilibrium learning.

Model (all variables binary):

* ``z0``: ``nz0`` bits with a uniform prior,
* ``p(z1 | z0)``: ``nz1`` independent Bernoulli bits with logits from a network,
* ``p(x | z0, z1)``: a binary image of shape ``image_shape`` (Bernoulli logits),
* encoders ``q(z1 | x)`` and ``q(z0 | z1, x)``.

Symmetric learning (Flach, Schlesinger & Shekhovtsov, AISTATS 2024) trains both the
decoder ``p`` and the encoder ``q`` by plain maximum likelihood on *sampled*, fully
observed tuples ``(z0, z1, x)``; nothing is reparametrised:

1. p-step: ``z1 ~ q(z1|x)``, ``z0 ~ q(z0|z1,x)`` for real ``x``; one likelihood step of
   ``p`` on these tuples (plus any received synthetic tuples).
2. q-step: ``(z0, z1, x) ~ p`` by ancestral sampling; one likelihood step of ``q`` on
   them (plus the received synthetic tuples).

All randomness goes through an optional :class:`torch.Generator`, so runs are
reproducible for a fixed seed. Nothing assumes the CPU: move the model with ``.to()``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from p2pgame.models.seeding import seeded

__all__ = [
    "HVAEConfig",
    "HVAE",
    "SymmetricLearner",
    "MLP_CONFIG",
    "CONV_CONFIG",
    "CONV_SPATIAL_SIZES",
]

_ARCHS = ("mlp", "conv")
_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "silu": nn.SiLU, "elu": nn.ELU}

# Spatial sizes of the paper's transposed-convolution decoder (input is 1x1).
CONV_SPATIAL_SIZES = (4, 9, 11, 13, 27, 28)
# (kernel, stride) per decoder layer giving exactly CONV_SPATIAL_SIZES from 1x1:
# out = (in - 1) * stride + kernel.
_CONV_KS = ((4, 1), (3, 2), (3, 1), (3, 1), (3, 2), (2, 1))


@dataclass(frozen=True)
class HVAEConfig:
    """Architecture and optimiser settings of an :class:`HVAE`.

    ``hidden_z`` are the hidden widths of the ``p(z1|z0)`` MLP (both archs; it also has a
    linear skip connection when ``skip_z`` is set). ``hidden`` are the hidden widths of
    the three image networks for ``arch="mlp"``. ``conv_channels`` are the decoder's
    channel widths for ``arch="conv"`` (the last layer always has ``image_shape[0]``
    channels; the encoders use the mirrored widths).
    """

    arch: str = "mlp"
    nz0: int = 30
    nz1: int = 100
    image_shape: tuple[int, ...] = (1, 28, 28)
    hidden_z: tuple[int, ...] = (256,)
    hidden: tuple[int, ...] = (512,)
    conv_channels: tuple[int, ...] = (128, 64, 64, 64, 32)
    activation: str = "tanh"
    skip_z: bool = True
    lr_p: float = 1e-3
    lr_q: float = 1e-3
    betas: tuple[float, float] = field(default=(0.9, 0.999))

    def __post_init__(self) -> None:
        # Normalise sequences to tuples so that the frozen config stays hashable.
        for name in ("image_shape", "hidden_z", "hidden", "conv_channels", "betas"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise ValueError(f"HVAEConfig.{name} must be a sequence, got {value!r}")
            object.__setattr__(self, name, tuple(value))

        if self.arch not in _ARCHS:
            raise ValueError(f"HVAEConfig.arch must be one of {_ARCHS}, got {self.arch!r}")
        for name in ("nz0", "nz1"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"HVAEConfig.{name} must be a positive int, got {value!r}")
        if len(self.image_shape) != 3 or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in self.image_shape
        ):
            raise ValueError(
                "HVAEConfig.image_shape must be three positive ints (C, H, W), "
                f"got {self.image_shape!r}"
            )
        for name in ("hidden_z", "hidden", "conv_channels"):
            value = getattr(self, name)
            if not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in value):
                raise ValueError(f"HVAEConfig.{name} must hold positive ints, got {value!r}")
        if self.arch == "mlp" and len(self.hidden) == 0:
            raise ValueError("HVAEConfig.hidden must have at least one layer for arch='mlp'")
        if self.arch == "conv":
            if tuple(self.image_shape[1:]) != (28, 28):
                raise ValueError(
                    "arch='conv' needs 28x28 images (spatial sizes "
                    f"{CONV_SPATIAL_SIZES}), got image_shape={self.image_shape!r}"
                )
            if len(self.conv_channels) != len(_CONV_KS) - 1:
                raise ValueError(
                    f"arch='conv' needs {len(_CONV_KS) - 1} conv_channels, "
                    f"got {self.conv_channels!r}"
                )
        if self.activation not in _ACTIVATIONS:
            raise ValueError(
                f"HVAEConfig.activation must be one of {sorted(_ACTIVATIONS)}, "
                f"got {self.activation!r}"
            )
        for name in ("lr_p", "lr_q"):
            value = getattr(self, name)
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(
                    f"HVAEConfig.{name} must be a positive finite number, got {value!r}"
                )
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"HVAEConfig.betas must be two numbers in [0, 1), got {self.betas!r}")

    @property
    def x_dim(self) -> int:
        c, h, w = self.image_shape
        return c * h * w


# CPU default: small MLPs that learn binarised MNIST digits in minutes on one thread.
def sample_schema(cfg: HVAEConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Per-example fields of a fully observed sample (z0, z1, x): name -> (dtype name, shape)."""
    return {
        "z0": ("bool", (cfg.nz0,)),
        "z1": ("bool", (cfg.nz1,)),
        "x": ("bool", tuple(cfg.image_shape)),
    }


MLP_CONFIG = HVAEConfig(
    arch="mlp",
    nz0=30,
    nz1=100,
    hidden_z=(256,),
    hidden=(512,),
    activation="tanh",
    lr_p=1e-3,
    lr_q=1e-3,
)

# The paper's architecture (Adam lr 1e-4).
CONV_CONFIG = HVAEConfig(
    arch="conv",
    nz0=30,
    nz1=100,
    hidden_z=(600, 600),
    conv_channels=(128, 64, 64, 64, 32),
    activation="tanh",
    lr_p=1e-4,
    lr_q=1e-4,
)


# --------------------------------------------------------------------------- helpers


def _pm1(b: torch.Tensor) -> torch.Tensor:
    """Binary tensor -> float in {-1, +1} (centred network input)."""
    return b.to(torch.float32) * 2.0 - 1.0


def _mlp(sizes: list[int], act: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def _bernoulli(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Sample bool Bernoulli(sigmoid(logits)) using ``generator`` (any device)."""
    probs = torch.sigmoid(logits)
    if generator is None:
        u = torch.rand(probs.shape, device=probs.device)
    else:
        u = torch.rand(probs.shape, generator=generator, device=generator.device)
        u = u.to(probs.device)
    return u < probs


def _bce_sum(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example negative log-likelihood (sum over all but the batch dim)."""
    nll = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")
    return nll.flatten(1).sum(dim=1)


def _mean0(per_example: torch.Tensor) -> torch.Tensor:
    # mean of an empty batch is NaN; an empty batch contributes a (differentiable) zero.
    if per_example.shape[0] == 0:
        return per_example.sum()
    return per_example.mean()


# --------------------------------------------------------------------------- networks


class _PZ1(nn.Module):
    """p(z1 | z0): MLP with an optional linear skip connection."""

    def __init__(self, cfg: HVAEConfig, act: type[nn.Module]) -> None:
        super().__init__()
        self.net = _mlp([cfg.nz0, *cfg.hidden_z, cfg.nz1], act)
        self.skip = nn.Linear(cfg.nz0, cfg.nz1, bias=False) if cfg.skip_z else None

    def forward(self, z0: torch.Tensor) -> torch.Tensor:
        h = _pm1(z0)
        out = self.net(h)
        if self.skip is not None:
            out = out + self.skip(h)
        return out


class _MLPDecoder(nn.Module):
    """p(x | z0, z1) as an MLP."""

    def __init__(self, cfg: HVAEConfig, act: type[nn.Module]) -> None:
        super().__init__()
        self.image_shape = cfg.image_shape
        self.net = _mlp([cfg.nz0 + cfg.nz1, *cfg.hidden, cfg.x_dim], act)

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        out = self.net(torch.cat([_pm1(z0), _pm1(z1)], dim=1))
        return out.reshape(out.shape[0], *self.image_shape)


class _MLPEncoder(nn.Module):
    """q(out | x[, cond]) as an MLP on the flattened image (and optional condition bits)."""

    def __init__(self, cfg: HVAEConfig, act: type[nn.Module], n_cond: int, n_out: int) -> None:
        super().__init__()
        self.net = _mlp([cfg.x_dim + n_cond, *cfg.hidden, n_out], act)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = _pm1(x).flatten(1)
        if cond is not None:
            h = torch.cat([h, _pm1(cond)], dim=1)
        return self.net(h)


class _ConvDecoder(nn.Module):
    """p(x | z0, z1): transposed convolutions, spatial sizes 1-4-9-11-13-27-28."""

    def __init__(self, cfg: HVAEConfig, act: type[nn.Module]) -> None:
        super().__init__()
        chans = [cfg.nz0 + cfg.nz1, *cfg.conv_channels, cfg.image_shape[0]]
        layers: list[nn.Module] = []
        for i, (k, s) in enumerate(_CONV_KS):
            layers.append(nn.ConvTranspose2d(chans[i], chans[i + 1], kernel_size=k, stride=s))
            if i < len(_CONV_KS) - 1:
                layers.append(act())
        self.net = nn.Sequential(*layers)

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        h = torch.cat([_pm1(z0), _pm1(z1)], dim=1)
        return self.net(h[:, :, None, None])


class _ConvEncoder(nn.Module):
    """q(out | x[, cond]): the decoder's mirror, spatial sizes 28-27-13-11-9-4-1.

    With ``n_cond > 0`` the condition bits are linearly projected and added (broadcast
    over space) to the pre-activation of every layer, including the output layer.
    """

    def __init__(self, cfg: HVAEConfig, act: type[nn.Module], n_cond: int, n_out: int) -> None:
        super().__init__()
        chans = [cfg.image_shape[0], *reversed(cfg.conv_channels), n_out]
        self.convs = nn.ModuleList()
        for i, (k, s) in enumerate(reversed(_CONV_KS)):
            self.convs.append(nn.Conv2d(chans[i], chans[i + 1], kernel_size=k, stride=s))
        self.cond = (
            nn.ModuleList(nn.Linear(n_cond, c, bias=False) for c in chans[1:])
            if n_cond > 0
            else None
        )
        self.act = act()

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = _pm1(x)
        c = _pm1(cond) if cond is not None else None
        last = len(self.convs) - 1
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if self.cond is not None and c is not None:
                h = h + self.cond[i](c)[:, :, None, None]
            if i < last:
                h = self.act(h)
        return h.flatten(1)


# --------------------------------------------------------------------------- model


class HVAE(nn.Module):
    """Hierarchical binary-latent VAE ``z0 -> z1 -> x`` with encoders ``x -> z1 -> z0``.

    ``seed`` (optional) makes parameter initialisation reproducible without touching the
    caller's global RNG state.
    """

    def __init__(self, config: HVAEConfig | None = None, *, seed: int | None = None) -> None:
        super().__init__()
        self.config = cfg = config if config is not None else MLP_CONFIG
        with seeded(seed):
            self._build(cfg)

    def _build(self, cfg: HVAEConfig) -> None:
        act = _ACTIVATIONS[cfg.activation]
        self.p_z1 = _PZ1(cfg, act)
        if cfg.arch == "mlp":
            self.p_x = _MLPDecoder(cfg, act)
            self.q_z1 = _MLPEncoder(cfg, act, n_cond=0, n_out=cfg.nz1)
            self.q_z0 = _MLPEncoder(cfg, act, n_cond=cfg.nz1, n_out=cfg.nz0)
        else:
            self.p_x = _ConvDecoder(cfg, act)
            self.q_z1 = _ConvEncoder(cfg, act, n_cond=0, n_out=cfg.nz1)
            self.q_z0 = _ConvEncoder(cfg, act, n_cond=cfg.nz1, n_out=cfg.nz0)

    # -- bookkeeping

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def p_parameters(self) -> list[nn.Parameter]:
        """Decoder (generative model) parameters."""
        return [*self.p_z1.parameters(), *self.p_x.parameters()]

    def q_parameters(self) -> list[nn.Parameter]:
        """Encoder parameters."""
        return [*self.q_z1.parameters(), *self.q_z0.parameters()]

    def schema(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Per-example fields of a fully observed sample: name -> (dtype name, shape)."""
        return sample_schema(self.config)

    def validate_samples(self, samples: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Check ``samples`` against :meth:`schema`; return bool tensors on the model device.

        Raises ``ValueError`` on missing fields, wrong shapes, inconsistent batch sizes or
        non-binary values.
        """
        out: dict[str, torch.Tensor] = {}
        n: int | None = None
        for name, (_, shape) in self.schema().items():
            if name not in samples:
                raise ValueError(f"sample field {name!r} missing (got {sorted(samples)})")
            t = torch.as_tensor(samples[name])
            if tuple(t.shape[1:]) != shape or t.dim() != len(shape) + 1:
                raise ValueError(
                    f"sample field {name!r} has shape {tuple(t.shape)}, expected (n, *{shape})"
                )
            if n is None:
                n = t.shape[0]
            elif t.shape[0] != n:
                raise ValueError(f"sample field {name!r} has batch size {t.shape[0]}, expected {n}")
            if t.dtype != torch.bool:
                if t.is_floating_point() or t.is_complex():
                    raise ValueError(f"sample field {name!r} must be bool, got {t.dtype}")
                if t.numel() and not bool(((t == 0) | (t == 1)).all()):
                    raise ValueError(f"sample field {name!r} has values other than 0/1")
                t = t.to(torch.bool)
            out[name] = t.to(self.device)
        return out

    # -- distributions (logits)

    def p_z1_logits(self, z0: torch.Tensor) -> torch.Tensor:
        return self.p_z1(z0)

    def p_x_logits(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        return self.p_x(z0, z1)

    def q_z1_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.q_z1(x)

    def q_z0_logits(self, z1: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.q_z0(x, z1)

    # -- sampling

    def _to_bool_x(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.bool:
            x = x > 0.5 if x.is_floating_point() else x != 0
        return x.to(self.device)

    def _sample_z(
        self, n: int, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.device
        if generator is None:
            z0 = torch.randint(0, 2, (n, self.config.nz0), device=dev)
        else:
            z0 = torch.randint(
                0, 2, (n, self.config.nz0), generator=generator, device=generator.device
            )
        z0 = z0.to(device=dev, dtype=torch.bool)
        z1 = _bernoulli(self.p_z1_logits(z0), generator)
        return z0, z1

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               mean: bool = False) -> dict[str, torch.Tensor]:
        """Ancestral sample of ``n`` fully observed tuples; all fields are bool tensors.
        ``mean=True``: ``x`` is the decoder's mean thresholded at 0.5, not a Bernoulli draw."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        z0, z1 = self._sample_z(n, generator)
        logits = self.p_x_logits(z0, z1)
        x = logits > 0 if mean else _bernoulli(logits, generator)
        return {"z0": z0, "z1": z1, "x": x}

    @torch.no_grad()
    def sample_means(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decoder means ``E[x | z0, z1]`` for ``n`` sampled latents, float ``[n, C, H, W]``."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        z0, z1 = self._sample_z(n, generator)
        return torch.sigmoid(self.p_x_logits(z0, z1))

    @torch.no_grad()
    def encode(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``z1 ~ q(z1|x)``, ``z0 ~ q(z0|z1,x)`` (bool). Float ``x`` is thresholded at 0.5."""
        x = self._to_bool_x(x)
        z1 = _bernoulli(self.q_z1_logits(x), generator)
        z0 = _bernoulli(self.q_z0_logits(z1, x), generator)
        return z0, z1

    # -- losses

    def p_nll(self, z0: torch.Tensor, z1: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-example ``-log p(z0, z1, x)`` in nats (including the uniform prior of z0)."""
        prior = z0.shape[1] * math.log(2.0)
        return prior + _bce_sum(self.p_z1_logits(z0), z1) + _bce_sum(self.p_x_logits(z0, z1), x)

    def q_nll(self, z0: torch.Tensor, z1: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-example ``-log q(z0, z1 | x)`` in nats."""
        return _bce_sum(self.q_z1_logits(x), z1) + _bce_sum(self.q_z0_logits(z1, x), z0)

    def p_loss(self, z0: torch.Tensor, z1: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of ``-log p(z0, z1, x)`` (0 for an empty batch)."""
        return _mean0(self.p_nll(z0, z1, x))

    def q_loss(self, z0: torch.Tensor, z1: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of ``-log q(z0, z1 | x)`` (0 for an empty batch)."""
        return _mean0(self.q_nll(z0, z1, x))

    @torch.no_grad()
    def elbo(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Single-sample ELBO estimate per example (nats): ``log p(z,x) - log q(z|x)``."""
        x = self._to_bool_x(x)
        z0, z1 = self.encode(x, generator)
        return -self.p_nll(z0, z1, x) + self.q_nll(z0, z1, x)


# --------------------------------------------------------------------------- learner


def _cat_batches(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    if b is None or next(iter(b.values())).shape[0] == 0:
        return a
    if next(iter(a.values())).shape[0] == 0:
        return b
    return {k: torch.cat([a[k], b[k]], dim=0) for k in a}


class SymmetricLearner:
    """Symmetric equilibrium learning of an :class:`HVAE` with separate Adam optimisers."""

    def __init__(self, model: HVAE) -> None:
        self.model = model
        cfg = model.config
        self.opt_p = torch.optim.Adam(model.p_parameters(), lr=cfg.lr_p, betas=cfg.betas)
        self.opt_q = torch.optim.Adam(model.q_parameters(), lr=cfg.lr_q, betas=cfg.betas)
        self.steps = 0

    def step(
        self,
        real_x: torch.Tensor,
        synthetic: Mapping[str, torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
        q_batch: int | None = None,
    ) -> dict[str, float]:
        """One p-step and one q-step.

        ``real_x``: bool ``[n, C, H, W]`` real images (``n`` may be 0). ``synthetic``:
        received fully observed tuples (fields as in :meth:`HVAE.schema`), appended to both
        the p-batch and the q-batch. ``q_batch``: number of self-sampled tuples for the
        q-step (default ``n``). Returns ``{"p_loss", "q_loss", "n_p", "n_q"}``; a loss is
        NaN when its batch was empty (no update is made then).
        """
        model = self.model
        model.train()
        cfg = model.config
        if real_x.dim() != 4 or tuple(real_x.shape[1:]) != tuple(cfg.image_shape):
            raise ValueError(
                f"real_x has shape {tuple(real_x.shape)}, expected (n, *{cfg.image_shape})"
            )
        real_x = model._to_bool_x(real_x)
        n_real = real_x.shape[0]
        syn = None
        if synthetic is not None and len(synthetic) > 0:
            syn = model.validate_samples(synthetic)
            if syn["x"].shape[0] == 0:
                syn = None
        n_q = n_real if q_batch is None else int(q_batch)
        if n_q < 0:
            raise ValueError(f"q_batch must be >= 0, got {q_batch}")

        # p-step: complete real images with the encoder, fit p on the completed tuples.
        z0, z1 = model.encode(real_x, generator)
        p_batch = _cat_batches({"z0": z0, "z1": z1, "x": real_x}, syn)
        p_loss = self._update(self.opt_p, model.p_loss, p_batch)

        # q-step: sample tuples from p, fit q on them.
        q_batch_data = _cat_batches(model.sample(n_q, generator), syn)
        q_loss = self._update(self.opt_q, model.q_loss, q_batch_data)

        self.steps += 1
        return {
            "p_loss": p_loss,
            "q_loss": q_loss,
            "n_p": float(p_batch["x"].shape[0]),
            "n_q": float(q_batch_data["x"].shape[0]),
        }

    @staticmethod
    def _update(opt: torch.optim.Optimizer, loss_fn, batch: dict[str, torch.Tensor]) -> float:
        if batch["x"].shape[0] == 0:
            return float("nan")
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(batch["z0"], batch["z1"], batch["x"])
        loss.backward()
        opt.step()
        return float(loss.detach())

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "opt_p": self.opt_p.state_dict(),
            "opt_q": self.opt_q.state_dict(),
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt_p.load_state_dict(state["opt_p"])
        self.opt_q.load_state_dict(state["opt_q"])
        self.steps = int(state["steps"])
