"""One learner (the demo's vae-conv) under every exchange, from the scenario files in
``topologies/``: samples, params (float32, float16, bfloat16; local steps 1 and 10;
adapt-then-combine and D-PSGD's order) and none, each a real run of two peer processes
on tiny MNIST.  The demo's own settings, shrunk: a few steps, a small evaluation."""

from __future__ import annotations

import json
import math

import pytest

from p2pgame.exchange.params import payload_bytes
from p2pgame.launch import run
from p2pgame.learners import learner_class
from p2pgame.scenario import load_scenario
from tests.fixtures.record_same_results import ROOT

pytestmark = pytest.mark.integration

STEPS = 12
SMALL = [f"steps={STEPS}", "learner.eval_samples=200", "learner.evaluator_epochs=1",
         "learner.checkpoint=false", "runtime.threads_per_peer=1", 'runtime.device="cpu"',
         "data.per_peer=200"]


def _run(tmp_path, data, name: str, *overrides: str):
    res = run(ROOT / "topologies" / f"{name}.toml", [*SMALL, *overrides],
              out=tmp_path / "runs", data_root=data, progress=False)
    assert res.exit_code == 0, res.failures
    return res, res.summary["peers"]


def _model_bytes(name: str, wire: str) -> int:
    sc = load_scenario(ROOT / "topologies" / f"{name}.toml")
    schema = learner_class(sc.learner.kind).parts(sc.learner)["model"]
    return payload_bytes(schema, wire)


def _params_rows(peer: dict, pid: str) -> dict:
    (row,) = [r for r in peer["traffic_out"] if r["topic"] == f"params/{pid}/model"]
    return row


@pytest.mark.parametrize("name, wire", [("mnist-demo-params", "float32"),
                                        ("mnist-demo-params-fp16", "float16")])
def test_params_messages_are_the_learners_tensors_and_peers_agree_after_each_combine(
        tmp_path, tiny_mnist_root, name, wire) -> None:
    """Bytes: a message's payload is exactly the learner's exchanged tensors (float16: half
    of float32's), the header apart.  Agreement: on a complete graph with one weight row
    everywhere, every combine leaves both peers with the same bits, so the consensus
    distance at every snapshot (taken after the combine, before the local step) is 0."""
    res, peers = _run(tmp_path, tiny_mnist_root, name, f"exchange.snapshots={STEPS}")
    want = _model_bytes(name, wire)
    assert want == _model_bytes("mnist-demo-params", "float32") // (2 if wire == "float16"
                                                                   else 1)
    for pid, p in peers.items():
        row = _params_rows(p, pid)
        assert row["messages"] == STEPS
        assert row["payload_bytes"] == STEPS * want
        # the header is counted apart, and small
        assert 0 < row["header_bytes"] / row["messages"] < want / 100
        assert p["messages_rejected"] == 0 and p["combine_rounds"] == STEPS
        assert math.isfinite(p["fid_all"]) and p["wire_dtype"] == wire
    curve = res.summary["consensus_distance"]
    assert [s for s, _ in curve] == list(range(STEPS))
    if wire == "float32":  # (float16: each peer averages its own copy exact, the other's
        # rounded, so the two ends differ by the rounding)
        assert all(d == 0.0 for _, d in curve), curve
    else:
        assert all(0 < d < 1e-3 for _, d in curve), curve
    assert (res.run_dir / "disagreement.csv").is_file()
    assert not (res.run_dir / "params").exists()  # the snapshots are removed after use


def test_local_steps_send_a_tenth_and_bfloat16_half(tmp_path, tiny_mnist_root) -> None:
    res, peers = _run(tmp_path, tiny_mnist_root, "mnist-demo-params-local10",
                      'exchange.wire_dtype="bfloat16"', "steps=20")
    want = _model_bytes("mnist-demo-params", "float32") // 2
    for pid, p in peers.items():
        row = _params_rows(p, pid)
        assert row["messages"] == 2 and row["payload_bytes"] == 2 * want  # steps 0 and 10
        assert p["combine_rounds"] == 2 and p["messages_rejected"] == 0


def test_cta_order_runs_and_differs_from_atc(tmp_path, tiny_mnist_root) -> None:
    """D-PSGD's order: the local update is taken at the peer's own parameters and added to
    the combination; both orders complete and combine every round."""
    runs = {order: _run(tmp_path / order, tiny_mnist_root, "mnist-demo-params",
                        f'exchange.order="{order}"', f"exchange.snapshots={STEPS}")
            for order in ("atc", "cta")}
    for order, (_res, peers) in runs.items():
        for p in peers.values():
            assert p["order"] == order and p["combine_rounds"] == STEPS
    losses = {order: [json.loads(x)["train/elbo_loss"] for x in (
        res.run_dir / "metrics" / "peer-0.jsonl").read_text().splitlines()]
        for order, (res, _) in runs.items()}
    # atc adapts at the combined point (step 0: the average of the initial models), cta at
    # the peer's own parameters: the local losses differ from the first step on
    assert all(a != c for a, c in zip(losses["atc"], losses["cta"], strict=True))
    # cta snapshots are taken before the combine: the peers' own copies, which differ
    cta_curve = runs["cta"][0].summary["consensus_distance"]
    assert all(d > 0 for _, d in cta_curve[1:])


