"""The exchange x learner seams, without processes: presets, the params exchange's wire
formats and orders on a toy learner, the node's check of what a learner publishes, and
the registry's checks of plugin classes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from p2pgame.config import ScenarioError
from p2pgame.exchange.inbox import Inbox
from p2pgame.exchange.node import DeclarationError, Node, PeerContext
from p2pgame.exchange.params import (
    from_bfloat16_bits,
    payload_bytes,
    to_bfloat16_bits,
)
from p2pgame.learners import check_learner_class, learner_class
from p2pgame.learners.base import Learner
from p2pgame.scenario import expand_preset, preset_notice, resolve
from p2pgame.topology import build_schedule

EXPFAM = {"name": "x", "steps": 10, "topology": {"n": 2, "graph": "complete"},
          "algorithm": {"name": "expfam", "family": "gaussian", "dim": 3, "lr": 0.5}}


def _new(exchange: dict, learner: dict, n: int = 2, **extra) -> dict:
    return {"name": "x", "steps": 10, "topology": {"n": n, "graph": "complete"},
            "exchange": exchange, "learner": learner, **extra}


# -- presets ----------------------------------------------------------------------------

def test_each_preset_expands_to_its_pair() -> None:
    raw, name = expand_preset(EXPFAM)
    assert name == "expfam" and raw["exchange"] == {"kind": "samples", "missing": "renormalise"}
    assert raw["learner"] == {"kind": "expfam-gaussian", "dim": 3, "lr": 0.5}
    game = {**EXPFAM, "algorithm": {"name": "game", "model": "vae-conv", "batch": 8}}
    assert expand_preset(game)[0]["learner"] == {"kind": "vae-conv", "batch": 8}
    gan = {**EXPFAM, "algorithm": {"name": "diffgan", "combine": False, "wire_dtype": "float16",
                                   "peer_models": {"1": "dcgan-conv"}}}
    raw, _ = expand_preset(gan)
    assert raw["exchange"] == {"kind": "none"}  # (no wire without an exchange)
    assert raw["peers"] == [{"ids": [1], "learner": {"kind": "dcgan-conv"}}]


def test_an_old_form_file_resolves_as_its_pair_and_is_told_the_new_form() -> None:
    old = resolve(EXPFAM)
    new = resolve(_new({"kind": "samples", "missing": "renormalise"},
                       {"kind": "expfam-gaussian", "dim": 3, "lr": 0.5}))
    assert old.preset == "expfam" and new.preset == ""
    assert dataclasses.replace(old, preset="") == dataclasses.replace(new, source=old.source)
    text = preset_notice(EXPFAM)
    assert 'kind = "expfam-gaussian"' in text and "[exchange]" in text
    assert preset_notice(_new({"kind": "none"}, {"kind": "expfam-gaussian"})) is None


def test_old_form_errors_name_keys_as_the_file_does() -> None:
    bad = {**EXPFAM, "algorithm": {**EXPFAM["algorithm"], "lr": 2.0}}
    with pytest.raises(ScenarioError, match=r"algorithm\.lr: lr and lr_end"):
        resolve(bad)
    both = {**EXPFAM, "learner": {"kind": "expfam-gaussian"}}
    with pytest.raises(ScenarioError, match=r"\[algorithm\] .* and \[learner\] cannot"):
        resolve(both)


def test_a_key_of_another_family_says_whose_it_is() -> None:
    with pytest.raises(ScenarioError, match=r"learner\.capacity: applies only to joint-cx "
                                            r"learners, not 'vae-conv'"):
        resolve(_new({"kind": "samples"}, {"kind": "vae-conv", "capacity": 2},
                     data={"dataset": "mnist"}))


def test_a_group_of_another_family_inherits_only_the_keys_it_has() -> None:
    s = resolve(_new({"kind": "samples"}, {"kind": "vae-conv", "batch": 16, "refine": 1},
                     data={"dataset": "mnist"},
                     peers=[{"ids": [1], "learner": {"kind": "hvae-mlp"}, "publishes": ["x"],
                             "learns": ["x"]}],
                     ))
    assert s.player(1).learner.kind == "hvae-mlp" and s.player(1).learner.batch == 16
    assert s.player(0).learner.refine == 1


# -- params: wire formats ---------------------------------------------------------------

def test_bfloat16_bits_round_to_nearest_even_and_back() -> None:
    x = np.array([1.0, -2.5, 3.14159265, 1e-3, 65504.0, 0.0], dtype=np.float32)
    back = from_bfloat16_bits(to_bfloat16_bits(x))
    assert back.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa: a relative error of at most 2^-9
    assert np.all(np.abs(back - x) <= np.abs(x) * 2.0 ** -9)
    assert to_bfloat16_bits(x).dtype == np.int16
    # ties go to even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 and rounds to 1
    assert from_bfloat16_bits(to_bfloat16_bits(np.float32([1 + 2 ** -8])))[0] == 1.0


def test_payload_bytes_follow_the_formula() -> None:
    schema = {"w": ("float32", (10, 3)), "b": ("float32", (3,))}
    assert payload_bytes(schema, "float32") == 33 * 4
    assert payload_bytes(schema, "float16") == payload_bytes(schema, "bfloat16") == 33 * 2


# -- params on the expfam learner (numpy, no processes) -----------------------------------

class _Env:
    def __init__(self, sender: int, space: str, step: int, tensors: dict) -> None:
        self.sender, self.space, self.step, self.tensors = sender, space, step, tensors


def _nodes(order: str, wire: str = "float32", n: int = 3, dim: int = 4, **exchange):
    raw = _new({"kind": "params", "order": order, "wire_dtype": wire, "snapshots": 0,
                **exchange},
               {"kind": "expfam-bernoulli", "dim": dim, "lr": 0.3}, n=n,
               comm={"mode": "sync"})
    raw["topology"]["weights"] = "metropolis"  # on a complete graph: 1/n everywhere
    sc = resolve(raw)
    schedule = build_schedule(sc.topology, sc.steps, sc.seed)
    return sc, schedule, [Node(PeerContext(i, sc, sc.player(i), schedule, Path("."))) for i in
                          range(n)]


def _exchange_round(nodes, schedule, step: int) -> None:
    """Every node publishes, then steps on what the others published (a complete graph)."""
    sent = [node.publish(step) for node in nodes]
    for i, node in enumerate(nodes):
        inbox = Inbox()
        for j, msgs in enumerate(sent):
            if j != i:
                for space, tensors in msgs.items():
                    env = _Env(j, space, step, tensors)
                    assert node.check(env) is None
                    inbox.put(env)
        out = node.train_step(step, inbox, schedule.at(step))
        assert out["comm/missing"] == 0.0
        # the learner's figures under train/, the exchange's under comm/ (nothing bare)
        assert all(k.startswith(("train/", "comm/")) for k in out), out
        assert all(k.startswith("eval/") for k in node.probe(step)), node.probe(step)


@pytest.mark.parametrize("wire", ["float32", "float16", "bfloat16"])
def test_every_peer_of_a_complete_graph_holds_the_same_bits_after_a_combine(wire) -> None:
    """Two peers with one weight row: one result on both (float32; a narrower wire rounds
    the other's copy, not one's own, so the ends differ by the rounding).  Three peers:
    equal up to the order of the float32 sums."""
    sc, schedule, nodes = _nodes("atc", wire, n=2)
    rng = np.random.default_rng(0)
    for node in nodes:  # different models, and no local step: the combine alone
        node.learner.mu = rng.random(4)
        node.learner.learn = lambda step, batch: {}
    for step in range(3):
        _exchange_round(nodes, schedule, step)
        mus = [node.learner.mu for node in nodes]
        if wire == "float32":
            assert all(np.array_equal(mus[0], m) for m in mus)
        else:
            assert all(np.allclose(mus[0], m, atol=1e-2) for m in mus)
    assert all(node.exchange.combine_rounds == 3 for node in nodes)
    sc, schedule, nodes = _nodes("atc", wire, n=3)
    for node in nodes:
        node.learner.mu = rng.random(4)
        node.learner.learn = lambda step, batch: {}
    _exchange_round(nodes, schedule, 0)
    assert all(np.allclose(nodes[0].learner.mu, nd.learner.mu, rtol=1e-6 if wire == "float32"
                           else 1e-2) for nd in nodes)


def test_cta_adds_the_update_taken_at_the_own_parameters_to_the_combination() -> None:
    """D-PSGD's form on the expfam learner: mu_a <- mean(mu_a, mu_b) + (adapt(mu_a) - mu_a)."""
    from p2pgame.learners.base import Batch

    sc, schedule, (a, b) = _nodes("cta", n=2)
    twin = _nodes("cta", n=2)[2][0]  # the same seeds: the same data and draws as a
    a.learner.mu = twin.learner.mu = np.full(4, 0.2)
    b.learner.mu = np.full(4, 0.8)
    inbox = Inbox()
    inbox.put(_Env(1, "mu", 0, b.publish(0)["mu"]))
    a.train_step(0, inbox, schedule.at(0))
    twin.learner.learn(0, Batch(own=twin.learner.batch_size, own_weight=1.0))
    delta = twin.learner.mu.astype(np.float32) - np.float32(0.2)
    assert np.allclose(a.learner.mu, np.float32(0.5) + delta, atol=1e-6)
    assert not np.allclose(delta, 0)


