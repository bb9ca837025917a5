"""Metrics for generated digit images: classifier-FID, class histograms, image grids.

The "classifier-FID" is the Fréchet distance between Gaussians fitted to the penultimate
features of the small evaluator CNN (:mod:`p2pgame.eval.evaluator`), computed for
generated images against (a) all test images, (b) the test images of the classes a peer
owns and (c) the test images of the other classes.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.utils as vutils
from pytorch_fid.fid_score import calculate_frechet_distance
from scipy.linalg import LinAlgWarning

from .evaluator import binarize, extract_features, predict, to_model_input

__all__ = [
    "ClassifierFID",
    "GaussianStats",
    "class_histogram",
    "evaluate_images",
    "frechet_distance",
    "frechet_distance_from_stats",
    "gaussian_stats",
    "save_grid",
    "total_variation",
]


GaussianStats = tuple[np.ndarray, np.ndarray]


def gaussian_stats(feats: np.ndarray | torch.Tensor) -> GaussianStats:
    """Mean and (unbiased) covariance of ``feats [n, d]`` in float64; needs n >= 2."""
    if isinstance(feats, torch.Tensor):
        feats = feats.detach().cpu().numpy()
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be 2-d [n, d], got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 samples to estimate a covariance, got {f.shape[0]}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance_from_stats(a: GaussianStats, b: GaussianStats) -> float:
    """Fréchet distance between N(mu_a, sigma_a) and N(mu_b, sigma_b) (pytorch-fid)."""
    # pytorch-fid prints a message (and scipy warns) when it regularises a singular product,
    # and scipy >= 1.16 warns about its ``disp`` argument; keep these out of the output.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", LinAlgWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's residual check on 0-matrices
        d = calculate_frechet_distance(a[0], a[1], b[0], b[1])
    return float(d)


def frechet_distance(feats_a: np.ndarray | torch.Tensor, feats_b: np.ndarray | torch.Tensor
                     ) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[n, d]``, ``[m, d]``."""
    return frechet_distance_from_stats(gaussian_stats(feats_a), gaussian_stats(feats_b))


