"""A small CNN digit classifier used as the feature extractor of the classifier-FID.

The evaluator is trained once per data set and configuration and cached on disk as
``<cache_dir>/evaluator-<dataset>-<hash>.pt`` together with a JSON file holding its
test accuracy.  It is trained (and evaluated) on *binarised* images, because the
generative models of the peers produce binary images.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "ARCH_VERSION",
    "BINARIZE_THRESHOLD",
    "FEATURE_DIM",
    "DigitClassifier",
    "binarize",
    "evaluator_config",
    "get_evaluator",
    "load_evaluator",
    "predict",
    "to_model_input",
    "train_evaluator",
]

#: Pixels with intensity / 255 strictly above this value become 1 (7/16).
BINARIZE_THRESHOLD = 0.4375
#: Size of the penultimate (feature) layer.
FEATURE_DIM = 128
#: Bumped whenever the architecture or the training recipe changes (invalidates caches).
ARCH_VERSION = 1


class DigitClassifier(nn.Module):
    """conv3x3(32)-pool-conv3x3(64)-pool-fc(128)-fc(n_classes), ReLU activations.

    Input: float tensor ``[n, 1, 28, 28]`` with values in [0, 1].
    ``features`` returns the 128-d post-ReLU penultimate activations.
    """

    def __init__(self, n_classes: int = 10, feature_dim: int = FEATURE_DIM) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 7x7
        )
        self.fc = nn.Linear(64 * 7 * 7, feature_dim)
        self.head = nn.Linear(feature_dim, n_classes)
        self.n_classes = n_classes
        self.feature_dim = feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# --------------------------------------------------------------------------- helpers


def binarize(images: torch.Tensor, threshold: float = BINARIZE_THRESHOLD) -> torch.Tensor:
    """uint8 images (0..255) or float images (0..1) -> float tensor of 0/1."""
    if images.dtype == torch.uint8:
        x = images.float() / 255.0
    else:
        x = images.float()
    return (x > threshold).float()


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """Bring images to the evaluator's input format: float ``[n, 1, 28, 28]`` in [0, 1].

    Accepts ``[n, 28, 28]`` or ``[n, 1, 28, 28]``; uint8 is scaled by 1/255, bool is cast.
    No thresholding is applied (see :func:`binarize`).
    """
    if images.dtype == torch.uint8:
        x = images.float() / 255.0
    else:
        x = images.float()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"expected images [n,28,28] or [n,1,28,28], got {tuple(images.shape)}")
    return x


@torch.no_grad()
def _batched(fn: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, images: torch.Tensor,
             batch: int) -> torch.Tensor:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, images.shape[0], batch):
            xb = to_model_input(images[i:i + batch]).to(device)
            out.append(fn(xb).cpu())
    finally:
        model.train(was_training)
    if not out:
        return torch.empty(0)
    return torch.cat(out)


def predict(model: DigitClassifier, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """Predicted labels (int64 ``[n]``) of float images in [0, 1]."""
    return _batched(lambda x: model(x).argmax(1), model, images, batch)


def extract_features(model: DigitClassifier, images: torch.Tensor, batch: int = 1000
                     ) -> torch.Tensor:
    """Penultimate-layer features ``[n, d]`` of float images in [0, 1]."""
    return _batched(model.features, model, images, batch)


def _accuracy(model: DigitClassifier, images01: torch.Tensor, labels: torch.Tensor,
              batch: int = 1000) -> float:
    if images01.shape[0] == 0:
        return float("nan")
    pred = predict(model, images01, batch)
    return float((pred == labels.long().cpu()).float().mean())


# --------------------------------------------------------------------------- training


def _data_fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    h = hashlib.sha1()
    h.update(str(tuple(images.shape)).encode())
    h.update(images.detach().cpu().contiguous().to(torch.uint8).numpy().tobytes())
    h.update(labels.detach().cpu().contiguous().to(torch.int64).numpy().tobytes())
    return h.hexdigest()[:16]


def evaluator_config(train_images: torch.Tensor, train_labels: torch.Tensor, *, epochs: int,
                     seed: int) -> dict[str, Any]:
    """The configuration that identifies a trained evaluator (hashed into the cache name)."""
    return {
        "arch_version": ARCH_VERSION,
        "feature_dim": FEATURE_DIM,
        "threshold": BINARIZE_THRESHOLD,
        "epochs": int(epochs),
        "seed": int(seed),
        "batch_size": 128,
        "lr": 2e-3,
        "n_train": int(train_images.shape[0]),
        "data": _data_fingerprint(train_images, train_labels),
    }


def _config_hash(config: dict[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True).encode()
    return hashlib.sha1(blob).hexdigest()[:10]


def train_evaluator(train_images: torch.Tensor, train_labels: torch.Tensor, *, epochs: int = 2,
                    seed: int = 0, batch_size: int = 128, lr: float = 2e-3,
                    n_classes: int = 10, device: str | torch.device = "cpu",
                    log: Callable[[str], Any] = print) -> DigitClassifier:
    """Train a :class:`DigitClassifier` on binarised uint8 images ``[N, 28, 28]``.

    Adam with a cosine learning-rate decay; batches are drawn with a seeded generator so
    that the result is reproducible for a fixed number of threads.
    """
    gen = torch.Generator().manual_seed(seed)
    # Initialise the weights deterministically without touching the global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitClassifier(n_classes=n_classes)
    model.to(device)
    x_all = binarize(train_images).reshape(-1, 1, 28, 28)
    y_all = train_labels.long().reshape(-1)
    n = x_all.shape[0]
    if n == 0:
        raise ValueError("empty training set")
    steps_per_epoch = max(1, (n + batch_size - 1) // batch_size)
    total = max(1, epochs * steps_per_epoch)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total,
                                                pct_start=0.15)
    model.train()
    t0 = time.perf_counter()
    step = 0
    for ep in range(epochs):
        perm = torch.randperm(n, generator=gen)
        run_loss, run_correct, seen = 0.0, 0, 0
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            xb, yb = x_all[idx].to(device), y_all[idx].to(device)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step < total - 1:
                sched.step()
            step += 1
            run_loss += float(loss.detach()) * len(idx)
            run_correct += int((logits.argmax(1) == yb).sum())
            seen += len(idx)
        log(f"evaluator epoch {ep + 1}/{epochs}: loss {run_loss / seen:.4f} "
            f"train acc {run_correct / seen:.4f} ({time.perf_counter() - t0:.1f}s)")
    model.eval()
    return model


# --------------------------------------------------------------------------- caching


def _atomic_write_bytes(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_evaluator(path: str | Path, device: str | torch.device = "cpu") -> DigitClassifier:
    """Load an evaluator saved by :func:`get_evaluator`."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    model = DigitClassifier(n_classes=int(blob.get("n_classes", 10)),
                            feature_dim=int(blob.get("feature_dim", FEATURE_DIM)))
    model.load_state_dict(blob["state_dict"])
    model.to(device)
    model.eval()
    return model


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "data"


