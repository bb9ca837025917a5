"""The exchange registry, and a scenario's method (its exchange x learner pairs).

``[exchange] kind`` names one of :data:`EXCHANGES`; :func:`method` gives what the
runtime and the launcher need of a resolved scenario's (exchange, learner) pairs: the
topic kind of every space, whether peers use torch, whether they can resume, the
peer-side :class:`~p2pgame.exchange.node.Node` and the launcher-side hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from p2pgame.config import Scenario, from_plain
from p2pgame.exchange.registry import EXCHANGES, exchange_class

__all__ = ["EXCHANGES", "Method", "decode_scenario", "exchange_class", "method"]


@dataclass(frozen=True)
class Method:
    """What the runtime and launcher need of a scenario's exchange x learner pairs."""

    name: str  # "<exchange> x <learner>[, <learner> ...]"
    spaces: dict[str, str]  # every space a peer may use -> its topic kind
    uses_torch: bool
    resumable: bool
    partial_rounds: bool
    peer: Callable[[], type]  # the peer-side class (Node)
    hooks: Callable[[], type]  # the launcher-side RunHooks class
    modules: tuple[str, ...]  # what a peer imports (for a fork server to load once)


def method(scenario: Scenario) -> Method:
    from p2pgame.exchange.node import Node, RunHooks
    from p2pgame.learners import learner_class

    ecls = exchange_class(scenario.exchange.kind)
    spaces: dict[str, str] = {}
    classes = []
    for p in scenario.players:
        lcls = learner_class(p.learner.kind)
        classes.append(lcls)
        for s in ecls.spaces(scenario.exchange, lcls, p.learner):
            spaces.setdefault(s, ecls.topic_kind_of(s, lcls, p.learner))
        for s in ecls.reads(scenario.exchange, lcls, p.learner):
            spaces.setdefault(s, ecls.topic_kind_of(s, lcls, p.learner))
    kinds = sorted({p.learner.kind for p in scenario.players})
    resumable = all(c.resumable for c in classes)
    node = type("Node", (Node,), {"resumable": resumable, "__module__": Node.__module__})
    return Method(
        name=f"{scenario.exchange.kind} x {', '.join(kinds)}",
        spaces=spaces,
        uses_torch=any(c.uses_torch for c in classes),
        resumable=resumable,
        partial_rounds=ecls.partial_rounds,
        peer=lambda: node,
        hooks=lambda: RunHooks,
        modules=tuple(sorted({c.__module__ for c in classes} | {ecls.__module__})),
    )


def decode_scenario(plain: dict) -> Scenario:
    """A Scenario from :func:`p2pgame.config.to_plain`'s output (what peers receive).

    The plain form is checked as it is rebuilt (every dataclass checks itself); the
    expensive cross-section checks were done by the launcher."""
    from p2pgame.learners import config_class, learner_class

    def exchange(value: Any, _partial: dict) -> Any:
        return from_plain(exchange_class(value["kind"]).Config, value)

    def learner(value: Any, _partial: dict) -> Any:
        return from_plain(config_class(value["kind"]), value)

    def data(value: Any, _partial: dict) -> Any:
        spec = learner_class(plain["learner"]["kind"]).data
        return None if value is None or spec is None else from_plain(spec, value)

    return from_plain(Scenario, plain, {"exchange": exchange, "learner": learner, "data": data})
