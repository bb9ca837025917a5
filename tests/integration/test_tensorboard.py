"""TensorBoard event files of real runs (``tensorboard/`` in the run folder), read back
with TensorBoard's own reader: each peer a run with its metrics lines' scalars at their
steps and its sample grid, the edges' accounts and the scenario in ``tensorboard/edges/``;
a resumed run writes no step twice; ``runtime.tensorboard = false`` writes none."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from p2pgame.config import ScenarioError
from p2pgame.launch import run
from p2pgame.scenario import apply_overrides, load_raw, resolve
from tests.fixtures.record_same_results import ROOT

pytestmark = pytest.mark.integration

EXPFAM = ROOT / "tests" / "scenarios" / "expfam-ring4.toml"

STEPS = 12
SCENARIO = f"""
name = "tensorboard-tiny"
seed = 3
steps = {STEPS}

[topology]
n = 2
graph = "complete"
weights = "self_weight"
self_weight = 0.5

[comm]
mode = "sync"
samples_per_message = 16

[runtime]
threads_per_peer = 1
device = "cpu"
metrics_every = 4

[data]
dataset = "mnist"
split = "train"
partition = {{ kind = "classes", classes = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]] }}

[exchange]
kind = "samples"

[learner]
kind = "hvae-mlp"
batch = 32
eval_samples = 100
evaluator_epochs = 1
checkpoint = false
tstr = false
"""

EVERYTHING = {"scalars": 0, "images": 0, "tensors": 0, "histograms": 0,
              "compressedHistograms": 0, "audio": 0}


def _read(path) -> EventAccumulator:
    acc = EventAccumulator(str(path), size_guidance=EVERYTHING)
    acc.Reload()
    return acc


def _lines(run_dir, peer: int) -> list[dict]:
    text = (run_dir / "metrics" / f"peer-{peer}.jsonl").read_text()
    return [json.loads(x) for x in text.splitlines()]


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, tiny_mnist_root):
    root = tmp_path_factory.mktemp("tensorboard")
    scenario = root / "tiny.toml"
    scenario.write_text(SCENARIO)
    res = run(scenario, [], out=root / "runs", data_root=tiny_mnist_root, progress=False)
    assert res.exit_code == 0, res.failures
    return res


def test_each_peer_is_a_run_with_its_metrics_at_their_steps(image_run) -> None:
    """Every numeric key of every metrics line is a scalar at the line's step, with the
    line's value (float32: TensorBoard's scalars), ``t`` as ``time/t``."""
    run_dir = image_run.run_dir
    assert sorted(p.name for p in (run_dir / "tensorboard").iterdir()) == [
        "edges", "peer-0", "peer-1"]
    want_steps = [0, 4, 8, STEPS - 1]
    for peer in (0, 1):
        lines = _lines(run_dir, peer)
        assert [x["step"] for x in lines] == want_steps
        acc = _read(run_dir / "tensorboard" / f"peer-{peer}")
        tags = set(acc.Tags()["scalars"])
        assert any(t.startswith("train/") for t in tags), tags
        assert {"comm/bytes_sent", "comm/bytes_received", "comm/staleness_mean",
                "time/t"} <= tags
        numeric = {("time/t" if k == "t" else k) for x in lines for k, v in x.items()
                   if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)}
        assert tags == numeric
        for tag in tags:
            key = "t" if tag == "time/t" else tag
            got = acc.Scalars(tag)
            assert [e.step for e in got] == [x["step"] for x in lines if key in x], tag
            np.testing.assert_array_equal(  # (NaN as NaN)
                [e.value for e in got], np.float32([x[key] for x in lines if key in x]),
                err_msg=tag)
        assert acc.Scalars("comm/bytes_sent")[-1].value > 0


def test_each_peers_sample_grid_is_an_image_at_its_last_step(image_run) -> None:
    from PIL import Image

    run_dir = image_run.run_dir
    for peer in (0, 1):
        acc = _read(run_dir / "tensorboard" / f"peer-{peer}")
        assert acc.Tags()["images"] == ["samples"]
        (image,) = acc.Images("samples")
        assert image.step == STEPS - 1
        with Image.open(run_dir / "samples" / f"peer-{peer}.png") as png:
            assert (image.width, image.height) == png.size


def test_the_edges_accounts_and_the_scenario_are_the_edges_run(image_run) -> None:
    """``tensorboard/edges/``: every numeric column of the summary's per-edge accounts as
    ``edges/<src>-><dst>/<column>`` at the run's last step; the resolved scenario as text."""
    run_dir, links = image_run.run_dir, image_run.summary["links"]
    assert {(r["src"], r["dst"]) for r in links} == {(0, 1), (1, 0)}
    acc = _read(run_dir / "tensorboard" / "edges")
    scalars = {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}
    want = {f"edges/{r['src']}->{r['dst']}/{k}": v for r in links for k, v in r.items()
            if k not in ("src", "dst")}
    assert set(scalars) == set(want)
    for tag, value in want.items():
        (event,) = scalars[tag]
        assert event.step == STEPS - 1
        assert event.value == float(np.float32(value)), tag
    assert scalars["edges/0->1/delivered"][0].value == links[0]["delivered"] > 0
    (text,) = acc.Tensors("scenario/text_summary")
    shown = text.tensor_proto.string_val[0].decode()
    assert textwrap.dedent(shown) == (run_dir / "scenario.json").read_text()
    assert json.loads(textwrap.dedent(shown))["name"] == "tensorboard-tiny"


def test_a_resumed_run_writes_no_step_twice(tmp_path) -> None:
    """A finished async run resumed from its last resume states (step 30 of 40): its
    peers redo steps 30-39, the metrics files hold them twice, TensorBoard once."""
    res = run(EXPFAM, ["steps=40", 'comm.mode="async"', "runtime.checkpoint_every=10"],
              out=tmp_path, progress=False)
    assert res.exit_code == 0, res.failures
    again = run(None, resume=res.run_dir, progress=False)
    assert again.exit_code == 0, again.failures
    assert set(again.summary["resumed_from"].values()) == {30}
    for peer in range(4):
        steps = [x["step"] for x in _lines(res.run_dir, peer)]
        assert len(steps) > len(set(steps))  # the redone steps, twice
        acc = _read(res.run_dir / "tensorboard" / f"peer-{peer}")
        for tag in acc.Tags()["scalars"]:
            assert [e.step for e in acc.Scalars(tag)] == sorted(set(steps)), tag


def test_runtime_tensorboard_false_writes_no_tensorboard_folder(tmp_path) -> None:
    res = run(EXPFAM, ["steps=20", "runtime.tensorboard=false"], out=tmp_path,
              progress=False)
    assert res.exit_code == 0, res.failures
    assert (res.run_dir / "metrics" / "peer-0.jsonl").is_file()
    assert not (res.run_dir / "tensorboard").exists()


def test_runtime_tensorboard_is_true_or_false() -> None:
    raw = load_raw(EXPFAM)
    assert resolve(raw, str(EXPFAM)).runtime.tensorboard is True
    with pytest.raises(ScenarioError, match="runtime.tensorboard"):
        resolve(apply_overrides(raw, ['runtime.tensorboard="yes"']), str(EXPFAM))
