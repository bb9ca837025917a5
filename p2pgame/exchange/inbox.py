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
        # The virtual clock: the virtual time of the step in progress (set at each
        # release), and per sender the summed age in virtual seconds of each use.
        self.now: float | None = None
        self.age_s: Counter[int] = Counter()
        self.uses: Counter[int] = Counter()

    def put(self, env: Any) -> None:
        key = (env.sender, env.space)
        old = self.latest.get(key)
        if old is None or env.step >= old.step:
            self.latest[key] = env

    def use(self, sender: int, space: str, step: int) -> Any | None:
        """The latest message of ``sender`` on ``space``; records its age in steps."""
        env = self.latest.get((sender, space))
        if env is not None:
            self.staleness[step - env.step] += 1  # the gap; negative: the sender is ahead
            if self.now is not None:  # (virtual clock: since it was sent, in seconds)
                self.age_s[sender] += self.now - env.time
                self.uses[sender] += 1
            if self._counted.get((sender, space)) != env.step:
                self._counted[(sender, space)] = env.step
                self.used[sender] += 1
        return env

    def staleness_summary(self) -> tuple[float, dict[str, int]]:
        """The mean age of the messages used (:func:`age_of_use`'s ``staleness_mean``, in
        steps, >= 0) and the histogram of step gaps (receiver's step - sender's step, as
        strings; negative: the sender was ahead)."""
        ages = age_of_use(self.staleness)
        return ages["staleness_mean"], ages["staleness_hist"]

    def age_accounts(self) -> dict[str, Any]:
        """The summary's ages of the messages used (:func:`age_of_use`)."""
        return age_of_use(self.staleness)


def age_of_use(gaps: Counter[int]) -> dict[str, Any]:
    """How old the messages a peer trained on were, from its histogram of step gaps (the
    receiver's step minus the message's sender step, one count per use):

    - ``staleness_mean``: the mean age in steps (>= 0) over every use; a message from a
      sender that was ahead (a negative gap) is as fresh as can be, age 0;
    - ``staleness_max``: the oldest use's age (0: none older than the step it was used in);
    - ``ahead_uses``: how many uses had the sender ahead of the receiver, and
      ``ahead_mean`` by how many steps on average (0.0: none);
    - ``staleness_hist``: the gaps themselves (signed: negative, the sender was ahead)."""
    total = sum(gaps.values())
    ahead = {k: v for k, v in gaps.items() if k < 0}
    n_ahead = sum(ahead.values())
    return {
        "staleness_mean": sum(k * v for k, v in gaps.items() if k > 0) / total if total else 0.0,
        "staleness_max": max((k for k, v in gaps.items() if v and k > 0), default=0),
        "ahead_uses": n_ahead,
        "ahead_mean": sum(-k * v for k, v in ahead.items()) / n_ahead if n_ahead else 0.0,
        "staleness_hist": {str(k): v for k, v in sorted(gaps.items())},
    }