def test_a_learner_that_publishes_another_shape_than_declared_is_stopped_by_name() -> None:
    sc, schedule, nodes = _nodes("atc", n=2)
    node = nodes[0]
    node.learner.tensors = lambda part: {"mu": np.zeros(5, dtype=np.float32)}
    with pytest.raises(DeclarationError, match=r"learner 'expfam-bernoulli' \(built-in\) "
                                               r"published 'mu' as mu: float32\[5\], but "
                                               r"declares mu: float32\[4\]"):
        node.publish(0)


def test_params_between_different_tensors_is_refused_naming_both_peers() -> None:
    raw = _new({"kind": "params"}, {"kind": "vae-conv"}, data={"dataset": "mnist"},
               peers=[{"ids": [1], "learner": {"refine": 1}}])
    with pytest.raises(ScenarioError, match=r"peer 1 \(vae-conv\) averages the parameters "
                                            r"of peer 0 \(vae-conv\), but their tensors "
                                            r"differ \(model\.\S+: float32\[\d+\] vs "
                                            r"float32\[\d+\]\)"):
        resolve(raw)


def test_moments_need_a_learner_with_a_moment_space() -> None:
    with pytest.raises(ScenarioError, match="has no moment space"):
        resolve(_new({"kind": "moments"}, {"kind": "vae-conv"}, data={"dataset": "mnist"}))
    s = resolve(_new({"kind": "moments"}, {"kind": "expfam-bernoulli"}))
    assert s.player(0).publishes == ("mu",) and s.exchange.rule == "renormalise"


