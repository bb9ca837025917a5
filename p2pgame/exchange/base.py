"""The exchange protocol: WHAT travels between peers and how a peer combines it.

An :class:`Exchange` sits between the peer runtime (which owns sockets, rounds and the
inbox) and a :class:`~p2pgame.learners.base.Learner` (which it sees only through the
learner protocol, never its model).  Declared per scenario, before any process starts:

* ``spaces(cfg, learner, lcfg)``: what a peer with that learner may publish under this
  exchange, ``{space: {field: (dtype, shape)}}``, and ``reads(...)`` what it may learn;
* ``topic_kind``: the bus topic kind of its messages (``samples`` or ``params``);
* ``message_bytes(...)``: the payload bytes of one message on a space (its formula);
* its missing-neighbour rule, in its docstring and config.

On a peer: ``publish(step)`` returns ``{space: {field: array}}``; ``check(env)`` accepts
or refuses an arrived message with a short reason; ``step(step, inbox, topology)`` takes
what the inbox holds, combines it, calls the learner and returns the step's metrics;
``finish()`` adds its own final metrics (effective weights, combine counts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from p2pgame.config import PlayerSpec, Scenario, ScenarioError
from p2pgame.learners.base import Learner, Schema


def config_error(key: str, msg: str) -> ScenarioError:
    return ScenarioError(f"exchange.{key}: {msg}")


@dataclass(frozen=True)
class ExchangeConfig:
    """Keys every exchange has; ``kind`` is its registry name."""

    kind: str = ""


@dataclass
class ExchangeContext:
    peer_id: int
    scenario: Scenario
    player: PlayerSpec
    schedule: Any
    log: Callable[[str], None] = print
    artifact: Callable[[str, bytes], None] = lambda name, data: None


class ExchangeHooks:
    """Launcher side of an exchange, for one resolved scenario."""

    table_columns: tuple[str, ...] = ()

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario

    def validate(self, schedule: Any, no_data: dict[int, str]) -> None:
        """Checks across sections (``no_data``: peers known to hold no data)."""

    def prepared(self, schedule: Any, no_data: dict[int, str]) -> None:
        """Checks once the data is read (peers found to hold none)."""

    def equilibrium_of(self, peer: int, data_root: Path) -> Callable[[], Any] | None:
        """This peer's row of the equilibrium of the learners' data statistic, or None."""
        return None

    def after_run(self, run_dir: Path, summary: dict) -> None:
        """Analysis once all peers stopped (may add to ``summary``)."""


class Exchange:
    kind: ClassVar[str] = ""
    Config: ClassVar[type] = ExchangeConfig
    topic_kind: ClassVar[str] = "samples"
    hooks: ClassVar[type] = ExchangeHooks
    # True: a round may publish only some of the spaces (a GAN's D or G), so a subscriber
    # must take all of them to know when a round is complete.
    partial_rounds: ClassVar[bool] = False
    # True: messages hold whole tensors (parameters, a generator), not examples with a
    # leading count dimension.
    whole_tensors: ClassVar[bool] = False

    @classmethod
    def spaces(cls, cfg: Any, learner: type[Learner], lcfg: Any) -> dict[str, Schema]:
        return {}

    @classmethod
    def reads(cls, cfg: Any, learner: type[Learner], lcfg: Any) -> dict[str, Schema]:
        return cls.spaces(cfg, learner, lcfg)

    @classmethod
    def topic_kind_of(cls, space: str, learner: type[Learner], lcfg: Any) -> str:
        return cls.topic_kind

    @classmethod
    def default_spaces(cls, cfg: Any, learner: type[Learner], lcfg: Any
                       ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return (), ()

    @classmethod
    def validate_pair(cls, cfg: Any, learner: type[Learner], lcfg: Any, where: str) -> None:
        """Can this learner take part in this exchange at all?  ScenarioError if not."""

    def __init__(self, cfg: Any, ctx: ExchangeContext, learner: Learner) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.learner = learner
        # The exchange's own figures of the last step (what was missing, ...): they go to
        # the metrics line under ``comm/``, the learner's (what :meth:`step` returns)
        # under ``train/``.
        self.comm: dict[str, float] = {}

    def publish(self, step: int) -> dict[str, dict[str, Any]]:
        return {}

    def check(self, env: Any) -> str | None:
        return "space"

    def step(self, step: int, inbox: Any, topology: Any) -> dict[str, float]:
        """Combine what arrived, let the learner learn; the learner's metrics (the
        exchange's own go to :attr:`comm`)."""
        raise NotImplementedError

    def finish(self) -> dict[str, Any]:
        return {}

    def state(self) -> dict[str, Any]:
        """What a resumed peer needs of the exchange (JSON data)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass
