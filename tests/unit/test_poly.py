"""The PolyMNIST players (models/poly.py): shapes, seeding, the skip rule, and that they learn.

Tiny models and synthetic data only: a fixed mask pattern per class, composited onto a
flat colour per style with the colours inverted under the mask, as PolyMNIST does.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from p2pgame.models.poly import (
    CSVAE,
    CSConfig,
    CSLearner,
    MainConfig,
    PolyLearner,
    PolyMain,
    XClassifier,
    image_tensors,
)

K, D = 3, 2  # classes, styles of the toy problem
TINY = MainConfig(n_classes=K, n_styles=D, nz=4, width=8, nw=4, lr=3e-3, gibbs_sweeps=2,
                  infer_sweeps=4)
CS_TINY = CSConfig(n_classes=K, nz=4, hidden=64, lr=3e-3, gibbs_steps=3)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _patterns() -> torch.Tensor:
    """One binary 28x28 mask per class: a horizontal bar, a vertical bar, a square ring."""
    p = torch.zeros(K, 1, 28, 28)
    p[0, 0, 12:16, 4:24] = 1
    p[1, 0, 4:24, 12:16] = 1
    p[2, 0, 6:22, 6:22] = 1
    p[2, 0, 10:18, 10:18] = 0
    return p


def _toy(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """(c, d, s, x): the class's mask over a noisy flat colour of the style, inverted under it."""
    g = _gen(seed)
    c = torch.randint(0, K, (n,), generator=g)
    d = torch.randint(0, D, (n,), generator=g)
    colours = torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.3, 0.8]])[:, :, None, None]
    crop = (colours[d] + 0.1 * torch.randn((n, 3, 28, 28), generator=g)).clamp(0, 1)
    s = _patterns()[c]
    x = torch.where(s > 0.5, 1 - crop, crop)
    return {"c": c, "d": d, "s": s, "x": x}


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


def _binary(t: torch.Tensor) -> bool:
    return bool(((t == 0) | (t == 1)).all())


# --------------------------------------------------------------------------- cs player


def test_cs_sample_shapes_binary_and_deterministic() -> None:
    m = CSVAE(CS_TINY, seed=0)
    for steps in (0, 3):
        out = m.sample(9, _gen(1), gibbs_steps=steps)
        assert out["c"].dtype == torch.int64 and out["c"].shape == (9,)
        assert out["c"].min() >= 0 and out["c"].max() < K
        assert out["s"].shape == (9, 1, 28, 28) and out["s"].dtype == torch.float32
        assert _binary(out["s"])
        again = m.sample(9, _gen(1), gibbs_steps=steps)
        assert torch.equal(out["c"], again["c"]) and torch.equal(out["s"], again["s"])
    c = torch.tensor([2, 0, 1])
    assert torch.equal(m.sample(3, _gen(0), c=c)["c"], c)
    assert _same(_params(m), _params(CSVAE(CS_TINY, seed=0)))
    assert not _same(_params(m), _params(CSVAE(CS_TINY, seed=1)))


def test_cs_learner_lowers_p_loss_on_a_pattern_per_class() -> None:
    m = CSVAE(CS_TINY, seed=0)
    learner = CSLearner(m)
    g = _gen(0)
    patterns = _patterns()
    losses = []
    for _ in range(200):
        c = torch.randint(0, K, (32,), generator=g)
        out = learner.step(c, patterns[c], g)
        losses.append(out["p_loss"])
    assert set(out) == {"p_loss", "q_loss"} and all(math.isfinite(v) for v in out.values())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.5 * first, (first, last)
    # The limiting samples of the learnt model are the class patterns.
    sample = m.sample(30, _gen(2))
    err = (sample["s"] - patterns[sample["c"]]).abs().mean()
    assert err < 0.05, float(err)


# --------------------------------------------------------------------------- main player


