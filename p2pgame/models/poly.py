"""The two PolyMNIST players of the paper's Sec. IV-C, and the classifier baseline.

The players live on *different probability spaces* and share only ``(c, s)``: the digit
label and its binary mask.

**The cs player** (:class:`CSVAE`, :class:`CSLearner`) knows ``(c, s)`` only.  Its model
is a conditional VAE ``p(s|c)`` with ``nz`` binary latents: ``p(z)`` uniform bits, a
decoder ``p(s|c,z)`` (an MLP to 784 Bernoulli logits) and an encoder ``q(z|c,s)``,
trained by symmetric learning as :class:`~p2pgame.models.hvae.SymmetricLearner` does
(a p-step on the data completed by ``z ~ q``, a q-step on tuples sampled from ``p``).
What it publishes are the paper's "limiting" samples: a Gibbs chain alternating
``s ~ p(s|c,z)`` and ``z ~ q(z|c,s)``, ended by the decoder mean thresholded at 0.5 (a
clean binary digit rather than a speckled Bernoulli draw).

**The main player** (:class:`PolyMain`, :class:`PolyLearner`) models ``(c, d, z, s, x)``
(digit, style, ``nz`` latent bits, mask, colour image) as a *dependency network*: five
conditionals, each a network of its own, none of them derived from a joint:

* ``p(c | d, z, s, x)``: a small conv net on the 4-channel image ``[x, s]``, with
  ``onehot(d)`` and ``z`` joined before the last layers; the digit classifier the metric
  reads;
* ``p(d | s, x)``: the same trunk, 5 style logits (the style is plain in the colours);
* ``p(z | c, d, s, x)``: the same trunk with ``onehot(c), onehot(d)``; Bernoulli logits.
  ``z`` is never observed: it is the channel through which the mask and image models can
  share what a digit's shape looks like beyond its label;
* ``p(s | c, d, z, x)``: a two-level U-Net on ``x`` with ``(c, d, z)`` added as a
  learnt 14x14 map in the middle, to 28x28 Bernoulli logits (the mask is a pixel-level
  function of ``x``, so the full-resolution path matters);
* ``p(x | c, d, z, s)``: a conditional VAE with a Gaussian latent ``w``.  The decoder
  draws the un-inverted *crop* ``m`` in [0, 1] from ``(c, d, z, w)`` and the pixel mean is
  ``where(s, 1 - m, m)``: the data's inversion under the mask is built in, so the network
  only has to model photograph crops.  One learnt global log-sigma; the encoder
  ``q(w | ...)`` reads the un-inverted crop ``where(s, 1 - x, x)``; trained by the
  reparameterised ELBO.

A training step completes what each example lacks by Gibbs sampling with the main
player's own conditionals (:meth:`PolyMain.complete_own`, :meth:`PolyMain.complete_cs`),
then every conditional takes a likelihood step on the completed examples, with one
exception, **the skip rule**: a conditional does not learn from the examples whose
variable it has itself just sampled.  Their expected gradient is zero (``E_{v~p}[grad
log p(v)] = 0``), so they would add only noise, and for a badly trained conditional they
would reinforce its own mistakes.  So on own ``(c, d, x)`` examples ``p(s|.)`` and
``p(z|.)`` skip; on received ``(c, s)`` examples ``p(x|.)`` and ``p(z|.)`` skip; the style
of a received example is drawn uniformly (not by ``p(d|.)``), so ``p(d|.)`` learns from it.
Consequently ``p(z|.)`` learns from nothing: ``z`` is completed everywhere, it is a latent
whose meaning is set by the conditionals that read it.

Inference for the metric (:meth:`PolyMain.predict_proba`) clamps ``x`` and runs Gibbs
sweeps over ``(c, d, z, s)`` from random values, averaging the class probabilities.

:class:`XClassifier` is the baseline: the same conv trunk on ``x`` alone.

Tensors: ``x`` float ``[n, 3, 28, 28]`` in [0, 1], ``s`` float ``[n, 1, 28, 28]`` in
{0, 1}, ``c``, ``d`` long ``[n]`` (:func:`image_tensors` converts the data set's arrays).
Every random draw takes an explicit :class:`torch.Generator`; ``seed`` fixes the initial
parameters (:func:`~p2pgame.models.seeding.seeded`), so runs are reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from p2pgame.models.seeding import seeded

__all__ = [
    "CSConfig",
    "CSVAE",
    "CSLearner",
    "MainConfig",
    "PolyMain",
    "PolyLearner",
    "XClassifier",
    "image_tensors",
]

_LOG_2PI = math.log(2 * math.pi)
_LOG_2 = math.log(2.0)
_SIDE = 28
_PIXELS = _SIDE * _SIDE


# --------------------------------------------------------------------------- helpers


def image_tensors(x, s=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The data set's arrays as model inputs: ``x`` uint8 ``[n, 28, 28, 3]`` -> float
    ``[n, 3, 28, 28]`` in [0, 1]; ``s`` bool ``[n, 28, 28]`` -> float ``[n, 1, 28, 28]``."""
    xt = torch.as_tensor(x).permute(0, 3, 1, 2).float().div(255.0).contiguous()
    st = None if s is None else torch.as_tensor(s).float().reshape(-1, 1, _SIDE, _SIDE)
    return xt, st


