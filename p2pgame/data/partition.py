"""Split a labelled data set among peers, and the pixel transforms peers apply.

Every partitioner returns one sorted ``int64`` index array per peer; the arrays are
disjoint. All randomness comes from the ``numpy.random.Generator`` passed in, so
every peer computes the same partition from the scenario seed.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "BINARIZE_THRESHOLD",
    "PARTITION_KINDS",
    "binarize",
    "by_class_sets",
    "dirichlet",
    "iid",
    "k_classes_per_peer",
    "make_partition",
    "salt_and_pepper",
]

BINARIZE_THRESHOLD = 0.4375  # pixel / 255 > 7/16 -> 1


def _labels(labels: Any) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {y.dtype}")
    return y.astype(np.int64, copy=False)


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng(0)


def _sorted(parts: list[list[np.ndarray]] | list[np.ndarray]) -> list[np.ndarray]:
    out = []
    for p in parts:
        arr = np.concatenate(p) if isinstance(p, list) and p else np.asarray(p)
        out.append(np.sort(arr.astype(np.int64, copy=False)))
    return out


def _split_evenly(idx: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle ``idx`` and cut it into ``n`` pieces whose sizes differ by at most one;
    which pieces get the extra items is random."""
    idx = rng.permutation(idx)
    sizes = np.full(n, len(idx) // n)
    sizes[rng.permutation(n)[: len(idx) % n]] += 1
    return np.split(idx, np.cumsum(sizes)[:-1])


# --------------------------------------------------------------------------- partitioners


def by_class_sets(
    labels: Any, class_sets: Sequence[Sequence[int]], rng: np.random.Generator | None = None
) -> list[np.ndarray]:
    """Peer i gets the images whose class is in ``class_sets[i]``; a class named by
    several peers is split evenly (at random) among them. Classes no peer names go unused.
    An empty set gives a peer no data (a relay; the scenario checks its weights)."""
    y = _labels(labels)
    rng = _rng(rng)
    present = set(np.unique(y).tolist())
    holders: dict[int, list[int]] = {}
    for i, classes in enumerate(class_sets):
        classes = list(classes)
        for c in classes:
            if isinstance(c, bool) or not isinstance(c, numbers.Integral):
                raise ValueError(f"class set {i}: {c!r} is not a class number")
            if int(c) not in present:
                raise ValueError(
                    f"class set {i}: class {c} does not occur in the labels "
                    f"(classes present: {sorted(present)})"
                )
            if i not in holders.setdefault(int(c), []):
                holders[int(c)].append(i)
    parts: list[list[np.ndarray]] = [[] for _ in class_sets]
    for c in sorted(holders):
        pieces = _split_evenly(np.flatnonzero(y == c), len(holders[c]), rng)
        for peer, piece in zip(holders[c], pieces, strict=True):
            parts[peer].append(piece)
    return _sorted(parts)


def k_classes_per_peer(
    labels: Any, n_peers: int, k: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Each peer gets ``k`` distinct classes; classes are dealt round-robin in a random
    order, so when ``n_peers * k >= n_classes`` every class has a holder and the number
    of holders per class differs by at most one. A class is split evenly among its holders."""
    y = _labels(labels)
    classes = np.unique(y)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= len(classes):
        raise ValueError(
            f"k must be an integer between 1 and {len(classes)} (the classes present), got {k!r}"
        )
    if n_peers < 1:
        raise ValueError(f"n_peers must be >= 1, got {n_peers}")
    order = rng.permutation(classes)
    sets = [[int(order[(i * k + j) % len(order)]) for j in range(k)] for i in range(n_peers)]
    return by_class_sets(y, sets, rng)


def iid(labels: Any, n_peers: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A uniformly random split into ``n_peers`` parts whose sizes differ by at most one."""
    y = _labels(labels)
    if n_peers < 1:
        raise ValueError(f"n_peers must be >= 1, got {n_peers}")
    return _sorted(np.array_split(rng.permutation(len(y)), n_peers))


def dirichlet(
    labels: Any,
    n_peers: int,
    beta: float,
    rng: np.random.Generator,
    min_size: int = 1,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Label skew: each class is shared among peers in proportions drawn from
    Dirichlet(beta, ..., beta). Small beta gives each peer few classes, large beta
    approaches iid. Draws are repeated up to ``max_tries`` times until every peer has
    ``min_size`` images; after that the largest peers hand images to the smallest."""
    y = _labels(labels)
    if n_peers < 1:
        raise ValueError(f"n_peers must be >= 1, got {n_peers}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if n_peers * min_size > len(y):
        raise ValueError(f"{len(y)} images cannot give {n_peers} peers {min_size} each")
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    for _ in range(max(1, max_tries)):
        parts: list[list[int]] = [[] for _ in range(n_peers)]
        for idx in by_class:
            p = rng.dirichlet(np.full(n_peers, float(beta)))
            if not np.all(np.isfinite(p)) or p.sum() <= 0:  # underflow at tiny beta
                p = np.eye(n_peers)[rng.integers(n_peers)]
            counts = rng.multinomial(len(idx), p / p.sum())
            for peer, piece in enumerate(np.split(rng.permutation(idx), np.cumsum(counts)[:-1])):
                parts[peer].extend(piece.tolist())
        if min(map(len, parts)) >= min_size:
            break
    # Still short after max_tries: move random images from the largest peers.
    while True:
        short = min(range(n_peers), key=lambda i: len(parts[i]))
        if len(parts[short]) >= min_size:
            break
        big = max(range(n_peers), key=lambda i: len(parts[i]))
        moved = parts[big].pop(int(rng.integers(len(parts[big]))))
        parts[short].append(moved)
    return _sorted([np.asarray(p, dtype=np.int64) for p in parts])


# --------------------------------------------------------------------------- specs

PARTITION_KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # kind: (required keys, optional keys besides 'kind' and 'per_peer')
    "classes": (("classes",), ()),
    "dirichlet": (("beta",), ("min_size",)),
    "iid": ((), ()),
    "k_classes": (("k",), ()),
}


def _positive_int(spec: dict, key: str) -> int:
    v = spec[key]
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{key!r} must be a positive integer, got {v!r}")
    return int(v)


def _positive_number(spec: dict, key: str) -> float:
    v = spec[key]
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 < v < float("inf"):
        raise ValueError(f"{key!r} must be a positive number, got {v!r}")
    return float(v)


def _class_sets(spec: dict, n_peers: int) -> list[list[int]]:
    sets = spec["classes"]
    if (
        isinstance(sets, str | bytes)
        or not isinstance(sets, Sequence)
        or any(isinstance(s, str | bytes) or not isinstance(s, Sequence) for s in sets)
    ):
        raise ValueError(f"'classes' must be a list of lists of class numbers, got {sets!r}")
    if len(sets) != n_peers:
        raise ValueError(f"'classes' has {len(sets)} class sets but there are {n_peers} peers")
    return [list(s) for s in sets]


def make_partition(
    spec: dict, labels: Any, n_peers: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Partition from a scenario's ``[data.partition]`` table.

    ``{"kind": "classes", "classes": [[0, 1], [2, 3]]}``, ``{"kind": "k_classes", "k": 2}``,
    ``{"kind": "dirichlet", "beta": 0.5}`` (optional ``min_size``) or ``{"kind": "iid"}``;
    each may add ``per_class`` to keep at most that many images of each class per peer and
    ``per_peer`` to keep at most that many images per peer (random subsets, in that order).
    Raises ValueError naming the bad key and what is allowed.
    """
    if not isinstance(spec, dict):
        raise ValueError(f"partition must be a table with a 'kind' key, got {spec!r}")
    kind = spec.get("kind")
    if not isinstance(kind, str) or kind not in PARTITION_KINDS:
        got = "missing" if "kind" not in spec else f"got {kind!r}"
        raise ValueError(f"'kind' must be one of {sorted(PARTITION_KINDS)}, {got}")
    required, optional = PARTITION_KINDS[kind]
    allowed = sorted({"kind", "per_peer", "per_class", *required, *optional})
    extra = sorted(str(k) for k in spec if k not in allowed)
    if extra:
        raise ValueError(f"kind {kind!r} does not take key(s) {extra}; allowed: {allowed}")
    missing = [k for k in required if k not in spec]
    if missing:
        raise ValueError(f"kind {kind!r} needs key(s) {missing}")
    per_peer = _positive_int(spec, "per_peer") if "per_peer" in spec else None
    per_class = _positive_int(spec, "per_class") if "per_class" in spec else None
    if isinstance(n_peers, bool) or not isinstance(n_peers, numbers.Integral) or n_peers < 1:
        raise ValueError(f"n_peers must be a positive integer, got {n_peers!r}")

    if kind == "classes":
        parts = by_class_sets(labels, _class_sets(spec, n_peers), rng)
    elif kind == "k_classes":
        parts = k_classes_per_peer(labels, n_peers, _positive_int(spec, "k"), rng)
    elif kind == "dirichlet":
        min_size = _positive_int(spec, "min_size") if "min_size" in spec else 1
        parts = dirichlet(labels, n_peers, _positive_number(spec, "beta"), rng, min_size=min_size)
    else:
        parts = iid(labels, n_peers, rng)

    if per_class is not None:
        y = _labels(labels)
        parts = [np.sort(np.concatenate([np.zeros(0, np.int64)] + [
            rng.choice(q, size=per_class, replace=False) if len(q) > per_class else q
            for q in (p[y[p] == c] for c in np.unique(y[p]))])) for p in parts]
    if per_peer is not None:
        parts = [
            np.sort(rng.choice(p, size=per_peer, replace=False)) if len(p) > per_peer else p
            for p in parts
        ]
    return parts


# --------------------------------------------------------------------------- pixels


def binarize(x: torch.Tensor, threshold: float = BINARIZE_THRESHOLD) -> torch.Tensor:
    """uint8 images -> bool images: ``pixel / 255 > threshold``."""
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8:
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"binarize expects a uint8 tensor (pixels 0..255), got {got}")
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must lie in [0, 1), got {threshold}")
    # pixel / 255 > t  <=>  pixel > floor(255 t) for integer pixels; exact, no float division.
    return x > int(np.floor(255 * threshold))


def salt_and_pepper(
    x: torch.Tensor, p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Flip each pixel of a bool image independently with probability ``p``."""
    if not isinstance(x, torch.Tensor) or x.dtype != torch.bool:
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"salt_and_pepper expects a bool tensor, got {got}")
    if not 0 <= p <= 1:
        raise ValueError(f"flip probability p must lie in [0, 1], got {p}")
    device = generator.device if generator is not None else torch.device("cpu")
    flips = torch.rand(x.shape, generator=generator, device=device) < p
    return x ^ flips.to(x.device)
