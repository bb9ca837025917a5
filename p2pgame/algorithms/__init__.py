"""Algorithm registry: name -> :class:`AlgorithmInfo`, loaded lazily.

Each algorithm module declares one ``INFO``: its Config dataclass, its data
spec (or none), the spaces it can publish (space -> topic kind) and its
defaults, and how to load its peer-side class and its run hooks.  Loading is
lazy so that exp-family peers never import torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from p2pgame.algorithms.base import AlgorithmInfo
from p2pgame.config import Scenario, ScenarioError, from_plain

__all__ = ["ALGORITHMS", "AlgorithmInfo", "decode_scenario", "get_algorithm"]


def _expfam() -> AlgorithmInfo:
    from p2pgame.algorithms.expfam import INFO

    return INFO


def _game() -> AlgorithmInfo:
    from p2pgame.algorithms.game import INFO

    return INFO


def _diffgan() -> AlgorithmInfo:
    from p2pgame.algorithms.diffgan import INFO

    return INFO


ALGORITHMS: dict[str, Callable[[], AlgorithmInfo]] = {
    "expfam": _expfam,
    "game": _game,
    "diffgan": _diffgan,
}


def get_algorithm(name: str) -> AlgorithmInfo:
    if name not in ALGORITHMS:
        raise ScenarioError(
            f"algorithm.name = {name!r} is not known; allowed: {', '.join(sorted(ALGORITHMS))}"
        )
    return ALGORITHMS[name]()


def decode_scenario(plain: dict) -> Scenario:
    """A Scenario from :func:`p2pgame.config.to_plain`'s output (what peers receive).

    The plain form is checked as it is rebuilt (every dataclass checks itself);
    the expensive cross-section checks were done by the launcher.
    """
    info = get_algorithm(plain["algorithm_name"])

    def algorithm(value: Any, _partial: dict) -> Any:
        return from_plain(info.config, value)

    def data(value: Any, _partial: dict) -> Any:
        return None if value is None or info.data is None else from_plain(info.data, value)

    return from_plain(Scenario, plain, {"algorithm": algorithm, "data": data})
