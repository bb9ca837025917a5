"""The ``[data]`` section of image scenarios: which set, which split, who owns what.

Every peer computes the same partition from the scenario seed, then keeps its
own part; the launcher uses the same function to predict the equilibrium.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from p2pgame.config import ScenarioError
from p2pgame.rng import generator

from .datasets import KNOWN_DATASETS, load_images

# Built locally from MNIST (``p2pgame data build polymnist``), not fetched: its examples
# are (c, d, s, x), loaded by :func:`poly_part`; ``load_split`` gives (x, c).
POLYMNIST = "polymnist"


@dataclass(frozen=True)
class ImageDataSpec:
    dataset: str = "mnist"
    split: str = "train"  # train | test | all (the paper trains on all 70k)
    partition: dict = field(default_factory=lambda: {"kind": "k_classes", "k": 2})
    binarize: float = 0.4375  # pixel / 255 > threshold -> 1
    noise: float = 0.0  # salt-and-pepper flip probability on real images
    per_peer: int = 0  # cap on images per peer (0: all of its part)

    def __post_init__(self) -> None:
        if self.dataset not in (*KNOWN_DATASETS, POLYMNIST):
            raise ScenarioError(
                f"dataset = {self.dataset!r} is not known; allowed: "
                f"{', '.join((*KNOWN_DATASETS, POLYMNIST))}"
            )
        if self.split not in ("train", "test", "all"):
            raise ScenarioError(f"split = {self.split!r}; allowed: train, test, all")
        if not 0 <= self.binarize < 1:
            raise ScenarioError(f"binarize = {self.binarize} must lie in [0, 1)")
        if not 0 <= self.noise < 0.5:
            raise ScenarioError(f"noise = {self.noise} must lie in [0, 0.5)")
        if self.per_peer < 0:
            raise ScenarioError(f"per_peer = {self.per_peer} must be >= 0")


def partition_indices(spec: ImageDataSpec, labels: np.ndarray, n: int, seed: int) -> list:
    from .partition import make_partition

    pspec = dict(spec.partition)
    if spec.per_peer:
        pspec.setdefault("per_peer", spec.per_peer)
    try:
        return make_partition(pspec, labels, n, generator(seed, "partition"))
    except ValueError as e:
        raise ScenarioError(f"data.partition: {e}") from None


def class_histograms(spec: ImageDataSpec, labels: np.ndarray, n: int, seed: int,
                     n_classes: int = 10) -> np.ndarray:
    """n x n_classes: each peer's share of each class in its own data."""
    parts = partition_indices(spec, labels, n, seed)
    out = np.zeros((n, n_classes))
    for i, idx in enumerate(parts):
        if len(idx):
            out[i] = np.bincount(labels[idx], minlength=n_classes)[:n_classes] / len(idx)
    return out


def load_split(spec: ImageDataSpec, root: Path, split: str | None = None):
    """(images, int64 labels) of a split; PolyMNIST's images are its colour ``x``."""
    if spec.dataset == POLYMNIST:
        import torch

        arrays = _poly_split(root, split or spec.split)
        return torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["c"].astype(np.int64))
    return load_images(spec.dataset, root, split or spec.split)


def _poly_split(root: Path, split: str) -> dict[str, np.ndarray]:
    from p2pgame.shared import shared

    from . import polymnist

    def load() -> dict[str, np.ndarray]:
        if split == "all":
            a, b = polymnist.load(root, "train"), polymnist.load(root, "test")
            return {k: np.concatenate([a[k], b[k]]) for k in a}
        return polymnist.load(root, split)

    # One copy per process: the peers of a worker share it (read-only).
    return shared(("polymnist", str(Path(root).resolve()), split), load)


def poly_part(spec: ImageDataSpec, n: int, seed: int, peer: int, root: Path,
              split: str | None = None) -> dict[str, np.ndarray]:
    """One peer's PolyMNIST examples: ``c``, ``d`` (uint8 [m]), ``s`` (bool [m, 28, 28]),
    ``x`` (uint8 [m, 28, 28, 3]); the whole ``split`` when it is given (evaluation)."""
    arrays = _poly_split(root, split or spec.split)
    if split is not None:
        return arrays
    parts = partition_indices(spec, arrays["c"].astype(np.int64), n, seed)
    idx = np.asarray(parts[peer], dtype=np.int64)
    return {k: v[idx] for k, v in arrays.items()}


def peer_part(spec: ImageDataSpec, n: int, seed: int, peer: int, root: Path):
    """(uint8 images [m,28,28], int64 labels [m]) of one peer's private data."""
    import torch

    images, labels = load_split(spec, root)
    parts = partition_indices(spec, labels.numpy(), n, seed)
    idx = torch.as_tensor(np.asarray(parts[peer], dtype=np.int64))
    return images[idx], labels[idx]


def peer_images(spec: ImageDataSpec, n: int, seed: int, peer: int, root: Path):
    """(bool images [m,1,28,28], int64 labels [m]): one peer's data, binarised (and noised)."""
    import torch

    from .partition import binarize, salt_and_pepper

    images, labels = peer_part(spec, n, seed, peer, root)
    x = binarize(images, spec.binarize).unsqueeze(1)
    if spec.noise > 0:
        g = torch.Generator().manual_seed(int(generator(seed, "noise", peer).integers(2**62)))
        x = salt_and_pepper(x, spec.noise, g)
    return x, labels