def test_main_seeded_and_conditionals_separate() -> None:
    a, b = PolyMain(TINY, seed=3), PolyMain(TINY, seed=3)
    assert _same(_params(a), _params(b))
    assert not _same(_params(a), _params(PolyMain(TINY, seed=4)))
    ids = [{id(p) for p in a.conditional(v).parameters()} for v in PolyMain.VARIABLES]
    assert sum(map(len, ids)) == len(set().union(*ids)) == len(list(a.parameters()))
    with pytest.raises(ValueError):
        a.conditional("w")


def test_completions_shapes_ranges_and_determinism() -> None:
    m = PolyMain(TINY, seed=0)
    t = _toy(7)
    z, s = m.complete_own(t["c"], t["d"], t["x"], _gen(1))
    assert z.shape == (7, TINY.nz) and s.shape == (7, 1, 28, 28)
    assert _binary(z) and _binary(s)
    z2, s2 = m.complete_own(t["c"], t["d"], t["x"], _gen(1), sweeps=2)
    assert torch.equal(z, z2) and torch.equal(s, s2)

    d, z, x = m.complete_cs(t["c"], t["s"], _gen(1), sweeps=3)
    assert d.dtype == torch.int64 and d.shape == (7,) and d.min() >= 0 and d.max() < D
    assert z.shape == (7, TINY.nz) and _binary(z)
    assert x.shape == (7, 3, 28, 28) and x.min() >= 0 and x.max() <= 1
    d2, z2, x2 = m.complete_cs(t["c"], t["s"], _gen(1), sweeps=3)
    assert torch.equal(d, d2) and torch.equal(z, z2) and torch.equal(x, x2)

    noisy = PolyMain(dataclasses.replace(TINY, x_noise=True), seed=0)
    _, _, xn = noisy.complete_cs(t["c"], t["s"], _gen(1))
    assert xn.min() >= 0 and xn.max() <= 1 and not torch.equal(xn, x)
    with pytest.raises(ValueError):
        m.complete_own(t["c"], t["d"], t["x"], _gen(1), sweeps=0)


def test_x_model_inverts_its_crop_under_the_mask() -> None:
    m = PolyMain(TINY, seed=0)
    c, d = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 0])
    z = torch.ones(3, TINY.nz)
    on, off = torch.ones(3, 1, 28, 28), torch.zeros(3, 1, 28, 28)
    with torch.no_grad():
        x_on, x_off = m.sample_x(c, d, z, on, _gen(5)), m.sample_x(c, d, z, off, _gen(5))
    assert torch.allclose(x_on, 1 - x_off)


def test_generate_and_predict_shapes() -> None:
    m = PolyMain(TINY, seed=0)
    t = _toy(10)
    x = m.generate(t["c"], t["s"], _gen(0))
    assert x.shape == (10, 3, 28, 28) and x.min() >= 0 and x.max() <= 1
    assert torch.equal(x, m.generate(t["c"], t["s"], _gen(0)))
    xd = m.generate(t["c"], t["s"], _gen(0), d=torch.ones(10, dtype=torch.long))
    assert xd.shape == x.shape and not torch.equal(xd, x)

    p = m.predict_proba(t["x"], _gen(0), chunk=4)  # three chunks
    assert p.shape == (10, K) and p.min() >= 0
    assert torch.allclose(p.sum(1), torch.ones(10), atol=1e-5)
    assert torch.equal(p, m.predict_proba(t["x"], _gen(0), chunk=4))
    pred = m.predict(t["x"], _gen(0), sweeps=2)
    assert pred.dtype == torch.int64 and pred.shape == (10,) and pred.max() < K
    assert m.predict_proba(t["x"][:0], _gen(0)).shape == (0, K)


def test_image_tensors_converts_the_data_sets_arrays() -> None:
    x = torch.randint(0, 256, (2, 28, 28, 3), dtype=torch.uint8).numpy()
    s = (torch.rand(2, 28, 28) > 0.5).numpy()
    xt, st = image_tensors(x, s)
    assert xt.shape == (2, 3, 28, 28) and xt.dtype == torch.float32 and xt.max() <= 1
    assert torch.allclose(xt[1, 2] * 255, torch.as_tensor(x[1, :, :, 2]).float())
    assert st.shape == (2, 1, 28, 28) and _binary(st)


