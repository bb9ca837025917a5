"""Joint label-and-image players (joint-cx) as real peer processes on tiny IDX data.

The ring with a learnt p(c) is the exact check of the game on this family: p(c) is a
categorical (an exponential family), so each player's learnt p(c) must meet the
equilibrium histogram solved from the weights, with no evaluator in the loop.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from p2pgame.config import ScenarioError
from p2pgame.eval import total_variation
from p2pgame.launch import run
from p2pgame.scenario import load_scenario

# The ring runs 4 peers for 120 steps: about half a minute on 2 busy cores.  Its priors
# are within 0.03 of the equilibrium by step 90 and stay there (0.02 at step 120; 0.03
# at step 200, the noise of the labels they learn from).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

RING = """
name = "joint-ring"
seed = 1
steps = 120

[topology]
n = 4
graph = "ring"
weights = "self_weight"
self_weight = 0.5

[comm]
mode = "sync"
samples_per_message = 64

[runtime]
threads_per_peer = 1
device = "cpu"

[data]
dataset = "mnist"
split = "train"
partition = { kind = "classes", classes = [[0, 1, 2], [3, 4], [5, 6, 7], [8, 9]] }

[algorithm]
name = "game"
model = "joint-cx"
capacity = 1
method = "discriminative"
learn_prior = true
prior_lr = 0.03
batch = 128
checkpoint = false
eval_every = 45  # not a multiple of the metrics interval (2): probed all the same
eval_samples_during = 50

[[peers]]
ids = [0, 1, 2, 3]
publishes = ["cx"]
learns = ["cx"]
"""


@pytest.fixture(scope="module")
def ring_run(tmp_path_factory, tiny_mnist_root):
    root = tmp_path_factory.mktemp("joint")
    scenario = root / "ring.toml"
    scenario.write_text(RING)
    res = run(scenario, [], out=root / "runs", data_root=tiny_mnist_root, progress=False)
    assert res.exit_code == 0, res.failures
    return res


def test_learnt_priors_meet_the_equilibrium_histogram(ring_run) -> None:
    s = ring_run.summary
    for pid, p in s["peers"].items():
        ne = np.array(p["ne_class_mass"])
        assert ne.sum() == pytest.approx(1.0)
        assert p["tv_prior_to_ne"] == pytest.approx(total_variation(p["prior"], ne))
        # Where it started (uniform) is far from the equilibrium; where it ends is close.
        start = total_variation(np.full(10, 0.1), ne)
        assert start > 0.2 and p["tv_prior_to_ne"] < 0.05, (pid, p["prior"], ne.tolist())
        # Received pairs are examples with their latents completed by our own encoder.
        assert p["completed"] == {"cx": 120 * 64}
        assert 0 <= p["accuracy"] <= 1


def test_evaluations_over_time_land_on_eval_every(ring_run) -> None:
    lines = [json.loads(x) for x in
             (ring_run.run_dir / "metrics" / "peer-0.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines if "eval/accuracy" in ln] == [45, 90]
    assert all(len(ln["eval/prior"]) == 10 for ln in lines if "eval/accuracy" in ln)


def test_summary_table_grid_and_report(ring_run) -> None:
    from p2pgame.report import write_report

    s = ring_run.summary
    assert {"accuracy", "tv_prior_to_ne"} <= set(s["table_columns"])
    assert (ring_run.run_dir / "samples" / "peer-3.png").is_file()
    ev = json.loads((ring_run.run_dir / "evaluation.json").read_text())
    assert set(ev["0"]) >= {"accuracy", "prior", "tv_prior_to_ne"}
    report = write_report([ring_run.run_dir])
    assert "| accuracy | tv_prior_to_ne |" in report.read_text()
    # The learnt p(c) against the equilibrium, per peer; accuracy over time.
    assert (report.parent / "class-mass-0.png").is_file()
    assert (report.parent / "accuracy.png").is_file()


SPACES = RING.replace("steps = 120", "steps = 4").replace("""[[peers]]
ids = [0, 1, 2, 3]
publishes = ["cx"]
learns = ["cx"]
""", """[[peers]]
ids = [0]
publishes = ["cx", "x"]
learns = ["cx"]

[[peers]]
ids = [1]
publishes = []
learns = ["cx"]

[[peers]]
ids = [2]
publishes = ["cx"]
learns = ["cx"]

[[peers]]
ids = [3]
publishes = ["cx", "x"]
learns = ["x"]
""").replace('graph = "ring"\nweights = "self_weight"\nself_weight = 0.5', """graph = "edges"
edges = [[0, 1], [0, 3], [2, 0], [3, 0]]
weights = "self_weight"
self_weight = 0.5""")


def test_a_cx_learner_receives_zero_bytes_of_other_spaces(tmp_path, tiny_mnist_root) -> None:
    scenario = tmp_path / "spaces.toml"
    scenario.write_text(SPACES)
    res = run(scenario, [], out=tmp_path / "runs", data_root=tiny_mnist_root, progress=False)
    assert res.exit_code == 0, res.failures
    peers = res.summary["peers"]
    # Peer 1 learns cx from peer 0, which also publishes x: not one byte of x reaches it.
    topics = {r["topic"] for r in peers["1"]["traffic_in"]}
    assert topics == {"samples/0/cx"}
    assert sum(r["payload_bytes"] for r in peers["1"]["traffic_in"]) > 0
    # Peer 3 learns x only: images, whose labels its classifier completes.
    assert {r["topic"] for r in peers["3"]["traffic_in"]} == {"samples/0/x"}
    assert set(peers["3"]["completed"]) == {"x"} and peers["3"]["completed"]["x"] > 0
    assert set(peers["0"]["completed"]) == {"cx"}


def test_binary_and_gray_images_on_one_space_are_refused_naming_both(tmp_path) -> None:
    text = SPACES.replace("""[[peers]]
ids = [3]
publishes = ["cx", "x"]
learns = ["x"]
""", """[[peers]]
ids = [3]
algorithm = { model = "vae-conv" }
publishes = []
learns = ["x"]
""")
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=r"peer 3 \(vae-conv\) learns 'x' as x: bool\[1, 28, "
                                            r"28\] but its in-neighbour peer 0 \(joint-cx\) "
                                            r"publishes 'x' as x: float16"):
        load_scenario(path)


def test_joint_settings_on_another_family_are_refused(tmp_path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(RING.replace('model = "joint-cx"', 'model = "hvae-mlp"'))
    with pytest.raises(ScenarioError, match="capacity: applies only to joint-cx"):
        load_scenario(path)
