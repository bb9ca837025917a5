"""Parameter exchange analysis: how far the peers' parameter vectors are from agreeing.

Theorem 1 of Wang, Pavan & Sayed bounds the network disagreement, the mean
over peers of the squared distance of each peer's parameters to the centroid.
Peers report parameter snapshots at the same steps; after the run these
functions turn them into a curve (CSV and plot).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np


def disagreement(vectors: np.ndarray) -> float:
    """Theorem 1: mean over peers of the squared distance to the centroid of all peers."""
    x = np.asarray(vectors, dtype=np.float64)
    c = x.mean(axis=0, keepdims=True)
    return float(((x - c) ** 2).sum(axis=1).mean())


def disagreement_curve(folder: Path, n: int) -> list[dict[str, float]]:
    """Per snapshot step (present on all n peers): the disagreement of all exchanged
    tensors ("all") and of each part (a GAN's "D" and "G"), in the parts' order."""
    if not folder.is_dir():
        return []
    metas = [folder / f"peer-{i}.json" for i in range(n)]
    if not all(m.exists() for m in metas):
        return []
    sizes = [json.loads(m.read_text())["sizes"] for m in metas]
    if any(s != sizes[0] for s in sizes):
        return []  # different architectures: no common centroid
    bounds, start = {}, 0
    for part, size in sizes[0].items():
        bounds[part] = (start, start + size)
        start += size
    steps: dict[int, int] = Counter()
    for f in folder.glob("peer-*-step-*.npy"):
        steps[int(f.stem.rsplit("-", 1)[1])] += 1
    rows = []
    for step in sorted(s for s, c in steps.items() if c == n):
        x = np.stack([np.load(folder / f"peer-{i}-step-{step:09d}.npy") for i in range(n)])
        row = {"step": step, "all": disagreement(x)}
        if len(bounds) > 1:
            row.update({p: disagreement(x[:, a:b]) for p, (a, b) in bounds.items()})
        rows.append(row)
    return rows


def write_disagreement(run_dir: Path, rows: list[dict[str, float]], title: str) -> None:
    with (run_dir / "disagreement.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [r["step"] for r in rows]
    styles = ["--", ":", "-."]
    keys = [k for k in rows[0] if k != "step"]
    for k, key in enumerate(keys):
        style = "-o" if key == "all" else styles[(k - 1) % len(styles)]
        ys = [max(r[key], 1e-30) for r in rows]
        ax.plot(steps, ys, style, label=key, markersize=3)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("mean squared distance to centroid")
    ax.set_title(f"{title}: network disagreement")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "disagreement.png", dpi=120)
    plt.close(fig)