def _uniform(shape: tuple[int, ...], gen: torch.Generator | None,
             dev: torch.device) -> torch.Tensor:
    gdev = gen.device if gen is not None else dev
    return torch.rand(shape, generator=gen, device=gdev).to(dev)


def _normal(shape: tuple[int, ...], gen: torch.Generator | None,
            dev: torch.device) -> torch.Tensor:
    gdev = gen.device if gen is not None else dev
    return torch.randn(shape, generator=gen, device=gdev).to(dev)


def _randint(high: int, n: int, gen: torch.Generator | None, dev: torch.device) -> torch.Tensor:
    gdev = gen.device if gen is not None else dev
    return torch.randint(0, high, (n,), generator=gen, device=gdev).to(dev)


def _bits(shape: tuple[int, ...], gen: torch.Generator | None, dev: torch.device) -> torch.Tensor:
    """Uniform random bits as float {0, 1}."""
    return (_uniform(shape, gen, dev) < 0.5).float()


def _bernoulli(logits: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """A Bernoulli draw (float {0, 1}) with the given logits."""
    return (_uniform(tuple(logits.shape), gen, logits.device) < torch.sigmoid(logits)).float()


def _categorical(logits: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """One categorical draw per row (long), by inverting the CDF with one uniform per row."""
    cdf = torch.softmax(logits, 1).cumsum(1)
    u = _uniform((logits.shape[0], 1), gen, logits.device) * cdf[:, -1:]
    return (cdf < u).sum(1).clamp_max(logits.shape[1] - 1)


def _pm1(v: torch.Tensor) -> torch.Tensor:
    """{0, 1} (or [0, 1]) -> [-1, 1]: centred network inputs."""
    return 2.0 * v - 1.0


def _bce_sum(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example ``-log p(target)`` of independent Bernoulli logits (nats)."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1)


def _check_sweeps(sweeps: int) -> int:
    if sweeps < 1:
        raise ValueError(f"sweeps = {sweeps} must be >= 1")
    return int(sweeps)



# --------------------------------------------------------------------------- the cs player


@dataclass(frozen=True)
class CSConfig:
    """Sizes and settings of a :class:`CSVAE` (paper: 16 latent bits, 100 Gibbs steps)."""

    n_classes: int = 10
    nz: int = 16
    hidden: int = 256
    lr: float = 1e-3
    gibbs_steps: int = 100

    def __post_init__(self) -> None:
        if not 2 <= self.n_classes <= 256:
            raise ValueError(f"n_classes = {self.n_classes} must lie in [2, 256]")
        if self.nz < 1 or self.hidden < 1:
            raise ValueError(f"nz = {self.nz} and hidden = {self.hidden} must be >= 1")
        if not self.lr > 0 or self.gibbs_steps < 0:
            raise ValueError(f"lr must be > 0 and gibbs_steps >= 0, got {self.lr}, "
                             f"{self.gibbs_steps}")


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, n_out))


class CSVAE(nn.Module):
    """Conditional binary VAE ``p(s|c) = sum_z p(z) p(s|c,z)`` with encoder ``q(z|c,s)``.

    Both networks are MLPs with two tanh hidden layers of ``hidden`` units; bits enter as
    +-1.  ``p(z)`` is uniform, so it has no parameters.
    """

    def __init__(self, config: CSConfig | None = None, *, seed: int | None = None) -> None:
        super().__init__()
        self.config = cfg = config or CSConfig()
        with seeded(seed):
            self.p_s = _mlp(cfg.n_classes + cfg.nz, cfg.hidden, _PIXELS)
            self.q_z = _mlp(cfg.n_classes + _PIXELS, cfg.hidden, cfg.nz)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _onehot(self, c: torch.Tensor) -> torch.Tensor:
        return F.one_hot(c.long(), self.config.n_classes).float()

    def s_logits(self, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Logits of ``p(s|c,z)``, ``[n, 1, 28, 28]``."""
        out = self.p_s(torch.cat([self._onehot(c), _pm1(z)], 1))
        return out.reshape(-1, 1, _SIDE, _SIDE)

    def z_logits(self, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Logits of ``q(z|c,s)``, ``[n, nz]``."""
        return self.q_z(torch.cat([self._onehot(c), _pm1(s.flatten(1))], 1))

    @torch.no_grad()
    def sample(self, n: int, gen: torch.Generator | None = None, c: torch.Tensor | None = None,
               gibbs_steps: int | None = None) -> dict[str, torch.Tensor]:
        """``n`` limiting samples: ``c`` uniform (unless given), ``z ~ p(z)``, then
        ``gibbs_steps`` (default ``config.gibbs_steps``) times ``s ~ p(s|c,z)``,
        ``z ~ q(z|c,s)``; ``s`` is the mean ``p(s=1|c,z)`` thresholded at 0.5.  With 0
        steps that is the thresholded mean of a plain ancestral draw.  Returns ``{"c": long
        [n], "s": float [n, 1, 28, 28] in {0, 1}}``."""
        cfg = self.config
        k = cfg.gibbs_steps if gibbs_steps is None else int(gibbs_steps)
        if n < 0 or k < 0:
            raise ValueError(f"n = {n} and gibbs_steps = {k} must be >= 0")
        dev = self.device
        c = _randint(cfg.n_classes, n, gen, dev) if c is None else c.to(dev).long()
        if len(c) != n:
            raise ValueError(f"{len(c)} labels given for n = {n}")
        z = _bits((n, cfg.nz), gen, dev)
        for _ in range(k):
            s = _bernoulli(self.s_logits(c, z), gen)
            z = _bernoulli(self.z_logits(c, s), gen)
        return {"c": c, "s": (self.s_logits(c, z) > 0).float()}

    def p_nll(self, c: torch.Tensor, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Per-example ``-log p(z) - log p(s|c,z)`` (nats)."""
        return self.config.nz * _LOG_2 + _bce_sum(self.s_logits(c, z), s)

    def q_nll(self, c: torch.Tensor, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Per-example ``-log q(z|c,s)`` (nats)."""
        return _bce_sum(self.z_logits(c, s), z)


class CSLearner:
    """Symmetric learning of a :class:`CSVAE`, one Adam for ``p`` and one for ``q``."""

    def __init__(self, model: CSVAE) -> None:
        self.model = model
        lr = model.config.lr
        self.opt_p = torch.optim.Adam(model.p_s.parameters(), lr=lr)
        self.opt_q = torch.optim.Adam(model.q_z.parameters(), lr=lr)
        self.steps = 0

    def step(self, c: torch.Tensor, s: torch.Tensor,
             gen: torch.Generator | None = None) -> dict[str, float]:
        """p-step on ``(c, z ~ q(z|c,s), s)``; q-step on as many ``c`` uniform, ``z ~ p(z)``,
        ``s ~ p(s|c,z)``.  Returns the two losses (mean negative log-likelihoods)."""
        m = self.model
        m.train()
        dev = m.device
        c, s = c.to(dev).long(), s.to(dev).float().reshape(-1, 1, _SIDE, _SIDE)
        n = len(c)
        if n == 0:
            return {"p_loss": float("nan"), "q_loss": float("nan")}
        with torch.no_grad():
            z = _bernoulli(m.z_logits(c, s), gen)
        self.opt_p.zero_grad(set_to_none=True)
        p_loss = m.p_nll(c, z, s).mean()
        p_loss.backward()
        self.opt_p.step()

        with torch.no_grad():
            cq = _randint(m.config.n_classes, n, gen, dev)
            zq = _bits((n, m.config.nz), gen, dev)
            sq = _bernoulli(m.s_logits(cq, zq), gen)
        self.opt_q.zero_grad(set_to_none=True)
        q_loss = m.q_nll(cq, zq, sq).mean()
        q_loss.backward()
        self.opt_q.step()
        self.steps += 1
        return {"p_loss": float(p_loss.detach()), "q_loss": float(q_loss.detach())}


# --------------------------------------------------------------------------- the main player


@dataclass(frozen=True)
class MainConfig:
    """Sizes and settings of a :class:`PolyMain`.

    ``width``: convolution channels (CPU-small; the trunks use ``width // 2`` then
    ``width``, hidden layers ``4 * width``).  ``nw``: the x model's Gaussian latent (the
    paper: 256).  ``gibbs_sweeps``: sweeps completing a training example (paper: 10);
    ``infer_sweeps``: sweeps of :meth:`PolyMain.predict_proba` (paper: 100).
    ``x_noise``: whether a completed ``x`` carries the x model's Gaussian pixel noise
    (off: the decoder mean for a sampled ``w``, so synthetic images are as noise-free as
    real ones and the classifiers see no pixel noise that real data never has).
    """

    n_classes: int = 10
    n_styles: int = 5
    nz: int = 16
    width: int = 32
    nw: int = 32
    lr: float = 1e-3
    gibbs_sweeps: int = 10
    infer_sweeps: int = 100
    x_noise: bool = False

    def __post_init__(self) -> None:
        if not 2 <= self.n_classes <= 256 or not 1 <= self.n_styles <= 256:
            raise ValueError(f"n_classes = {self.n_classes} must lie in [2, 256] and "
                             f"n_styles = {self.n_styles} in [1, 256]")
        if min(self.nz, self.nw) < 1 or self.width < 4:
            raise ValueError(f"nz, nw must be >= 1 and width >= 4, got {self.nz}, {self.nw}, "
                             f"{self.width}")
        if not self.lr > 0 or self.gibbs_sweeps < 1 or self.infer_sweeps < 1:
            raise ValueError("lr must be > 0 and gibbs_sweeps, infer_sweeps >= 1")


class _ConvNet(nn.Module):
    """Image ``[n, C, 28, 28]`` (+ an extra vector) -> ``n_out`` outputs.

    Two stride-2 3x3 convolutions (28 -> 14 -> 7), a linear layer to ``4 * width``
    features; the extra inputs are joined there, before two linear layers.  About 0.5M
    multiply-adds per image at width 32: cheap enough for Gibbs sweeps on a CPU.
    """

    def __init__(self, c_in: int, width: int, n_extra: int, n_out: int) -> None:
        super().__init__()
        half, hidden = width // 2, 4 * width
        self.trunk = nn.Sequential(
            nn.Conv2d(c_in, half, 3, 2, 1), nn.ReLU(),          # 14
            nn.Conv2d(half, width, 3, 2, 1), nn.ReLU(),         # 7
            nn.Flatten(), nn.Linear(width * 49, hidden), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(hidden + n_extra, hidden), nn.ReLU(),
                                  nn.Linear(hidden, n_out))

    def forward(self, img: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        h = self.trunk(img)
        if extra is not None:
            h = torch.cat([h, extra], 1)
        return self.head(h)


class _MaskNet(nn.Module):
    """``p(s | c, d, z, x)``: a small fully convolutional net to 28x28 Bernoulli logits.

    It works at half resolution on the space-to-depth image (each 2x2 block of pixels as
    12 channels) and ends with depth-to-space, so every output pixel has its own weights
    while the convolutions run on 14x14 maps with ``width // 2`` channels: on a CPU a
    convolution with a handful of channels at 28x28 costs ten times more per
    multiply-add.  Three 3x3 layers (a 14x14-pixel receptive field, enough to tell an
    inverted stroke from the crop around it), a residual connection around the middle
    one, to which the condition ``(c, d, z)`` is added as a learnt 14x14 map (so a label
    and the latent bits can carry a shape prior).
    """

    def __init__(self, width: int, n_cond: int) -> None:
        super().__init__()
        self.b = b = width // 2
        self.inp = nn.Conv2d(12, b, 3, 1, 1)
        self.cond = nn.Linear(n_cond, b * 14 * 14)
        self.mid = nn.Conv2d(b, b, 3, 1, 1)
        self.out = nn.Conv2d(b, 4, 3, 1, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.inp(F.pixel_unshuffle(_pm1(x), 2)))
        h = h + F.relu(self.mid(h) + self.cond(cond).view(-1, self.b, 14, 14))
        return F.pixel_shuffle(self.out(h), 2)


class _ImageVAE(nn.Module):
    """``p(x | c, d, z, s)``: a conditional VAE with a Gaussian latent ``w`` (see module)."""

    def __init__(self, width: int, n_cond: int, nw: int) -> None:
        super().__init__()
        b = width // 2
        self.nw, self.b = nw, b
        self.dec_in = nn.Linear(n_cond + nw, b * 49)
        self.dec = nn.Sequential(
            nn.ReLU(), nn.Unflatten(1, (b, 7, 7)),
            nn.ConvTranspose2d(b, b, 4, 2, 1), nn.ReLU(),       # 14
            nn.Conv2d(b, 12, 3, 1, 1), nn.PixelShuffle(2))      # 28 (depth-to-space)
        # q(w | crop, s, c, d, z): reads the un-inverted crop and the mask.
        self.enc = _ConvNet(4, width, n_cond, 2 * nw)
        self.log_sigma = nn.Parameter(torch.tensor(math.log(0.1)))

    def crop_mean(self, cond: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The un-inverted crop's mean ``m`` in [0, 1], ``[n, 3, 28, 28]``."""
        return torch.sigmoid(self.dec(self.dec_in(torch.cat([cond, w], 1))))

    @staticmethod
    def invert(v: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """``where(s, 1 - v, v)``: the data's colour inversion under the mask (an
        involution, so it also undoes it)."""
        return torch.where(s > 0.5, 1.0 - v, v)

    def sample(self, cond: torch.Tensor, s: torch.Tensor, gen: torch.Generator | None,
               noise: bool) -> torch.Tensor:
        w = _normal((len(cond), self.nw), gen, cond.device)
        x = self.invert(self.crop_mean(cond, w), s)
        if noise:
            x = (x + self.log_sigma.exp() * _normal(tuple(x.shape), gen, x.device)).clamp(0, 1)
        return x

    def nelbo(self, x: torch.Tensor, s: torch.Tensor, cond: torch.Tensor,
              gen: torch.Generator | None) -> torch.Tensor:
        """Per-example negative ELBO (nats): Gaussian reconstruction + KL(q(w) || N(0, I))."""
        crop = self.invert(x, s)
        mu, logvar = self.enc(torch.cat([_pm1(crop), _pm1(s)], 1), cond).chunk(2, 1)
        logvar = logvar.clamp(-12.0, 8.0)
        w = mu + (0.5 * logvar).exp() * _normal(tuple(mu.shape), gen, mu.device)
        # Comparing crops is comparing images: the inversion is an isometry per pixel.
        m = self.crop_mean(cond, w)
        ls = self.log_sigma
        rec = (0.5 * ((crop - m) / ls.exp()) ** 2 + ls + 0.5 * _LOG_2PI).flatten(1).sum(1)
        kl = 0.5 * (mu ** 2 + logvar.exp() - 1.0 - logvar).sum(1)
        return rec + kl


class PolyMain(nn.Module):
    """The main player's dependency network on ``(c, d, z, s, x)`` (see the module)."""

    VARIABLES = ("c", "d", "z", "s", "x")

    def __init__(self, config: MainConfig | None = None, *, seed: int | None = None) -> None:
        super().__init__()
        self.config = cfg = config or MainConfig()
        k, n_d, nz, w = cfg.n_classes, cfg.n_styles, cfg.nz, cfg.width
        with seeded(seed):
            self.p_c = _ConvNet(4, w, n_d + nz, k)
            self.p_d = _ConvNet(4, w, 0, n_d)
            self.p_z = _ConvNet(4, w, k + n_d, nz)
            self.p_s = _MaskNet(w, k + n_d + nz)
            self.p_x = _ImageVAE(w, k + n_d + nz, cfg.nw)

    @property
    def device(self) -> torch.device:
        return self.p_x.log_sigma.device

    def conditional(self, var: str) -> nn.Module:
        """The submodule of ``p(var | rest)``."""
        if var not in self.VARIABLES:
            raise ValueError(f"unknown variable {var!r}; known: {self.VARIABLES}")
        return getattr(self, f"p_{var}")

    # -- the conditionals (logits; bits enter the networks as +-1)

    def _c1h(self, c: torch.Tensor) -> torch.Tensor:
        return F.one_hot(c.long(), self.config.n_classes).float()

    def _d1h(self, d: torch.Tensor) -> torch.Tensor:
        return F.one_hot(d.long(), self.config.n_styles).float()

    @staticmethod
    def _img(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return torch.cat([_pm1(x), _pm1(s)], 1)

    def _cdz(self, c: torch.Tensor, d: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._c1h(c), self._d1h(d), _pm1(z)], 1)

    def c_logits(self, d, z, s, x) -> torch.Tensor:
        return self.p_c(self._img(x, s), torch.cat([self._d1h(d), _pm1(z)], 1))

    def d_logits(self, s, x) -> torch.Tensor:
        return self.p_d(self._img(x, s))

    def z_logits(self, c, d, s, x) -> torch.Tensor:
        return self.p_z(self._img(x, s), torch.cat([self._c1h(c), self._d1h(d)], 1))

    def s_logits(self, c, d, z, x) -> torch.Tensor:
        return self.p_s(x, self._cdz(c, d, z))

    def sample_x(self, c, d, z, s, gen: torch.Generator | None) -> torch.Tensor:
        """``x ~ p(x|c,d,z,s)`` with ``w ~ N(0, I)``: the decoder mean, plus the Gaussian
        pixel noise when ``config.x_noise``."""
        return self.p_x.sample(self._cdz(c, d, z), s, gen, self.config.x_noise)

    # -- Gibbs completion (no gradients)

    @torch.no_grad()
    def complete_own(self, c: torch.Tensor, d: torch.Tensor, x: torch.Tensor,
                     gen: torch.Generator | None = None, sweeps: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, s)`` for own examples ``(c, d, x)``: ``z`` random bits, then ``sweeps``
        (default ``config.gibbs_sweeps``) sweeps of ``s ~ p(s|.)``, ``z ~ p(z|.)``."""
        sweeps = _check_sweeps(self.config.gibbs_sweeps if sweeps is None else sweeps)
        c, d, x = self._as_long(c), self._as_long(d), self._as_image(x, 3)
        z = _bits((len(c), self.config.nz), gen, self.device)
        for _ in range(sweeps):
            s = _bernoulli(self.s_logits(c, d, z, x), gen)
            z = _bernoulli(self.z_logits(c, d, s, x), gen)
        return z, s

    @torch.no_grad()
    def complete_cs(self, c: torch.Tensor, s: torch.Tensor, gen: torch.Generator | None = None,
                    sweeps: int | None = None, d: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(d, z, x)`` for received ``(c, s)``: ``d`` uniform (unless given), ``z`` random
        bits, then ``sweeps`` sweeps of ``x ~ p(x|.)`` (see :meth:`sample_x`), ``z ~ p(z|.)``."""
        sweeps = _check_sweeps(self.config.gibbs_sweeps if sweeps is None else sweeps)
        c, s = self._as_long(c), self._as_image(s, 1)
        n, dev = len(c), self.device
        d = _randint(self.config.n_styles, n, gen, dev) if d is None else self._as_long(d)
        z = _bits((n, self.config.nz), gen, dev)
        for _ in range(sweeps):
            x = self.sample_x(c, d, z, s, gen)
            z = _bernoulli(self.z_logits(c, d, s, x), gen)
        return d, z, x

    @torch.no_grad()
    def generate(self, c: torch.Tensor, s: torch.Tensor, gen: torch.Generator | None = None,
                 d: torch.Tensor | None = None, sweeps: int | None = None) -> torch.Tensor:
        """Images ``x`` for given ``(c, s)`` (a grid): ``d`` cycles through the styles
        unless given, ``z`` as in :meth:`complete_cs`; the decoder mean for a sampled ``w``
        (never pixel noise)."""
        c = self._as_long(c)
        if d is None:
            d = torch.arange(len(c), device=self.device) % self.config.n_styles
        d, z, _ = self.complete_cs(c, s, gen, sweeps, d=d)
        s = self._as_image(s, 1)
        return self.p_x.sample(self._cdz(c, d, z), s, gen, noise=False)

    # -- inference for the metric

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor, gen: torch.Generator | None = None,
                      sweeps: int | None = None, chunk: int = 1000) -> torch.Tensor:
        """``p(c | x)`` estimated by Gibbs sampling, float ``[n, n_classes]``.

        ``x`` is clamped; ``c, d, z, s`` start at random; each of ``sweeps`` (default
        ``config.infer_sweeps``) sweeps samples the four in a random order (one order per
        sweep, drawn from ``gen``) from their conditionals.  The estimate is the average
        over sweeps of the softmax of ``p(c|d,z,s,x)`` from which ``c`` is drawn in that
        sweep (a Rao-Blackwellised estimate of the marginal; it costs no extra network
        call).  Images are processed ``chunk`` at a time, which bounds memory.
        """
        sweeps = _check_sweeps(self.config.infer_sweeps if sweeps is None else sweeps)
        x = self._as_image(x, 3)
        if len(x) == 0:
            return torch.zeros(0, self.config.n_classes, device=self.device)
        return torch.cat([self._infer(x[i:i + chunk], gen, sweeps)
                          for i in range(0, len(x), chunk)])

    def _infer(self, x: torch.Tensor, gen: torch.Generator | None, sweeps: int) -> torch.Tensor:
        cfg, n, dev = self.config, len(x), self.device
        c = _randint(cfg.n_classes, n, gen, dev)
        d = _randint(cfg.n_styles, n, gen, dev)
        z = _bits((n, cfg.nz), gen, dev)
        s = _bits((n, 1, _SIDE, _SIDE), gen, dev)
        acc = torch.zeros(n, cfg.n_classes, device=dev)
        gdev = gen.device if gen is not None else "cpu"
        for _ in range(sweeps):
            for v in torch.randperm(4, generator=gen, device=gdev).tolist():
                if v == 0:
                    logits = self.c_logits(d, z, s, x)
                    acc += torch.softmax(logits, 1)
                    c = _categorical(logits, gen)
                elif v == 1:
                    d = _categorical(self.d_logits(s, x), gen)
                elif v == 2:
                    z = _bernoulli(self.z_logits(c, d, s, x), gen)
                else:
                    s = _bernoulli(self.s_logits(c, d, z, x), gen)
        return acc / sweeps

    def predict(self, x: torch.Tensor, gen: torch.Generator | None = None,
                sweeps: int | None = None, chunk: int = 1000) -> torch.Tensor:
        """The argmax of :meth:`predict_proba`, long ``[n]``."""
        return self.predict_proba(x, gen, sweeps, chunk).argmax(1)

    # -- losses: per-example negative log-likelihood of each conditional's variable

    def nll(self, var: str, t: dict[str, torch.Tensor],
            gen: torch.Generator | None = None) -> torch.Tensor:
        """``-log p(var | rest)`` per example of the complete tuples ``t`` (for ``x``: the
        negative ELBO, with ``w`` drawn from ``gen``)."""
        c, d, z, s, x = (t[k] for k in self.VARIABLES)
        if var == "c":
            return F.cross_entropy(self.c_logits(d, z, s, x), c, reduction="none")
        if var == "d":
            return F.cross_entropy(self.d_logits(s, x), d, reduction="none")
        if var == "z":
            return _bce_sum(self.z_logits(c, d, s, x), z)
        if var == "s":
            return _bce_sum(self.s_logits(c, d, z, x), s)
        if var == "x":
            return self.p_x.nelbo(x, s, self._cdz(c, d, z), gen)
        raise ValueError(f"unknown variable {var!r}; known: {self.VARIABLES}")

    # -- input checks

    def _as_long(self, v: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(v).to(self.device).long().reshape(-1)

    def _as_image(self, v: torch.Tensor, channels: int) -> torch.Tensor:
        v = torch.as_tensor(v).to(self.device).float()
        if v.dim() == 3 and channels == 1:
            v = v.unsqueeze(1)
        if tuple(v.shape[1:]) != (channels, _SIDE, _SIDE):
            raise ValueError(f"expected [n, {channels}, 28, 28], got {tuple(v.shape)}")
        return v


class PolyLearner:
    """One training step of a :class:`PolyMain` on own and received examples.

    One Adam with a parameter group per conditional: the conditionals share no
    parameters and Adam's moments are per parameter, so this is five independent
    optimisers; a conditional with no examples in a step gets no gradient and is left
    exactly as it was (Adam skips parameters without a gradient).
    """

    # Per group: the variables its examples had completed by the model's own conditionals.
    # Those conditionals skip the group (the skip rule).
    SAMPLED = {"own": frozenset({"s", "z"}), "received": frozenset({"x", "z"})}

    def __init__(self, model: PolyMain) -> None:
        self.model = model
        groups = [{"params": list(model.conditional(v).parameters()), "name": v}
                  for v in model.VARIABLES]
        self.opt = torch.optim.Adam(groups, lr=model.config.lr)
        self.steps = 0

    def step(self, own: dict[str, torch.Tensor] | None, received: dict[str, torch.Tensor] | None,
             gen: torch.Generator | None = None, sweeps: int | None = None) -> dict[str, float]:
        """``own``: ``{"c", "d", "x"}`` (or None), ``received``: ``{"c", "s"}`` (or None).

        Completes both groups by Gibbs sampling, then each conditional takes one
        likelihood step on the groups it may learn from.  Returns ``{v}_loss`` (mean
        negative log-likelihood per example, NaN when it learnt from nothing) and ``n_{v}``
        (the number of examples it learnt from) for ``v`` in ``c, d, z, s, x``.
        """
        m = self.model
        m.train()
        groups: dict[str, dict[str, torch.Tensor]] = {}
        if own is not None and len(own["c"]):
            c, d, x = m._as_long(own["c"]), m._as_long(own["d"]), m._as_image(own["x"], 3)
            z, s = m.complete_own(c, d, x, gen, sweeps)
            groups["own"] = {"c": c, "d": d, "z": z, "s": s, "x": x}
        if received is not None and len(received["c"]):
            c, s = m._as_long(received["c"]), m._as_image(received["s"], 1)
            d, z, x = m.complete_cs(c, s, gen, sweeps)
            groups["received"] = {"c": c, "d": d, "z": z, "s": s, "x": x}

        out: dict[str, float] = {}
        total = None
        for v in m.VARIABLES:
            parts = [g for name, g in groups.items() if v not in self.SAMPLED[name]]
            n = sum(len(g["c"]) for g in parts)
            out[f"n_{v}"] = float(n)
            out[f"{v}_loss"] = float("nan")
            if n == 0:
                continue
            batch = {k: torch.cat([g[k] for g in parts]) for k in m.VARIABLES}
            loss = m.nll(v, batch, gen).mean()
            out[f"{v}_loss"] = float(loss.detach())
            total = loss if total is None else total + loss
        if total is not None:
            self.opt.zero_grad(set_to_none=True)
            total.backward()
            self.opt.step()
        self.steps += 1
        return out


# --------------------------------------------------------------------------- baseline


class XClassifier(nn.Module):
    """The baseline: ``p(c | x)`` from ``x`` alone, with the trunk of ``p(c|.)``."""

    def __init__(self, n_classes: int = 10, width: int = 32, lr: float = 1e-3,
                 seed: int | None = None) -> None:
        super().__init__()
        with seeded(seed):
            self.net = _ConvNet(3, width, 0, n_classes)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(_pm1(x))

    def step(self, x: torch.Tensor, c: torch.Tensor) -> float:
        """One Adam step on the cross-entropy; returns the loss."""
        self.train()
        dev = next(self.parameters()).device
        loss = F.cross_entropy(self(x.to(dev).float()), c.to(dev).long())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    @torch.no_grad()
    def predict(self, x: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
        dev = next(self.parameters()).device
        return torch.cat([self(x[i:i + chunk].to(dev).float()).argmax(1)
                          for i in range(0, len(x), chunk)])
