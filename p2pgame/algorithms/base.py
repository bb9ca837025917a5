"""What an algorithm is to a peer: what it publishes and how it learns from what arrives.

Algorithms never see sockets.  The peer runtime hands them an :class:`Inbox`
of released messages (with their age) and asks them for the tensors to
publish; the bus does the rest.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p2pgame.bus.codec import Envelope
from p2pgame.config import Scenario, ScenarioError, build
from p2pgame.topology import Schedule, Topology


@dataclass
class PeerContext:
    peer_id: int
    scenario: Scenario
    schedule: Schedule
    run_dir: Path
    data_root: Path
    device: str = "cpu"
    log: Callable[[str], None] = print

    def seed(self, *keys: object) -> int:
        from p2pgame.rng import derive_seed

        return derive_seed(self.scenario.seed, "peer", self.peer_id, *keys)


class Inbox:
    """The freshest released message per (sender, space), and the staleness of use."""

    def __init__(self) -> None:
        self.latest: dict[tuple[int, str], Envelope] = {}
        self.staleness: Counter[int] = Counter()

    def put(self, env: Envelope) -> None:
        key = (env.sender, env.space)
        old = self.latest.get(key)
        if old is None or env.step >= old.step:
            self.latest[key] = env

    def use(self, sender: int, space: str, step: int) -> Envelope | None:
        """The latest message of ``sender`` on ``space``; records its age in steps."""
        env = self.latest.get((sender, space))
        if env is not None:
            self.staleness[step - env.step] += 1  # negative: the sender is ahead of us
        return env

    def staleness_summary(self) -> tuple[float, dict[str, int]]:
        total = sum(self.staleness.values())
        mean = sum(k * v for k, v in self.staleness.items()) / total if total else 0.0
        return mean, {str(k): v for k, v in sorted(self.staleness.items())}


class Algorithm:
    """Base class; subclasses set ``Config`` (a frozen dataclass) and ``kinds``."""

    Config: type = object
    kinds: tuple[str, ...] = ("samples",)
    heavy: bool = False  # True: training steps run in a worker thread

    def __init__(self, ctx: PeerContext, config: Any) -> None:
        self.ctx = ctx
        self.config = config

    # -- launcher side -------------------------------------------------------------------
    @classmethod
    def make_config(cls, scenario: Scenario) -> Any:
        table = {k: v for k, v in scenario.algorithm.items() if k != "name"}
        return build(cls.Config, table, "algorithm")

    @classmethod
    def validate(cls, scenario: Scenario) -> None:
        """Checks across sections; raise ScenarioError naming the key."""
        cls.make_config(scenario)

    @classmethod
    def prepare(cls, scenario: Scenario, data_root: Path, log: Callable[[str], None]) -> None:
        """Work done once before peers start (e.g. training a shared evaluator)."""

    @classmethod
    def after_run(cls, scenario: Scenario, run_dir: Path, summary: dict) -> None:
        """Work done once after all peers stop (e.g. figures); may add to ``summary``."""

    @classmethod
    def evaluate_run(cls, scenario: Scenario, run_dir: Path, data_root: Path,
                     options: dict[str, Any], log: Callable[[str], None]) -> dict[str, dict]:
        """``p2pgame eval``: metrics of every peer from the run folder's checkpoints."""
        raise ScenarioError(
            f"algorithm {scenario.algorithm.get('name')!r} has nothing to evaluate after a run "
            "(its metrics are in summary.json)")

    # -- peer side -----------------------------------------------------------------------
    def outgoing(self, step: int) -> dict[str, dict[str, Any]]:
        """Tensors to publish at ``step``: ``{space: {field: array}}``."""
        raise NotImplementedError

    def check(self, env: Envelope) -> str | None:
        """None if the message can be learnt from, else a short rejection reason."""
        return None

    def train_step(self, step: int, inbox: Inbox, topology: Topology) -> dict[str, float]:
        raise NotImplementedError

    def probe(self, step: int) -> dict[str, Any]:
        """Metrics logged every few steps (cheap)."""
        return {}

    def finish(self) -> dict[str, Any]:
        """Final metrics for summary.json."""
        return {}


def check_schema(env: Envelope, expected: dict[str, tuple[str, tuple[int, ...]]]) -> str | None:
    """Compare tensors to ``{field: (dtype, per-example shape)}``; leading dim is free."""
    if set(env.tensors) != set(expected):
        return "schema"
    n = None
    for name, (dtype, shape) in expected.items():
        t = env.tensors[name]
        if np.dtype(t.dtype).name != np.dtype(dtype).name or tuple(t.shape[1:]) != tuple(shape):
            return "schema"
        if n is not None and t.shape[0] != n:
            return "schema"
        n = t.shape[0]
    return None


def config_error(key: str, msg: str) -> ScenarioError:
    return ScenarioError(f"algorithm.{key}: {msg}")
