"""``params``: parameter averaging (gossip) for any learner that declares its tensors.

At every round (every ``comm.publish_every`` steps, H; 1: every step; from step
``comm.publish_from``, before which peers learn alone) a peer publishes its learner's
exchangeable parameters (``Learner.parts``: one part, or a GAN's D and G) on
``params/<peer>/<part>`` and combines what arrived with the topology's weights
(self-weight, Metropolis ``1/(1 + max(d_i, d_j))`` or a given matrix):
``w_i = sum_j a_ij w_j`` over itself and the in-neighbours whose message of the round
arrived.  Between rounds, the H - 1 local steps are the learner's alone.

Order (``exchange.order``):

* ``atc``, adapt-then-combine (diffusion; Diffusion GAN, Wang, Pavan & Sayed): what a
  step adapts is published at the next step's start and combined then, before that
  step's own adaptation, so each local step starts from the combined parameters.  With
  parts, a round publishes the part the previous step adapted (both at step 0 and with
  H > 1);
* ``cta``, in D-PSGD's form (Lian et al., NeurIPS 2017): a step takes its local update
  at the parameters the peer holds (the ones it published this round), combines the
  round's messages, and applies the update to the combination:
  ``w_i <- sum_j a_ij w_j + (adapt(w_i) - w_i)``.  In a loop that publishes once a
  step, combining first and adapting at the combined point is the atc loop shifted by
  half a step, so the choice that changes the dynamics is where the gradient is taken.

Missing-neighbour rule: renormalise.  A neighbour whose round message has not arrived
(lost, late, or async and behind) is left out and the weights renormalised over what
arrived; a late message is used once, at the first combine after it arrives, if no
newer one came.  Wire dtype (``exchange.wire_dtype``): float32, float16 or bfloat16
(bfloat16 travels as its 16 bits in an int16 tensor, rounded to nearest even); the
combine is computed in float32.  Payload bytes of a message: sum over the part's
tensors of their size times 4 (float32) or 2 (float16, bfloat16).

The consensus distance (mean over peers of the squared distance of their exchanged
tensors to the centroid; Diffusion GAN's Theorem 1 "disagreement") is computed after
the run from snapshots every peer sends at the same steps (``exchange.snapshots``).
"""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p2pgame.exchange.base import Exchange, ExchangeConfig, ExchangeHooks, config_error
from p2pgame.learners.base import Batch, Learner, Schema, schema_text
from p2pgame.rng import derive_seed

WIRE_DTYPES = ("float32", "float16", "bfloat16")
SPARSE = ("topk", "randk", "sign")  # compressors whose output is no parameter tensor
ORDERS = ("atc", "cta")
SNAPSHOT_DIR = "params"
# The dtype each wire dtype travels as (numpy has no bfloat16: its bits, as int16).
CARRIER = {"float32": "float32", "float16": "float16", "bfloat16": "int16"}


@dataclass(frozen=True)
class ParamsConfig(ExchangeConfig):
    order: str = "atc"
    wire_dtype: str = "float32"
    snapshots: int = 20  # parameter snapshots for the consensus-distance curve (0: none)
    # Compression (exchange/compress.py): what each tensor travels as.  "none": the wire
    # dtype as is.  gamma = 0: the decoded tensors are averaged as parameters (int8, qsgd);
    # gamma > 0: CHOCO-Gossip, compressed differences to public copies, consensus step gamma.
    compress: str = "none"
    ratio: float = 0.01  # topk, randk: the share of entries sent
    bucket: int = 512  # int8, qsgd: entries per scale
    levels: int = 15  # qsgd: s
    error_feedback: bool = False  # direct compression: what it lost is sent later
    gamma: float = 0.0  # > 0: CHOCO-Gossip with this consensus step

    def __post_init__(self) -> None:
        from p2pgame.exchange.compress import SETTINGS, CompressorError

        for key, allowed in (("order", ORDERS), ("wire_dtype", WIRE_DTYPES),
                             ("compress", tuple(SETTINGS))):
            if getattr(self, key) not in allowed:
                raise config_error(key, f"{getattr(self, key)!r} is not known; allowed: "
                                        f"{', '.join(allowed)}")
        if self.snapshots < 0:
            raise config_error("snapshots", f"must be >= 0, got {self.snapshots}")
        if not (isinstance(self.gamma, (int, float)) and 0 <= self.gamma <= 1):
            raise config_error("gamma", f"must lie in [0, 1] (0: no CHOCO), got {self.gamma}")
        if self.compress == "none" and not self.gamma:
            if self.error_feedback:
                raise config_error("error_feedback", "needs exchange.compress")
            return
        if self.wire_dtype == "bfloat16":
            raise config_error("wire_dtype", "bfloat16 is not combined with compression; "
                                             "use float16 (values and scales in float16)")
        if self.compress in SPARSE and not self.gamma:
            raise config_error("compress", f"{self.compress!r} sends a sparse or sign tensor: "
                               "averaged as parameters it drags them to zero; set "
                               "exchange.gamma > 0 (CHOCO-Gossip) to send it as differences")
        if self.gamma and self.error_feedback:
            raise config_error("error_feedback", "CHOCO-Gossip (gamma > 0) corrects its own "
                               "compression error: leave error_feedback off")
        if self.compress == "qsgd" and self.wire_dtype == "float16":
            raise config_error("wire_dtype", "qsgd keeps its norms in float32 (float16 ones "
                                             "would bias it): use wire_dtype = \"float32\"")
        try:
            self.compressor()
        except CompressorError as e:
            raise config_error(e.key, str(e)) from None

    @property
    def compressed(self) -> bool:
        return self.compress != "none" or self.gamma > 0

    def compressor(self) -> Any:
        """The compressor of these settings (float16 values and scales with a float16 wire)."""
        from p2pgame.exchange.compress import SETTINGS, make_compressor

        settings = {k: getattr(self, k) for k in SETTINGS[self.compress] if k != "half"}
        if "half" in SETTINGS[self.compress] and self.compress != "qsgd":
            settings["half"] = self.wire_dtype == "float16"
        return make_compressor(self.compress, **settings)


