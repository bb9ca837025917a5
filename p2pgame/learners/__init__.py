"""The learner registry: ``[learner] kind`` -> a :class:`~p2pgame.learners.base.Learner` class.

Built-in families are loaded lazily (an exp-family peer never imports torch).  A
learner from another installed package joins through the entry point group
``p2pgame.learners``::

    [project.entry-points."p2pgame.learners"]
    gmm2d = "my_package.gmm:GMMLearner"

and is then named in a scenario like a built-in one (``[learner] kind = "gmm2d"``).  A
plugin is checked as a built-in is (:func:`check_learner_class`), and everything it
publishes is checked against what it declares.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from functools import cache
from typing import Any

from p2pgame.config import ScenarioError
from p2pgame.learners.base import Learner, LearnerConfig

GROUP = "p2pgame.learners"

# kind -> "module:Class" (every built-in family; several kinds may share a class)
BUILTIN: dict[str, str] = {
    "hvae-mlp": "p2pgame.learners.images:HVAELearner",
    "hvae-conv": "p2pgame.learners.images:HVAELearner",
    "vae-conv": "p2pgame.learners.images:VAELearner",
    "joint-cx": "p2pgame.learners.joint:JointLearner",
    "cs-vae": "p2pgame.learners.poly:CSLearner",
    "cs-data": "p2pgame.learners.poly:CSDataLearner",
    "poly-main": "p2pgame.learners.poly:PolyLearner",
    "poly-classifier": "p2pgame.learners.poly:PolyClassifierLearner",
    "dcgan-mlp": "p2pgame.learners.gan:GANLearner",
    "dcgan-conv": "p2pgame.learners.gan:GANLearner",
    "expfam-bernoulli": "p2pgame.learners.expfam:ExpFamLearner",
    "expfam-gaussian": "p2pgame.learners.expfam:ExpFamGaussianLearner",
}


@cache
def plugins() -> dict[str, str]:
    """Learners of other installed packages: kind -> "module:Class"."""
    out = {}
    for ep in importlib.metadata.entry_points(group=GROUP):
        if ep.name in BUILTIN:  # a built-in name cannot be taken over
            logging.getLogger(__name__).warning(
                "the plugin learner %r (%s) has a built-in's name and is ignored", ep.name,
                ep.value)
        else:
            out[ep.name] = ep.value
    return out


def known() -> list[str]:
    return sorted({**BUILTIN, **plugins()})


def origin(kind: str) -> str:
    """Where a kind comes from, for messages: "built-in" or "plugin module:Class"."""
    return "built-in" if kind in BUILTIN else f"plugin {plugins().get(kind, '?')}"


@cache
def learner_class(kind: str) -> type[Learner]:
    """The Learner class of ``kind`` (ScenarioError if unknown or not a valid learner)."""
    where = BUILTIN.get(kind) or plugins().get(kind)
    if where is None:
        raise ScenarioError(f"learner.kind = {kind!r} is not known; allowed: "
                            f"{', '.join(known())}")
    module, _, name = where.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except Exception as e:  # a plugin that fails to import is the plugin's fault: one line
        raise ScenarioError(f"learner.kind = {kind!r} ({origin(kind)}) cannot be loaded: "
                            f"{type(e).__name__}: {' '.join(str(e).split())[:200]}") from None
    check_learner_class(kind, cls)
    return cls


def check_learner_class(kind: str, cls: Any) -> None:
    """What every learner must be: a Learner subclass with a frozen Config dataclass."""
    import dataclasses

    if not (isinstance(cls, type) and issubclass(cls, Learner)):
        raise ScenarioError(f"learner.kind = {kind!r} ({origin(kind)}) is not a subclass of "
                            "p2pgame.learners.base.Learner")
    cfg = cls.Config
    if not (dataclasses.is_dataclass(cfg) and issubclass(cfg, LearnerConfig)):
        raise ScenarioError(f"learner.kind = {kind!r} ({origin(kind)}): its Config must be a "
                            "dataclass subclassing p2pgame.learners.base.LearnerConfig")
    if not cfg.__dataclass_params__.frozen:
        raise ScenarioError(f"learner.kind = {kind!r} ({origin(kind)}): its Config must be "
                            "frozen (@dataclass(frozen=True))")


def config_class(kind: str) -> type:
    return learner_class(kind).Config
