"""PolyMNIST's players on different probability spaces, as real peer processes on tiny data.

A cs player (label and mask only) teaches the main player (c, d, z, s, x) over the bus; the
main player completes what it never receives by Gibbs sampling with its own conditionals.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from p2pgame.config import ScenarioError
from p2pgame.data import polymnist
from p2pgame.launch import run
from p2pgame.scenario import load_scenario
from tests.helpers import write_tiny_mnist

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]

# The shipped scenario, made tiny: few steps, few sweeps, a small test set.
TINY = ["steps=12", "comm.samples_per_message=16", "learner.batch=32",
        "peers[0].learner.gibbs_sweeps=2", "peers[0].learner.infer_sweeps=3",
        "peers[0].learner.eval_test=40", "peers[1].learner.gibbs_steps=3",
        'runtime.device="cpu"']


@pytest.fixture(scope="module")
def poly_root(tmp_path_factory):
    root = write_tiny_mnist(tmp_path_factory.mktemp("poly-data"), n_train=200, n_test=60)
    colours = [(200, 10, 10), (10, 200, 10), (10, 10, 200), (120, 120, 0), (0, 0, 0)]
    photos = {f"p{k}": np.full((40, 40, 3), c, np.uint8) for k, c in enumerate(colours)}
    polymnist.build(root, seed=0, photos=photos, log=lambda m: None)
    return root


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory, poly_root):
    out = tmp_path_factory.mktemp("poly-runs")
    res = run(ROOT / "topologies" / "polymnist-synthetic-cs.toml", TINY, out=out,
              data_root=poly_root, progress=False)
    assert res.exit_code == 0, res.failures
    return res


def test_the_main_player_learns_from_synthetic_cs_pairs(synthetic_run):
    s = synthetic_run.summary
    main = s["peers"]["0"]
    # What the main player completed, per space and variable: every received pair lacks
    # d, z and x; every own example lacks z and s.
    done = main["completed"]
    assert done["cs.x"] == done["cs.d"] == done["cs.z"] == 12 * 16
    assert done["own.z"] == done["own.s"] == 12 * 16
    assert len(main["accuracy_style"]) == 5 and 0 <= main["accuracy"] <= 1
    table = (synthetic_run.run_dir / "accuracy_per_style.csv").read_text().splitlines()
    assert table[0] == "peer,model,m0,m1,m2,m3,m4,avg" and table[1].startswith("0,poly-main,")
    assert (synthetic_run.run_dir / "samples" / "peer-0.png").is_file()


def test_the_cs_player_never_sends_or_receives_an_image(synthetic_run):
    s = synthetic_run.summary
    cs = s["peers"]["1"]
    assert cs["bytes_received"] == 0 and cs["messages_received"] == 0
    spaces = {row["topic"].split("/")[-1] for row in cs["traffic_out"]}
    assert spaces == {"cs"}
    # Each example: a label byte and a 784-bit mask, bit-packed (98 bytes).
    main_in = s["peers"]["0"]["traffic_in"]
    assert {row["topic"] for row in main_in} == {"samples/1/cs"}


def test_the_three_rows_run(tmp_path, poly_root):
    for name in ("polymnist-real-cs", "polymnist-classifier"):
        overrides = [o for o in TINY if not o.startswith("peers[1]")]
        if name == "polymnist-classifier":
            overrides = [o.replace("peers[0].learner.", "learner.") for o in overrides
                         if "sweeps" not in o and "samples_per" not in o]
        res = run(ROOT / "topologies" / f"{name}.toml", overrides, out=tmp_path,
                  data_root=poly_root, progress=False)
        assert res.exit_code == 0, (name, res.failures)
        assert len(res.summary["peers"]["0"]["accuracy_style"]) == 5
        evaluation = json.loads((res.run_dir / "evaluation.json").read_text())
        assert evaluation["0"]["accuracy"] == res.summary["peers"]["0"]["accuracy"]


def test_poly_settings_on_another_player_are_refused():
    with pytest.raises(ScenarioError, match="gibbs_steps: applies only to cs-vae"):
        load_scenario(ROOT / "topologies" / "polymnist-real-cs.toml",
                      ["peers[1].learner.gibbs_steps=5"])