def to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> the upper 16 bits of each value, rounded to nearest even, as int16."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
    return (rounded >> np.uint32(16)).astype(np.uint16).view(np.int16)


def from_bfloat16_bits(b: np.ndarray) -> np.ndarray:
    return (np.asarray(b).view(np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def encode(tensors: dict[str, np.ndarray], wire: str) -> dict[str, np.ndarray]:
    if wire == "bfloat16":
        return {k: to_bfloat16_bits(v) for k, v in tensors.items()}
    return {k: np.array(v, dtype=wire, copy=True) for k, v in tensors.items()}


def decode(tensors: Any, wire: str) -> dict[str, np.ndarray]:
    if wire == "bfloat16":
        return {k: from_bfloat16_bits(tensors[k]) for k in tensors}
    return {k: tensors[k] for k in tensors}


def payload_bytes(schema: Schema, wire: str) -> int:
    """The payload bytes of one message of a part (its formula)."""
    size = np.dtype(CARRIER[wire]).itemsize
    return sum(int(np.prod(shape, dtype=np.int64)) * size for _, shape in schema.values())


def payload_bytes_of(cfg: Any, shapes: dict[str, tuple[int, ...]]) -> int:
    """The payload bytes of one message of a part under ``cfg`` (its formula: the wire
    dtype's, or the compressor's, exchange/compress.py)."""
    if cfg.compressed:
        comp = cfg.compressor()
        return sum(comp.payload_bytes(shape) for shape in shapes.values())
    return payload_bytes({t: ("", shape) for t, shape in shapes.items()}, cfg.wire_dtype)


def weighted_average(terms: list[tuple[float, dict[str, Any]]]) -> dict[str, np.ndarray]:
    """``sum_j w_j x_j / sum_j w_j`` field by field, in float32."""
    total = sum(w for w, _ in terms)
    if not terms or total <= 0:
        raise ValueError("weighted_average needs at least one term with positive weight")
    out: dict[str, np.ndarray] = {}
    for name in terms[0][1]:
        acc = np.multiply(terms[0][1][name], np.float32(terms[0][0] / total), dtype=np.float32)
        tmp = np.empty_like(acc)
        for w, x in terms[1:]:
            np.multiply(x[name], np.float32(w / total), out=tmp, dtype=np.float32)
            acc += tmp
        out[name] = acc
    return out


def snapshot_steps(steps: int, count: int) -> list[int]:
    """``count`` evenly spaced steps in [0, steps - 1], the same on every peer."""
    if count <= 0 or steps <= 0:
        return []
    if count == 1 or steps == 1:
        return [steps - 1]
    return sorted({round(k * (steps - 1) / (count - 1)) for k in range(count)})


class ParamsHooks(ExchangeHooks):
    def validate(self, schedule: Any, no_data: dict[int, str]) -> None:
        """Averaging needs one tensor schema on both ends of every weighted edge."""
        from p2pgame.config import ScenarioError
        from p2pgame.learners import learner_class

        sc = self.scenario
        if sc.exchange.gamma > 0:
            _choco_checks(sc, schedule)
        schemas = {p.peer: learner_class(p.learner.kind).parts(p.learner) for p in sc.players}
        for t in schedule.topologies:
            for j, i in t.edges:
                if t.weights[i, j] <= 0 or schemas[i] == schemas[j]:
                    continue
                a, b = sc.player(j).learner.kind, sc.player(i).learner.kind
                diff = _schema_difference(schemas[j], schemas[i])
                raise ScenarioError(
                    f"peers: peer {i} ({b}) averages the parameters of peer {j} ({a}), but "
                    f"their tensors differ ({diff}); parameter averaging needs one "
                    "architecture: use one learner, or exchange.kind = \"samples\"")

    def after_run(self, run_dir: Path, summary: dict) -> None:
        from p2pgame.bus.traffic import mean_message_bytes
        from p2pgame.eval.disagreement import disagreement_curve, write_disagreement
        from p2pgame.learners import learner_class

        sc = self.scenario
        parts = list(learner_class(sc.learner.kind).parts(sc.learner))
        peers = summary.get("peers", {})
        for pid, s in peers.items():
            steps = s.get("steps") or 0
            s["bytes_sent_per_step"] = s.get("bytes_sent", 0) / steps if steps else 0.0
            # Bytes of one message per part, as the bus counted them (header + payload).
            for part in parts:
                per = mean_message_bytes(s.get("traffic_out", []), f"params/{pid}/{part}")
                if per is not None:
                    s[f"wire_bytes_{part}"] = per
        topo_path = run_dir / "topology.json"
        if "second_eigenvalue_modulus" not in summary and topo_path.exists():
            epochs = json.loads(topo_path.read_text())["epochs"]
            summary["second_eigenvalue_modulus"] = epochs[-1]["second_eigenvalue_modulus"]
        lam = summary.get("second_eigenvalue_modulus")
        lr = getattr(sc.learner, "lr", 0.0)
        if lam is not None and lam < 1 and lr:
            # Theorem 1's scale mu^2 lambda^2 / (1 - lambda)^2 (without the gradient bounds).
            summary["disagreement_theory_scale"] = lr**2 * lam**2 / (1 - lam) ** 2
        rows = disagreement_curve(run_dir / SNAPSHOT_DIR, sc.n)
        if rows:
            summary["consensus_distance"] = [[r["step"], r["all"]] for r in rows]
            summary["consensus_distance_final"] = rows[-1]["all"]
            # Diffusion GAN's name for it (Theorem 1), per part as well.
            summary["disagreement"] = summary["consensus_distance"]
            summary["disagreement_final"] = rows[-1]["all"]
            for part in parts if len(parts) > 1 else ():
                summary[f"disagreement_{part}"] = [[r["step"], r[part]] for r in rows]
            write_disagreement(run_dir, rows, sc.name)
        shutil.rmtree(run_dir / SNAPSHOT_DIR, ignore_errors=True)


def _choco_checks(sc: Any, schedule: Any) -> None:
    """CHOCO-Gossip needs every message taken once, in order (public copies at both
    ends): refuse what could lose, delay or skip one."""
    from p2pgame.config import ScenarioError

    why = "CHOCO-Gossip (exchange.gamma > 0) needs every message taken once, in order"
    if sc.comm.mode != "sync":
        raise ScenarioError(f"comm.mode: {why}: use \"sync\"")
    if len(schedule.topologies) != 1:
        raise ScenarioError(f"topology: {why}: a graph that changes during the run would "
                            "leave public copies behind; use one graph")
    links = [("comm", sc.comm.link)] + [(f"comm.edges ({e.src} -> {e.dst})", e.link)
                                        for e in sc.comm.edges]
    for where, link in links:
        for key in ("drop", "delay_steps", "bandwidth"):
            if getattr(link, key):
                raise ScenarioError(f"{where}.{key} = {getattr(link, key)}: {why} (a lost, "
                                    "delayed or queued message would part the copies); "
                                    "set it to 0")


def _schema_difference(a: dict[str, Schema], b: dict[str, Schema]) -> str:
    for part in sorted(set(a) | set(b)):
        if a.get(part) != b.get(part):
            if part not in a or part not in b:
                return f"part {part!r} on one side only"
            def text(spec) -> str:
                return "absent" if spec is None else f"{spec[0]}{list(spec[1])}"

            for name in sorted(set(a[part]) | set(b[part])):
                if a[part].get(name) != b[part].get(name):
                    return (f"{part}.{name}: {text(a[part].get(name))} vs "
                            f"{text(b[part].get(name))}")
            return f"part {part!r}: {schema_text(a[part])} vs {schema_text(b[part])}"
    return "?"


class Params(Exchange):
    kind = "params"
    Config = ParamsConfig
    topic_kind = "params"
    hooks = ParamsHooks
    partial_rounds = True
    whole_tensors = True

    @classmethod
    def spaces(cls, cfg: Any, learner: type[Learner], lcfg: Any) -> dict[str, Schema]:
        """Each part, its tensors in the wire's carrier dtype (full shapes, no batch dim)."""
        if cfg.compressed:  # each tensor's compressed fields, "<tensor>:<field>"
            from p2pgame.exchange.compress import part_fields

            comp = cfg.compressor()
            return {part: part_fields(comp, schema)
                    for part, schema in learner.parts(lcfg).items()}
        carrier = CARRIER[cfg.wire_dtype]
        return {part: {k: (carrier, shape) for k, (_, shape) in schema.items()}
                for part, schema in learner.parts(lcfg).items()}

    @classmethod
    def default_spaces(cls, cfg: Any, learner: type[Learner], lcfg: Any):
        parts = tuple(learner.parts(lcfg))
        return parts, parts

    @classmethod
    def validate_pair(cls, cfg: Any, learner: type[Learner], lcfg: Any, where: str) -> None:
        from p2pgame.config import ScenarioError

        if not learner.parts(lcfg):
            raise ScenarioError(f"{where}: learner {lcfg.kind!r} declares no exchangeable "
                                "tensors (Learner.parts): exchange.kind = \"params\" has "
                                "nothing to average for it")

    def __init__(self, cfg: Any, ctx: Any, learner: Learner) -> None:
        super().__init__(cfg, ctx, learner)
        self.wire = cfg.wire_dtype
        self.schema = self.spaces(cfg, type(learner), learner.cfg)
        self.parts = tuple(self.schema)
        self.publishes = set(ctx.player.publishes)
        self.learns = set(ctx.player.learns)
        self.snap_steps = set(snapshot_steps(ctx.scenario.steps, cfg.snapshots))
        self.combine_rounds = 0
        self.used: dict[tuple[int, str], int] = {}  # (neighbour, part) -> step last combined
        self.combine_renormalised = 0
        self.combine_missing: Counter[int] = Counter()
        self.snapshot_meta_sent = False
        self.shapes = {p: {t: tuple(shape) for t, (_, shape) in schema.items()}
                       for p, schema in type(learner).parts(learner.cfg).items()}
        self.comp = self.ef = None
        self.choco: dict[str, Any] = {}
        if cfg.compressed:
            from p2pgame.exchange.compress import Choco, ErrorFeedback

            self.comp = cfg.compressor()
            if cfg.gamma > 0:  # public copies start at zero (the paper's x_hat_0 = 0)
                self.choco = {p: Choco(self.comp, cfg.gamma, ctx.peer_id, self.shapes[p])
                              for p in self.parts}
            elif cfg.error_feedback:
                self.ef = ErrorFeedback(self.comp)
            # qsgd's stochastic rounding: this peer's own stream
            self.qrng = np.random.default_rng(
                derive_seed(ctx.scenario.seed, "peer", ctx.peer_id, "compress"))

    def _seed(self, sender: int, step: int, part: str, tensor: str) -> int | None:
        """random-k's indices: a seed both ends derive from the message alone."""
        if self.comp is None or not self.comp.needs_seed:
            return None
        return derive_seed(self.ctx.scenario.seed, "randk", sender, step, part, tensor)

    def _compress(self, part: str, step: int, tensors: dict[str, np.ndarray]
                  ) -> dict[str, np.ndarray]:
        from p2pgame.exchange.compress import join_fields

        me, out = self.ctx.peer_id, {}
        for t, x in tensors.items():
            seed = self._seed(me, step, part, t)
            if self.choco:
                out[t] = self.choco[part].message(t, x, seed=seed, rng=self.qrng)
            elif self.ef is not None:
                out[t] = self.ef.encode(f"{part}/{t}", x, seed=seed, rng=self.qrng)
            else:
                out[t] = self.comp.encode(x, seed=seed, rng=self.qrng)
        return join_fields(out)

    def _fields(self, env: Any) -> dict[str, dict[str, Any]]:
        from p2pgame.exchange.compress import split_fields

        return split_fields(env.tensors, self.shapes[env.space])

    def _dense(self, env: Any) -> dict[str, np.ndarray]:
        """A neighbour's message as parameter tensors (float32 or the wire's dtype)."""
        if self.comp is None:
            return decode(env.tensors, self.wire)
        part = env.space
        return {t: self.comp.decode(f, self.shapes[part][t],
                                    seed=self._seed(env.sender, env.step, part, t))
                for t, f in self._fields(env).items()}

    # -- publishing --------------------------------------------------------------------
    def exchanged_parts(self, step: int) -> tuple[str, ...]:
        """Parts published at the start of ``step`` and combined in it: every step
        (``publish_every = 1``) the part adapted in the previous step (all at step 0);
        every H steps, all of them."""
        comm = self.ctx.scenario.comm
        if not comm.is_round(step):
            return ()
        if step == comm.publish_from or comm.publish_every != 1:
            return self.parts
        return tuple(p for p in self.learner.adapted(step - 1) if p in self.schema)

    def publish(self, step: int) -> dict[str, dict[str, Any]]:
        if self.comp is not None:
            return {p: self._compress(p, step, self.learner.tensors(p))
                    for p in self.exchanged_parts(step) if p in self.publishes}
        return {p: encode(self.learner.tensors(p), self.wire)
                for p in self.exchanged_parts(step) if p in self.publishes}

    def check(self, env: Any) -> str | None:
        if env.space not in self.schema or env.space not in self.learns:
            return "space"
        expected = self.schema[env.space]
        if set(env.tensors) != set(expected):
            return "architecture"
        spec = getattr(env.tensors, "spec", None)
        for name, (dtype, shape) in expected.items():
            got_dtype, got_shape = spec(name) if spec is not None else (
                env.tensors[name].dtype, env.tensors[name].shape)
            if tuple(got_shape) != tuple(shape):
                return "architecture"
            if np.dtype(got_dtype).name != dtype:
                return "dtype"
        return None

    # -- a step ------------------------------------------------------------------------
    def combine(self, part: str, step: int, inbox: Any, topology: Any,
                own: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray] | None, list[int]]:
        """The weighted average of ``own`` (this peer's copy of ``part``) and the round's
        messages; (None, missing) when there is nothing to combine."""
        if self.choco:
            return self._choco_combine(part, step, inbox, topology, own)
        me = self.ctx.peer_id
        row = topology.row(me)
        terms: list[tuple[int, float, dict[str, Any]]] = [(me, row[me], own)]
        missing = []
        for j, w in row.items():
            if j == me or w <= 0:
                continue
            env = inbox.use(j, part, step) if part in self.learns else None
            # Use each neighbour message once: the round's own (sync), or whatever newer one
            # has arrived since the last combine (late under delays / async); else renormalise.
            if (env is None or env.space != part or env.step > step
                    or env.step <= self.used.get((j, part), -1)):
                missing.append(j)
                continue
            self.used[(j, part)] = env.step
            terms.append((j, w, self._dense(env)))
        if len(terms) == 1 and not missing:
            return None, []  # no neighbours: nothing to combine
        if terms[0][1] <= 0 and len(terms) == 1:
            return None, missing  # own weight 0 and nobody heard: keep the own copy
        self.combine_rounds += 1
        if missing:
            self.combine_renormalised += 1
            self.combine_missing.update(missing)
        # Summed own copy first, then the row's order: Diffusion GAN's order, so its runs
        # are bit-identical to those of the code before the exchange was its own layer.
        # (Summing in peer order instead would give every peer of a complete graph the
        # same bits, but a GAN is chaotic: the non-homogeneous MNIST run then ended with 6
        # digits a peer instead of 8; bench/RESULTS.md, section 16.)  Two peers with one
        # weight row hold the same bits either way (a + b = b + a).
        return weighted_average([(w, x) for _, w, x in terms]), missing

    def step(self, step: int, inbox: Any, topology: Any) -> dict[str, float]:
        learner = self.learner
        batch = Batch(own=None if learner.batch_size == 0 else learner.batch_size,
                      own_weight=1.0)
        parts = self.exchanged_parts(step)
        missing: list[int] = []
        if self.cfg.order == "atc":
            for p in parts:
                avg, lost = self.combine(p, step, inbox, topology, learner.tensors(p))
                missing += lost
                if avg is not None:
                    learner.load_tensors(p, avg)
            if step in self.snap_steps:
                self._snapshot(step)
            out = learner.learn(step, batch)
        else:  # cta, D-PSGD's form: the update taken at the held parameters
            if step in self.snap_steps:
                self._snapshot(step)
            before = {p: learner.tensors(p) for p in parts}
            out = learner.learn(step, batch)
            for p in parts:
                avg, lost = self.combine(p, step, inbox, topology, before[p])
                missing += lost
                if avg is not None:
                    after = learner.tensors(p)
                    learner.load_tensors(p, {k: avg[k] + (after[k] - before[p][k])
                                             for k in avg})
        self.comm = {"missing": float(len(missing))}
        return out

    def _choco_combine(self, part: str, step: int, inbox: Any, topology: Any,
                       own: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray] | None,
                                                            list[int]]:
        """CHOCO-Gossip: take every in-neighbour's compressed difference of this round
        into its public copy, then ``x + gamma * sum_j w_ij (x_hat_j - x_hat_me)``.  Each
        message must be taken exactly once, in order (else the copies part for good):
        a round message that is not there stops the peer, naming it (the scenario checks
        refuse what could lose one: async mode, lossy links, delays, changing graphs)."""
        me = self.ctx.peer_id
        row = topology.row(me)
        choco = self.choco[part]
        for j, w in row.items():
            if j == me or w <= 0:
                continue
            env = inbox.use(j, part, step) if part in self.learns else None
            if env is None or env.space != part or env.step != step:
                raise RuntimeError(
                    f"CHOCO-Gossip: peer {j}'s message of round {step} ({part}) is not "
                    "there; its public copy would no longer match its own")
            for t, f in self._fields(env).items():
                choco.receive(j, t, f, seed=self._seed(j, step, part, t))
        self.combine_rounds += 1
        return {t: choco.consensus(t, x, row) for t, x in own.items()}, []

    def _snapshot(self, step: int) -> None:
        """Report the exchanged tensors, flat; the launcher writes them for the
        consensus-distance curve."""
        me = self.ctx.peer_id
        tensors = {p: self.learner.tensors(p) for p in self.parts}
        flat = np.concatenate([v.reshape(-1) for p in self.parts for v in tensors[p].values()])
        buf = io.BytesIO()
        np.save(buf, flat.astype(np.float32))
        self.ctx.artifact(f"{SNAPSHOT_DIR}/peer-{me}-step-{step:09d}.npy", buf.getvalue())
        if not self.snapshot_meta_sent:
            self.snapshot_meta_sent = True
            sizes = {p: int(sum(v.size for v in tensors[p].values())) for p in self.parts}
            self.ctx.artifact(f"{SNAPSHOT_DIR}/peer-{me}.json", json.dumps(
                {"model": self.learner.cfg.kind, "sizes": sizes}).encode())

    def finish(self) -> dict[str, Any]:
        return {
            "wire_dtype": self.wire,
            "order": self.cfg.order,
            "combine_rounds": self.combine_rounds,
            "combine_renormalised": self.combine_renormalised,
            "combine_missing": {str(k): v for k, v in sorted(self.combine_missing.items())},
            **({"compress": self.cfg.compress, "gamma": self.cfg.gamma,
                "error_feedback": self.cfg.error_feedback,
                "payload_bytes": {p: payload_bytes_of(self.cfg, self.shapes[p])
                                  for p in self.parts}} if self.comp is not None else {}),
        }

    def state(self) -> dict[str, Any]:
        out = {"used": [[j, p, s] for (j, p), s in self.used.items()],
               "combine_rounds": self.combine_rounds,
               "combine_renormalised": self.combine_renormalised,
               "combine_missing": {str(k): v for k, v in self.combine_missing.items()}}
        if self.comp is not None:
            out["compress"] = {
                "choco": {p: c.state() for p, c in self.choco.items()},
                "ef": self.ef.state() if self.ef is not None else None,
                "rng": self.qrng.bit_generator.state}
        return out

    def load_state(self, state: dict[str, Any]) -> None:
        if self.comp is not None and "compress" in state:
            saved = state["compress"]
            for p, c in self.choco.items():
                c.load_state(saved["choco"][p])
            if self.ef is not None:
                self.ef.load_state(saved["ef"])
            self.qrng.bit_generator.state = saved["rng"]
        self.used = {(int(j), str(p)): int(s) for j, p, s in state["used"]}
        self.combine_rounds = int(state["combine_rounds"])
        self.combine_renormalised = int(state["combine_renormalised"])
        self.combine_missing = Counter({int(k): v for k, v in state["combine_missing"].items()})
