"""Unit tests for p2pgame.eval: Fréchet distance, histograms, classifier-FID, evaluator
caching and the (offline) Inception FID plumbing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from p2pgame.eval.evaluator import (
    DigitClassifier,
    binarize,
    get_evaluator,
    load_evaluator,
    predict,
)
from p2pgame.eval.inception import (
    build_fid_inception_net,
    inception_features,
    load_fid_inception,
    standard_fid,
)
from p2pgame.eval.metrics import (
    ClassifierFID,
    class_histogram,
    evaluate_images,
    frechet_distance,
    frechet_distance_from_stats,
    save_grid,
    total_variation,
)

# --------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _one_thread():
    """The test machines' cores are shared: oversubscribed conv threads are very slow."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _synthetic_digits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [n, 28, 28] images: one fixed random binary template per class + 5% flips."""
    g = torch.Generator().manual_seed(1234)
    templates = torch.rand(10, 28, 28, generator=g) < 0.3
    gs = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    flips = torch.rand(n, 28, 28, generator=gs) < 0.05
    imgs = templates[labels] ^ flips
    return (imgs.to(torch.uint8) * 255), labels


def _tiny_evaluator(seed: int = 0) -> DigitClassifier:
    torch.manual_seed(seed)
    return DigitClassifier().eval()


# --------------------------------------------------------------------------- Fréchet


def test_frechet_same_gaussian_is_near_zero():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 4))
    b = rng.normal(size=(20000, 4))
    assert abs(frechet_distance(a, b)) < 0.01


def test_frechet_shifted_gaussian_is_squared_mean_difference():
    rng = np.random.default_rng(1)
    cov = np.array([[1.0, 0.3, 0.0], [0.3, 2.0, 0.1], [0.0, 0.1, 0.5]])
    delta = np.array([2.0, -1.0, 0.5])  # |delta|^2 = 5.25
    a = rng.multivariate_normal(np.zeros(3), cov, size=40000)
    b = rng.multivariate_normal(delta, cov, size=40000)
    assert frechet_distance(a, b) == pytest.approx(5.25, abs=0.15)
    # exact statistics: the closed form holds to numerical precision
    d = frechet_distance_from_stats((np.zeros(3), cov), (delta, cov))
    assert d == pytest.approx(5.25, abs=1e-6)


def test_frechet_diagonal_covariances_closed_form():
    s1 = np.diag([1.0, 4.0, 9.0])
    s2 = np.diag([4.0, 1.0, 9.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 0.0, 0.0])
    # |dmu|^2 + sum (sqrt(a_i) - sqrt(b_i))^2 = 1 + 1 + 1 + 0
    assert frechet_distance_from_stats((mu1, s1), (mu2, s2)) == pytest.approx(3.0, abs=1e-6)


def test_frechet_accepts_torch_and_rejects_single_sample():
    x = torch.randn(50, 3)
    assert abs(frechet_distance(x, x)) < 1e-6
    with pytest.raises(ValueError):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))


# --------------------------------------------------------------------------- histograms


def test_class_histogram_and_total_variation():
    h = class_histogram(torch.tensor([0, 0, 1, 3]), n_classes=5)
    np.testing.assert_allclose(h, [0.5, 0.25, 0.0, 0.25, 0.0])
    assert h.sum() == pytest.approx(1.0)
    assert class_histogram([], n_classes=3).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        class_histogram([10], n_classes=10)

    assert total_variation([0.5, 0.5, 0.0], [0.0, 0.5, 0.5]) == pytest.approx(0.5)
    assert total_variation([1.0, 0.0], [0.0, 1.0]) == pytest.approx(1.0)
    p = np.array([0.2, 0.3, 0.5])
    assert total_variation(p, p) == 0.0
    with pytest.raises(ValueError):
        total_variation([1.0], [0.5, 0.5])


# --------------------------------------------------------------------------- classifier FID