def get_evaluator(dataset_name: str, train_images: torch.Tensor, train_labels: torch.Tensor,
                  test_images: torch.Tensor, test_labels: torch.Tensor, cache_dir: str | Path,
                  *, epochs: int = 2, seed: int = 0, device: str | torch.device = "cpu",
                  log: Callable[[str], Any] = print) -> tuple[DigitClassifier, dict[str, Any]]:
    """Return a trained evaluator for ``dataset_name``, training and caching it if needed.

    ``train_images``/``test_images`` are uint8 ``[N, 28, 28]`` (0..255); the classifier is
    trained and tested on their binarised versions.  Returns ``(model, info)`` with
    ``info = {"test_accuracy": float, "path": str, "trained": bool}`` (``trained`` is False
    when the model was loaded from the cache).
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    config = evaluator_config(train_images, train_labels, epochs=epochs, seed=seed)
    stem = f"evaluator-{_safe_name(dataset_name)}-{_config_hash(config)}"
    pt_path = cache_dir / f"{stem}.pt"
    json_path = cache_dir / f"{stem}.json"

    if pt_path.exists():
        try:
            model = load_evaluator(pt_path, device=device)
            if json_path.exists():
                acc = float(json.loads(json_path.read_text())["test_accuracy"])
            else:
                acc = _accuracy(model, binarize(test_images), test_labels)
            log(f"loaded evaluator {pt_path} (test accuracy {acc:.4f})")
            return model, {"test_accuracy": acc, "path": str(pt_path), "trained": False}
        except Exception as exc:  # corrupt/incompatible cache: retrain
            log(f"could not load cached evaluator {pt_path} ({exc!r}); retraining")

    n_classes = max(10, int(train_labels.max()) + 1) if train_labels.numel() else 10
    log(f"training evaluator for {dataset_name} on {train_images.shape[0]} images "
        f"({epochs} epochs, seed {seed})")
    t0 = time.perf_counter()
    model = train_evaluator(train_images, train_labels, epochs=epochs, seed=seed,
                            batch_size=config["batch_size"], lr=config["lr"],
                            n_classes=n_classes, device=device, log=log)
    train_seconds = time.perf_counter() - t0
    acc = _accuracy(model, binarize(test_images), test_labels)

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    blob = {"state_dict": state, "n_classes": n_classes, "feature_dim": model.feature_dim,
            "config": json.dumps(config, sort_keys=True)}
    _atomic_write_bytes(pt_path, lambda p: torch.save(blob, p))
    meta = {"dataset": dataset_name, "test_accuracy": acc, "train_seconds": train_seconds,
            "config": config}
    _atomic_write_bytes(json_path, lambda p: p.write_text(json.dumps(meta, indent=2)))
    log(f"trained evaluator {pt_path} (test accuracy {acc:.4f}; trained in "
        f"{train_seconds:.1f}s)")
    return model, {"test_accuracy": acc, "path": str(pt_path), "trained": True}
