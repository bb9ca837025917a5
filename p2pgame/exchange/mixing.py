"""``samples`` and ``moments``: the synthetic-data game's mixing (Schlesinger & Flach 2025).

Every step a peer publishes what its learner draws on the spaces it publishes
(``samples/<peer>/<space>``): examples (``samples``: images, tuples, pairs) or a summary
of its model (``moments``: an exponential family's mean parameters ``mu``).  It then
learns from ``a_ii T`` of its own examples plus, from each in-neighbour j, its freshest
message on the most informative space it learns of j: ``a_ij T`` examples picked from it
(a learner of examples), or the whole message with weight ``a_ij`` (a learner of
moments, ``Learner.takes_weights``).  ``T`` is the learner's batch, or with batch 0 the
own set's size over ``a_ii`` (the whole local set every step).

Missing-neighbour rule (``exchange.missing``), for an in-neighbour not heard from yet:

* ``fill`` (the default of ``samples``): its share is filled with own data, so the
  batch keeps its size (and its weight goes to the own data);
* ``renormalise`` (the default of ``moments``): it is left out and the weights of the
  sources the step holds are renormalised (the batch is smaller).

The two kinds are one rule over different spaces: a peer may publish and learn both
(``topologies/expfam-spaces.toml``); ``kind`` sets the default spaces and rule.  The
fixed point is the game's Nash equilibrium, in closed form for the learners that
declare a data statistic (``Learner.data_statistics``): ``equilibrium.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p2pgame.exchange.base import Exchange, ExchangeConfig, ExchangeHooks, config_error
from p2pgame.exchange.equilibrium import solve_equilibrium
from p2pgame.learners.base import Batch, Learner, Received, Schema, check_schema, examples_in
from p2pgame.shared import shared_with

RULES = ("fill", "renormalise")


@dataclass(frozen=True)
class MixingConfig(ExchangeConfig):
    missing: str = ""  # fill | renormalise; "": the kind's default (samples: fill)

    def __post_init__(self) -> None:
        if self.missing and self.missing not in RULES:
            raise config_error("missing", f"{self.missing!r} is not known; allowed: "
                                          f"{', '.join(RULES)}")

    @property
    def rule(self) -> str:
        return self.missing or ("renormalise" if self.kind == "moments" else "fill")


def sparse_row(row: Any, digits: int = 9) -> dict[str, float]:
    """A weight row as ``{"j": w}`` over its nonzero entries (JSON keys are strings): rows
    of a thousand-peer ring stay three entries long in ``summary.json``."""
    return {str(j): round(float(w), digits) for j, w in enumerate(row) if w}


def dense_row(row: dict[str, float], n: int) -> list[float]:
    """The inverse of :func:`sparse_row`."""
    out = [0.0] * n
    for j, w in row.items():
        out[int(j)] = float(w)
    return out


def check_relay_weights(peers: dict[int, str], schedule: Any) -> None:
    """Peers without data (``{peer: where it is said}``) must give their own data no weight
    in any topology epoch: they are relays, learning only what they receive."""
    from p2pgame.config import ScenarioError

    for i, where in sorted(peers.items()):
        for t in schedule.topologies:
            own = float(t.weights[i, i])
            if own > 0:
                raise ScenarioError(
                    f"{where}: peer {i} has no data but gives weight {own:g} to it; a peer "
                    "without data is a relay: give it self_weight 0 (topology.self_weight as "
                    "a list, or weights = 'matrix')")


class MixingHooks(ExchangeHooks):
    table_columns = ()

    def validate(self, schedule: Any, no_data: dict[int, str]) -> None:
        from p2pgame.config import ScenarioError

        for t in schedule.topologies:
            try:
                solve_equilibrium(t.weights, np.zeros((self.scenario.n, 1)))
            except ValueError as e:
                raise ScenarioError(f"topology: {e}") from None
        check_relay_weights(no_data, schedule)

    def prepared(self, schedule: Any, no_data: dict[int, str]) -> None:
        check_relay_weights(no_data, schedule)

    def _statistics(self, data_root: Path) -> np.ndarray | None:
        from p2pgame.learners import learner_class

        return learner_class(self.scenario.learner.kind).data_statistics(self.scenario,
                                                                          data_root)

    def equilibrium_of(self, peer: int, data_root: Path):
        from p2pgame.topology import build_schedule

        sc = self.scenario

        def row() -> np.ndarray:
            def solve() -> np.ndarray:
                final = build_schedule(sc.topology, sc.steps, sc.seed).final()
                return solve_equilibrium(final.weights, self._statistics(data_root))

            # Solved once per process: the peers of a worker share the scenario.
            return shared_with(sc, "mixing-equilibrium", solve)[peer]

        return row

    def after_run(self, run_dir: Path, summary: dict) -> None:
        """The weights the run effectively applied, and the equilibrium they predict next to
        the ideal one, for learners that report their own statistic (expfam's mu)."""
        from p2pgame.learners import learner_class
        from p2pgame.topology import build_schedule

        peers = summary.get("peers", {})
        sc = self.scenario
        n = sc.n
        if sorted(peers) != sorted(str(i) for i in range(n)):
            return
        if any("effective_row" not in peers[str(i)] for i in range(n)):
            return
        rows = np.array([dense_row(peers[str(i)]["effective_row"], n) for i in range(n)])
        summary["effective_weights"] = [sparse_row(r) for r in rows]
        key = learner_class(sc.learner.kind).statistic_key
        if key is None:
            return
        stats = self._statistics(Path("."))
        try:
            predicted = solve_equilibrium(rows, stats)
        except ValueError:  # some peer effectively saw no data: no unique prediction
            return
        final = solve_equilibrium(build_schedule(sc.topology, sc.steps, sc.seed).final().weights,
                                  stats)
        summary["ne_shift_max_abs"] = float(np.max(np.abs(predicted - final)))
        for i in range(n):
            own = np.asarray(peers[str(i)][key])
            peers[str(i)]["ne_eff_max_abs"] = float(np.max(np.abs(own - predicted[i])))
            peers[str(i)][f"predicted_{key}"] = [round(float(v), 6) for v in predicted[i]]


class Mixing(Exchange):
    """The game's exchange (see the module docstring)."""

    kind = "samples"
    Config = MixingConfig
    topic_kind = "samples"
    hooks = MixingHooks

    @classmethod
    def spaces(cls, cfg: Any, learner: type[Learner], lcfg: Any) -> dict[str, Schema]:
        return learner.spaces(lcfg)

    @classmethod
    def topic_kind_of(cls, space: str, learner: type[Learner], lcfg: Any) -> str:
        """Moments travel as ``params`` topics (a model's own parameters), examples as
        ``samples``."""
        return "params" if space in learner.moment_spaces(lcfg) else "samples"

    @classmethod
    def reads(cls, cfg: Any, learner: type[Learner], lcfg: Any) -> dict[str, Schema]:
        return learner.reads(lcfg)

    @classmethod
    def default_spaces(cls, cfg: Any, learner: type[Learner], lcfg: Any):
        if cfg.kind == "moments":
            moments = learner.moment_spaces(lcfg)
            pub = tuple(s for s in moments if s in learner.spaces(lcfg))[:1]
            learns = tuple(s for s in moments if s in learner.reads(lcfg))[:1]
            return pub, learns
        return learner.default_spaces(lcfg)

    @classmethod
    def validate_pair(cls, cfg: Any, learner: type[Learner], lcfg: Any, where: str) -> None:
        from p2pgame.config import ScenarioError

        if cfg.kind == "moments" and not learner.moment_spaces(lcfg):
            raise ScenarioError(f"{where}: learner {lcfg.kind!r} has no moment space; the "
                                "moments exchange needs one (exchange.kind = \"samples\" or "
                                "\"params\")")

    def __init__(self, cfg: Any, ctx: Any, learner: Learner) -> None:
        super().__init__(cfg, ctx, learner)
        sc = ctx.scenario
        lcfg = learner.cfg
        self.reads_schemas = learner.reads(lcfg)
        self.learns = ctx.player.learns
        # Most informative first: a neighbour's tuples (or its moments) before bare examples.
        self.preference = [s for s in self.reads_schemas if s in self.learns]
        self.samples_per_message = sc.comm.samples_per_message or learner.batch_size or (
            learner.n_own)
        self.fill = cfg.rule == "fill"
        # The share of each source in the steps (the weights effectively applied), summed
        # over steps, or discounted as the learner's updates are (``Learner.memory``).
        self.shares = np.zeros(sc.n)
        self.share_steps = 0

    # -- publishing --------------------------------------------------------------------
    def publish(self, step: int) -> dict[str, dict[str, Any]]:
        spaces = self.ctx.player.publishes
        if not spaces:
            return {}
        return self.learner.sample(self.samples_per_message, spaces)

    def check(self, env: Any) -> str | None:
        if env.space not in self.learns:
            return "space"
        return check_schema(env.tensors, self.reads_schemas[env.space])

    # -- a step ------------------------------------------------------------------------
    def _received(self, inbox: Any, j: int, step: int, want: int) -> Any:
        """j's freshest message on the most informative space we learn of it (``want``:
        the examples the step takes of it; a message holds what it holds)."""
        for space in self.preference:
            env = inbox.use(j, space, step)
            if env is not None:
                return env
        return None

    def step(self, step: int, inbox: Any, topology: Any) -> dict[str, float]:
        learner = self.learner
        me = self.ctx.peer_id
        row = topology.row(me)
        a_ii = row[me]
        n_local = learner.n_own
        whole = learner.batch_size == 0
        total = learner.batch_size or (n_local / a_ii if a_ii > 0 else n_local)
        received: list[Received] = []
        missing = 0.0
        for j, w in row.items():
            if j == me or w <= 0:
                continue
            env = self._received(inbox, j, step, round(w * total))
            if env is None:
                missing += w
                continue
            m = examples_in(env.tensors)
            k = m if learner.takes_weights else round(w * total)
            if k == 0 or m == 0:
                continue
            received.append(Received(j, env.space, env.tensors, k, w))
        own_weight = a_ii
        if whole:
            own: int | None = None
        elif n_local == 0:  # a relay: it learns from what it receives alone
            own = 0
        else:
            own = round(a_ii * total)
            if missing and a_ii > 0 and self.fill:
                # Neighbours not heard from yet: keep the batch size with own data.
                own += round(missing * total)
                own_weight += missing
        batch = Batch(own, own_weight, received)
        applied = self._applied(batch, n_local)
        if applied is None:  # a relay that has heard nothing yet (async): nothing to learn
            # (a learner of moments still reports its step: its rate, and no coverage)
            return learner.learn(step, batch) if learner.takes_weights else {}
        out = learner.learn(step, batch)
        rate = learner.memory(step)
        if rate is None:
            self.shares += applied
        else:
            self.shares = (1 - rate) * self.shares + rate * applied
        self.share_steps += 1
        return out

    def _applied(self, batch: Batch, n_local: int) -> np.ndarray | None:
        """The share of each source in this step (examples, or weights for a learner of
        moments); None when the step holds nothing at all."""
        share = np.zeros(self.ctx.scenario.n)
        me = self.ctx.peer_id
        if self.learner.takes_weights:
            if batch.own_weight > 0 and n_local > 0:
                share[me] = batch.own_weight
            for r in batch.received:
                share[r.sender] = r.weight
        else:
            share[me] = n_local if batch.own is None else (batch.own if n_local else 0)
            for r in batch.received:
                share[r.sender] = r.k
        total = share.sum()
        if total == 0:
            return None
        return share / total

    def finish(self) -> dict[str, Any]:
        if not self.share_steps:
            return {}
        if self.learner.memory(0) is None:
            row = self.shares / self.share_steps
        else:
            total = self.shares.sum()
            row = self.shares / total if total > 0 else self.shares
        return {"effective_row": sparse_row(row, 9 if self.learner.takes_weights else 6)}

    def state(self) -> dict[str, Any]:
        return {"shares": self.shares.tolist(), "share_steps": self.share_steps}

    def load_state(self, state: dict[str, Any]) -> None:
        self.shares = np.asarray(state["shares"], dtype=np.float64)
        self.share_steps = int(state["share_steps"])


class Moments(Mixing):
    kind = "moments"
