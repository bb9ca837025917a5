"""The inbox: the freshest released message per (sender, space), and the staleness of use.

Written by the peer's delivery layer (``peer/delivery.py``) when it releases messages
between steps; read by the exchange during a step (``Inbox.use``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any


class Inbox:
    """The freshest released message per (sender, space), and the staleness of use."""

    def __init__(self) -> None:
        self.latest: dict[tuple[int, str], Any] = {}
        self.staleness: Counter[int] = Counter()
        # Per sender: how many of its messages a step used (each counted once, however
        # often it was reused); messages replaced before any step took them are not.
        self.used: Counter[int] = Counter()
        self._counted: dict[tuple[int, str], int] = {}

    def put(self, env: Any) -> None:
        key = (env.sender, env.space)
        old = self.latest.get(key)
        if old is None or env.step >= old.step:
            self.latest[key] = env

    def use(self, sender: int, space: str, step: int) -> Any | None:
        """The latest message of ``sender`` on ``space``; records its age in steps."""
        env = self.latest.get((sender, space))
        if env is not None:
            self.staleness[step - env.step] += 1  # negative: the sender is ahead of us
            if self._counted.get((sender, space)) != env.step:
                self._counted[(sender, space)] = env.step
                self.used[sender] += 1
        return env

    def staleness_summary(self) -> tuple[float, dict[str, int]]:
        total = sum(self.staleness.values())
        mean = sum(k * v for k, v in self.staleness.items()) / total if total else 0.0
        return mean, {str(k): v for k, v in sorted(self.staleness.items())}
