"""Where a peer meets its method (an exchange x learner pair): the only module of
:mod:`p2pgame.peer` that looks one up.

The runtime asks these things, all here: the decoded scenario of a launch, the
scenario's :class:`~p2pgame.exchange.Method` (an opaque handle below), the topic kind of
a space, whether the peer uses torch, and the peer-side object
(:class:`~p2pgame.exchange.node.Node`) built from a
:class:`~p2pgame.exchange.node.PeerContext`.

The algorithm object itself is used through this interface, which every implementation
keeps (the runtime calls nothing else):

* ``publish(step) -> {space: {field: array}}``, ``check(env) -> reason | None``,
  ``train_step(step, inbox, topology) -> {metric: float}`` (``train/`` and ``comm/``
  keys), ``probe(step) -> dict`` (``eval/`` keys),
  ``finish() -> dict``, ``checkpoint_state() -> state | None``,
  ``resume_state() -> dict``, ``load_resume_state(dict)``;
* attributes ``heavy`` (steps in a worker thread), ``probe_every``, ``resumable``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2pgame.config import Scenario
from p2pgame.exchange import decode_scenario, method
from p2pgame.exchange.node import PeerContext
from p2pgame.topology import Schedule


def decode(plain: dict) -> Scenario:
    """A launch's scenario (plain data) as the resolved :class:`Scenario`."""
    return decode_scenario(plain)


def lookup(scenario: Scenario) -> Any:
    """The scenario's method (the handle the functions below take)."""
    return method(scenario)


def topic_kind(method: Any, space: str) -> str:
    """The kind of topic ``space`` travels on (``samples`` or ``params``)."""
    return method.spaces[space]


def uses_torch(method: Any) -> bool:
    return bool(method.uses_torch)


def plain_uses_torch(plain: dict) -> bool:
    """Whether the algorithm of a launch's scenario (plain data, not decoded yet) uses
    torch: a peer's process sets torch's threads before anything else."""
    from p2pgame.learners import learner_class

    kinds = {plain["learner"]["kind"]} | {p["learner"]["kind"] for p in plain["players"]}
    return any(learner_class(k).uses_torch for k in kinds)


def build(method: Any, ctx: PeerContext) -> Any:
    """The peer-side algorithm object."""
    return method.peer()(ctx)


def context(peer_id: int, scenario: Scenario, schedule: Schedule, data_root: str,
            device: str, log: Callable[[str], None],
            artifact: Callable[[str, bytes], None]) -> PeerContext:
    """What the algorithm of peer ``peer_id`` may know of its world."""
    return PeerContext(peer_id=peer_id, scenario=scenario, player=scenario.player(peer_id),
                       schedule=schedule, data_root=Path(data_root), device=device, log=log,
                       artifact=artifact)
