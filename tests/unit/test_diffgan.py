"""Unit tests for Diffusion GAN: combine, renormalisation, checks, validation, wire sizes.

Tiny IDX files stand in for MNIST; nothing here needs the real data sets.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from p2pgame.algorithms import get_algorithm
from p2pgame.algorithms.base import Inbox, PeerContext
from p2pgame.algorithms.diffgan import (
    DiffusionGAN,
    DiffusionGANHooks,
    snapshot_steps,
    weighted_average,
)
from p2pgame.bus.codec import Envelope, decode, encode, frame_sizes
from p2pgame.bus.traffic import Traffic
from p2pgame.config import ScenarioError
from p2pgame.eval.disagreement import disagreement
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


def make_peer(tmp_path, peer: int = 0, **algorithm) -> tuple[DiffusionGAN, object]:
    tiny_mnist(tmp_path / "data")
    scenario = scenario_from_dict(raw_scenario(**algorithm))
    ctx = context(scenario, peer, tmp_path / "data")
    assert get_algorithm("diffgan").peer() is DiffusionGAN
    alg = DiffusionGAN(ctx)
    return alg, ctx.schedule.at(0)


def message(sender: int, part: str, step: int, tensors: dict) -> Envelope:
    env = Envelope(sender, f"params/{sender}/{part}", step, tensors, last=True)
    return decode(encode(env))  # what a receiver really holds: read-only wire arrays


def constant_part(alg: DiffusionGAN, part: str, value: float) -> dict[str, np.ndarray]:
    return {k: np.full(s, value, dtype=np.float32) for k, s in alg.schema[part].items()}


def live(alg: DiffusionGAN, part: str) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in alg.model.part_state(part).items()}


def test_combine_is_the_weighted_average(tmp_path):
    alg, top = make_peer(tmp_path)
    a = top.weights  # star around 0: degrees 2, 1, 1 -> a01 = a02 = 1/3, a00 = 1/3
    assert np.allclose(a[0], [1 / 3, 1 / 3, 1 / 3])
    own = live(alg, "D")
    inbox = Inbox()
    inbox.put(message(1, "D", 7, constant_part(alg, "D", 0.5)))
    inbox.put(message(2, "D", 7, constant_part(alg, "D", -0.25)))
    missing = alg.combine("D", 7, inbox, top)
    assert missing == []
    got = live(alg, "D")
    for k, v in own.items():
        expect = a[0, 0] * v + a[0, 1] * 0.5 + a[0, 2] * -0.25
        np.testing.assert_allclose(got[k], expect, rtol=1e-6, atol=1e-7)
    assert alg.combine_rounds == 1 and alg.combine_renormalised == 0


def test_lost_message_renormalises_and_late_one_is_used_once(tmp_path):
    alg, top = make_peer(tmp_path)
    w0, w1, w2 = top.weights[0, 0], top.weights[0, 1], top.weights[0, 2]
    own = live(alg, "G")
    inbox = Inbox()
    inbox.put(message(1, "G", 4, constant_part(alg, "G", 1.0)))
    inbox.put(message(2, "D", 4, constant_part(alg, "D", 9.0)))  # the other part: not used
    # Peer 2's G message of this round is lost: renormalise over self and peer 1.
    assert alg.combine("G", 4, inbox, top) == [2]
    got = live(alg, "G")
    for k, v in own.items():
        np.testing.assert_allclose(got[k], (w0 * v + w1 * 1.0) / (w0 + w1), rtol=1e-6,
                                   atol=1e-7)
    assert alg.combine_renormalised == 1 and dict(alg.combine_missing) == {2: 1}
    # Next combine: peer 1's message was used already (not again); peer 2's late round-3
    # message arrives now and is used once, renormalised over self and peer 2.
    before = live(alg, "G")
    inbox.put(message(2, "G", 3, constant_part(alg, "G", 5.0)))
    assert alg.combine("G", 5, inbox, top) == [1]
    got = live(alg, "G")
    for k, v in before.items():
        np.testing.assert_allclose(got[k], (w0 * v + w2 * 5.0) / (w0 + w2), rtol=1e-6,
                                   atol=1e-7)
    assert alg.combine("G", 6, inbox, top) == [1, 2]  # nothing new: keep the adapted part
    assert alg.combine_renormalised == 3 and dict(alg.combine_missing) == {2: 2, 1: 2}


def test_weighted_average_and_disagreement_by_hand():
    out = weighted_average([(0.5, {"w": np.array([1.0, 2.0])}), (0.25, {"w": np.array([4.0, 0.0])})])
    np.testing.assert_allclose(out["w"], [(0.5 + 1.0) / 0.75, 1.0 / 0.75])
    x = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, 3.0]])  # centroid (1, 1)
    assert disagreement(x) == pytest.approx((2 + 2 + 4) / 3)
    assert snapshot_steps(100, 5) == [0, 25, 50, 74, 99]
    assert snapshot_steps(10, 0) == [] and snapshot_steps(10, 1) == [9]


def test_check_rejects_other_architectures(tmp_path):
    alg, _ = make_peer(tmp_path)
    ok = message(1, "D", 0, constant_part(alg, "D", 0.0))
    assert alg.check(ok) is None
    from p2pgame.models import make_model

    conv = make_model("dcgan-conv", seed=0)
    other = {k: v.detach().numpy() for k, v in conv.part_state("D").items()}
    assert alg.check(message(1, "D", 0, other)) == "architecture"
    bad_shape = constant_part(alg, "G", 0.0)
    first = next(iter(bad_shape))
    bad_shape[first] = bad_shape[first][:-1]
    assert alg.check(message(1, "G", 0, bad_shape)) == "architecture"
    ints = {k: v.astype(np.int32) for k, v in constant_part(alg, "D", 0.0).items()}
    assert alg.check(message(1, "D", 0, ints)) == "dtype"
    assert alg.check(message(1, "X", 0, {})) == "space"


def test_validate_refuses_mixed_architectures_naming_peers():
    raw = raw_scenario(peer_models={"2": "dcgan-conv"})
    with pytest.raises(ScenarioError, match=r"peer 2: dcgan-conv; peers 0, 1: dcgan-mlp"):
        scenario_from_dict(raw)
    raw["algorithm"]["combine"] = False
    raw["comm"] = {"mode": "async"}
    scenario_from_dict(raw)  # non-cooperative peers may differ
    with pytest.raises(ScenarioError, match="allowed: dcgan-conv, dcgan-mlp"):
        scenario_from_dict(raw_scenario(model="hvae-mlp"))
    with pytest.raises(ScenarioError, match="comm.mode = 'async'"):
        scenario_from_dict(raw_scenario(combine=False))
    with pytest.raises(ScenarioError, match="unknown key"):
        scenario_from_dict(raw_scenario(mu=0.1))


@pytest.mark.parametrize("wire_dtype, size", [("float32", 4), ("float16", 2)])
def test_bytes_per_message(tmp_path, wire_dtype, size):
    alg, top = make_peer(tmp_path, wire_dtype=wire_dtype)
    first = alg.publish(0)
    assert set(first) == {"D", "G"}  # step 0: the initial parameters
    traffic = Traffic(me=0)
    receivers = top.out_neighbours(0)
    assert receivers == (1, 2)
    sizes = {}
    for step, part in ((1, "D"), (6, "G")):  # psi of step 0 (a D round), of step 5 (G)
        out = alg.publish(step)
        assert list(out) == [part]
        env = Envelope(0, f"params/0/{part}", step, out[part])
        frames = encode(env)
        header, payload = frame_sizes(frames)
        assert payload == alg.model.param_count(part) * size
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
    DiffusionGANHooks(alg.ctx.scenario).after_run(run_dir, summary)
    s = summary["peers"]["0"]
    assert (s["wire_bytes_D"], s["wire_bytes_G"]) == (sizes["D"], sizes["G"])
    assert s["bytes_sent_per_step"] == pytest.approx(len(receivers) * sum(sizes.values()) / 2)


def test_noncooperative_publishes_nothing_and_steps_are_deterministic(tmp_path):
    alg, top = make_peer(tmp_path)
    twin, _ = make_peer(tmp_path)
    for step in range(7):
        inbox = Inbox()
        for j in (1, 2):  # neighbours that echo our own parameters
            for p in (("D", "G") if step == 0 else (alg.config.part_at(step - 1),)):
                inbox.put(message(j, p, step, alg.part_tensors(p)))
        a = alg.train_step(step, inbox, top)
        b = twin.train_step(step, inbox, top)
        assert a == b
    for p in ("D", "G"):
        for k, v in live(alg, p).items():
            np.testing.assert_array_equal(v, live(twin, p)[k])
    raw = raw_scenario(combine=False)
    raw["comm"] = {"mode": "async"}
    scenario = scenario_from_dict(raw)
    assert scenario.player(1).publishes == () and scenario.player(1).learns == ()
    solo = DiffusionGAN(context(scenario, 1, tmp_path / "data"))
    assert solo.publish(0) == {} and solo.publish(3) == {}
    assert solo.own_classes == [3, 4, 5]


def test_snapshots_are_sent_as_artifacts(tmp_path):
    """The peer never writes the run folder: snapshots go out through ctx.artifact."""
    tiny_mnist(tmp_path / "data")
    scenario = scenario_from_dict(raw_scenario(snapshots=2))
    artifacts: dict[str, bytes] = {}
    ctx = context(scenario, 0, tmp_path / "data", artifacts)
    alg = DiffusionGAN(ctx)
    top = ctx.schedule.at(0)
    assert alg.snap_steps == {0, 11}
    alg.train_step(0, Inbox(), top)
    assert sorted(artifacts) == ["params/peer-0-step-000000000.npy", "params/peer-0.json"]
    vec = np.load(io.BytesIO(artifacts["params/peer-0-step-000000000.npy"]))
    assert vec.dtype == np.float32 and vec.shape == (alg.model.param_count(),)
    meta = json.loads(artifacts["params/peer-0.json"])
    assert meta == {"model": "dcgan-mlp", "sizes": {"D": alg.model.param_count("D"),
                                                    "G": alg.model.param_count("G")}}
    alg.train_step(1, Inbox(), top)  # not a snapshot step: nothing new
    assert len(artifacts) == 2
    assert not (tmp_path / "run").exists()
