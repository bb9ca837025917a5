"""Helpers shared by the tests (importable as ``tests.helpers``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from p2pgame.data import write_idx
from p2pgame.data.datasets import write_manifest


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
    # What `p2pgame data fetch` leaves beside the files: the hashes they were verified with.
    write_manifest(raw, {f.name: hashlib.sha256(f.read_bytes()).hexdigest()
                         for f in raw.iterdir() if f.name.endswith("ubyte")})
    return Path(root)


# Where a peer lived and how much memory its process took: placement's own business.
PLACEMENT_KEYS = {"pid", "process_peak_rss_mb", "delay_mean_s", "active_s"}


def placement_results(run_dir: Path) -> dict:
    """Every peer's summary entry and metrics lines, without timings and placement facts:
    what must not change when only the placement (processes, workers, Ray) changes."""
    import json

    from tests.fixtures.record_same_results import strip_timings

    def strip(obj):
        obj = strip_timings(obj)
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in PLACEMENT_KEYS}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    summary = json.loads((run_dir / "summary.json").read_text())
    out = {"peers": strip(summary["peers"]), "metrics": {}}
    for path in sorted((run_dir / "metrics").glob("peer-*.jsonl")):
        out["metrics"][path.stem] = strip([json.loads(x) for x in path.read_text().splitlines()])
    return out
