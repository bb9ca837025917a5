"""Seeds derived per peer and per stream from the scenario seed.

Each stream (model init, data order, sampling, each link's faults) gets its own
seed, so changing e.g. the drop rate never changes a model's initialisation.
"""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed that depends only on ``seed`` and the stream ``keys``."""
    text = "/".join([str(seed), *map(str, keys)]).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def generator(seed: int, *keys: object) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *keys))
