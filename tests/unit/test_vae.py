"""The convolutional VAE: shapes, seeded reproducibility, and that the ELBO step learns."""

from __future__ import annotations

import pytest
import torch

from p2pgame.models import MODELS, ConvVAE, ConvVAEConfig, VAELearner, make_model


def _patterns(n: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    templates = torch.rand((2, 1, 28, 28), generator=g) < 0.3
    return templates[torch.arange(n) % 2]


def test_registered_and_seeded() -> None:
    assert "vae-conv" in MODELS
    a, b = make_model("vae-conv", seed=3), make_model("vae-conv", seed=3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    c = make_model("vae-conv", seed=4)
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(),
                                                         strict=True))


def test_sample_is_binary_images_and_reproducible() -> None:
    m = ConvVAE(seed=0)
    x1 = m.sample(5, torch.Generator().manual_seed(1))["x"]
    x2 = m.sample(5, torch.Generator().manual_seed(1))["x"]
    assert x1.dtype == torch.bool and x1.shape == (5, 1, 28, 28) and torch.equal(x1, x2)
    means = m.sample_means(4, torch.Generator().manual_seed(1))
    assert means.shape == (4, 1, 28, 28) and 0 <= means.min() and means.max() <= 1


def test_elbo_steps_lower_the_loss() -> None:
    m = ConvVAE(ConvVAEConfig(latent=4), seed=0)
    learner = VAELearner(m)
    x = _patterns()
    g = torch.Generator().manual_seed(0)
    first = learner.step(x, g)
    for _ in range(30):
        last = learner.step(x, g)
    assert last < 0.5 * first
    assert learner.step(x[:0], g) != learner.step(x[:0], g)  # empty batch: NaN, no update


def test_game_lr_sets_the_vae_learning_rate() -> None:
    assert make_model("vae-conv", lr_p=0.01, lr_q=0.01).config.lr == 0.01
    with pytest.raises(ValueError):
        ConvVAEConfig(lr=0.0)


def test_mean_samples_are_the_thresholded_decoder_means() -> None:
    m = ConvVAE(seed=0)
    x = m.sample(6, torch.Generator().manual_seed(2), mean=True)["x"]
    means = m.sample_means(6, torch.Generator().manual_seed(2))
    assert x.dtype == torch.bool and torch.equal(x, means > 0.5)


