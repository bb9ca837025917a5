"""A small convolutional VAE for binary images, trained by the ELBO.

Encoder: two stride-2 convolutions (28 -> 14 -> 7) and a linear layer to the
mean and log-variance of a Gaussian latent ``z``.  Decoder: a linear layer and
two stride-2 transposed convolutions back to Bernoulli logits of a
``1 x 28 x 28`` image (``refine`` 3x3 convolutions between them, none by
default).  One Adam step per batch on the negative ELBO
(reparametrised), summed over pixels and averaged over the batch.

As a player of the synthetic-data game it learns from images alone: its own
and the ones it receives are one batch.  All randomness goes through an
optional :class:`torch.Generator`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from p2pgame.models.seeding import seeded


@dataclass(frozen=True)
class ConvVAEConfig:
    latent: int = 16
    channels: tuple[int, int] = (32, 64)
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    # 3x3 convolutions (with ReLU) added to the decoder at 14 x 14, before its last layer:
    # sharper decoder means for about 1.26x the step time (bench/RESULTS.md, section 9)
    refine: int = 0
    # 0: the prior p(z) is N(0, I).  K > 0: a learnt mixture of K diagonal Gaussians, trained
    # with the rest by the ELBO (its KL term then estimated from the one reparametrised z).
    prior_components: int = 0

    def __post_init__(self) -> None:
        if self.latent < 1 or len(self.channels) != 2 or min(self.channels) < 1 \
                or self.refine < 0 or self.prior_components < 0:
            raise ValueError(f"bad ConvVAEConfig: {self}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


class ConvVAE(nn.Module):
    image_shape = (1, 28, 28)

    def __init__(self, config: ConvVAEConfig | None = None, *, seed: int | None = None) -> None:
        super().__init__()
        self.config = cfg = config or ConvVAEConfig()
        with seeded(seed):
            self._build(cfg)
        # Convolution weights channels-last: the CPU's oneDNN kernels then keep activations
        # in that layout through the network, and a training step takes about 15 % less time
        # on one core (the same arithmetic, in another order: results differ in the last bits).
        self.to(memory_format=torch.channels_last)

    def _build(self, cfg: ConvVAEConfig) -> None:
        c1, c2 = cfg.channels
        self.enc = nn.Sequential(
            nn.Conv2d(1, c1, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(c1, c2, 4, 2, 1), nn.ReLU(), nn.Flatten())
        self.to_stats = nn.Linear(c2 * 7 * 7, 2 * cfg.latent)
        self.from_z = nn.Linear(cfg.latent, c2 * 7 * 7)
        refine = [m for _ in range(cfg.refine) for m in (nn.Conv2d(c1, c1, 3, 1, 1), nn.ReLU())]
        self.dec = nn.Sequential(
            nn.ReLU(), nn.Unflatten(1, (c2, 7, 7)),
            nn.ConvTranspose2d(c2, c1, 4, 2, 1), nn.ReLU(), *refine,
            nn.ConvTranspose2d(c1, 1, 4, 2, 1))
        if cfg.prior_components:
            k = cfg.prior_components
            self.prior_mu = nn.Parameter(torch.randn(k, cfg.latent))
            self.prior_logvar = nn.Parameter(torch.zeros(k, cfg.latent))
            self.prior_logits = nn.Parameter(torch.zeros(k))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(self.from_z(z))

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Negative ELBO per image (nats), averaged over the batch."""
        x = x.float()
        mu, logvar = self.to_stats(self.enc(x)).chunk(2, dim=1)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device)
        z = mu + eps * torch.exp(0.5 * logvar)
        rec = F.binary_cross_entropy_with_logits(self.logits(z), x, reduction="sum")
        if self.config.prior_components:
            # log q(z|x) - log p(z) at the drawn z (the constants cancel)
            log_q = -0.5 * (logvar + eps.pow(2)).sum(1)
            log_p = torch.logsumexp(self._log_components(z), dim=1)
            kl = torch.sum(log_q - log_p)
        else:
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return (rec + kl) / x.shape[0]

    def _log_components(self, z: torch.Tensor) -> torch.Tensor:
        """[n, K]: log pi_k + log N(z; mu_k, diag exp(logvar_k)), without the 2 pi term."""
        d = z.unsqueeze(1) - self.prior_mu  # [n, K, latent]
        log_n = -0.5 * (self.prior_logvar + d.pow(2) * torch.exp(-self.prior_logvar)).sum(2)
        return torch.log_softmax(self.prior_logits, 0) + log_n

    def _z(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        eps = torch.randn((n, self.config.latent), generator=generator, device=self.device)
        if not self.config.prior_components:
            return eps
        k = torch.multinomial(torch.softmax(self.prior_logits.detach(), 0), n, replacement=True,
                              generator=generator)
        return self.prior_mu.detach()[k] + eps * torch.exp(0.5 * self.prior_logvar.detach()[k])

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               mean: bool = False) -> dict[str, torch.Tensor]:
        """``n`` binary images ``x ~ p(x|z)``, ``z ~ N(0, I)``: bool ``[n, 1, 28, 28]``.
        ``mean=True``: the decoder's mean thresholded at 0.5 instead of a Bernoulli draw."""
        logits = self.logits(self._z(n, generator))
        if mean:
            return {"x": logits > 0}
        return {"x": torch.bernoulli(torch.sigmoid(logits), generator=generator).bool()}

    @torch.no_grad()
    def sample_means(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.sigmoid(self.logits(self._z(n, generator)))


class VAELearner:
    """One Adam step on the ELBO of a batch of images (own and received alike)."""

    def __init__(self, model: ConvVAE) -> None:
        self.model = model
        cfg = model.config
        self.opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)

    def step(self, x: torch.Tensor, generator: torch.Generator | None = None) -> float:
        if x.shape[0] == 0:
            return float("nan")
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        loss = self.model.loss(x, generator)
        loss.backward()
        self.opt.step()
        return float(loss.detach())
