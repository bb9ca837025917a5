"""A peer's method: one learner under one exchange, behind the interface the runtime drives.

The runtime (``peer/runtime.py``) asks its method what to ``publish`` at a step, whether
an arrived message can be used (``check``), to take a step with the inbox
(``train_step``), for ``probe`` metrics and the ``finish`` summary, for a checkpoint and
for resume states.  :class:`Node` answers each by delegating to its
:class:`~p2pgame.exchange.base.Exchange` and :class:`~p2pgame.learners.base.Learner`,
and checks what the learner publishes against what it declared (a plugin that draws
another shape than it declared is stopped with a line naming it and the space).

:class:`RunHooks` is the launcher's side: the learners' hooks (evaluator, evaluation
files) and the exchange's (equilibrium checks, consensus distance) together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p2pgame.config import PlayerSpec, Scenario
from p2pgame.exchange.base import ExchangeContext
from p2pgame.learners.base import LearnerContext, schema_text


@dataclass
class PeerContext:
    """What a peer's method may know about its world."""

    peer_id: int
    scenario: Scenario
    player: PlayerSpec
    schedule: Any
    data_root: Path
    device: str = "cpu"
    log: Callable[[str], None] = print
    # Small files for the run folder (sample grids, snapshots): the runtime sends them to
    # the launcher, which writes them; ``name`` is a path relative to the run folder.
    artifact: Callable[[str, bytes], None] = lambda name, data: None


class DeclarationError(RuntimeError):
    """A learner published something other than what it declared."""


class Node:
    """One peer's learner under its exchange (see the module docstring)."""

    def __init__(self, ctx: PeerContext) -> None:
        from p2pgame.exchange.registry import exchange_class
        from p2pgame.learners import learner_class, origin

        sc = ctx.scenario
        lcfg = ctx.player.learner
        lcls = learner_class(lcfg.kind)
        ecls = exchange_class(sc.exchange.kind)
        self.origin = origin(lcfg.kind)
        self.ctx = ctx
        equilibrium = ecls.hooks(sc).equilibrium_of(ctx.peer_id, ctx.data_root)
        self.learner = lcls(lcfg, LearnerContext(
            peer_id=ctx.peer_id, scenario=sc, config=lcfg, data_root=ctx.data_root,
            device=ctx.device, log=ctx.log, artifact=ctx.artifact, equilibrium=equilibrium))
        self.exchange = ecls(sc.exchange, ExchangeContext(
            ctx.peer_id, sc, ctx.player, ctx.schedule, ctx.log, ctx.artifact), self.learner)
        self.declared = ecls.spaces(sc.exchange, lcls, lcfg)
        self.full_shapes = ecls.whole_tensors  # parameters: whole tensors, no batch dim
        self.heavy = lcls.heavy
        self.resumable = lcls.resumable
        self.probe_every = self.learner.probe_every

    # -- the runtime's interface ---------------------------------------------------------
    def publish(self, step: int) -> dict[str, dict[str, Any]]:
        messages = self.exchange.publish(step)
        for space, tensors in messages.items():
            problem = self._undeclared(space, tensors)
            if problem:
                kind = self.ctx.player.learner.kind
                raise DeclarationError(f"learner {kind!r} ({self.origin}) published "
                                       f"{space!r} {problem}")
        return messages

    def _undeclared(self, space: str, tensors: dict[str, Any]) -> str | None:
        """None if ``tensors`` match the declared schema of ``space``, else what differs."""
        want = self.declared.get(space)
        if want is None:
            return "which it does not declare (Learner.spaces / Learner.parts)"
        if not all(isinstance(v, np.ndarray) for v in tensors.values()):
            return "with a value that is not a numpy array"
        # Per example (the first dimension is the count), or whole tensors (parameters).
        got = {k: (v.dtype.name, v.shape if self.full_shapes else v.shape[1:])
               for k, v in tensors.items()}
        if set(got) == set(want) and all(
                got[k][0] == np.dtype(want[k][0]).name and tuple(got[k][1]) == tuple(want[k][1])
                for k in want):
            return None
        return (f"as {schema_text(got)}, but declares {schema_text(want)}"
                + ("" if self.full_shapes else " (per example)"))

    def check(self, env: Any) -> str | None:
        return self.exchange.check(env)

    def train_step(self, step: int, inbox: Any, topology: Any) -> dict[str, float]:
        """A step; its metrics namespaced: the learner's under ``train/``, the
        exchange's under ``comm/`` (README, "The run folder")."""
        out = {f"train/{k}": v for k, v in self.exchange.step(step, inbox, topology).items()}
        out.update({f"comm/{k}": v for k, v in self.exchange.comm.items()})
        return out

    def probe(self, step: int) -> dict[str, Any]:
        """The learner's evaluation during the run, under ``eval/``."""
        return {f"eval/{k}": v for k, v in self.learner.probe(step).items()}

    def finish(self) -> dict[str, Any]:
        return {**self.learner.finish(), **self.exchange.finish()}

    def checkpoint_state(self) -> Any | None:
        return self.learner.state()

    def resume_state(self) -> dict[str, Any]:
        return {"learner": self.learner.resume_state(), "exchange": self.exchange.state()}

    def load_resume_state(self, state: dict[str, Any]) -> None:
        self.learner.load_resume_state(state["learner"])
        self.exchange.load_state(state.get("exchange", {}))


