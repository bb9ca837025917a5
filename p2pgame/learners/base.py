"""The learner protocol: WHO learns, whatever is exchanged.

A :class:`Learner` is one peer's model and private data, seen only through the
methods an exchange needs (``p2pgame/exchange``): it never sees a socket, a
topic or a weight row.  Everything an exchange may know of it before any run is
declared on the class, as functions of the learner's own :class:`LearnerConfig`:

* ``spaces(cfg)``: what it can publish, ``{space: {field: (dtype, per-example shape)}}``;
* ``reads(cfg)``: what it can learn from, most informative first (same form);
* ``parts(cfg)``: its exchangeable parameters, ``{part: {name: (dtype, shape)}}``
  (buffers, optimiser state and anything the family keeps local are not in it);
* ``generator(cfg)``: the tensors a copy of its model needs to draw examples (a VAE's
  decoder and prior), for the ``model`` exchange; ``{}``: it cannot be sent;
* ``default_spaces(cfg)``: (publishes, learns) of a peer whose scenario says nothing.

On a peer it is built with a :class:`LearnerContext` and then

* ``sample(n, spaces)`` draws ``n`` examples on each space, one draw;
* ``learn(step, batch)`` takes one step on a :class:`Batch`: how many of its own
  examples, and what was picked for it of its neighbours' messages (completing what a
  received example lacks from its own model);
* ``tensors(part)`` / ``load_tensors(part, values)`` read and write its parameters
  as float32 numpy arrays (parameter exchanges average them);
* ``adapted(step)``: the parts ``learn(step)`` changed (a GAN: D or G);
* ``generator_tensors()`` / ``generator_copy(sender)``: its generator's tensors, and an
  empty :class:`GeneratorCopy` of its own architecture that loads a neighbour's and
  draws examples from it locally (the ``model`` exchange);
* ``evaluate(n)``, ``probe(step)``: metrics (and images for a sample grid);
* ``state()`` / ``load_state()``: a checkpoint; ``resume_state()`` /
  ``load_resume_state()``: everything to continue in a new process (``resumable``).

Launcher-side work of a family (training a shared evaluator, evaluating checkpoints,
after-run files) is its :class:`LearnerHooks`.  A learner from another package joins
the registry through the entry point group ``p2pgame.learners``
(``p2pgame/learners/__init__.py``) and is checked like a built-in one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from p2pgame.config import Scenario, ScenarioError, one_of
from p2pgame.rng import derive_seed

Schema = dict[str, tuple[str, tuple[int, ...]]]


def config_error(key: str, msg: str) -> ScenarioError:
    return ScenarioError(f"learner.{key}: {msg}")


def at_least(cfg: Any, low: float, *keys: str, why: str = "") -> None:
    """A config's range check: the first of ``keys`` below ``low`` is refused, naming
    ``learner.<key>`` (``why``: what the bound means, e.g. "(0: the whole local set)")."""
    for key in keys:
        value = getattr(cfg, key)
        if value < low:
            raise config_error(key, f"must be >= {low}{' ' + why if why else ''}, got {value}")


@dataclass(frozen=True)
class LearnerConfig:
    """Keys every learner has; a family's own keys live in its subclass.  ``kind`` is the
    registry name (set by the resolver from ``[learner] kind``)."""

    kind: str = ""


@dataclass(frozen=True)
class ImageLearnerConfig(LearnerConfig):
    """Keys of the learners on image data sets (every family of the game and the GAN)."""

    batch: int = 500  # examples per step (own share = a_ii * batch); 0: the whole local set
    lr: float = 0.0  # 0: the model's default learning rate
    eval_samples: int = 10000  # generated images for the final evaluation
    eval_every: int = 0  # >0: metrics over time (classifier-FID or test accuracy)
    eval_samples_during: int = 2000
    evaluator_epochs: int = 2
    checkpoint: bool = True
    inception_weights: str = ""  # pytorch-fid Inception weights file: also report standard FID
    # Train on synthetic, test on real (eval/tstr.py): the final evaluation also trains a
    # small classifier on the generated images (labelled by the evaluator) and reports
    # its accuracy on the real test set (``tstr_accuracy``; about a second per peer).
    tstr: bool = True
    # What a learner publishes of x: "sample" (a draw of p(x|...)) or "mean" (the decoder's
    # mean, thresholded at 0.5 for binary images: the paper's "limiting" samples).
    sample_mode: str = "sample"

    def __post_init__(self) -> None:
        at_least(self, 1, "eval_samples", "eval_samples_during", "evaluator_epochs")
        at_least(self, 0, "batch", why="(0: the whole local set)")
        at_least(self, 0, "lr", "eval_every")
        one_of(self.sample_mode, ("sample", "mean"), "learner.sample_mode")


@dataclass
class LearnerContext:
    """What a learner may know of its world: who it is, the scenario, where data lives."""

    peer_id: int
    scenario: Scenario
    config: Any  # this peer's learner Config
    data_root: Path
    device: str = "cpu"
    log: Callable[[str], None] = print
    # Small files for the run folder (sample grids): name relative to the run folder.
    artifact: Callable[[str, bytes], None] = lambda name, data: None
    # This peer's row of the equilibrium of the family's data statistic under the mixing
    # exchange (``Learner.data_statistics``), computed when first asked; None when the
    # exchange has no such equilibrium (parameters, none).
    equilibrium: Callable[[], np.ndarray] | None = None

    def seed(self, *keys: object) -> int:
        return derive_seed(self.scenario.seed, "peer", self.peer_id, *keys)


@dataclass
class Received:
    """What a step takes of one neighbour's message on one space.

    ``tensors`` is the whole message (decoded numpy arrays); an example learner takes
    ``k`` of its examples (with its own seeded stream; :func:`pick_examples`), a
    weighting learner (moments, ``takes_weights``) the whole message with ``weight``.
    """

    sender: int
    space: str
    tensors: dict[str, Any]
    k: int
    weight: float


@dataclass
class Batch:
    """One step's material: ``own`` own examples (None: the whole local set; 0: none)
    with weight ``own_weight`` (the exchange's missing-neighbour rule applied), and what
    arrived (``received``, in the weight row's order)."""

    own: int | None
    own_weight: float
    received: list[Received] = field(default_factory=list)

    def weights(self) -> tuple[float, list[float]]:
        """The own weight and each received one, normalised over what this step holds."""
        total = self.own_weight + sum(r.weight for r in self.received)
        if total <= 0:
            return 0.0, [0.0 for _ in self.received]
        return self.own_weight / total, [r.weight / total for r in self.received]


class GeneratorCopy:
    """A neighbour's model held by a receiver (the ``model`` exchange): ``load`` its
    generator tensors, then ``sample(n, spaces)`` as :meth:`Learner.sample` does."""

    def load(self, tensors: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def sample(self, n: int, spaces: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
        raise NotImplementedError


class LearnerHooks:
    """Launcher side of a learner family, for one resolved scenario."""

    table_columns: tuple[str, ...] = ()  # columns of the table printed after a run

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario

    def validate(self, schedule: Any) -> None:
        """Checks across sections; raise ScenarioError naming the key."""

    def no_data(self) -> dict[int, str]:
        """Peers known, from the scenario alone, to hold no data: {peer: where it is said}."""
        return {}

    def prepare(self, data_root: Path, log: Callable[[str], None]) -> dict[int, str]:
        """Work done once before peers start (training a shared evaluator).  Returns the
        peers found to hold no data once the data is read (as :meth:`no_data`)."""
        return {}

    def after_run(self, run_dir: Path, summary: dict) -> None:
        """Files written once after all peers stop (may add to ``summary``)."""

    def evaluate_run(self, run_dir: Path, data_root: Path, options: dict[str, Any],
                     log: Callable[[str], None]) -> dict[str, dict]:
        raise ScenarioError(f"learner {self.scenario.learner.kind!r} has nothing to evaluate "
                            "after a run (its metrics are in summary.json)")


class Learner:
    """A peer's model and private data (see the module docstring)."""

    kind: ClassVar[str] = ""  # the registry name (a family may register several)
    Config: ClassVar[type] = LearnerConfig
    data: ClassVar[type | None] = None  # the [data] section's dataclass, or None
    uses_torch: ClassVar[bool] = True
    heavy: ClassVar[bool] = True  # True: steps run in a worker thread, off the event loop
    resumable: ClassVar[bool] = False
    hooks: ClassVar[type] = LearnerHooks
    # (summary key of the model's class histogram, key of its distance to the equilibrium)
    class_mass_keys: ClassVar[tuple[str, str] | None] = None
    # True: learns from whole received messages, each with its weight (moments); False:
    # from ``k`` examples picked of each (the game's families).
    takes_weights: ClassVar[bool] = False
    # The summary key of the model's own statistic whose equilibrium the mixing exchange
    # predicts from the weights a run effectively applied (expfam: "mu"); None: none.
    statistic_key: ClassVar[str | None] = None

    # -- declared ahead of any run --------------------------------------------------------
    @classmethod
    def spaces(cls, cfg: Any) -> dict[str, Schema]:
        return {}

    @classmethod
    def reads(cls, cfg: Any) -> dict[str, Schema]:
        """The spaces it learns from, most informative first: those it publishes, unless
        it learns spaces it never publishes."""
        return cls.spaces(cfg)

    @classmethod
    def moment_spaces(cls, cfg: Any) -> tuple[str, ...]:
        """Spaces that carry a summary of the model (moments), not examples."""
        return ()

    @classmethod
    def kind_bound_spaces(cls, cfg: Any) -> tuple[str, ...]:
        """Spaces only learners of the same kind can read (an HVAE's latents)."""
        return ()

    @classmethod
    def parts(cls, cfg: Any) -> dict[str, Schema]:
        """Exchangeable parameters per part: ``{part: {name: (dtype, shape)}}``."""
        return {}

    @classmethod
    def generator(cls, cfg: Any) -> Schema:
        """The tensors a copy of the model needs to draw examples, ``{name: (dtype,
        shape)}`` (float32); ``{}``: the family cannot be sent as a model."""
        return {}

    @classmethod
    def default_spaces(cls, cfg: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
        first = tuple(s for s in cls.reads(cfg) if s in cls.spaces(cfg))[:1]
        return first, first

    @classmethod
    def data_statistics(cls, scenario: Scenario, data_root: Path) -> np.ndarray | None:
        """Each peer's data statistic whose mixture the game's equilibrium is (n x d: class
        histograms, moments), or None if the family has none."""
        return None

    # -- a peer's learner -----------------------------------------------------------------
    def __init__(self, cfg: Any, ctx: LearnerContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.completed: dict[str, int] = {}

    probe_every: int = 0  # >0: probe() is also called every probe_every steps

    @property
    def batch_size(self) -> int:
        """Examples per step (0: the whole local set)."""
        return int(getattr(self.cfg, "batch", 0))

    @property
    def n_own(self) -> int:
        """How many examples of its own it holds."""
        return 0

    def sample(self, n: int, spaces: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
        return {}

    def learn(self, step: int, batch: Batch) -> dict[str, float]:
        raise NotImplementedError

    def tensors(self, part: str) -> dict[str, np.ndarray]:
        raise NotImplementedError(f"learner {self.kind!r} declares no exchangeable tensors")

    def load_tensors(self, part: str, values: dict[str, np.ndarray]) -> None:
        raise NotImplementedError(f"learner {self.kind!r} declares no exchangeable tensors")

    def generator_tensors(self) -> dict[str, np.ndarray]:
        """The tensors of :meth:`generator`, as float32 numpy arrays."""
        raise NotImplementedError(f"learner {self.kind!r} declares no generator")

    def generator_copy(self, sender: int) -> GeneratorCopy:
        """An empty copy of this learner's generator, for ``sender``'s tensors; it draws
        with its own seeded stream (``ctx.seed("model-copy", sender)``)."""
        raise NotImplementedError(f"learner {self.kind!r} declares no generator")

    def adapted(self, step: int) -> tuple[str, ...]:
        """The parts ``learn(step)`` changes."""
        return tuple(self.parts(self.cfg))

    def evaluate(self, n: int) -> tuple[dict[str, Any], Any]:
        """Final metrics, and images for the sample grid (None: no grid)."""
        return {}, None

    def probe(self, step: int) -> dict[str, Any]:
        return {}

    def finish(self) -> dict[str, Any]:
        """Final metrics for summary.json (by default :meth:`evaluate`'s, its grid saved)."""
        metrics, images = self.evaluate(int(getattr(self.cfg, "eval_samples", 0) or 0))
        if images is not None:
            from p2pgame.eval import grid_png

            self.ctx.artifact(f"samples/peer-{self.ctx.peer_id}.png", grid_png(images[:100]))
        if self.completed:
            metrics["completed"] = dict(self.completed)
        return metrics

    def memory(self, step: int) -> float | None:
        """The weight of this step's target in the model, for the weights a run effectively
        applied (an exponential-family learner's step size); None: every step alike."""
        return None

    def state(self) -> Any | None:
        """A checkpoint (a torch state dict), or None: none saved."""
        return None

    def load_state(self, state: Any) -> None:
        raise NotImplementedError

    def resume_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_resume_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def count(self, space: str, k: int) -> None:
        self.completed[space] = self.completed.get(space, 0) + k


def check_schema(tensors: Any, expected: Schema) -> str | None:
    """Compare tensors to ``{field: (dtype, per-example shape)}``; the leading dim is free
    but common.  None if they match, else "schema"."""
    if set(tensors) != set(expected):
        return "schema"
    # dtype and shape from the header's schema where the mapping has one: a bit-packed
    # tensor stays packed (it is unpacked, if ever, in the step that uses it).
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


def schema_text(schema: Schema) -> str:
    return ", ".join(f"{k}: {dt}{list(shape)}" for k, (dt, shape) in schema.items())


def pick_examples(m: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """k indices into a message of m examples, each example once before any is taken
    twice (shuffles of the message, end to end): the numpy twin of the torch learners'
    ``pick_received``."""
    rounds = -(-k // m)
    return np.concatenate([rng.permutation(m) for _ in range(rounds)])[:k]


def examples_in(tensors: Any) -> int:
    """How many examples a message holds (its first field's length), read from the header
    where the mapping can (nothing unpacked)."""
    if not tensors:
        return 0
    name = next(iter(tensors))
    spec = getattr(tensors, "spec", None)
    return spec(name)[1][0] if spec else len(tensors[name])