# --------------------------------------------------------------------------- the skip rule


def _groups(n_own: int = 6, n_rec: int = 5):
    t, r = _toy(n_own, 1), _toy(n_rec, 2)
    return {"c": t["c"], "d": t["d"], "x": t["x"]}, {"c": r["c"], "s": r["s"]}


def _changed(before: PolyMain, after: PolyMain) -> dict[str, bool]:
    return {v: not _same(_params(before.conditional(v)), _params(after.conditional(v)))
            for v in PolyMain.VARIABLES}


def test_skip_rule_counts_and_untouched_parameters() -> None:
    own, rec = _groups()
    ref = PolyMain(TINY, seed=0)

    m = PolyMain(TINY, seed=0)
    out = PolyLearner(m).step(own, rec, _gen(0))
    assert (out["n_c"], out["n_d"], out["n_z"], out["n_s"], out["n_x"]) == (11, 11, 0, 5, 6)
    assert math.isnan(out["z_loss"])
    assert all(math.isfinite(out[f"{v}_loss"]) for v in "cdsx")
    assert _changed(ref, m) == {"c": True, "d": True, "z": False, "s": True, "x": True}

    m = PolyMain(TINY, seed=0)
    out = PolyLearner(m).step(own, None, _gen(0))
    assert (out["n_c"], out["n_d"], out["n_z"], out["n_s"], out["n_x"]) == (6, 6, 0, 0, 6)
    assert _changed(ref, m) == {"c": True, "d": True, "z": False, "s": False, "x": True}

    m = PolyMain(TINY, seed=0)
    out = PolyLearner(m).step(None, rec, _gen(0))
    assert (out["n_c"], out["n_d"], out["n_z"], out["n_s"], out["n_x"]) == (5, 5, 0, 5, 0)
    assert _changed(ref, m) == {"c": True, "d": True, "z": False, "s": True, "x": False}

    m = PolyMain(TINY, seed=0)
    out = PolyLearner(m).step(None, None, _gen(0))
    assert all(out[f"n_{v}"] == 0 for v in "cdzsx")
    assert not any(_changed(ref, m).values())


def test_learner_steps_are_deterministic() -> None:
    own, rec = _groups()
    runs = []
    for _ in range(2):
        m = PolyMain(TINY, seed=0)
        learner, g = PolyLearner(m), _gen(9)
        outs = [learner.step(own, rec, g) for _ in range(3)]
        runs.append((outs, _params(m)))
    assert str(runs[0][0]) == str(runs[1][0])  # str: the z loss is NaN (never equal)
    assert _same(runs[0][1], runs[1][1])


# --------------------------------------------------------------------------- learning


def test_poly_learner_makes_the_digit_readable() -> None:
    m = PolyMain(TINY, seed=0)
    learner, g = PolyLearner(m), _gen(0)
    patterns = _patterns()
    test = _toy(60, seed=99)
    before = float((m.predict(test["x"], _gen(1)) == test["c"]).float().mean())
    for i in range(100):
        t = _toy(16, seed=1000 + i)
        rc = torch.randint(0, K, (16,), generator=g)
        learner.step({"c": t["c"], "d": t["d"], "x": t["x"]}, {"c": rc, "s": patterns[rc]}, g)
    acc = float((m.predict(test["x"], _gen(1)) == test["c"]).float().mean())
    assert before < 0.5 and acc > 0.8, (before, acc)  # chance: 1/3


def test_x_classifier_shapes_and_learns() -> None:
    a, b = XClassifier(K, width=8, lr=3e-3, seed=0), XClassifier(K, width=8, lr=3e-3, seed=0)
    assert _same(_params(a), _params(b))
    t = _toy(48)
    losses = [a.step(t["x"], t["c"]) for _ in range(30)]
    assert losses[-1] < losses[0]
    pred = a.predict(t["x"], chunk=20)
    assert pred.shape == (48,) and pred.dtype == torch.int64
    assert float((pred == t["c"]).float().mean()) > 0.8
