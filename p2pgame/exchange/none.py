"""``none``: local learning only, the non-cooperative baseline for every learner.

Nothing is published and nothing is learnt from others: each step is the learner's own,
on its own data alone (as many own examples as its batch, whatever the weight row says).
"""

from __future__ import annotations

from typing import Any

from p2pgame.exchange.base import Exchange, ExchangeConfig
from p2pgame.learners.base import Batch


class NoExchange(Exchange):
    kind = "none"
    Config = ExchangeConfig

    def step(self, step: int, inbox: Any, topology: Any) -> dict[str, float]:
        learner = self.learner
        own = None if learner.batch_size == 0 else learner.batch_size
        return learner.learn(step, Batch(own=own, own_weight=1.0))
