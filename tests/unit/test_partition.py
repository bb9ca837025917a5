"""Partitioners (disjoint, covering, respecting class sets, seeded) and pixel transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from p2pgame.data.partition import (
    binarize,
    by_class_sets,
    dirichlet,
    iid,
    k_classes_per_peer,
    make_partition,
    salt_and_pepper,
)


def _labels(per_class: int = 50, n_classes: int = 10, seed: int = 0) -> np.ndarray:
    # Shuffled so no partitioner can pass by relying on sorted labels.
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(n_classes), per_class))


def _assert_disjoint(parts: list[np.ndarray], n: int) -> np.ndarray:
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == len(allidx), "an index is given to two peers"
    assert allidx.min(initial=0) >= 0 and allidx.max(initial=0) < n
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0)  # sorted
    return allidx


def test_by_class_sets_respects_sets_and_covers() -> None:
    y = _labels()
    parts = by_class_sets(y, [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
    allidx = _assert_disjoint(parts, len(y))
    assert len(allidx) == len(y)
    assert set(y[parts[0]].tolist()) == {0, 1, 2, 3, 4}
    assert set(y[parts[1]].tolist()) == {5, 6, 7, 8, 9}


def test_by_class_sets_splits_shared_class_evenly() -> None:
    y = _labels(per_class=51)
    parts = by_class_sets(y, [[0, 1], [1, 2]], np.random.default_rng(3))
    _assert_disjoint(parts, len(y))
    n1 = [int(np.sum(y[p] == 1)) for p in parts]
    assert sorted(n1) == [25, 26]
    assert np.sum(y[parts[0]] == 0) == 51 and np.sum(y[parts[1]] == 2) == 51
    assert not np.any(np.isin(y[parts[0]], [2]))


def test_by_class_sets_rejects_absent_class() -> None:
    with pytest.raises(ValueError, match="class 12"):
        by_class_sets(_labels(), [[0], [12]])



def test_by_class_sets_empty_set_is_a_peer_without_data() -> None:
    y = _labels()
    parts = by_class_sets(y, [[0, 1], [], [2]])
    assert len(parts[1]) == 0 and len(parts[0]) > 0 and len(parts[2]) > 0
    assert set(y[parts[0]]) == {0, 1} and set(y[parts[2]]) == {2}


@pytest.mark.parametrize("n_peers,k", [(5, 2), (10, 1), (3, 4), (4, 3), (7, 3)])
def test_k_classes_per_peer(n_peers: int, k: int) -> None:
    y = _labels(per_class=60)
    parts = k_classes_per_peer(y, n_peers, k, np.random.default_rng(1))
    allidx = _assert_disjoint(parts, len(y))
    assert len(parts) == n_peers
    for p in parts:
        assert len(set(y[p].tolist())) == k
    if n_peers * k >= 10:
        assert len(allidx) == len(y)  # every class covered, every image used
        assert set(y[allidx].tolist()) == set(range(10))
    # Each class's images are split evenly among its holders.
    for c in range(10):
        counts = [int(np.sum(y[p] == c)) for p in parts if np.any(y[p] == c)]
        if counts:
            assert max(counts) - min(counts) <= 1
            assert sum(counts) == 60


def test_k_classes_bad_k() -> None:
    with pytest.raises(ValueError, match="k must be"):
        k_classes_per_peer(_labels(), 3, 11, np.random.default_rng(0))


def test_iid_balanced_and_covering() -> None:
    y = _labels(per_class=31)
    parts = iid(y, 4, np.random.default_rng(0))
    allidx = _assert_disjoint(parts, len(y))
    assert len(allidx) == len(y)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    # With 310 images every peer should see most classes.
    assert all(len(set(y[p].tolist())) >= 8 for p in parts)


def _mean_classes(parts: list[np.ndarray], y: np.ndarray, frac: float = 0.05) -> float:
    """Average number of classes making up more than frac of a peer's data."""
    out = []
    for p in parts:
        counts = np.bincount(y[p], minlength=10) / len(p)
        out.append(int(np.sum(counts > frac)))
    return float(np.mean(out))


def test_dirichlet_small_beta_is_skewed_large_beta_is_not() -> None:
    y = _labels(per_class=100)
    skewed = dirichlet(y, 10, 0.05, np.random.default_rng(0))
    flat = dirichlet(y, 10, 1000.0, np.random.default_rng(0))
    for parts in (skewed, flat):
        allidx = _assert_disjoint(parts, len(y))
        assert len(allidx) == len(y)
        assert min(map(len, parts)) >= 1
    assert _mean_classes(skewed, y) <= 3
    assert _mean_classes(flat, y) >= 9


