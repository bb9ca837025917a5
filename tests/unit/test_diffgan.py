"""Unit tests for Diffusion GAN (the ``params`` exchange x a ``dcgan-*`` learner): combine,
renormalisation, checks, validation, wire sizes.

Tiny IDX files stand in for MNIST; nothing here needs the real data sets.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import torch

from p2pgame.bus.codec import Envelope, decode, encode, frame_sizes
from p2pgame.bus.traffic import Traffic
from p2pgame.config import ScenarioError
from p2pgame.eval.disagreement import disagreement
from p2pgame.exchange import method
from p2pgame.exchange.inbox import Inbox
from p2pgame.exchange.node import Node, PeerContext
from p2pgame.exchange.params import (
    Params,
    ParamsConfig,
    ParamsHooks,
    snapshot_steps,
    weighted_average,
)
from p2pgame.learners.gan import GANConfig, GANLearner
from p2pgame.scenario import resolve
from p2pgame.topology import build_schedule
from tests.helpers import write_tiny_mnist


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_mnist(root) -> None:
    write_tiny_mnist(root, n_train=100, n_test=50)


def raw_scenario(**algorithm) -> dict:
    return {
        "name": "diffgan-unit",
        "seed": 3,
        "steps": 12,
        "topology": {"n": 3, "graph": "edges", "edges": [[0, 1], [0, 2]],
                     "weights": "metropolis"},
        "data": {"dataset": "mnist", "split": "train",
                 "partition": {"kind": "classes", "classes": [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]}},
        "algorithm": {"name": "diffgan", "snapshots": 0, "checkpoint": False, **algorithm},
    }


def scenario_from_dict(raw: dict):
    return resolve(raw, "x.toml")


def context(scenario, peer: int, data_root, artifacts: dict | None = None) -> PeerContext:
    schedule = build_schedule(scenario.topology, scenario.steps, scenario.seed)
    store = artifacts if artifacts is not None else {}
    return PeerContext(peer, scenario, scenario.player(peer), schedule, data_root,
                       log=lambda m: None, artifact=store.__setitem__)


def make_peer(tmp_path, peer: int = 0, **algorithm) -> tuple[Node, object]:
    tiny_mnist(tmp_path / "data")
    scenario = scenario_from_dict(raw_scenario(**algorithm))
    ctx = context(scenario, peer, tmp_path / "data")
    info = method(scenario)
    assert info.name == "params x dcgan-mlp" and issubclass(info.peer(), Node)
    node = info.peer()(ctx)  # as the runtime builds it (p2pgame.peer.method.build)
    assert isinstance(node.exchange, Params) and isinstance(node.learner, GANLearner)
    return node, ctx.schedule.at(0)


def message(sender: int, part: str, step: int, tensors: dict) -> Envelope:
    env = Envelope(sender, f"params/{sender}/{part}", step, tensors, last=True)
    return decode(encode(env))  # what a receiver really holds: read-only wire arrays


def constant_part(node: Node, part: str, value: float) -> dict[str, np.ndarray]:
    return {k: np.full(s, value, dtype=np.float32)
            for k, (_dtype, s) in node.exchange.schema[part].items()}


def live(node: Node, part: str) -> dict[str, np.ndarray]:
    """The part's exchanged tensors as the model holds them (its parameters)."""
    return {k: v.detach().numpy().copy()
            for k, v in node.learner.model.parts[part].named_parameters()}


def combine(node: Node, part: str, step: int, inbox: Inbox, top) -> list[int]:
    """Combine ``part`` of the round into the model, as an adapt-then-combine step does
    before its own adaptation (Params.step); the neighbours not heard from."""
    learner = node.learner
    avg, missing = node.exchange.combine(part, step, inbox, top, learner.tensors(part))
    if avg is not None:
        learner.load_tensors(part, avg)
    return missing


def test_combine_is_the_weighted_average(tmp_path):
    node, top = make_peer(tmp_path)
    a = top.weights  # star around 0: degrees 2, 1, 1 -> a01 = a02 = 1/3, a00 = 1/3
    assert np.allclose(a[0], [1 / 3, 1 / 3, 1 / 3])
    own = live(node, "D")
    inbox = Inbox()
    inbox.put(message(1, "D", 7, constant_part(node, "D", 0.5)))
    inbox.put(message(2, "D", 7, constant_part(node, "D", -0.25)))
    missing = combine(node, "D", 7, inbox, top)
    assert missing == []
    got = live(node, "D")
    for k, v in own.items():
        expect = a[0, 0] * v + a[0, 1] * 0.5 + a[0, 2] * -0.25
        np.testing.assert_allclose(got[k], expect, rtol=1e-6, atol=1e-7)
    assert node.exchange.combine_rounds == 1 and node.exchange.combine_renormalised == 0


