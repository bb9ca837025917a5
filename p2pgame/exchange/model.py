"""``model``: a peer sends its generator, and its neighbours draw its examples themselves.

At every round (``comm.publish_every`` steps from ``comm.publish_from``; ``publish_every
= 0``: once) a peer publishes its learner's generator (``Learner.generator``: a VAE's
decoder and prior) on ``params/<peer>/generator``.  Each receiver keeps the newest copy of
every in-neighbour's generator (``Learner.generator_copy``: a model of its own
architecture, its own seeded stream per sender) and, at every step, draws from it the
``a_ij T`` examples it learns from: the game's step (``samples``, :mod:`mixing`) with
only the source of the received examples changed.  So a message costs the generator's
size whatever ``T`` is, and a copy gives fresh examples every step, where a ``samples``
message is re-picked until the next one comes.

Keys: ``space`` (the sample space drawn from a copy; "": the learner's first default
one, ``x`` for the image families), ``wire_dtype`` (float32 or float16 on the wire; the
copy computes in float32) and ``missing`` (as ``samples``: ``fill`` by default, an
in-neighbour whose model has not come yet is filled with own data).  Payload bytes of a
message: the generator's parameter count times 4 (float32) or 2 (float16).  Both ends
of an edge need one generator schema (checked before any process starts: the peers'
``generator`` spaces must match).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from p2pgame.exchange.base import config_error
from p2pgame.exchange.mixing import Mixing, MixingConfig
from p2pgame.learners.base import Learner, Schema

GENERATOR = "generator"
WIRE_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class ModelConfig(MixingConfig):
    space: str = ""  # the space examples are drawn on from a copy ("": the default)
    wire_dtype: str = "float32"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.wire_dtype not in WIRE_DTYPES:
            raise config_error("wire_dtype", f"{self.wire_dtype!r} is not known; allowed: "
                                             f"{', '.join(WIRE_DTYPES)}")


def draw_space(cfg: Any, learner: type[Learner], lcfg: Any) -> str:
    """The space a receiver draws a copy's examples on."""
    if cfg.space:
        return cfg.space
    published = learner.default_spaces(lcfg)[0]
    return published[0] if published else next(iter(learner.reads(lcfg)), "")


def generator_bytes(schema: Schema, wire: str) -> int:
    """The payload bytes of one message: the generator's size in the wire dtype."""
    size = np.dtype(wire).itemsize
    return sum(int(np.prod(shape, dtype=np.int64)) * size for _, shape in schema.values())


