"""GAN generator/discriminator pairs for Diffusion GAN (Wang, Pavan & Sayed).

Two architectures share one interface (:class:`GAN`):

* ``mlp``: fully connected G (z -> hidden -> 784, tanh) and D (784 -> hidden -> 1 logit,
  LeakyReLU); small enough for several peers on a couple of CPU cores.
* ``conv``: DCGAN-style (Radford et al. 2016) for 28x28: G projects z to 7x7 feature maps
  and upsamples twice with transposed convolutions (BatchNorm + ReLU, tanh output);
  D mirrors it with strided convolutions and LeakyReLU.

Images are ``[n, 1, 28, 28]`` floats in [-1, 1] (``to_unit`` maps them to [0, 1]).
The two parts are exposed as ``parts = {"D": discriminator, "G": generator}``; what
diffusion averages is :meth:`GAN.part_state` (every floating-point parameter and buffer,
e.g. BatchNorm running statistics, in ``state_dict`` order).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DCGANConfig", "GAN", "GAN_MLP_CONFIG", "GAN_CONV_CONFIG", "PARTS", "to_unit"]

PARTS = ("D", "G")
_ARCHS = ("mlp", "conv")


@dataclass(frozen=True)
class DCGANConfig:
    arch: str = "mlp"
    nz: int = 64  # latent dimension, z ~ N(0, I)
    image_shape: tuple[int, ...] = (1, 28, 28)
    g_hidden: tuple[int, ...] = (256, 512)  # mlp: G hidden widths
    d_hidden: tuple[int, ...] = (512, 256)  # mlp: D hidden widths
    width: int = 64  # conv: base channel count (G: 2w at 7x7, w at 14x14; D: w, 2w)
    leak: float = 0.2

    def __post_init__(self) -> None:
        for name in ("image_shape", "g_hidden", "d_hidden"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.arch not in _ARCHS:
            raise ValueError(f"arch = {self.arch!r}; allowed: {', '.join(_ARCHS)}")
        if self.nz < 1 or self.width < 1:
            raise ValueError("nz and width must be >= 1")
        if self.arch == "conv" and self.image_shape[1:] != (28, 28):
            raise ValueError("arch = 'conv' is built for 28x28 images")


GAN_MLP_CONFIG = DCGANConfig(arch="mlp")
GAN_CONV_CONFIG = DCGANConfig(arch="conv")


def _mlp_generator(c: DCGANConfig) -> nn.Module:
    layers: list[nn.Module] = []
    width = c.nz
    for h in c.g_hidden:
        layers += [nn.Linear(width, h), nn.LeakyReLU(c.leak)]
        width = h
    n_out = 1
    for s in c.image_shape:
        n_out *= s
    layers += [nn.Linear(width, n_out), nn.Tanh(), nn.Unflatten(1, c.image_shape)]
    return nn.Sequential(*layers)


def _mlp_discriminator(c: DCGANConfig) -> nn.Module:
    n_in = 1
    for s in c.image_shape:
        n_in *= s
    layers: list[nn.Module] = [nn.Flatten()]
    width = n_in
    for h in c.d_hidden:
        layers += [nn.Linear(width, h), nn.LeakyReLU(c.leak)]
        width = h
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def _conv_generator(c: DCGANConfig) -> nn.Module:
    w, ch = c.width, c.image_shape[0]
    return nn.Sequential(
        nn.Linear(c.nz, 2 * w * 7 * 7, bias=False),
        nn.Unflatten(1, (2 * w, 7, 7)),
        nn.BatchNorm2d(2 * w),
        nn.ReLU(),
        nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False),  # 14x14
        nn.BatchNorm2d(w),
        nn.ReLU(),
        nn.ConvTranspose2d(w, ch, 4, 2, 1),  # 28x28
        nn.Tanh(),
    )


def _conv_discriminator(c: DCGANConfig) -> nn.Module:
    w, ch = c.width, c.image_shape[0]
    return nn.Sequential(
        nn.Conv2d(ch, w, 4, 2, 1),  # 14x14
        nn.LeakyReLU(c.leak),
        nn.Conv2d(w, 2 * w, 4, 2, 1),  # 7x7
        nn.LeakyReLU(c.leak),
        nn.Flatten(),
        nn.Linear(2 * w * 7 * 7, 1),
    )


def _dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation: N(0, 0.02) weights, BatchNorm scales N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class GAN(nn.Module):
    """A generator and a discriminator with the standard GAN losses."""

    def __init__(self, config: DCGANConfig = GAN_MLP_CONFIG, seed: int | None = None) -> None:
        super().__init__()
        self.config = config
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            if config.arch == "mlp":
                self.generator = _mlp_generator(config)
                self.discriminator = _mlp_discriminator(config)
            else:
                self.generator = _conv_generator(config)
                self.discriminator = _conv_discriminator(config)
                _dcgan_init(self)

    @property
    def parts(self) -> dict[str, nn.Module]:
        return {"D": self.discriminator, "G": self.generator}

    @property
    def nz(self) -> int:
        return self.config.nz

    # -- what diffusion exchanges ------------------------------------------------------
    def part_state(self, part: str) -> dict[str, torch.Tensor]:
        """The averaged tensors of a part: floating-point parameters and buffers, live."""
        sd = self.parts[part].state_dict(keep_vars=True)
        return {k: v for k, v in sd.items() if torch.is_floating_point(v)}

    def part_schema(self, part: str) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.part_state(part).items()}

    def param_count(self, part: str | None = None) -> int:
        mods = [self.parts[part]] if part else list(self.parts.values())
        return sum(p.numel() for m in mods for p in m.parameters())

    def flat(self) -> torch.Tensor:
        """All exchanged tensors, D then G, as one float32 vector (for disagreement)."""
        return torch.cat([t.detach().reshape(-1).float().cpu()
                          for part in PARTS for t in self.part_state(part).values()])

    # -- sampling and losses -----------------------------------------------------------
    def noise(self, n: int, gen: torch.Generator | None = None) -> torch.Tensor:
        dev = next(self.parameters()).device
        return torch.randn(n, self.nz, generator=gen, device=dev)

    def sample(self, n: int, gen: torch.Generator | None = None) -> torch.Tensor:
        """Generated images in [-1, 1]."""
        return self.generator(self.noise(n, gen))

    def d_loss(self, real: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """-J(D, G): binary cross-entropy of D on real (label 1) and fake (label 0)."""
        with torch.no_grad():
            fake = self.generator(z)
        lr, lf = self.discriminator(real), self.discriminator(fake)
        return (F.binary_cross_entropy_with_logits(lr, torch.ones_like(lr))
                + F.binary_cross_entropy_with_logits(lf, torch.zeros_like(lf)))

    def g_loss(self, z: torch.Tensor, saturating: bool = False) -> torch.Tensor:
        """Generator loss: -log D(G(z)) (non-saturating) or log(1 - D(G(z))) (the paper's J)."""
        lf = self.discriminator(self.generator(z))
        if saturating:
            return -F.binary_cross_entropy_with_logits(lf, torch.zeros_like(lf))
        return F.binary_cross_entropy_with_logits(lf, torch.ones_like(lf))


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]."""
    return ((images + 1) / 2).clamp(0, 1)