def test_lost_message_renormalises_and_late_one_is_used_once(tmp_path):
    node, top = make_peer(tmp_path)
    w0, w1, w2 = top.weights[0, 0], top.weights[0, 1], top.weights[0, 2]
    own = live(node, "G")
    inbox = Inbox()
    inbox.put(message(1, "G", 4, constant_part(node, "G", 1.0)))
    inbox.put(message(2, "D", 4, constant_part(node, "D", 9.0)))  # the other part: not used
    # Peer 2's G message of this round is lost: renormalise over self and peer 1.
    assert combine(node, "G", 4, inbox, top) == [2]
    got = live(node, "G")
    for k, v in own.items():
        np.testing.assert_allclose(got[k], (w0 * v + w1 * 1.0) / (w0 + w1), rtol=1e-6,
                                   atol=1e-7)
    assert node.exchange.combine_renormalised == 1 and dict(node.exchange.combine_missing) == {2: 1}
    # Next combine: peer 1's message was used already (not again); peer 2's late round-3
    # message arrives now and is used once, renormalised over self and peer 2.
    before = live(node, "G")
    inbox.put(message(2, "G", 3, constant_part(node, "G", 5.0)))
    assert combine(node, "G", 5, inbox, top) == [1]
    got = live(node, "G")
    for k, v in before.items():
        np.testing.assert_allclose(got[k], (w0 * v + w2 * 5.0) / (w0 + w2), rtol=1e-6,
                                   atol=1e-7)
    assert combine(node, "G", 6, inbox, top) == [1, 2]  # nothing new: keep the adapted part
    assert node.exchange.combine_renormalised == 3 and dict(node.exchange.combine_missing) == {2: 2, 1: 2}


def test_weighted_average_and_disagreement_by_hand():
    out = weighted_average([(0.5, {"w": np.array([1.0, 2.0])}), (0.25, {"w": np.array([4.0, 0.0])})])
    np.testing.assert_allclose(out["w"], [(0.5 + 1.0) / 0.75, 1.0 / 0.75])
    x = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, 3.0]])  # centroid (1, 1)
    assert disagreement(x) == pytest.approx((2 + 2 + 4) / 3)
    assert snapshot_steps(100, 5) == [0, 25, 50, 74, 99]
    assert snapshot_steps(10, 0) == [] and snapshot_steps(10, 1) == [9]


def test_check_rejects_other_architectures(tmp_path):
    node, _ = make_peer(tmp_path)
    ok = message(1, "D", 0, constant_part(node, "D", 0.0))
    assert node.check(ok) is None
    from p2pgame.models import make_model

    conv = make_model("dcgan-conv", seed=0)
    other = {k: v.detach().numpy() for k, v in conv.part_state("D").items()}
    assert node.check(message(1, "D", 0, other)) == "architecture"
    bad_shape = constant_part(node, "G", 0.0)
    first = next(iter(bad_shape))
    bad_shape[first] = bad_shape[first][:-1]
    assert node.check(message(1, "G", 0, bad_shape)) == "architecture"
    ints = {k: v.astype(np.int32) for k, v in constant_part(node, "D", 0.0).items()}
    assert node.check(message(1, "D", 0, ints)) == "dtype"
    assert node.check(message(1, "X", 0, {})) == "space"


def test_validate_refuses_mixed_architectures_naming_peers():
    raw = raw_scenario(peer_models={"2": "dcgan-conv"})
    # Resolution refuses it (the params exchange's check), naming both peers, their
    # learners and the first tensor that differs.
    with pytest.raises(ScenarioError, match=r"^x\.toml: peers: peer 2 \(dcgan-conv\) averages "
                                            r"the parameters of peer 0 \(dcgan-mlp\), but "
                                            r"their tensors differ \(D\.\S+: "):
        scenario_from_dict(raw)
    raw["algorithm"]["combine"] = False
    raw["comm"] = {"mode": "async"}
    mixed = scenario_from_dict(raw)  # non-cooperative peers may differ
    assert mixed.method_name == "none x dcgan-conv, dcgan-mlp"
    assert [p.learner.kind for p in mixed.players] == ["dcgan-mlp", "dcgan-mlp", "dcgan-conv"]
    with pytest.raises(ScenarioError, match=r"algorithm\.model = 'nope' is not known; "
                                            r"allowed: .*dcgan-conv, dcgan-mlp"):
        scenario_from_dict(raw_scenario(model="nope"))
    with pytest.raises(ScenarioError, match="unknown key 'mu'"):
        scenario_from_dict(raw_scenario(mu=0.1))