def test_classifier_fid_keys_masses_and_self_distance():
    model = _tiny_evaluator(0)
    imgs_u8, labels = _synthetic_digits(200, seed=3)
    test = binarize(imgs_u8).unsqueeze(1)
    cfid = ClassifierFID(model, test, labels, batch=64)
    assert cfid.test_features.shape == (200, model.feature_dim)

    gen = (torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(5)) < 0.3)
    res = cfid.evaluate(gen, own_classes=[1, 4])
    assert set(res) >= {"fid_all", "fid_own", "fid_other", "class_mass", "own_mass"}
    assert len(res["class_mass"]) == 10
    assert sum(res["class_mass"]) == pytest.approx(1.0)
    preds = predict(model, gen.float()).numpy()
    expected_own = float(np.isin(preds, [1, 4]).mean())
    assert res["own_mass"] == pytest.approx(expected_own)
    assert res["own_mass"] == pytest.approx(res["class_mass"][1] + res["class_mass"][4])
    for k in ("fid_all", "fid_own", "fid_other"):
        assert np.isfinite(res[k]) and res[k] > 0

    # the test set against itself: fid_all ~ 0 while its own-class subset is farther away
    same = cfid.evaluate(test, own_classes=range(10))
    assert abs(same["fid_all"]) < 1e-5
    assert same["fid_other"] is None
    assert same["own_mass"] == pytest.approx(1.0)
    sub = cfid.evaluate(test[labels == 2], own_classes=[2])
    assert abs(sub["fid_own"]) < 1e-5
    assert sub["fid_other"] > 1e-3 and sub["fid_all"] > 1e-3

    # the functional wrapper gives the same numbers
    res2 = evaluate_images(gen.float(), model, test, labels, [1, 4], batch=64)
    for k in ("fid_all", "fid_own", "fid_other", "own_mass"):
        assert res2[k] == pytest.approx(res[k], rel=1e-6, abs=1e-8)


def test_save_grid_writes_png(tmp_path):
    path = save_grid(torch.rand(12, 1, 28, 28) > 0.5, tmp_path / "sub" / "grid.png", nrow=4)
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- evaluator cache


def test_get_evaluator_trains_once_then_loads_cache(tmp_path):
    tr_x, tr_y = _synthetic_digits(300, seed=0)
    te_x, te_y = _synthetic_digits(100, seed=1)
    logs: list[str] = []
    torch.manual_seed(99)
    rng_before = torch.get_rng_state()
    m1, info1 = get_evaluator("toy", tr_x, tr_y, te_x, te_y, tmp_path, epochs=1, seed=0,
                              log=logs.append)
    assert torch.equal(torch.get_rng_state(), rng_before)  # global RNG untouched
    assert info1["trained"] is True
    assert 0.0 <= info1["test_accuracy"] <= 1.0
    pt = tmp_path / info1["path"].split("/")[-1]
    assert pt.exists() and pt.name.startswith("evaluator-toy-") and pt.suffix == ".pt"
    meta = json.loads(pt.with_suffix(".json").read_text())
    assert meta["test_accuracy"] == pytest.approx(info1["test_accuracy"])
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    assert logs

    m2, info2 = get_evaluator("toy", tr_x, tr_y, te_x, te_y, tmp_path, epochs=1, seed=0,
                              log=logs.append)
    assert info2["trained"] is False
    assert info2["path"] == info1["path"]
    assert info2["test_accuracy"] == pytest.approx(info1["test_accuracy"])
    x = binarize(te_x[:8]).unsqueeze(1)
    torch.testing.assert_close(m1.features(x), m2.features(x))
    assert m2.features(x).shape == (8, m2.feature_dim)
    torch.testing.assert_close(load_evaluator(info1["path"])(x), m1(x))

    # a different configuration gets a different cache entry
    _, info3 = get_evaluator("toy", tr_x, tr_y, te_x, te_y, tmp_path, epochs=1, seed=1,
                             log=logs.append)
    assert info3["trained"] is True and info3["path"] != info1["path"]