def test_dirichlet_min_size_always_met() -> None:
    y = _labels(per_class=3, n_classes=4)
    parts = dirichlet(y, 6, 0.01, np.random.default_rng(5), min_size=2, max_tries=2)
    _assert_disjoint(parts, len(y))
    assert min(map(len, parts)) >= 2


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "classes", "classes": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]},
        {"kind": "k_classes", "k": 3},
        {"kind": "dirichlet", "beta": 0.5},
        {"kind": "iid"},
    ],
    ids=lambda s: s["kind"],
)
def test_make_partition_deterministic_per_seed(spec: dict) -> None:
    y = _labels()
    a = make_partition(spec, y, 2, np.random.default_rng(42))
    b = make_partition(spec, y, 2, np.random.default_rng(42))
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    _assert_disjoint(a, len(y))
    if spec["kind"] != "classes":  # class sets are fixed; the others depend on the seed
        c = make_partition(spec, y, 2, np.random.default_rng(43))
        assert not all(np.array_equal(p, q) for p, q in zip(a, c, strict=True))


def test_make_partition_per_peer_cap_is_random_subset() -> None:
    y = _labels()
    full = make_partition(
        {"kind": "classes", "classes": [[0, 1], [2, 3]]}, y, 2, np.random.default_rng(0)
    )
    capped = make_partition(
        {"kind": "classes", "classes": [[0, 1], [2, 3]], "per_peer": 30},
        y,
        2,
        np.random.default_rng(0),
    )
    for f, c in zip(full, capped, strict=True):
        assert len(c) == 30
        assert set(c.tolist()) <= set(f.tolist())
        assert not np.array_equal(c, f[:30])  # not just the first 30
    small = make_partition({"kind": "iid", "per_peer": 1000}, y, 4, np.random.default_rng(0))
    assert sum(map(len, small)) == len(y)  # a cap above the share changes nothing


@pytest.mark.parametrize(
    "spec,match",
    [
        (
            {"kind": "shards"},
            r"'kind' must be one of \['classes', 'dirichlet', 'iid', 'k_classes'\]",
        ),
        ({}, "'kind' must be one of"),
        ({"kind": "k_classes"}, r"needs key\(s\) \['k'\]"),
        ({"kind": "k_classes", "k": 0}, "'k' must be a positive integer"),
        ({"kind": "k_classes", "k": True}, "'k' must be a positive integer"),
        ({"kind": "dirichlet", "beta": -1}, "'beta' must be a positive number"),
        ({"kind": "dirichlet", "beta": "x"}, "'beta' must be a positive number"),
        ({"kind": "iid", "per_peer": 0}, "'per_peer' must be a positive integer"),
        (
            {"kind": "iid", "k": 2},
            r"does not take key\(s\) \['k'\]; allowed: \['kind', 'per_class', 'per_peer'\]",
        ),
        ({"kind": "classes", "classes": [[0]]}, "1 class sets but there are 2 peers"),
        ({"kind": "classes", "classes": "01"}, "list of lists"),
    ],
)
def test_make_partition_bad_specs(spec: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_partition(spec, _labels(), 2, np.random.default_rng(0))


def test_accepts_torch_labels() -> None:
    y = _labels()
    parts_t = iid(torch.from_numpy(y), 3, np.random.default_rng(0))
    parts_n = iid(y, 3, np.random.default_rng(0))
    assert all(np.array_equal(p, q) for p, q in zip(parts_t, parts_n, strict=True))


def test_binarize_threshold() -> None:
    x = torch.tensor([[0, 111, 112, 255]], dtype=torch.uint8)
    b = binarize(x)
    assert b.dtype == torch.bool
    assert b.tolist() == [[False, False, True, True]]  # 111/255 = 0.435 < 0.4375 < 112/255
    assert binarize(x, threshold=0.0).tolist() == [[False, True, True, True]]
    with pytest.raises(TypeError):
        binarize(x.float())


def test_salt_and_pepper_flip_rate_and_seed() -> None:
    x = torch.zeros(200, 28, 28, dtype=torch.bool)
    x[:, :14] = True
    g = torch.Generator().manual_seed(0)
    y = salt_and_pepper(x, 0.1, g)
    assert y.dtype == torch.bool and y.shape == x.shape
    rate = (y ^ x).float().mean().item()
    assert 0.09 < rate < 0.11
    # Both directions flip: some True->False and some False->True.
    assert (x & ~y).any() and (~x & y).any()
    y2 = salt_and_pepper(x, 0.1, torch.Generator().manual_seed(0))
    assert torch.equal(y, y2)
    assert torch.equal(salt_and_pepper(x, 0.0, g), x)
    assert torch.equal(salt_and_pepper(x, 1.0, g), ~x)
    with pytest.raises(ValueError):
        salt_and_pepper(x, 1.5, g)


def test_make_partition_per_class_cap_keeps_disjoint_balanced_subsets() -> None:
    y = np.repeat(np.arange(4), 50)
    parts = make_partition({"kind": "iid", "per_class": 5}, y, 3, np.random.default_rng(0))
    for p in parts:
        assert np.bincount(y[p], minlength=4).tolist() == [5, 5, 5, 5]
    assert len(set(np.concatenate(parts).tolist())) == 60  # disjoint
    few = make_partition({"kind": "classes", "classes": [[0], [1]], "per_class": 100}, y, 2,
                         np.random.default_rng(0))
    assert [len(p) for p in few] == [50, 50]  # a cap above what a peer has changes nothing
    with pytest.raises(ValueError, match="per_class"):
        make_partition({"kind": "iid", "per_class": 0}, y, 2, np.random.default_rng(0))
