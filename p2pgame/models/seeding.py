"""Seeded model construction that leaves the caller's global torch RNG alone."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Inside: torch's global CPU RNG seeded with ``seed`` (restored on exit), so a model's
    initial weights depend on its seed alone.  ``None``: the global RNG as it is."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
