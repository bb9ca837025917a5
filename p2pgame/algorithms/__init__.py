"""Algorithm registry: name -> class.  Loaded lazily so exp-family peers never import torch."""

from __future__ import annotations

from collections.abc import Callable

from p2pgame.config import Scenario, ScenarioError


def _expfam() -> type:
    from p2pgame.algorithms.expfam import ExpFamPlayer

    return ExpFamPlayer


def _game() -> type:
    from p2pgame.algorithms.game import SyntheticGame

    return SyntheticGame


def _diffgan() -> type:
    from p2pgame.algorithms.diffgan import DiffusionGAN

    return DiffusionGAN


ALGORITHMS: dict[str, Callable[[], type]] = {
    "expfam": _expfam,
    "game": _game,
    "diffgan": _diffgan,
}


def get_algorithm(name: str) -> type:
    if name not in ALGORITHMS:
        raise ScenarioError(
            f"algorithm.name = {name!r} is not known; allowed: {', '.join(sorted(ALGORITHMS))}"
        )
    return ALGORITHMS[name]()


def validate_algorithm(scenario: Scenario) -> None:
    name = scenario.algorithm.get("name")
    if not isinstance(name, str):
        raise ScenarioError(
            f"algorithm.name is required; allowed: {', '.join(sorted(ALGORITHMS))}"
        )
    get_algorithm(name).validate(scenario)