# -- the registry -----------------------------------------------------------------------

def test_the_registry_refuses_what_is_not_a_learner() -> None:
    with pytest.raises(ScenarioError, match="is not a subclass of p2pgame.learners.base.Learner"):
        check_learner_class("x", object)

    class Loose(Learner):
        Config = dict  # not a dataclass

    with pytest.raises(ScenarioError, match="its Config must be a dataclass"):
        check_learner_class("loose", Loose)
    with pytest.raises(ScenarioError, match=r"learner.kind = 'nope' is not known; allowed: .*"
                                            r"vae-conv"):
        learner_class("nope")


# -- params with a compressor (exchange/compress.py) --------------------------------------

@pytest.mark.parametrize("settings, per_message", [
    ({"compress": "int8", "bucket": 16}, 64 + 4 * 4),
    ({"compress": "int8", "bucket": 16, "wire_dtype": "float16"}, 64 + 2 * 4),
    ({"compress": "qsgd", "levels": 3, "bucket": 32}, (64 * 3 + 7) // 8 + 4 * 2),
    ({"compress": "topk", "ratio": 0.125, "gamma": 0.5}, 8 * (4 + 4)),
    ({"compress": "randk", "ratio": 0.25, "gamma": 0.5}, 16 * 4),
    ({"compress": "sign", "gamma": 0.5}, 64 // 8 + 4),
])
def test_a_compressed_message_has_the_compressors_bytes(settings, per_message) -> None:
    """The message a peer publishes is the compressor's fields, its payload the formula
    (bool signs counted as the bus packs them, 1 bit each); its declared schema matches."""
    from p2pgame.bus.codec import Envelope, encode, frame_sizes
    from p2pgame.bus.topics import Topic

    wire = settings.pop("wire_dtype", "float32")
    sc, schedule, nodes = _nodes("atc", wire, n=2, dim=64, **settings)
    msg = nodes[0].publish(0)["mu"]
    assert nodes[0].exchange.finish()["payload_bytes"] == {"mu": per_message}
    frames = encode(Envelope(0, Topic("params", 0, "mu"), 0, msg), pack_bool=True)
    header, payload = frame_sizes(frames)
    assert payload == per_message, (header, payload)


def test_choco_gossip_brings_the_peers_to_their_mean_with_top_k() -> None:
    """CHOCO-Gossip on 4 peers (complete graph, Metropolis 1/4) with top-k at 1/8 and no
    local step: every peer reaches the mean of the starting parameters, which the
    consensus step keeps exactly (symmetric weights).  gamma 0.2: the spread fell to
    1.8e-7 of the start in 300 rounds (0.05: 5e-7, 0.3: 9e-6; 0.5 diverges)."""
    sc, schedule, nodes = _nodes("atc", n=4, dim=64, compress="topk", ratio=0.125,
                                 gamma=0.2)
    rng = np.random.default_rng(1)
    for node in nodes:
        node.learner.mu = rng.normal(size=64)
        node.learner.learn = lambda step, batch: {}
    mean0 = np.mean([node.learner.mu for node in nodes], axis=0)
    spread0 = max(np.abs(node.learner.mu - mean0).max() for node in nodes)
    for step in range(300):
        _exchange_round(nodes, schedule, step)
    mean = np.mean([node.learner.mu for node in nodes], axis=0)
    assert np.allclose(mean, mean0, atol=1e-4)
    spread = max(np.abs(node.learner.mu - mean0).max() for node in nodes)
    assert spread < 1e-5 * spread0, (spread, spread0)


def test_choco_stops_a_peer_whose_neighbours_round_is_missing() -> None:
    sc, schedule, (a, b) = _nodes("atc", n=2, dim=16, compress="topk", ratio=0.25, gamma=0.5)
    a.publish(0)
    with pytest.raises(RuntimeError, match=r"CHOCO-Gossip: peer 1's message of round 0"):
        a.train_step(0, Inbox(), schedule.at(0))


@pytest.mark.parametrize("exchange, comm, words", [
    ({"compress": "topk"}, {}, r"exchange\.compress: 'topk' sends a sparse or sign tensor"),
    ({"compress": "zip"}, {}, r"exchange\.compress: 'zip' is not known; allowed: none, int8"),
    ({"compress": "topk", "ratio": 0.0, "gamma": 0.1}, {}, r"exchange\.ratio: ratio must"),
    ({"compress": "qsgd", "levels": 0}, {}, r"exchange\.levels"),
    ({"compress": "int8", "wire_dtype": "bfloat16"}, {}, r"exchange\.wire_dtype: bfloat16"),
    ({"gamma": 2.0}, {}, r"exchange\.gamma: must lie in \[0, 1\]"),
    ({"compress": "sign", "gamma": 0.1, "error_feedback": True}, {},
     r"exchange\.error_feedback: CHOCO"),
    ({"compress": "topk", "gamma": 0.1}, {"mode": "async"}, r"comm\.mode: CHOCO-Gossip"),
    ({"compress": "topk", "gamma": 0.1}, {"mode": "sync", "drop": 0.1},
     r"comm\.drop = 0\.1: CHOCO-Gossip"),
])
def test_bad_compression_settings_are_refused_naming_the_key(exchange, comm, words) -> None:
    raw = _new({"kind": "params", **exchange}, {"kind": "expfam-bernoulli", "dim": 8},
               n=3, comm={"mode": "sync", **comm})
    with pytest.raises(ScenarioError, match=words):
        resolve(raw)


# -- the model exchange ----------------------------------------------------------------

def test_a_generator_copy_draws_what_the_senders_model_draws(tiny_mnist_root) -> None:
    """What ``model`` sends is enough to generate: a receiver's copy, loaded with the
    sender's generator tensors (decoder and prior, no encoder), draws exactly the
    examples the sender's own model draws from the same random numbers; and the bytes
    of a message are its parameters times the wire dtype's size."""
    import torch

    from p2pgame.exchange.model import ModelExchange, generator_bytes
    from p2pgame.learners.base import LearnerContext
    from p2pgame.scenario import load_scenario

    root = Path(__file__).resolve().parents[2]
    sc = load_scenario(root / "topologies" / "mnist-demo-model.toml", ["data.per_peer=50"])
    lcls = learner_class(sc.learner.kind)
    sender, receiver = (lcls(sc.learner, LearnerContext(i, sc, sc.learner, tiny_mnist_root))
                        for i in (0, 1))
    tensors = sender.generator_tensors()
    assert tensors and not any(k.startswith("enc.") or k.startswith("to_stats") for k in tensors)
    copy = receiver.generator_copy(0)
    before = copy.sample(8, ("px",))["px"]["x"]
    copy.load(tensors)
    seed = receiver.ctx.seed("model-copy", 0)
    copy.gen.manual_seed(seed)
    got = copy.sample(8, ("px", "x"))
    want = sender.draw(sender.model, 8, ("px", "x"),
                       torch.Generator().manual_seed(seed))
    for space in ("px", "x"):
        np.testing.assert_array_equal(got[space]["x"], want[space]["x"])
    assert not np.array_equal(before, got["px"]["x"])  # the loaded tensors made the change
    schema = ModelExchange.spaces(sc.exchange, lcls, sc.learner)["generator"]
    count = sum(int(np.prod(s)) for _, s in schema.values())
    assert count == sum(v.size for v in tensors.values())
    assert generator_bytes(schema, "float32") == 4 * count
    assert generator_bytes(schema, "float16") == 2 * count


def test_the_model_exchange_refuses_a_learner_without_a_generator() -> None:
    with pytest.raises(ScenarioError, match="declares no generator"):
        resolve(_new({"kind": "model"}, {"kind": "expfam-gaussian", "dim": 2}))
    with pytest.raises(ScenarioError, match="wire_dtype"):
        resolve(_new({"kind": "model", "wire_dtype": "int8"}, {"kind": "vae-conv"}))