def class_histogram(pred_labels: np.ndarray | torch.Tensor | Sequence[int],
                    n_classes: int = 10) -> np.ndarray:
    """Normalised histogram (sums to 1; all zeros for an empty input) of integer labels."""
    if isinstance(pred_labels, torch.Tensor):
        pred_labels = pred_labels.detach().cpu().numpy()
    lab = np.asarray(pred_labels, dtype=np.int64).reshape(-1)
    if lab.size and (lab.min() < 0 or lab.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got {lab.min()}..{lab.max()}")
    counts = np.bincount(lab, minlength=n_classes).astype(np.float64)
    total = counts.sum()
    return counts / total if total > 0 else counts


def total_variation(p: np.ndarray | Sequence[float], q: np.ndarray | Sequence[float]) -> float:
    """Total variation distance 0.5 * ||p - q||_1 between two discrete distributions."""
    pa = np.asarray(p, dtype=np.float64).reshape(-1)
    qa = np.asarray(q, dtype=np.float64).reshape(-1)
    if pa.shape != qa.shape:
        raise ValueError(f"shape mismatch: {pa.shape} vs {qa.shape}")
    return float(0.5 * np.abs(pa - qa).sum())


class ClassifierFID:
    """Classifier-FID against a fixed test set; test features are computed once.

    ``test_images``: ``[m, 1, 28, 28]`` or ``[m, 28, 28]``, float in [0, 1] or uint8.  With
    ``binarize_test=True`` (default) they are thresholded like the evaluator's training
    data, so that they are comparable with binary generated images (idempotent on images
    that are already 0/1).
    """

    def __init__(self, evaluator: torch.nn.Module, test_images: torch.Tensor,
                 test_labels: torch.Tensor | np.ndarray, *, batch: int = 1000,
                 binarize_test: bool = True) -> None:
        self.evaluator = evaluator
        self.batch = int(batch)
        self.n_classes = int(getattr(evaluator, "n_classes", 10))
        x = binarize(test_images) if binarize_test else to_model_input(test_images)
        x = to_model_input(x)
        labels = torch.as_tensor(np.asarray(test_labels)).long().reshape(-1)
        if labels.shape[0] != x.shape[0]:
            raise ValueError(f"{x.shape[0]} test images but {labels.shape[0]} labels")
        self.test_labels = labels.numpy()
        self.test_features = extract_features(evaluator, x, self.batch).double().numpy()
        self.classes_present = sorted(int(c) for c in np.unique(self.test_labels))
        self._stats: dict[frozenset[int], GaussianStats] = {}

    def stats_for(self, classes: Iterable[int] | None = None) -> GaussianStats:
        """Gaussian statistics of the test features of ``classes`` (None: all), cached."""
        key = frozenset(self.classes_present if classes is None else (int(c) for c in classes))
        if key not in self._stats:
            mask = np.isin(self.test_labels, sorted(key))
            if mask.sum() < 2:
                raise ValueError(f"fewer than 2 test images for classes {sorted(key)}")
            self._stats[key] = gaussian_stats(self.test_features[mask])
        return self._stats[key]

    def features(self, images: torch.Tensor) -> np.ndarray:
        return extract_features(self.evaluator, to_model_input(images), self.batch).double().numpy()

    def evaluate(self, gen_images: torch.Tensor, own_classes: Iterable[int]) -> dict[str, Any]:
        """Metrics of generated images ``[n, 1, 28, 28]`` (values in {0, 1}, float or bool).

        Returns ``fid_all``, ``fid_own``, ``fid_other`` (None when ``own_classes`` covers
        every test class), ``class_mass`` (list of ``n_classes`` floats: predicted class
        histogram) and ``own_mass`` (class mass on ``own_classes``).
        """
        own = sorted({int(c) for c in own_classes})
        x = to_model_input(gen_images)
        if x.shape[0] < 2:
            raise ValueError("need at least 2 generated images")
        feats = extract_features(self.evaluator, x, self.batch).double().numpy()
        gen_stats = gaussian_stats(feats)
        preds = predict(self.evaluator, x, self.batch)
        mass = class_histogram(preds, self.n_classes)
        other = [c for c in self.classes_present if c not in own]
        own_present = [c for c in own if c in self.classes_present]
        return {
            "fid_all": frechet_distance_from_stats(gen_stats, self.stats_for(None)),
            "fid_own": (frechet_distance_from_stats(gen_stats, self.stats_for(own_present))
                        if own_present else None),
            "fid_other": (frechet_distance_from_stats(gen_stats, self.stats_for(other))
                          if other else None),
            "class_mass": [float(v) for v in mass],
            "own_mass": float(sum(mass[c] for c in own if 0 <= c < self.n_classes)),
        }


def evaluate_images(gen_images: torch.Tensor, evaluator: torch.nn.Module,
                    test_images_float: torch.Tensor, test_labels: torch.Tensor | np.ndarray,
                    own_classes: Iterable[int], *, batch: int = 1000) -> dict[str, Any]:
    """One-shot version of :meth:`ClassifierFID.evaluate` (recomputes the test features;
    build a :class:`ClassifierFID` once to evaluate repeatedly)."""
    return ClassifierFID(evaluator, test_images_float, test_labels, batch=batch).evaluate(
        gen_images, own_classes)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 10) -> Path:
    """Save images ``[n, 1, H, W]``/``[n, H, W]`` (values in [0, 1]) as a PNG grid."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = images.detach().cpu()
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    vutils.save_image(x, str(path), nrow=nrow, padding=2, pad_value=0.5)
    return path


def grid_png(images: torch.Tensor, nrow: int = 10) -> bytes:
    """The PNG bytes of :func:`save_grid`'s picture (a peer reports them to the launcher)."""
    x = images.detach().cpu()
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    buf = io.BytesIO()
    vutils.save_image(x, buf, nrow=nrow, padding=2, pad_value=0.5, format="png")
    return buf.getvalue()
