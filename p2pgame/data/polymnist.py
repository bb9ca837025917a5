"""PolyMNIST, built locally: MNIST digits over crops of five colour photographs.

No download: the digits are MNIST's (``p2pgame data fetch mnist``) and the five
photographs ship inside scikit-image's wheel (``skimage.data``):

========  ===================  ===============================================
style d   photograph           why
========  ===================  ===============================================
0         ``astronaut``        saturated reds, whites and blues, sharp edges
1         ``chelsea``          a cat: soft fur textures in warm browns
2         ``coffee``           large smooth regions, dark and cream
3         ``rocket``           sky and machinery: blues and greys, fine detail
4         ``hubble_deep_field`` mostly black with bright points: a dark style
========  ===================  ===============================================

Five photographs that look unlike each other (hue, brightness, texture), so the
style is visible in every crop, and all bundled with the package (several other
``skimage.data`` images are fetched on demand, which is not allowed here).

Per MNIST image (train and test splits as MNIST's), drawn from one seeded stream
per split: a style ``d`` uniformly from the five, and a random 28 x 28 crop of that
style's photograph; the digit is binarised (pixel > 127: the mask ``s``) and the
crop's colours are inverted where ``s`` is set.  So one example is
``(c, d, s, x)``: digit label, style, binary mask, colour image.

Written once under ``<root>/PolyMNIST/``, as ``.npy`` arrays per split
(``x`` uint8 [N, 28, 28, 3], ``s`` bool [N, 28, 28], ``c`` and ``d`` uint8 [N]),
a ``build.json`` (seed, photographs, counts) and ``SHA256SUMS``; building again
with the same seed writes byte-identical files.  :func:`build` checks an existing
build against its manifest and rebuilds a corrupted or different one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from p2pgame.rng import generator

from .datasets import load_images
from .errors import DataError

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")
FIELDS = ("x", "s", "c", "d")
SPLITS = ("train", "test")
MANIFEST = "SHA256SUMS"
VERSION = 1


def folder(root: str | os.PathLike) -> Path:
    return Path(root) / "PolyMNIST"


def load_photos() -> dict[str, np.ndarray]:
    """The five photographs, uint8 RGB, from scikit-image's bundled data."""
    try:
        import skimage.data
    except ImportError:
        raise DataError("PolyMNIST needs scikit-image (its photographs): "
                        "pip install scikit-image") from None
    return {name: np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])
            for name in PHOTOS}


def style_images(digits: np.ndarray, photos: list[np.ndarray],
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x uint8 [N, 28, 28, 3], s bool [N, 28, 28], d uint8 [N]) for uint8 digits [N, 28, 28].

    Draws, in this order: every image's style, then per style (in style order) the
    crops' top-left corners of the images of that style.
    """
    n = len(digits)
    s = digits > 127
    d = rng.integers(0, len(photos), n).astype(np.uint8)
    x = np.empty((n, 28, 28, 3), np.uint8)
    rows = np.arange(28)
    for k, photo in enumerate(photos):
        idx = np.flatnonzero(d == k)
        h, w = photo.shape[:2]
        if h < 28 or w < 28:
            raise DataError(f"photograph {k} is {h} x {w}: smaller than a 28 x 28 crop")
        top = rng.integers(0, h - 27, len(idx))
        left = rng.integers(0, w - 27, len(idx))
        crops = photo[(top[:, None] + rows)[:, :, None], (left[:, None] + rows)[:, None, :]]
        x[idx] = np.where(s[idx][..., None], 255 - crops, crops)
    return x, s, d


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files() -> list[str]:
    return [f"{f}_{split}.npy" for split in SPLITS for f in FIELDS] + ["build.json"]


def check(root: str | os.PathLike, seed: int | None = None) -> str | None:
    """None if a complete build (of ``seed``, if given) is there and matches its
    manifest; else what is wrong."""
    out = folder(root)
    manifest = out / MANIFEST
    if not manifest.is_file():
        return "not built"
    want = {}
    for line in manifest.read_text().splitlines():
        digest, _, name = line.partition("  ")
        want[name] = digest
    for name in _files():
        path = out / name
        if not path.is_file():
            return f"{name} is missing"
        if want.get(name) != _sha256(path):
            return f"{name} does not match its SHA-256 in {MANIFEST} (corrupted?)"
    if seed is not None:
        info = json.loads((out / "build.json").read_text())
        if info.get("seed") != seed or info.get("version") != VERSION:
            return f"built with seed {info.get('seed')}, not {seed}"
    return None


def build(root: str | os.PathLike, seed: int = 0, photos: dict[str, np.ndarray] | None = None,
          log=print) -> Path:
    """Build PolyMNIST under ``root`` from ``<root>/MNIST`` unless a matching build is
    there; returns its folder.  ``photos`` replaces the five photographs (tests)."""
    out = folder(root)
    problem = check(root, seed)
    if problem is None:
        log(f"PolyMNIST: up to date in {out}")
        return out
    if problem != "not built":
        log(f"PolyMNIST: {problem}: building again")
    photos = photos or load_photos()
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # no manifest until every file is written
    counts = {}
    for split in SPLITS:
        digits, labels = load_images("mnist", root, split)
        rng = generator(seed, "polymnist", split)
        x, s, d = style_images(digits.numpy(), list(photos.values()), rng)
        arrays = {"x": x, "s": s, "c": labels.numpy().astype(np.uint8), "d": d}
        for name, arr in arrays.items():
            tmp = out / f"{name}_{split}.tmp.npy"
            np.save(tmp, arr, allow_pickle=False)
            os.replace(tmp, out / f"{name}_{split}.npy")
        counts[split] = len(labels)
    (out / "build.json").write_text(json.dumps(
        {"version": VERSION, "seed": seed, "photos": list(photos), "counts": counts},
        indent=1) + "\n")
    manifest = "".join(f"{_sha256(out / name)}  {name}\n" for name in _files())
    (out / MANIFEST).write_text(manifest)
    log(f"PolyMNIST: built {counts['train']} + {counts['test']} images in {out}")
    return out


def load(root: str | os.PathLike, split: str = "train") -> dict[str, np.ndarray]:
    """The arrays of one split (checked against the manifest first)."""
    problem = check(root)
    if problem is not None:
        raise DataError(f"PolyMNIST under {folder(root)}: {problem}; run: p2pgame data build "
                        f"polymnist --root {root}")
    return {f: np.load(folder(root) / f"{f}_{split}.npy", allow_pickle=False) for f in FIELDS}


def grid(root: str | os.PathLike, path: str | os.PathLike, per_cell: int = 1) -> Path:
    """A PNG of 5 styles (rows) x 10 digits (columns) from the test split."""
    import torch
    from torchvision.utils import save_image

    a = load(root, "test")
    tiles = []
    for d in range(len(PHOTOS)):
        for c in range(10):
            idx = np.flatnonzero((a["d"] == d) & (a["c"] == c))
            if not len(idx):
                raise DataError(f"no test image of digit {c} in style {d}")
            tiles.append(a["x"][idx[0]])
    t = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float() / 255.0
    save_image(t, path, nrow=10, padding=2, pad_value=1.0)
    return Path(path)