def test_none_sends_nothing_in_sync_mode(tmp_path, tiny_mnist_root) -> None:
    res, peers = _run(tmp_path, tiny_mnist_root, "mnist-demo-none")
    for p in peers.values():
        assert p["bytes_sent"] == 0 and p["steps"] == STEPS
        assert math.isfinite(p["fid_all"])
        assert p.get("effective_row") is None


def test_samples_and_params_keep_the_learner(tmp_path, tiny_mnist_root) -> None:
    """The demo under samples: the same learner's keys, resolved from the new form."""
    res, peers = _run(tmp_path, tiny_mnist_root, "mnist-demo")
    scenario = json.loads((res.run_dir / "scenario.json").read_text())
    assert scenario["exchange"]["kind"] == "samples"
    assert scenario["learner"]["kind"] == "vae-conv"
    for pid, p in peers.items():
        assert {r["topic"] for r in p["traffic_out"]} == {f"samples/{pid}/px"}
        assert p["effective_row"] and math.isfinite(p["tv_to_ne"])


@pytest.mark.parametrize("name", ["mnist-demo-params-int8", "mnist-demo-params-topk"])
def test_compressed_params_send_the_compressors_bytes(tmp_path, tiny_mnist_root, name) -> None:
    """int8 (decoded and averaged) and CHOCO-Gossip with top-k (compressed differences to
    public copies): a real 2-peer run; each message's payload is the compressor's formula
    for the learner's tensors (exchange/compress.py), far below float32's."""
    from p2pgame.exchange.params import payload_bytes_of

    res, peers = _run(tmp_path, tiny_mnist_root, name, f"exchange.snapshots={STEPS}")
    sc = load_scenario(ROOT / "topologies" / f"{name}.toml")
    schema = learner_class(sc.learner.kind).parts(sc.learner)["model"]
    want = payload_bytes_of(sc.exchange, {t: tuple(shape) for t, (_, shape) in schema.items()})
    full = _model_bytes("mnist-demo-params", "float32")
    assert want < full // (3 if name.endswith("int8") else 40), (want, full)
    for pid, p in peers.items():
        row = _params_rows(p, pid)
        assert row["messages"] == STEPS and row["payload_bytes"] == STEPS * want
        assert p["compress"] == sc.exchange.compress and p["payload_bytes"] == {"model": want}
        assert p["combine_rounds"] == STEPS and math.isfinite(p["fid_all"])
    curve = res.summary["consensus_distance"]
    assert len(curve) == STEPS and all(math.isfinite(d) for _, d in curve)


@pytest.mark.parametrize("every, rounds", [(5, [2, 7]), (0, [2])])
def test_the_model_exchange_sends_the_generator_at_its_rounds_and_receivers_draw_from_it(
        tmp_path, tiny_mnist_root, every, rounds) -> None:
    """A real 2-peer run of the demo's learner under ``model``: a message is the
    generator's tensors (its formula: parameters x 4 bytes), sent at the rounds only
    (from ``publish_from``, every ``publish_every`` steps, or once); before the first
    round each peer learns alone (its own data fills the neighbour's share), after it
    half its batch is drawn from the copy it holds."""
    from p2pgame.exchange.model import ModelExchange, generator_bytes

    res, peers = _run(tmp_path, tiny_mnist_root, "mnist-demo-model",
                      f"comm.publish_every={every}", "comm.publish_from=2")
    sc = load_scenario(ROOT / "topologies" / "mnist-demo-model.toml")
    lcls = learner_class(sc.learner.kind)
    schema = ModelExchange.spaces(sc.exchange, lcls, sc.learner)["generator"]
    want = generator_bytes(schema, "float32")
    # the decoder and the prior, not the encoder: fewer bytes than the whole model
    assert want < _model_bytes("mnist-demo-params", "float32")
    assert not any(k.startswith("enc.") for k in schema)
    for pid, p in peers.items():
        (row,) = [r for r in p["traffic_out"] if r["topic"] == f"params/{pid}/generator"]
        assert row["messages"] == len(rounds) and row["payload_bytes"] == len(rounds) * want
        assert p["model_loads"] == len(rounds) and p["payload_bytes"] == {"generator": want}
        other = str(1 - int(pid))
        # steps before round 2 all own data; from it a_ij = 1/2 of the batch is drawn
        own = (2 * 1.0 + (STEPS - 2) * 0.5) / STEPS
        assert p["effective_row"] == {pid: round(own, 6), other: round(1 - own, 6)}
        assert math.isfinite(p["fid_all"]) and 0 <= p["tstr_accuracy"] <= 1
