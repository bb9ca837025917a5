"""The synthetic-data game as real peer processes on tiny IDX data (no real MNIST needed)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from p2pgame import cli
from p2pgame.launch import run
from tests.fixtures.record_same_results import TINY_GAME

pytestmark = pytest.mark.integration

# The same-results fixture's tiny game, here with its checkpoints (on by default).
SCENARIO = TINY_GAME.replace("checkpoint = false\n", "")
assert SCENARIO != TINY_GAME


@pytest.fixture(scope="module")
def game_run(tmp_path_factory, tiny_mnist_root):
    root = tmp_path_factory.mktemp("game")
    scenario = root / "game.toml"
    scenario.write_text(SCENARIO)
    res = run(scenario, [], out=root / "runs", data_root=tiny_mnist_root, progress=False)
    return tiny_mnist_root, res


def test_game_run_completes_with_evaluation(game_run) -> None:
    _, res = game_run
    assert res.exit_code == 0, res.failures
    s = json.loads((res.run_dir / "summary.json").read_text())
    assert s["failed_peers"] == [] and set(s["peers"]) == {"0", "1"}
    for pid, p in s["peers"].items():
        assert p["steps"] == 12
        assert p["own_classes"] == ([0, 1, 2, 3, 4] if pid == "0" else [5, 6, 7, 8, 9])
        assert math.isclose(sum(p["class_mass"]), 1.0, abs_tol=1e-6)
        for key in ("fid_all", "fid_own", "fid_other", "tv_to_ne", "unseen_mass"):
            assert math.isfinite(p[key]), key
        # Two peers, alpha 0.5, uniform classes: own digits carry 1/(2 - alpha) = 2/3.
        ne = np.array(p["ne_class_mass"])
        own = p["own_classes"]
        assert ne[own].sum() == pytest.approx(2 / 3, abs=1e-9)
        assert p["ne_own_mass"] == pytest.approx(2 / 3, abs=1e-9)
        assert p["messages_rejected"] == 0
        assert p["messages_received"] == 12
    assert (res.run_dir / "samples" / "peer-0.png").is_file()
    assert (res.run_dir / "checkpoints" / "peer-1.pt").is_file()
    assert json.loads((res.run_dir / "evaluation.json").read_text())["0"]["fid_all"] > 0


def test_samples_travel_bit_packed(game_run) -> None:
    """Payload per message = 16 tuples of z0 (30 bits), z1 (100 bits), x (784 bits), packed."""
    _, res = game_run
    s = json.loads((res.run_dir / "summary.json").read_text())
    per_message = math.ceil(16 * 30 / 8) + math.ceil(16 * 100 / 8) + 16 * 784 // 8
    for p in s["peers"].values():
        assert p["messages_sent"] == 12
        assert p["payload_bytes_sent"] == 12 * per_message


def test_eval_command_reevaluates_checkpoints(game_run) -> None:
    root, res = game_run
    out = subprocess.run(
        [sys.executable, "-m", "p2pgame.cli", "eval", str(res.run_dir), "--data",
         str(root), "--samples", "50"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    again = json.loads((res.run_dir / "evaluation-rerun.json").read_text())
    assert set(again) == {"0", "1"} and all(math.isfinite(v["fid_all"]) for v in again.values())
    assert "results:" in out.stdout



def test_eval_of_a_corrupt_checkpoint_is_one_line(game_run, tmp_path) -> None:
    import shutil

    root, res = game_run
    run_dir = shutil.copytree(res.run_dir, tmp_path / "run")
    (run_dir / "checkpoints" / "peer-1.pt").write_bytes(b"not a checkpoint" * 10)
    out = subprocess.run(
        [sys.executable, "-m", "p2pgame.cli", "eval", str(run_dir), "--data", str(root),
         "--samples", "50"], capture_output=True, text=True, timeout=120)
    lines = [x for x in out.stderr.splitlines() if x.startswith("error:")]
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert len(lines) == 1 and "peer-1.pt: not a readable checkpoint" in lines[0], lines


IMAGES_ONLY = SCENARIO.replace("steps = 12", "steps = 6") + """
checkpoint = false

[[peers]]
ids = [0]
publishes = ["hvae", "x"]
learns = ["hvae"]

[[peers]]
ids = [1]
publishes = ["hvae"]
learns = ["x"]
"""


def _run_text(tmp_path, text: str, data_root, name: str):
    """Run a scenario given as text; the two peers' summaries (the run must succeed)."""
    scenario = tmp_path / name
    scenario.write_text(text)
    res = run(scenario, [], out=tmp_path / "runs", data_root=data_root, progress=False)
    assert res.exit_code == 0, res.failures
    return res, res.summary["peers"]["0"], res.summary["peers"]["1"]


