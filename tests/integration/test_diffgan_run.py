"""Diffusion GAN as real peer processes on tiny IDX data (no real MNIST needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from p2pgame.launch import run
from tests.helpers import write_tiny_mnist

pytestmark = pytest.mark.integration

SCENARIO = """
name = "diffgan-tiny"
seed = 1
steps = 24

[topology]
n = 3
graph = "line"
weights = "metropolis"

[comm]
mode = "sync"

[runtime]
threads_per_peer = 1
device = "cpu"
stop_timeout_s = 60  # a torch peer can be slow to exit on a loaded machine

[data]
dataset = "mnist"
split = "train"
partition = { kind = "classes", classes = [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]] }

[algorithm]
name = "diffgan"
model = "dcgan-mlp"
batch = 16
n_d = 2
n_g = 1
eval_samples = 200
evaluator_epochs = 1
snapshots = 4
checkpoint = false
"""




@pytest.mark.timeout(180)
def test_three_peer_diffusion_run(tmp_path):
    data = tmp_path / "data"
    write_tiny_mnist(data)
    path = tmp_path / "diffgan-tiny.toml"
    path.write_text(SCENARIO)
    res = run(path, out=tmp_path / "runs", data_root=data, progress=False)
    assert res.exit_code == 0, res.failures
    s = res.summary
    steps = s["steps"]
    assert s["second_eigenvalue_modulus"] == pytest.approx(
        json.loads((res.run_dir / "topology.json").read_text())["epochs"][0][
            "second_eigenvalue_modulus"])
    out_degree = {"0": 1, "1": 2, "2": 1}
    for pid, p in s["peers"].items():
        assert p["steps"] == steps
        assert p["messages_rejected"] == 0
        # step 0 combines both initial parts, then one part per step; sync: nothing missing
        assert p["combine_rounds"] == steps + 1
        assert p["combine_renormalised"] == 0
        assert np.isfinite(p["fid_all"]) and len(p["class_mass"]) == 10
        # the traffic the runtime counted is the per-message wire size times the fan-out
        n_g_msgs = sum(1 for r in range(steps - 1) if r % 3 == 2)  # psi of G rounds
        per_peer = (p["wire_bytes_D"] + p["wire_bytes_G"]  # step 0: both parts
                    + (steps - 1 - n_g_msgs) * p["wire_bytes_D"] + n_g_msgs * p["wire_bytes_G"])
        assert p["bytes_sent"] == out_degree[pid] * per_peer
        assert p["payload_bytes_sent"] == out_degree[pid] * 4 * (
            p["param_count"] + (steps - 1 - n_g_msgs) * p["param_count_D"]
            + n_g_msgs * p["param_count_G"])
    curve = s["disagreement"]
    assert [c[0] for c in curve] == [0, 8, 15, 23]
    assert s["disagreement_final"] == curve[-1][1] >= 0
    assert (res.run_dir / "disagreement.csv").exists()
    assert (res.run_dir / "disagreement.png").exists()
    assert (res.run_dir / "samples" / "peer-0.png").exists()
    assert not (res.run_dir / "params").exists()


@pytest.mark.timeout(180)
def test_centralized_single_peer_run(tmp_path):
    data = tmp_path / "data"
    write_tiny_mnist(data)
    path = tmp_path / "diffgan-tiny.toml"
    path.write_text(SCENARIO)
    res = run(path, ["topology.n=1", 'topology.graph="complete"', 'data.partition={kind="iid"}',
                     "steps=6"],
              out=tmp_path / "runs", data_root=data, progress=False)
    assert res.exit_code == 0, res.failures
    p = res.summary["peers"]["0"]
    assert p["bytes_sent"] == 0 and p["combine_rounds"] == 0
    assert p["own_classes"] == list(range(10)) and p["unseen_mass"] == 0
    assert res.summary["disagreement_final"] == 0.0