def test_params_hooks_refuse_averaging_different_tensors():
    """ParamsHooks' own check (any learner): both ends of every weighted edge average one
    tensor schema; the message names the two peers, their learners and the first tensor
    that differs."""
    import dataclasses

    s = scenario_from_dict(raw_scenario())
    conv = dataclasses.replace(s.learner, kind="dcgan-conv")
    players = tuple(dataclasses.replace(p, learner=conv) if p.peer == 2 else p
                    for p in s.players)
    mixed = dataclasses.replace(s, players=players)
    schedule = build_schedule(mixed.topology, mixed.steps, mixed.seed)
    with pytest.raises(ScenarioError) as info:
        ParamsHooks(mixed).validate(schedule, {})
    msg = str(info.value)
    assert re.match(r"peers: peer (2 \(dcgan-conv\) averages the parameters of peer 0 "
                    r"\(dcgan-mlp\)|0 \(dcgan-mlp\) averages the parameters of peer 2 "
                    r"\(dcgan-conv\)), but their tensors differ \(", msg), msg
    assert "parameter averaging needs one architecture" in msg
    ParamsHooks(s).validate(schedule, {})  # one architecture: nothing to refuse


def test_diffgan_preset_keys_and_what_changed():
    """The old [algorithm] name = "diffgan" runs as params x dcgan-*: its wire keys move to
    [exchange], the rest to [learner]; combine = false is the ``none`` exchange."""
    s = scenario_from_dict(raw_scenario(wire_dtype="float16", model="dcgan-conv", lr=0.01))
    assert s.preset == "diffgan"
    assert s.exchange == ParamsConfig(kind="params", wire_dtype="float16", snapshots=0)
    assert s.learner == GANConfig(kind="dcgan-conv", lr=0.01, checkpoint=False)
    s = scenario_from_dict(raw_scenario(combine=False, wire_dtype="float16"))
    assert s.exchange.kind == "none" and s.learner.kind == "dcgan-mlp"
    for key, value, needle in (("wire_dtype", "int8", "algorithm.wire_dtype: 'int8' is not "
                                                        "known; allowed: float32, float16, "
                                                        "bfloat16"),
                               ("snapshots", -1, "algorithm.snapshots: must be >= 0"),
                               ("n_d", 0, "algorithm.n_d: must be >= 1"),
                               ("combine", 1, "algorithm.combine: expected true or false"),
                               ("peer_models", {"3": "dcgan-conv"},
                                "algorithm.peer_models.3: is not a peer id in 0..2")):
        with pytest.raises(ScenarioError, match=re.escape(needle)):
            scenario_from_dict(raw_scenario(**{key: value}))
    # Changed: parameter averaging is not the GAN's alone now, so the preset takes any
    # learner that declares its tensors (the old one allowed dcgan-conv, dcgan-mlp only) ...
    assert scenario_from_dict(raw_scenario(model="hvae-mlp")).method_name == "params x hvae-mlp"
    # ... and combine = false runs in sync mode too (it was refused: "a sync barrier would
    # wait forever"; a peer now never waits for an in-neighbour it takes no space from).
    s = scenario_from_dict(raw_scenario(combine=False))
    assert (s.method_name, s.comm.mode) == ("none x dcgan-mlp", "sync")
    assert all(p.publishes == p.learns == () for p in s.players)


@pytest.mark.parametrize("wire_dtype, size", [("float32", 4), ("float16", 2)])
def test_bytes_per_message(tmp_path, wire_dtype, size):
    node, top = make_peer(tmp_path, wire_dtype=wire_dtype)
    first = node.publish(0)
    assert set(first) == {"D", "G"}  # step 0: the initial parameters
    traffic = Traffic(me=0)
    receivers = top.out_neighbours(0)
    assert receivers == (1, 2)
    sizes = {}
    for step, part in ((1, "D"), (6, "G")):  # psi of step 0 (a D round), of step 5 (G)
        out = node.publish(step)
        assert list(out) == [part]
        env = Envelope(0, f"params/0/{part}", step, out[part])
        frames = encode(env)
        header, payload = frame_sizes(frames)
        assert payload == node.learner.model.param_count(part) * size
        assert header < 4096  # names + shapes of a dozen tensors
        assert all(t.dtype == np.dtype(wire_dtype) for t in out[part].values())
        # What the bus records for this message (one copy per subscribed receiver) is
        # exactly its frames' sizes: the wire bytes of a part come from these rows.
        traffic.count_sent(env, frames, receivers)
        rows = [r for r in traffic.sent.rows() if r["topic"] == f"params/0/{part}"]
        assert [(r["receiver"], r["messages"], r["header_bytes"], r["payload_bytes"])
                for r in rows] == [(j, 1, header, payload) for j in receivers]
        assert traffic.per_message_bytes(f"params/0/{part}") == header + payload
        sizes[part] = header + payload
    assert traffic.sent.totals()["bytes"] == len(receivers) * (sizes["D"] + sizes["G"])
    assert sizes["D"] != sizes["G"]  # the parts really differ in size
    # The launcher turns the traffic rows of each peer summary into wire_bytes_D / _G.
    summary = {"peers": {"0": {"steps": 2, "bytes_sent": traffic.sent.totals()["bytes"],
                               "traffic_out": traffic.sent.rows()}}}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ParamsHooks(node.ctx.scenario).after_run(run_dir, summary)
    s = summary["peers"]["0"]
    assert (s["wire_bytes_D"], s["wire_bytes_G"]) == (sizes["D"], sizes["G"])
    assert s["bytes_sent_per_step"] == pytest.approx(len(receivers) * sum(sizes.values()) / 2)