def test_refine_adds_decoder_convolutions_and_learns_soft_targets() -> None:
    plain, refined = ConvVAE(seed=0), ConvVAE(ConvVAEConfig(latent=4, refine=2), seed=0)
    convs = [m for m in refined.dec if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2 and all(c.kernel_size == (3, 3) for c in convs)
    assert not any(isinstance(m, torch.nn.Conv2d) for m in plain.dec)  # default unchanged
    means = refined.sample_means(3, torch.Generator().manual_seed(0))
    assert means.shape == (3, 1, 28, 28)
    # soft targets (another VAE's means, as on the game's ``px``) lower the same loss
    learner = VAELearner(refined)
    x = _patterns().float() * 0.8 + 0.1
    g = torch.Generator().manual_seed(0)
    # the loss cannot go below the targets' own entropy: what is learnt is the excess
    floor = float(-(x * x.log() + (1 - x) * (1 - x).log()).sum() / len(x))
    first = learner.step(x, g) - floor
    for _ in range(60):
        last = learner.step(x, g) - floor
    assert last < 0.5 * first
    with pytest.raises(ValueError):
        ConvVAEConfig(refine=-1)


def _game(**algorithm) -> dict:
    """A two-peer game on MNIST (the old form, [algorithm] name = "game"), as a raw table."""
    return {"topology": {"n": 2, "graph": "complete"},
            "data": {"dataset": "mnist", "partition": {"kind": "iid"}},
            "algorithm": {"name": "game", **algorithm}}


@pytest.mark.parametrize("key,value", [("refine", 1), ("prior_components", 10)])
def test_vae_conv_keys_are_refused_elsewhere(key: str, value: int) -> None:
    from p2pgame.config import ScenarioError
    from p2pgame.learners.images import VAEConfig
    from p2pgame.scenario import expand_preset, resolve

    assert getattr(VAEConfig(kind="vae-conv", **{key: value}), key) == value
    s = resolve(_game(model="vae-conv", **{key: value}), "x.toml")
    assert s.learner == VAEConfig(kind="vae-conv", **{key: value})
    with pytest.raises(ScenarioError, match=f"^x.toml: algorithm.{key}: applies only to "
                                            "vae-conv learners, not 'hvae-mlp'$"):
        resolve(_game(model="hvae-mlp", **{key: value}), "x.toml")
    # (changed: the key is refused wherever it is written, its default value included; the
    # old GameConfig let a default value through)
    with pytest.raises(ScenarioError, match=f"algorithm.{key}: applies only to vae-conv"):
        resolve(_game(model="hvae-mlp", **{key: 0}), "x.toml")
    new = expand_preset(_game(model="hvae-mlp", **{key: value}))[0]
    assert new["learner"] == {"kind": "hvae-mlp", key: value}
    with pytest.raises(ScenarioError, match=f"^x.toml: learner.{key}: applies only to "
                                            "vae-conv learners, not 'hvae-mlp'$"):
        resolve(new, "x.toml")
    with pytest.raises(ScenarioError, match=f"learner.{key}: must be >= 0"):
        VAEConfig(kind="vae-conv", **{key: -1})
    with pytest.raises(ScenarioError, match=f"^x.toml: algorithm.{key}: must be >= 0"):
        resolve(_game(model="vae-conv", **{key: -1}), "x.toml")


def test_mixture_prior_kl_estimate_is_unbiased() -> None:
    """One component at N(0, I): the loss, whose KL term is then estimated from the drawn z,
    averages to the loss with the closed-form KL (same weights, same draws)."""
    plain = ConvVAE(ConvVAEConfig(latent=4), seed=0)
    mixture = ConvVAE(ConvVAEConfig(latent=4, prior_components=1), seed=0)
    with torch.no_grad():
        mixture.prior_mu.zero_()
        mixture.prior_logvar.zero_()
    x = _patterns(8)
    diffs = []
    with torch.no_grad():
        for seed in range(2000):
            a = plain.loss(x, torch.Generator().manual_seed(seed))
            b = mixture.loss(x, torch.Generator().manual_seed(seed))
            diffs.append(float(b - a))
    mean = sum(diffs) / len(diffs)
    spread = (sum((d - mean) ** 2 for d in diffs) / len(diffs)) ** 0.5
    assert spread > 0  # an estimate, not the closed form
    assert abs(mean) < 4 * spread / len(diffs) ** 0.5


def test_mixture_prior_samples_its_components() -> None:
    model = ConvVAE(ConvVAEConfig(latent=2, prior_components=2), seed=0)
    with torch.no_grad():
        model.prior_mu.copy_(torch.tensor([[-10.0, 0.0], [10.0, 0.0]]))
        model.prior_logvar.fill_(-4.0)
        model.prior_logits.copy_(torch.tensor([0.0, torch.log(torch.tensor(3.0))]))
    z = model._z(4000, torch.Generator().manual_seed(0))
    right = (z[:, 0] > 0).float().mean()
    assert abs(float(right) - 0.75) < 0.03  # weights 1 : 3
    assert float((z[:, 0].abs() - 10).abs().max()) < 1.0  # each z near its component's mean
    means = model.sample_means(5, torch.Generator().manual_seed(1))
    assert means.shape == (5, 1, 28, 28)


def test_mixture_prior_is_learnt_with_the_rest() -> None:
    model = ConvVAE(ConvVAEConfig(latent=4, prior_components=3), seed=0)
    learner = VAELearner(model)
    before = model.prior_mu.detach().clone()
    g = torch.Generator().manual_seed(0)
    x = _patterns()
    first = learner.step(x, g)
    for _ in range(60):
        last = learner.step(x, g)
    assert last < first
    assert not torch.equal(before, model.prior_mu.detach())
    with pytest.raises(ValueError):
        ConvVAEConfig(prior_components=-1)


@pytest.mark.parametrize("m,k", [(64, 64), (64, 10), (5, 12), (1, 3)])
def test_received_examples_are_used_once_before_any_twice(m: int, k: int) -> None:
    # A step's k received examples from a message of m: every example once before any
    # twice, so k = m uses the whole message (with replacement, about 37 % of it would be
    # left out and others repeated).
    from p2pgame.learners.images import pick_received

    pick = pick_received(m, k, torch.Generator().manual_seed(0))
    counts = torch.bincount(pick, minlength=m)
    assert len(pick) == k and int(pick.min()) >= 0 and int(pick.max()) < m
    assert int(counts.max()) - int(counts.min()) <= 1
    same = pick_received(m, k, torch.Generator().manual_seed(0))
    assert torch.equal(pick, same)  # drawn from the player's generator alone