class ModelExchange(Mixing):
    """The model sent every ``publish_every`` steps (see the module docstring)."""

    kind = "model"
    Config = ModelConfig
    topic_kind = "params"
    whole_tensors = True

    @classmethod
    def spaces(cls, cfg: Any, learner: type[Learner], lcfg: Any) -> dict[str, Schema]:
        gen = learner.generator(lcfg)
        if not gen:
            return {}
        return {GENERATOR: {k: (cfg.wire_dtype, shape) for k, (_, shape) in gen.items()}}

    @classmethod
    def reads(cls, cfg: Any, learner: type[Learner], lcfg: Any) -> dict[str, Schema]:
        return cls.spaces(cfg, learner, lcfg)

    @classmethod
    def topic_kind_of(cls, space: str, learner: type[Learner], lcfg: Any) -> str:
        return "params"

    @classmethod
    def default_spaces(cls, cfg: Any, learner: type[Learner], lcfg: Any):
        return (GENERATOR,), (GENERATOR,)

    @classmethod
    def validate_pair(cls, cfg: Any, learner: type[Learner], lcfg: Any, where: str) -> None:
        from p2pgame.config import ScenarioError, short

        if not learner.generator(lcfg):
            raise ScenarioError(f"{where}: learner {lcfg.kind!r} declares no generator "
                                "(Learner.generator): exchange.kind = \"model\" has nothing "
                                "to send; use \"samples\" or \"params\"")
        if learner.takes_weights:
            raise ScenarioError(f"{where}: learner {lcfg.kind!r} learns moments, not "
                                "examples: exchange.kind = \"model\" draws examples")
        space = draw_space(cfg, learner, lcfg)
        readable = learner.reads(lcfg)
        if space not in readable or space not in learner.spaces(lcfg):
            raise ScenarioError(f"{where}: exchange.space = {short(space)}: learner {lcfg.kind!r} "
                                "cannot both draw and learn it; allowed: "
                                + ", ".join(s for s in readable if s in learner.spaces(lcfg)))

    def __init__(self, cfg: Any, ctx: Any, learner: Learner) -> None:
        super().__init__(cfg, ctx, learner)
        lcls = type(learner)
        self.space = draw_space(cfg, lcls, learner.cfg)
        self.schema = self.spaces(cfg, lcls, learner.cfg)[GENERATOR]
        self.copies: dict[int, Any] = {}  # in-neighbour -> its generator, as we hold it
        self.loaded: dict[int, int] = {}  # in-neighbour -> the round its copy is of
        self.held: dict[int, dict[str, np.ndarray]] = {}  # ... and its tensors (resume)
        self.loads = 0

    def publish(self, step: int) -> dict[str, dict[str, Any]]:
        if GENERATOR not in self.ctx.player.publishes:
            return {}
        tensors = self.learner.generator_tensors()
        return {GENERATOR: {k: np.array(v, dtype=self.cfg.wire_dtype, copy=True)
                            for k, v in tensors.items()}}

    def check(self, env: Any) -> str | None:
        if env.space != GENERATOR or GENERATOR not in self.learns:
            return "space"
        if set(env.tensors) != set(self.schema):
            return "architecture"
        spec = getattr(env.tensors, "spec", None)
        for name, (dtype, shape) in self.schema.items():
            got_dtype, got_shape = spec(name) if spec is not None else (
                env.tensors[name].dtype, env.tensors[name].shape)
            if tuple(got_shape) != tuple(shape):
                return "architecture"
            if np.dtype(got_dtype).name != dtype:
                return "dtype"
        return None

    def _received(self, inbox: Any, j: int, step: int, want: int) -> Any:
        """``want`` examples drawn from our copy of j's newest generator (loaded when a
        newer one has come); None while none has."""
        env = inbox.use(j, GENERATOR, step) if GENERATOR in self.learns else None
        if env is None:
            return None
        if want <= 0:
            return _Drawn(self.space, {})  # (its share rounds to no example)
        if self.loaded.get(j) != env.step:
            self._load(j, {k: np.asarray(env.tensors[k], dtype=np.float32)
                           for k in self.schema})
            self.loaded[j] = env.step
            self.loads += 1
        drawn = self.copies[j].sample(max(want, 0), (self.space,))[self.space]
        return _Drawn(self.space, drawn)

    def _load(self, j: int, tensors: dict[str, np.ndarray]) -> None:
        copy = self.copies.get(j)
        if copy is None:
            copy = self.copies[j] = self.learner.generator_copy(j)
        copy.load(tensors)
        self.held[j] = tensors

    def state(self) -> dict[str, Any]:
        """The game's shares, and the copies held (a resumed peer sampling on without
        waiting for the next round: with ``publish_every = 0`` there is none)."""
        copies = {}
        for j, tensors in self.held.items():
            buf = io.BytesIO()
            np.savez(buf, **tensors)
            copies[str(j)] = {"round": self.loaded[j],
                              "tensors": base64.b64encode(buf.getvalue()).decode()}
        return {**super().state(), "copies": copies, "loads": self.loads}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.loads = int(state.get("loads", 0))
        for j, saved in state.get("copies", {}).items():
            with np.load(io.BytesIO(base64.b64decode(saved["tensors"]))) as z:
                tensors = {k: z[k] for k in z.files}
            self._load(int(j), tensors)
            self.loaded[int(j)] = int(saved["round"])

    def finish(self) -> dict[str, Any]:
        out = super().finish()
        out["model_loads"] = self.loads
        out["payload_bytes"] = {GENERATOR: generator_bytes(self.schema, self.cfg.wire_dtype)}
        return out


@dataclass
class _Drawn:
    """Examples drawn from a copy, shaped as a received message (``space``, ``tensors``)."""

    space: str
    tensors: dict[str, np.ndarray]