class RunHooks:
    """Launcher side of a scenario's method: its learners' hooks and its exchange's."""

    def __init__(self, scenario: Scenario) -> None:
        from p2pgame.exchange.registry import exchange_class
        from p2pgame.learners import learner_class

        self.scenario = scenario
        seen: dict[type, Any] = {}
        for p in scenario.players:
            hooks = learner_class(p.learner.kind).hooks
            if hooks not in seen:
                seen[hooks] = hooks(scenario)
        self.learner_hooks = list(seen.values())
        self.main = seen[learner_class(scenario.learner.kind).hooks]
        self.exchange_hooks = exchange_class(scenario.exchange.kind).hooks(scenario)

    @property
    def table_columns(self) -> tuple[str, ...]:
        cols: list[str] = []
        for h in [*self.learner_hooks, self.exchange_hooks]:
            cols += [c for c in h.table_columns if c not in cols]
        return (*cols, "bytes_sent")

    def _no_data(self, per_hooks: list[dict[int, str]]) -> dict[int, str]:
        out: dict[int, str] = {}
        for d in per_hooks:
            for k, v in d.items():
                out.setdefault(k, v)
        return out

    def validate(self, schedule: Any) -> None:
        for h in self.learner_hooks:
            h.validate(schedule)
        self.exchange_hooks.validate(schedule, self._no_data([h.no_data()
                                                              for h in self.learner_hooks]))

    def prepare(self, data_root: Path, log: Callable[[str], None]) -> None:
        from p2pgame.topology import build_schedule

        sc = self.scenario
        empty = self._no_data([h.prepare(data_root, log) for h in self.learner_hooks])
        self.exchange_hooks.prepared(build_schedule(sc.topology, sc.steps, sc.seed), empty)

    def after_run(self, run_dir: Path, summary: dict) -> None:
        self.exchange_hooks.after_run(run_dir, summary)
        for h in self.learner_hooks:
            h.after_run(run_dir, summary)

    def can_evaluate(self) -> bool:
        """Whether the learners can be evaluated after a run (``p2pgame eval``)."""
        from p2pgame.learners.base import LearnerHooks

        return type(self.main).evaluate_run is not LearnerHooks.evaluate_run

    def evaluate_run(self, run_dir: Path, data_root: Path, options: dict[str, Any],
                     log: Callable[[str], None]) -> dict[str, dict]:
        eh = self.exchange_hooks
        self.main.equilibrium_of = lambda i: eh.equilibrium_of(i, Path(data_root))
        return self.main.evaluate_run(run_dir, data_root, options, log)
