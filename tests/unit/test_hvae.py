"""Unit tests for the binary hierarchical VAE and its symmetric learner."""

from __future__ import annotations

import math

import pytest
import torch

from p2pgame.models import MODELS, make_model
from p2pgame.models.hvae import (
    CONV_SPATIAL_SIZES,
    HVAE,
    MLP_CONFIG,
    HVAEConfig,
    SymmetricLearner,
)

torch.set_num_threads(1)


def tiny_config(**kw) -> HVAEConfig:
    base = dict(
        arch="mlp",
        nz0=4,
        nz1=8,
        image_shape=(1, 6, 6),
        hidden_z=(16,),
        hidden=(32,),
        lr_p=1e-2,
        lr_q=1e-2,
    )
    base.update(kw)
    return HVAEConfig(**base)


def toy_patterns() -> torch.Tensor:
    """Two fixed, complementary-ish 6x6 binary patterns, shape [2, 1, 6, 6]."""
    a = torch.zeros(6, 6, dtype=torch.bool)
    a[:, :3] = True  # left half
    b = torch.zeros(6, 6, dtype=torch.bool)
    b[::2, :] = True  # stripes
    return torch.stack([a, b])[:, None]


def params_of(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


# --------------------------------------------------------------------------- registry


def test_registry_names_and_errors():
    assert {"hvae-mlp", "hvae-conv"} <= set(MODELS)
    with pytest.raises(KeyError, match="hvae-mlp"):
        make_model("no-such-model")
    with pytest.raises(ValueError, match="unknown HVAEConfig field"):
        make_model("hvae-mlp", not_a_field=3)
    m = make_model("hvae-mlp", nz0=5, hidden=(16,), hidden_z=(8,))
    assert isinstance(m, HVAE)
    assert m.config.nz0 == 5 and m.config.arch == "mlp"
    assert make_model("hvae-conv").config.arch == "conv"


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", ["hvae-mlp", "hvae-conv"])
def test_sample_encode_shapes_and_dtypes(name):
    m = make_model(name, seed=0)
    cfg = m.config
    g = torch.Generator().manual_seed(0)
    s = m.sample(2, g)
    assert set(s) == {"z0", "z1", "x"}
    assert s["z0"].shape == (2, cfg.nz0) and s["z0"].dtype == torch.bool
    assert s["z1"].shape == (2, cfg.nz1) and s["z1"].dtype == torch.bool
    assert s["x"].shape == (2, 1, 28, 28) and s["x"].dtype == torch.bool

    means = m.sample_means(2, g)
    assert means.shape == (2, 1, 28, 28) and means.is_floating_point()
    assert float(means.min()) >= 0.0 and float(means.max()) <= 1.0

    z0, z1 = m.encode(s["x"], g)
    assert z0.shape == (2, cfg.nz0) and z0.dtype == torch.bool
    assert z1.shape == (2, cfg.nz1) and z1.dtype == torch.bool

    assert m.schema() == {
        "z0": ("bool", (cfg.nz0,)),
        "z1": ("bool", (cfg.nz1,)),
        "x": ("bool", (1, 28, 28)),
    }
    # per-example losses are finite scalars
    with torch.no_grad():
        assert math.isfinite(float(m.p_loss(s["z0"], s["z1"], s["x"])))
        assert math.isfinite(float(m.q_loss(s["z0"], s["z1"], s["x"])))
    # empty batches work too
    e = m.sample(0, g)
    assert e["x"].shape == (0, 1, 28, 28)
    assert m.encode(e["x"], g)[0].shape == (0, cfg.nz0)


def test_conv_architecture_spatial_sizes_and_channels():
    m = make_model("hvae-conv", seed=0)
    assert m.config.nz0 + m.config.nz1 == 130
    assert m.config.lr_p == pytest.approx(1e-4) and m.config.lr_q == pytest.approx(1e-4)

    # decoder: 130 -> 128@4 -> 64@9 -> 64@11 -> 64@13 -> 32@27 -> 1@28, tanh in between
    convs = [mod for mod in m.p_x.modules() if isinstance(mod, torch.nn.ConvTranspose2d)]
    assert len(convs) == 6
    assert convs[0].in_channels == 130
    assert [c.out_channels for c in convs] == [128, 64, 64, 64, 32, 1]
    assert sum(isinstance(mod, torch.nn.Tanh) for mod in m.p_x.modules()) == 5
    seen = []
    hooks = [c.register_forward_hook(lambda _m, _i, o: seen.append(tuple(o.shape))) for c in convs]
    z = m.sample(2)
    for h in hooks:
        h.remove()
    assert [s[2] for s in seen] == list(CONV_SPATIAL_SIZES) == [4, 9, 11, 13, 27, 28]
    assert all(s[2] == s[3] for s in seen)

    # encoders mirror it: 28 -> 27 -> 13 -> 11 -> 9 -> 4 -> 1
    for enc, n_out in ((m.q_z1, 100), (m.q_z0, 30)):
        seen.clear()
        cs = [mod for mod in enc.modules() if isinstance(mod, torch.nn.Conv2d)]
        assert [c.out_channels for c in cs] == [32, 64, 64, 64, 128, n_out]
        hooks = [c.register_forward_hook(lambda _m, _i, o: seen.append(tuple(o.shape))) for c in cs]
        m.encode(z["x"])
        for h in hooks:
            h.remove()
        assert [s[2] for s in seen] == [27, 13, 11, 9, 4, 1]

    # p(z1|z0): 30-600-600-100 MLP plus a linear skip
    lins = [mod for mod in m.p_z1.net if isinstance(mod, torch.nn.Linear)]
    assert [(li.in_features, li.out_features) for li in lins] == [(30, 600), (600, 600), (600, 100)]
    assert m.p_z1.skip is not None and m.p_z1.skip.weight.shape == (100, 30)


def test_q_z0_depends_on_z1_in_conv():
    m = make_model("hvae-conv", seed=0)
    x = m.sample(1)["x"]
    z1a = torch.zeros(1, 100, dtype=torch.bool)
    z1b = torch.ones(1, 100, dtype=torch.bool)
    with torch.no_grad():
        la, lb = m.q_z0_logits(z1a, x), m.q_z0_logits(z1b, x)
    assert la.shape == (1, 30)
    assert not torch.allclose(la, lb)


# --------------------------------------------------------------------------- learning


def test_symmetric_learning_fits_toy_patterns():
    torch.manual_seed(0)
    model = HVAE(tiny_config(), seed=0)
    learner = SymmetricLearner(model)
    g = torch.Generator().manual_seed(0)
    pats = toy_patterns()
    data = pats.repeat(16, 1, 1, 1)  # batch of 32

    eval_g = torch.Generator().manual_seed(123)
    elbo_before = float(model.elbo(data, eval_g).mean())
    losses = [learner.step(data, None, g)["p_loss"] for _ in range(150)]
    elbo_after = float(model.elbo(data, torch.Generator().manual_seed(123)).mean())

    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.6 * first, (first, last)
    assert elbo_after > elbo_before + 5.0, (elbo_before, elbo_after)
    # the best possible log-likelihood of two equiprobable patterns is -log 2
    assert -3.0 < elbo_after <= 0.0, elbo_after

    # The generative model now produces (mostly) the two patterns.
    means = model.sample_means(200, torch.Generator().manual_seed(7)) > 0.5
    flat = means.reshape(200, -1)
    match = (flat[:, None, :] == pats.reshape(1, 2, -1)).all(dim=2).any(dim=1)
    assert match.float().mean() > 0.8


def test_synthetic_tuples_enter_p_step_and_q_step():
    model = HVAE(tiny_config(), seed=1)
    learner = SymmetricLearner(model)
    g = torch.Generator().manual_seed(0)
    cfg = model.config
    target = toy_patterns()[:1]  # one fixed image
    syn = {
        "z0": torch.tensor([[1, 0, 1, 0]], dtype=torch.bool).repeat(8, 1),
        "z1": torch.zeros(8, cfg.nz1, dtype=torch.bool),
        "x": target.repeat(8, 1, 1, 1),
    }
    empty_x = torch.zeros(0, *cfg.image_shape, dtype=torch.bool)

    def p_x_nll() -> float:
        with torch.no_grad():
            return float(model.p_loss(syn["z0"][:1], syn["z1"][:1], syn["x"][:1]))

    before_p = [p.detach().clone() for p in model.p_parameters()]
    before_q = [p.detach().clone() for p in model.q_parameters()]
    nll0 = p_x_nll()

    out = learner.step(empty_x, syn, g)
    assert out["n_p"] == 8 and out["n_q"] == 8  # real batch empty -> only synthetic
    assert math.isfinite(out["p_loss"]) and math.isfinite(out["q_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before_p, model.p_parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(before_q, model.q_parameters(), strict=True))

    for _ in range(60):
        learner.step(empty_x, syn, g)
    assert p_x_nll() < 0.2 * nll0
    with torch.no_grad():
        mean_x = torch.sigmoid(model.p_x_logits(syn["z0"][:1], syn["z1"][:1])) > 0.5
    assert torch.equal(mean_x, target)


def test_step_with_empty_inputs():
    model = HVAE(tiny_config(), seed=2)
    learner = SymmetricLearner(model)
    g = torch.Generator().manual_seed(0)
    empty_x = torch.zeros(0, *model.config.image_shape, dtype=torch.bool)
    before = params_of(model)

    out = learner.step(empty_x, None, g)
    assert math.isnan(out["p_loss"]) and math.isnan(out["q_loss"])
    assert out["n_p"] == 0 and out["n_q"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))

    empty_syn = {k: v[:0] for k, v in model.sample(3, g).items()}
    out = learner.step(empty_x, empty_syn, g)
    assert math.isnan(out["p_loss"])

    # real data only, explicit q batch size
    x = toy_patterns()
    out = learner.step(x, None, g, q_batch=5)
    assert out["n_p"] == 2 and out["n_q"] == 5
    # real batch empty but q self-samples requested: only q changes
    before_p = [p.detach().clone() for p in model.p_parameters()]
    out = learner.step(empty_x, {}, g, q_batch=4)
    assert math.isnan(out["p_loss"]) and math.isfinite(out["q_loss"]) and out["n_q"] == 4
    assert all(torch.equal(a, b) for a, b in zip(before_p, model.p_parameters(), strict=True))


def test_step_rejects_malformed_synthetic():
    model = HVAE(tiny_config(), seed=3)
    learner = SymmetricLearner(model)
    x = toy_patterns()
    good = model.sample(2)
    with pytest.raises(ValueError, match="z1"):
        learner.step(x, {"z0": good["z0"], "x": good["x"]})
    with pytest.raises(ValueError, match="shape"):
        learner.step(x, {**good, "z0": torch.zeros(2, 5, dtype=torch.bool)})
    with pytest.raises(ValueError, match="batch size"):
        learner.step(x, {**good, "z1": good["z1"][:1]})
    with pytest.raises(ValueError, match="bool"):
        learner.step(x, {**good, "x": good["x"].float()})
    with pytest.raises(ValueError, match="real_x"):
        learner.step(torch.zeros(2, 1, 5, 5, dtype=torch.bool))
    # integer 0/1 tensors are accepted and converted
    ints = {k: v.to(torch.uint8) for k, v in good.items()}
    assert learner.step(x, ints)["n_p"] == 4


def test_reproducible_with_seed():
    def run(gen_seed: int) -> list[torch.Tensor]:
        model = HVAE(tiny_config(), seed=0)
        learner = SymmetricLearner(model)
        g = torch.Generator().manual_seed(gen_seed)
        x = toy_patterns().repeat(4, 1, 1, 1)
        syn = HVAE(tiny_config(), seed=9).sample(3, torch.Generator().manual_seed(4))
        for _ in range(5):
            learner.step(x, syn, g)
        return params_of(model)

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert any(not torch.equal(u, v) for u, v in zip(a, c, strict=True))

    # seeded init does not depend on (or disturb) the global RNG
    torch.manual_seed(0)
    s0 = torch.rand(1)
    torch.manual_seed(0)
    m1 = HVAE(tiny_config(), seed=5)
    s1 = torch.rand(1)
    m2 = HVAE(tiny_config(), seed=5)
    assert torch.equal(s0, s1)
    assert all(torch.equal(u, v) for u, v in zip(m1.parameters(), m2.parameters(), strict=True))


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"arch": "rnn"}, "arch"),
        ({"nz0": 0}, "nz0"),
        ({"nz1": -3}, "nz1"),
        ({"nz1": 2.5}, "nz1"),
        ({"image_shape": (28, 28)}, "image_shape"),
        ({"image_shape": (1, 0, 28)}, "image_shape"),
        ({"hidden": ()}, "hidden"),
        ({"hidden_z": (16, 0)}, "hidden_z"),
        ({"lr_p": 0.0}, "lr_p"),
        ({"lr_q": float("nan")}, "lr_q"),
        ({"activation": "sigmoidish"}, "activation"),
        ({"arch": "conv", "image_shape": (1, 32, 32)}, "28x28"),
        ({"arch": "conv", "conv_channels": (8, 8)}, "conv_channels"),
        ({"betas": (0.9, 1.5)}, "betas"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        HVAEConfig(**kw)


def test_config_is_frozen_and_hashable():
    cfg = HVAEConfig(hidden=[64, 32])
    assert cfg.hidden == (64, 32)
    hash(cfg)
    with pytest.raises(AttributeError):
        cfg.nz0 = 3  # type: ignore[misc]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    model = HVAE(tiny_config(), seed=0).cuda()
    learner = SymmetricLearner(model)
    g = torch.Generator(device="cuda").manual_seed(0)
    x = toy_patterns().cuda()
    syn = model.sample(3, g)
    assert syn["x"].is_cuda
    out = learner.step(x, syn, g)
    assert math.isfinite(out["p_loss"])
    # a CPU generator also works with a CUDA model
    out = learner.step(x, {k: v.cpu() for k, v in syn.items()}, torch.Generator().manual_seed(1))
    assert math.isfinite(out["q_loss"])


def test_mean_samples_keep_the_latents_and_threshold_the_decoder_mean():
    model = HVAE(MLP_CONFIG, seed=0)
    drawn = model.sample(6, torch.Generator().manual_seed(3), mean=True)
    means = model.sample_means(6, torch.Generator().manual_seed(3))
    assert drawn["x"].dtype == torch.bool and torch.equal(drawn["x"], means > 0.5)
    assert drawn["z0"].shape == (6, MLP_CONFIG.nz0) and drawn["z1"].shape == (6, MLP_CONFIG.nz1)
