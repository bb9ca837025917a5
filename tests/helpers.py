"""Helpers shared by the tests (importable as ``tests.helpers``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from p2pgame.data import write_idx


def write_tiny_mnist(root: Path, n_train: int = 300, n_test: int = 100, seed: int = 0) -> Path:
    """Ten noisy binary templates as 'digits', laid out like `p2pgame data fetch mnist`."""
    rng = np.random.default_rng(seed)
    templates = rng.random((10, 28, 28)) < 0.3
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        imgs = templates[labels] ^ (rng.random((n, 28, 28)) < 0.05)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", (imgs * 255).astype(np.uint8))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return Path(root)
