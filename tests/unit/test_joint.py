"""The joint label-and-image player (joint-cx): shapes, seeding, and what each step learns."""

from __future__ import annotations

import pytest
import torch

from p2pgame.models import MODELS, JointConfig, JointCX, JointLearner, make_model
from p2pgame.models.joint import CAPACITIES


def _data(n: int = 200, k: int = 4, seed: int = 0):
    """k gray templates plus noise, labelled by template: an easy classification task."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand((k, 1, 28, 28), generator=g)
    c = torch.arange(n) % k
    x = (templates[c] + 0.1 * torch.randn((n, 1, 28, 28), generator=g)).clamp(0, 1)
    return c, x


def test_registered_seeded_and_capacities_grow() -> None:
    assert "joint-cx" in MODELS
    a, b = make_model("joint-cx", seed=1, capacity=1), make_model("joint-cx", seed=1, capacity=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    sizes = [sum(p.numel() for p in JointCX(JointConfig(capacity=k)).parameters())
             for k in sorted(CAPACITIES)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1] / 10


def test_sample_shapes_dtypes_and_given_labels() -> None:
    m = JointCX(JointConfig(capacity=1), seed=0)
    s = m.sample(7, torch.Generator().manual_seed(0))
    nz0, nz1, _ = CAPACITIES[1]
    assert s["c"].dtype == torch.int64 and s["c"].shape == (7,)
    assert s["z0"].shape == (7, nz0) and s["z1"].shape == (7, nz1)
    assert s["x"].shape == (7, 1, 28, 28) and s["x"].dtype == torch.float32
    again = m.sample(7, torch.Generator().manual_seed(0))
    assert all(torch.equal(s[k], again[k]) for k in s)
    c = torch.tensor([3, 3, 9])
    means = m.sample(3, torch.Generator().manual_seed(0), c=c, mean=True)
    assert torch.equal(means["c"], c) and 0 <= means["x"].min() and means["x"].max() <= 1


@pytest.mark.parametrize("method", ["discriminative", "symmetric"])
def test_steps_teach_the_classifier(method: str) -> None:
    c, x = _data()
    m = JointCX(JointConfig(capacity=2, lr=3e-3), seed=0)
    learner = JointLearner(m, method)
    g = torch.Generator().manual_seed(0)
    before = float((m.predict(x) == c).float().mean())
    for _ in range(60):
        out = learner.step(c, x, [], [], g)
    after = float((m.predict(x) == c).float().mean())
    assert before < 0.5 and after > 0.95, (before, after)
    assert set(out) >= {"cls_loss", "p_loss", "q_loss", "n_completed"}


def test_received_images_are_labelled_by_the_classifier_not_learnt_by_it() -> None:
    c, x = _data(40)
    m = JointCX(JointConfig(capacity=1), seed=0)
    learner = JointLearner(m, "discriminative")
    g = torch.Generator().manual_seed(0)
    out = learner.step(c[:20], x[:20], [(c[20:30], x[20:30])], [x[30:]], g)
    assert out["n_completed"] == 10
    # Only unlabelled images: the classifier's loss has no example of them, the image
    # model learns from them with the completed labels.
    m2 = JointCX(JointConfig(capacity=1), seed=0)
    w0 = m2.classifier[0].weight.detach().clone()
    JointLearner(m2, "discriminative").step(c[:0], x[:0], [], [x[30:]], g)
    assert torch.equal(w0, m2.classifier[0].weight.detach())  # no classifier example at all


def test_learnt_prior_moves_to_the_label_histogram_fixed_prior_stays_uniform() -> None:
    # p(c)'s loss and its own Adam state see only the label histogram, so ten examples
    # move it exactly as a hundred would, at a tenth of the cost of each step.
    c = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)
    x = torch.rand((10, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    learnt = JointCX(JointConfig(capacity=1, n_classes=3, learn_prior=True, prior_lr=0.05), seed=0)
    fixed = JointCX(JointConfig(capacity=1, n_classes=3), seed=0)
    for m in (learnt, fixed):
        learner = JointLearner(m, "discriminative")
        for _ in range(150):
            learner.step(c, x, [], [], g)
    assert torch.allclose(learnt.prior(), torch.tensor([0.6, 0.3, 0.1]), atol=0.02)
    assert torch.equal(fixed.prior(), torch.full((3,), 1 / 3))
    assert "prior_logits" not in dict(fixed.named_parameters())


@pytest.mark.parametrize("kwargs", [{"capacity": 5}, {"n_classes": 1}, {"lr": 0.0},
                                    {"prior_lr": -1.0}])
def test_bad_config_is_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        JointConfig(**kwargs)
    with pytest.raises(ValueError, match="method"):
        JointLearner(JointCX(JointConfig(capacity=1)), "cooperative")