def test_noncooperative_publishes_nothing_and_steps_are_deterministic(tmp_path):
    node, top = make_peer(tmp_path)
    twin, _ = make_peer(tmp_path)
    for step in range(7):
        inbox = Inbox()
        for j in (1, 2):  # neighbours that echo our own parameters
            for p in (("D", "G") if step == 0 else (node.learner.cfg.part_at(step - 1),)):
                inbox.put(message(j, p, step, node.learner.tensors(p)))
        a = node.train_step(step, inbox, top)
        b = twin.train_step(step, inbox, top)
        assert a == b
    for p in ("D", "G"):
        for k, v in live(node, p).items():
            np.testing.assert_array_equal(v, live(twin, p)[k])
    raw = raw_scenario(combine=False)
    raw["comm"] = {"mode": "async"}
    scenario = scenario_from_dict(raw)
    assert scenario.exchange.kind == "none"  # combine = false: local learning only
    assert scenario.player(1).publishes == () and scenario.player(1).learns == ()
    solo = Node(context(scenario, 1, tmp_path / "data"))
    assert solo.publish(0) == {} and solo.publish(3) == {}
    assert solo.learner.own_classes == [3, 4, 5]


def test_snapshots_are_sent_as_artifacts(tmp_path):
    """The peer never writes the run folder: snapshots go out through ctx.artifact."""
    tiny_mnist(tmp_path / "data")
    scenario = scenario_from_dict(raw_scenario(snapshots=2))
    artifacts: dict[str, bytes] = {}
    ctx = context(scenario, 0, tmp_path / "data", artifacts)
    node = Node(ctx)
    top = ctx.schedule.at(0)
    assert node.exchange.snap_steps == {0, 11}
    node.train_step(0, Inbox(), top)
    assert sorted(artifacts) == ["params/peer-0-step-000000000.npy", "params/peer-0.json"]
    vec = np.load(io.BytesIO(artifacts["params/peer-0-step-000000000.npy"]))
    assert vec.dtype == np.float32 and vec.shape == (node.learner.model.param_count(),)
    meta = json.loads(artifacts["params/peer-0.json"])
    assert meta == {"model": "dcgan-mlp", "sizes": {"D": node.learner.model.param_count("D"),
                                                    "G": node.learner.model.param_count("G")}}
    node.train_step(1, Inbox(), top)  # not a snapshot step: nothing new
    assert len(artifacts) == 2
    assert not (tmp_path / "run").exists()


def test_exchanged_tensors_are_the_parameters_not_the_batchnorm_statistics():
    """Changed with the params exchange: a part travels as its parameters (Learner.parts);
    the old Diffusion GAN also averaged floating-point buffers (dcgan-conv's BatchNorm
    running statistics), which now stay local to each peer."""
    from p2pgame.models import make_model

    cfg = GANConfig(kind="dcgan-conv")
    model = make_model("dcgan-conv", seed=0)
    for part in ("D", "G"):
        params = {k: ("float32", tuple(v.shape))
                  for k, v in model.parts[part].named_parameters()}
        assert GANLearner.parts(cfg)[part] == params
        assert Params.spaces(ParamsConfig(kind="params", wire_dtype="float16"), GANLearner,
                             cfg)[part] == {k: ("float16", s) for k, (_, s) in params.items()}
    buffers = {k for k, v in model.parts["G"].named_buffers() if v.is_floating_point()}
    assert buffers and not buffers & set(GANLearner.parts(cfg)["G"])
