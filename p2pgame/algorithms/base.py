"""What an algorithm is: a peer-side learner, and run hooks for the launcher's side.

An :class:`Algorithm` is what a peer runs.  It never sees a socket: the peer
runtime asks it what to ``publish`` (tensors per space), hands it an
:class:`Inbox` of released messages (with their age) in ``train_step``, and
collects ``probe`` metrics and the ``finish`` summary.  The runtime owns the
device, the CUDA stream and checkpoint writing.

:class:`RunHooks` is what the launcher, ``p2pgame eval`` and ``p2pgame report``
need of an algorithm: cross-section validation, one-off preparation (training
an evaluator), and after-run analysis.  It is a separate object so that peer
code and launcher code do not share class methods.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p2pgame.bus.codec import Envelope
from p2pgame.config import PlayerSpec, Scenario, ScenarioError
from p2pgame.rng import derive_seed
from p2pgame.topology import Schedule, Topology


@dataclass
class PeerContext:
    """What a peer's algorithm may know about its world."""

    peer_id: int
    scenario: Scenario
    player: PlayerSpec
    schedule: Schedule
    data_root: Path
    device: str = "cpu"
    log: Callable[[str], None] = print
    # Small files for the run folder (sample grids, snapshots): the runtime sends them to
    # the launcher, which writes them; ``name`` is a path relative to the run folder.
    artifact: Callable[[str, bytes], None] = lambda name, data: None

    @property
    def config(self) -> Any:
        """This peer's algorithm Config."""
        return self.player.algorithm

    def seed(self, *keys: object) -> int:
        return derive_seed(self.scenario.seed, "peer", self.peer_id, *keys)


class Inbox:
    """The freshest released message per (sender, space), and the staleness of use."""

    def __init__(self) -> None:
        self.latest: dict[tuple[int, str], Envelope] = {}
        self.staleness: Counter[int] = Counter()
        # Per sender: how many of its messages a step used (each counted once, however
        # often it was reused); messages replaced before any step took them are not.
        self.used: Counter[int] = Counter()
        self._counted: dict[tuple[int, str], int] = {}

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
            if self._counted.get((sender, space)) != env.step:
                self._counted[(sender, space)] = env.step
                self.used[sender] += 1
        return env

    def staleness_summary(self) -> tuple[float, dict[str, int]]:
        total = sum(self.staleness.values())
        mean = sum(k * v for k, v in self.staleness.items()) / total if total else 0.0
        return mean, {str(k): v for k, v in sorted(self.staleness.items())}


class Algorithm:
    """Peer side.  Subclasses learn from what arrives and say what to publish."""

    heavy: bool = False  # True: steps run in a worker thread, off the event loop
    # >0: the runtime also writes a metrics line (and calls probe) every probe_every steps,
    # besides its own metrics interval, so evaluations over time land where they were asked.
    probe_every: int = 0

    def __init__(self, ctx: PeerContext) -> None:
        self.ctx = ctx
        self.config = ctx.config

    def publish(self, step: int) -> dict[str, dict[str, Any]]:
        """Tensors to publish at ``step``: ``{space: {field: array}}``, in publishing order."""
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

    def checkpoint_state(self) -> Any | None:
        """A state dict for the runtime to save as the peer's checkpoint (None: no checkpoint)."""
        return None

    # A restarted peer continues from its latest resume state (runtime.restart).
    resumable: bool = False

    def resume_state(self) -> dict[str, Any]:
        """Everything needed to continue after the current step in a new process, as JSON
        data (model, optimiser, every RNG stream)."""
        raise NotImplementedError

    def load_resume_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


class RunHooks:
    """Launcher side of an algorithm, for one resolved scenario."""

    table_columns: tuple[str, ...] = ()  # extra columns of the table printed after a run

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario

    def validate(self, schedule: Schedule) -> None:
        """Checks across sections; raise ScenarioError naming the key."""

    def prepare(self, data_root: Path, log: Callable[[str], None]) -> None:
        """Work done once before peers start (e.g. training a shared evaluator)."""

    def after_run(self, run_dir: Path, summary: dict) -> None:
        """Work done once after all peers stop (e.g. figures); may add to ``summary``."""

    def evaluate_run(self, run_dir: Path, data_root: Path, options: dict[str, Any],
                     log: Callable[[str], None]) -> dict[str, dict]:
        """``p2pgame eval``: metrics of every peer from the run folder's checkpoints."""
        raise ScenarioError(
            f"algorithm {self.scenario.algorithm_name!r} has nothing to evaluate after a run "
            "(its metrics are in summary.json)")


@dataclass(frozen=True)
class AlgorithmInfo:
    name: str
    config: type  # the algorithm's frozen Config dataclass ([algorithm] minus "name")
    data: type | None  # the [data] spec dataclass, or None: the algorithm takes no [data]
    spaces: dict[str, str]  # space -> topic kind ("samples" or "params")
    # (publishes, learns) of a player with this Config when the scenario does not say.
    default_spaces: Callable[[Any], tuple[tuple[str, ...], tuple[str, ...]]]
    peer: Callable[[], type]  # the peer-side Algorithm class
    hooks: Callable[[], type]  # the RunHooks class
    # What a player with this Config publishes on each space, declared ahead of any run:
    # {space: {field: (dtype, per-example shape)}} (None: not known before the model exists,
    # e.g. Diffusion GAN's parameter shapes; the receiver checks them on arrival).
    schemas: Callable[[Any], dict[str, dict[str, tuple[str, tuple[int, ...]]]]] | None = None
    # The spaces a player with this Config can learn from (None: every space it has).
    learnable: Callable[[Any], tuple[str, ...]] | None = None
    # True: a round may publish only some of the spaces (Diffusion GAN: D or G), so a
    # subscriber must take all of them to know when a round is complete.
    partial_rounds: bool = False
    uses_torch: bool = False


def check_schema(env: Envelope, expected: dict[str, tuple[str, tuple[int, ...]]]) -> str | None:
    """Compare tensors to ``{field: (dtype, per-example shape)}``; leading dim is free."""
    tensors = env.tensors
    if set(tensors) != set(expected):
        return "schema"
    # dtype and shape from the header's schema: a bit-packed tensor stays packed (it is
    # unpacked, if ever, in the training step that uses it).
    spec = getattr(tensors, "spec", None)
    n = None
    for name, (dtype, shape) in expected.items():
        got_dtype, got_shape = spec(name) if spec is not None else (
            tensors[name].dtype, tensors[name].shape)
        if np.dtype(got_dtype).name != np.dtype(dtype).name or tuple(got_shape[1:]) != tuple(
                shape):
            return "schema"
        if n is not None and got_shape[0] != n:
            return "schema"
        n = got_shape[0]
    return None


def check_relay_weights(peers: dict[int, str], schedule: Schedule) -> None:
    """Peers without data (``{peer: where it is said}``) must give their own data no weight
    in any topology epoch: they are relays, learning only what they receive."""
    for i, where in sorted(peers.items()):
        for t in schedule.topologies:
            own = float(t.weights[i, i])
            if own > 0:
                raise ScenarioError(
                    f"{where}: peer {i} has no data but gives weight {own:g} to it; a peer "
                    "without data is a relay: give it self_weight 0 (topology.self_weight as "
                    "a list, or weights = 'matrix')")


def config_error(key: str, msg: str) -> ScenarioError:
    return ScenarioError(f"algorithm.{key}: {msg}")


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