def _refused(tmp_path, capsys, text: str) -> str:
    """The CLI's stderr for a scenario it must refuse (exit 2, nothing written)."""
    scenario = tmp_path / "bad.toml"
    scenario.write_text(text)
    code = cli.main(["run", str(scenario), "--quiet", "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()
    return err


def test_a_peer_learning_images_only_completes_them_and_gets_no_tuples(
        tmp_path, tiny_mnist_root) -> None:
    """Peer 1 learns only ``x`` from peer 0, who publishes tuples and images: it receives no
    byte of the tuples, and completes the images' latents with its own encoder (counted)."""
    _, p0, p1 = _run_text(tmp_path, IMAGES_ONLY, tiny_mnist_root, "images-only.toml")
    assert {r["topic"] for r in p1["traffic_in"]} == {"samples/0/x"}
    assert {(r["topic"], r["receiver"]) for r in p0["traffic_out"]} == {("samples/0/x", 1)}
    assert {r["topic"] for r in p0["traffic_in"]} == {"samples/1/hvae"}
    # 16 images per message, 16 of the 32-example batch taken each step (alpha 0.5), 6 steps.
    assert p1["completed"] == {"x": 6 * 16} and "completed" not in p0
    per_image = 784 // 8
    row = p1["traffic_in"][0]
    assert row["messages"] == 6 and row["payload_bytes"] == 6 * 16 * per_image
    assert p0["messages_rejected"] == p1["messages_rejected"] == 0


def test_learning_a_space_nobody_publishes_is_refused(tmp_path, capsys) -> None:
    err = _refused(tmp_path, capsys,
                   IMAGES_ONLY.replace('publishes = ["hvae", "x"]', 'publishes = ["hvae"]'))
    assert "peer 1 learns 'x'" in err and "[0]" in err


MIXED = SCENARIO.replace("steps = 12", "steps = 6") + """
checkpoint = false

[[peers]]
ids = [0]
publishes = ["x"]
learns = ["x"]

[[peers]]
ids = [1]
algorithm = { model = "vae-conv" }
"""


def test_mixed_families_exchange_images(tmp_path, tiny_mnist_root) -> None:
    """An HVAE and a conv VAE play the game over ``x``: both train and evaluate; only the
    HVAE completes what it receives (the VAE models images alone)."""
    res, p0, p1 = _run_text(tmp_path, MIXED, tiny_mnist_root, "mixed.toml")
    assert {r["topic"] for r in p0["traffic_in"]} == {"samples/1/x"}
    assert {r["topic"] for r in p1["traffic_in"]} == {"samples/0/x"}
    assert p0["completed"] == {"x": 6 * 16} and "completed" not in p1
    for p in (p0, p1):
        assert p["steps"] == 6 and math.isfinite(p["fid_all"])
        assert math.isclose(sum(p["class_mass"]), 1.0, abs_tol=1e-6)
    lines = [json.loads(x) for x in (res.run_dir / "metrics" / "peer-1.jsonl").read_text()
             .splitlines()]
    assert all(math.isfinite(x["train/elbo_loss"]) and x["train/n_synthetic"] == 16
               for x in lines)


MEANS_GAME = SCENARIO.replace("steps = 12", "steps = 6").replace(
    'model = "hvae-mlp"', 'model = "vae-conv"') + """
checkpoint = false

[[peers]]
ids = [0]
publishes = ["px", "x"]
learns = ["px"]

[[peers]]
ids = [1]
publishes = ["px"]
learns = ["px"]
"""


def test_vae_players_exchange_decoder_means(tmp_path, tiny_mnist_root) -> None:
    """``px``: conv VAEs send their decoders' Bernoulli means (float16, 2 bytes a pixel) and
    learn from them as soft targets; nobody subscribed to peer 0's ``x``, so none is sent."""
    res, p0, p1 = _run_text(tmp_path, MEANS_GAME, tiny_mnist_root, "means.toml")
    assert {r["topic"] for r in p0["traffic_in"]} == {"samples/1/px"}
    assert {r["topic"] for r in p1["traffic_in"]} == {"samples/0/px"}
    assert {r["topic"] for r in p0["traffic_out"]} == {"samples/0/px"}
    for p in (p0, p1):
        row = p["traffic_in"][0]
        assert row["messages"] == 6 and row["payload_bytes"] == 6 * 16 * 784 * 2
        assert p["messages_rejected"] == 0 and math.isfinite(p["fid_all"])
    lines = [json.loads(x) for x in (res.run_dir / "metrics" / "peer-1.jsonl").read_text()
             .splitlines()]
    assert all(math.isfinite(x["train/elbo_loss"]) and x["train/n_synthetic"] == 16
               for x in lines)


@pytest.mark.parametrize("change, words", [
    # an HVAE learns binary images (and tuples), not decoder means
    ('learns = ["px"]', ["peer 1 cannot learn from 'px'"]),
    # a VAE has no latents to offer or to take in tuples
    ('algorithm = { model = "vae-conv" }\nlearns = ["hvae"]', ["peer 1 cannot learn from 'hvae'"]),
    ('algorithm = { model = "vae-conv" }\npublishes = ["hvae", "x"]\nlearns = ["x"]',
     ["peer 1 cannot publish 'hvae'"]),
    # tuples only between identical architectures
    ('algorithm = { model = "hvae-conv" }', ["hvae-mlp", "hvae-conv", "'hvae'"]),
])
def test_mismatched_players_are_refused_naming_the_peer(tmp_path, capsys, change,
                                                        words) -> None:
    err = _refused(tmp_path, capsys, SCENARIO + "\n[[peers]]\nids = [1]\n" + change + "\n")
    for w in words:
        assert w in err, err


def test_missing_data_is_one_clear_line(tmp_path) -> None:
    scenario = tmp_path / "game.toml"
    scenario.write_text(SCENARIO)
    out = subprocess.run(
        [sys.executable, "-m", "p2pgame.cli", "run", str(scenario), "--data",
         str(tmp_path / "nowhere"), "--out", str(tmp_path / "runs"), "--quiet"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2
    assert "p2pgame data fetch mnist" in out.stderr
    assert not (tmp_path / "runs").exists()  # nothing started, nothing written


def test_unknown_model_lists_known(tmp_path) -> None:
    scenario = tmp_path / "game.toml"
    scenario.write_text(SCENARIO.replace('model = "hvae-mlp"', 'model = "hvae-huge"'))
    out = subprocess.run(
        [sys.executable, "-m", "p2pgame.cli", "run", str(scenario), "--quiet",
         "--out", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2
    assert "hvae-huge" in out.stderr and "hvae-mlp" in out.stderr and "hvae-conv" in out.stderr


# --------------------------------------------------------------------------- relays

RELAY_LINE = SCENARIO.replace("n = 2\ngraph = \"complete\"", "n = 3\ngraph = \"line\"").replace(
    "self_weight = 0.5", "self_weight = [0.5, 0.0, 0.5]").replace(
    "classes = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]", "classes = [[0, 1, 2, 3, 4], [], [5, 6, 7, 8, 9]]")


def test_relay_line_game(tmp_path, tiny_mnist_root) -> None:
    """Three peers on a line; the middle one owns no data and learns only what it receives."""
    scenario = tmp_path / "relay.toml"
    scenario.write_text(RELAY_LINE)
    res = run(scenario, [], out=tmp_path / "runs", data_root=tiny_mnist_root, progress=False)
    assert res.exit_code == 0, res.failures
    relay = res.summary["peers"]["1"]
    assert relay["own_classes"] == [] and relay["ne_own_mass"] == 0.0
    assert relay["unseen_mass"] == pytest.approx(1.0)
    # Its equilibrium is the two ends' mix, half each: no class of its own.
    ne = np.array(relay["ne_class_mass"])
    assert ne[:5].sum() == pytest.approx(0.5) and ne[5:].sum() == pytest.approx(0.5)
    assert relay["messages_received"] == 2 * 12 and relay["steps"] == 12
    assert math.isfinite(relay["fid_all"])


@pytest.mark.parametrize("weights", ["self_weight = 0.5", "self_weight = [0.5, 0.0, 0.5]"])
def test_empty_partition_without_relay_weights_fails_fast(tmp_path, weights) -> None:
    """An empty class set for a peer that weighs its own data: exit 2 within seconds, before
    any evaluator trains or process starts (no data needed to tell)."""
    text = RELAY_LINE.replace("self_weight = [0.5, 0.0, 0.5]", weights)
    if weights == "self_weight = [0.5, 0.0, 0.5]":  # a relay that must learn the whole set
        text = text.replace("batch = 32", "batch = 0")
    scenario = tmp_path / "bad.toml"
    scenario.write_text(text)
    out = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "p2pgame.cli", "run", str(scenario), "--out",
                           str(out), "--data", str(tmp_path / "no-data-here"), "--quiet"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "data.partition.classes[1] is empty" in proc.stderr and "peer 1" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