def test_evaluator_learns_synthetic_classes(tmp_path):
    tr_x, tr_y = _synthetic_digits(1000, seed=0)
    te_x, te_y = _synthetic_digits(200, seed=1)
    _, info = get_evaluator("toy", tr_x, tr_y, te_x, te_y, tmp_path, epochs=2, seed=0,
                            log=lambda s: None)
    assert info["test_accuracy"] > 0.9


# --------------------------------------------------------------------------- Inception FID


def test_standard_fid_missing_weights_names_path(tmp_path):
    missing = tmp_path / "nope" / "pt_inception-2015-12-05-6726825d.pth"
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
        standard_fid(torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28), missing)


def test_standard_fid_plumbing_with_random_weights(tmp_path):
    torch.manual_seed(0)
    net = build_fid_inception_net()
    # default init makes activations vanish through 20 layers; keep their scale instead
    for mod in net.modules():
        if isinstance(mod, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
    wpath = tmp_path / "pt_inception-random.pth"
    torch.save(net.state_dict(), wpath)

    model = load_fid_inception(wpath, dims=2048)
    loaded = dict(model.named_parameters())
    assert torch.equal(loaded["blocks.0.0.conv.weight"], net.Conv2d_1a_3x3.conv.weight)
    assert torch.equal(loaded["blocks.3.2.branch_pool.conv.weight"],
                       net.Mixed_7c.branch_pool.conv.weight)

    g = torch.Generator().manual_seed(1)
    a = (torch.rand(4, 1, 28, 28, generator=g) < 0.3).float()
    b = (torch.rand(4, 1, 28, 28, generator=g) < 0.7).float()
    feats = inception_features(model, a, batch=3)
    assert feats.shape == (4, 2048) and np.isfinite(feats).all() and feats.std(0).max() > 0
    # grey images are repeated to RGB: same features as an explicit 3-channel copy
    np.testing.assert_allclose(inception_features(model, a.repeat(1, 3, 1, 1)), feats,
                               rtol=1e-4, atol=1e-6)

    # FID itself on the 192-d block (a 2048x2048 matrix square root is slow on CPU)
    same = standard_fid(a, a, wpath, batch=3, dims=192)
    diff = standard_fid(a, b, wpath, batch=3, dims=192)
    assert np.isfinite(diff) and diff > 1e-2 and abs(same) < 1e-3 * diff

    # a file of the wrong architecture is rejected
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(RuntimeError):
        load_fid_inception(bad)


def test_tstr_scores_a_classifier_trained_on_the_samples_on_the_real_test_set() -> None:
    """Train on synthetic, test on real: samples that show both classes as the test set
    does give a classifier that scores well on it; samples that show one class only give
    one that mostly predicts it, far below (that class is a quarter of the test set)."""
    import torch

    from p2pgame.eval.tstr import tstr_accuracy

    g = torch.Generator().manual_seed(0)

    def images(label: int, n: int) -> torch.Tensor:
        x = (torch.rand(n, 1, 28, 28, generator=g) < 0.05).float()
        x[:, :, :14 if label == 0 else 28, :] = 0  # class 0: bottom half; 1: none
        x[:, :, 14:, :] += (label == 0) * (torch.rand(n, 1, 14, 28, generator=g) < 0.5)
        return x.clamp(0, 1)

    test_x = torch.cat([images(0, 300), images(1, 100)])
    test_y = torch.tensor([0] * 300 + [1] * 100)
    both = torch.cat([images(0, 200), images(1, 200)])
    assert tstr_accuracy(both, torch.tensor([0] * 200 + [1] * 200), test_x, test_y,
                         n_classes=2, epochs=3) > 0.95
    one = images(1, 200)
    assert tstr_accuracy(one, torch.ones(200, dtype=torch.long), test_x, test_y,
                         n_classes=2, epochs=3) < 0.5
    # deterministic: the same samples and seed give the same accuracy
    a = tstr_accuracy(both[:50], torch.tensor([0] * 50), test_x, test_y, n_classes=2, seed=3)
    assert a == tstr_accuracy(both[:50], torch.tensor([0] * 50), test_x, test_y, n_classes=2,
                              seed=3)
