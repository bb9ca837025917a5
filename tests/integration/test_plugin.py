"""A learner from another installed package (issue 23, item 4): examples/gmm2d, a Gaussian
mixture on 2-D points registered through the entry point group ``p2pgame.learners``,
named in a scenario like a built-in one and checked like one.

Real runs (two peer processes each, a few seconds): the samples game, parameter
averaging and the baseline without exchange; the test fixture ``gmm2d-wrong-shape``
(publishes 3-D points where it declares 2-D ones) refused with a line naming it, the
space and both shapes.  Without the example installed these skip, saying how to install
it (``make test`` installs it); the registry's own checks run either way.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
from pathlib import Path

import numpy as np
import pytest

from p2pgame.config import ScenarioError
from p2pgame.launch import run
from p2pgame.learners import GROUP, check_learner_class
from p2pgame.learners.base import Learner, LearnerConfig, LearnerContext
from p2pgame.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "gmm2d"
SAMPLES = EXAMPLE / "scenario.toml"
PARAMS = EXAMPLE / "scenario-params.toml"
STEPS = 200
SMALL = [f"steps={STEPS}", "learner.eval_samples=1000", "runtime.threads_per_peer=1"]

INSTALLED = "gmm2d" in {ep.name for ep in importlib.metadata.entry_points(group=GROUP)}
needs_plugin = pytest.mark.skipif(
    not INSTALLED, reason="the example learner plugin is not installed (no 'gmm2d' in the "
    "entry point group p2pgame.learners): .venv/bin/pip install --no-build-isolation "
    "--no-deps -e examples/gmm2d (make test installs it)")


def _run(tmp_path: Path, scenario: Path, *overrides: str):
    return run(scenario, [*SMALL, *overrides], out=tmp_path / "runs",
               data_root=tmp_path / "data", progress=False)


def _topics(peer: dict) -> dict[str, dict]:
    return {r["topic"]: r for r in peer["traffic_out"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, list_session_processes):
    """The example under samples, params (a snapshot every step) and none, once."""
    if not INSTALLED:
        pytest.skip(needs_plugin.kwargs["reason"])
    before = set(list_session_processes())
    out = {
        "samples": _run(tmp_path_factory.mktemp("samples"), SAMPLES),
        "params": _run(tmp_path_factory.mktemp("params"), PARAMS,
                       f"exchange.snapshots={STEPS}"),
        "none": _run(tmp_path_factory.mktemp("none"), SAMPLES, 'exchange.kind="none"'),
        # the mixture sent as a model every 20 steps; each receiver draws from its copy
        "model": _run(tmp_path_factory.mktemp("model"), SAMPLES, 'exchange.kind="model"',
                      "comm.publish_every=20"),
    }
    left = set(list_session_processes()) - before
    assert not left, f"processes left alive after the runs: {left}"
    return out


def _finite_metrics(peer: dict) -> None:
    for key in ("ll_all", "ll_own", "ll_other", "ll_true_all", "own_mass", "unseen_mass"):
        assert math.isfinite(peer[key]), (key, peer[key])
    assert all(math.isfinite(m) for m in peer["cluster_mass"])


# --------------------------------------------------------------------------- real runs

@needs_plugin
@pytest.mark.integration
def test_samples_game_with_the_plugin(runs) -> None:
    res = runs["samples"]
    assert res.exit_code == 0, res.failures
    scenario = json.loads((res.run_dir / "scenario.json").read_text())
    assert (scenario["exchange"]["kind"], scenario["learner"]["kind"]) == ("samples", "gmm2d")
    for pid, p in res.summary["peers"].items():
        assert p["steps"] == STEPS and p["messages_rejected"] == 0
        row = _topics(p)[f"samples/{pid}/pts"]
        assert set(_topics(p)) == {f"samples/{pid}/pts"}
        # 128 float32 points of 2 coordinates a message, every step
        assert row["messages"] == STEPS and row["payload_bytes"] == STEPS * 128 * 2 * 4
        assert p["bytes_received"] > 0
        _finite_metrics(p)
        # the game's equilibrium of the plugin's own statistic (its cluster mass) is known
        assert len(p["ne_cluster_mass"]) == len(p["cluster_mass"]) == 4
        assert math.isfinite(p["tv_to_ne"]) and p["effective_row"]
    assert "table_columns" in res.summary and "ll_all" in res.summary["table_columns"]


@needs_plugin
@pytest.mark.integration
def test_params_run_with_the_plugin_agrees_after_each_combine(runs) -> None:
    res = runs["params"]
    assert res.exit_code == 0, res.failures
    k = 6  # the example's components: means (k, 2), log_var (k, 2), logits (k,), float32
    for pid, p in res.summary["peers"].items():
        row = _topics(p)[f"params/{pid}/model"]
        assert set(_topics(p)) == {f"params/{pid}/model"}
        assert row["messages"] == STEPS and row["payload_bytes"] == STEPS * (5 * k) * 4
        assert p["combine_rounds"] == STEPS and p["messages_rejected"] == 0
        _finite_metrics(p)
    # a complete 2-peer graph, one weight row everywhere: every combine leaves both peers
    # with the same bits (the snapshot is taken after it, before the local step)
    curve = res.summary["consensus_distance"]
    assert [s for s, _ in curve] == list(range(STEPS))
    assert all(d == 0.0 for _, d in curve), curve


@needs_plugin
@pytest.mark.integration
def test_the_plugins_mixture_travels_as_a_model(runs) -> None:
    """The model exchange with a learner that is not ours: the three tensors every 20
    steps (5k float32 each), and every step the receiver draws its neighbour's share
    from its copy (fresh points, never a stale message re-picked)."""
    res = runs["model"]
    assert res.exit_code == 0, res.failures
    k = 6
    for pid, p in res.summary["peers"].items():
        row = _topics(p)[f"params/{pid}/generator"]
        assert set(_topics(p)) == {f"params/{pid}/generator"}
        assert row["messages"] == STEPS // 20 and row["payload_bytes"] == STEPS // 20 * 5 * k * 4
        assert p["model_loads"] == STEPS // 20 and p["messages_rejected"] == 0
        _finite_metrics(p)
        assert math.isfinite(p["tv_to_ne"])


@needs_plugin
@pytest.mark.integration
def test_cooperation_helps_on_the_networks_data(runs) -> None:
    """Alone, a peer never sees the other's clusters; under either exchange it learns
    them: its held-out log-likelihood on the network's data ends higher."""
    alone = runs["none"]
    assert alone.exit_code == 0, alone.failures
    for pid, p in alone.summary["peers"].items():
        assert p["bytes_sent"] == 0
        _finite_metrics(p)
        for kind in ("samples", "params", "model"):
            other = runs[kind].summary["peers"][pid]
            assert other["ll_all"] > p["ll_all"] + 1.0, (kind, pid, other["ll_all"], p["ll_all"])
            assert other["unseen_mass"] > p["unseen_mass"]


@needs_plugin
@pytest.mark.integration
def test_a_plugin_that_publishes_another_shape_is_refused(tmp_path) -> None:
    res = _run(tmp_path, SAMPLES, 'learner.kind="gmm2d-wrong-shape"')
    assert res.exit_code == 1
    assert res.failures, res.summary.get("failures")
    for line in res.failures.values():
        assert "gmm2d-wrong-shape" in line and "'pts'" in line, line
        assert "float32[3]" in line and "float32[2]" in line, line  # published, declared


@needs_plugin
def test_an_unknown_kind_lists_the_plugin_among_the_allowed() -> None:
    with pytest.raises(ScenarioError) as e:
        load_scenario(SAMPLES, ['learner.kind="gmm3d"'])
    text = str(e.value)
    assert "'gmm3d' is not known" in text and "gmm2d" in text.split("allowed:")[1], text


@needs_plugin
def test_the_plugins_own_keys_are_checked_by_name() -> None:
    with pytest.raises(ScenarioError, match=r"learner\.lr: must lie in \(0, 1\]"):
        load_scenario(SAMPLES, ["learner.lr=2.0"])
    with pytest.raises(ScenarioError, match=r"learner\.components: must be >= 1"):
        load_scenario(SAMPLES, ["learner.components=0"])
    with pytest.raises(ScenarioError, match="takes no \\[data\\] section"):
        load_scenario(SAMPLES, ['data.dataset="mnist"'])


@needs_plugin
def test_the_plugin_resumes_where_it_stopped() -> None:
    """resume_state is JSON and continues exactly: the same steps and draws after it."""
    from p2pgame.learners import learner_class
    from p2pgame.learners.base import Batch

    sc = load_scenario(SAMPLES)
    cls = learner_class("gmm2d")

    def learner() -> Learner:
        return cls(sc.learner, LearnerContext(peer_id=0, scenario=sc, config=sc.learner,
                                              data_root=Path(".")))

    a = learner()
    for step in range(5):
        a.learn(step, Batch(own=64, own_weight=1.0))
    b = learner()
    b.load_resume_state(json.loads(json.dumps(a.resume_state())))
    for step in range(5, 8):
        assert a.learn(step, Batch(own=64, own_weight=1.0)) == b.learn(
            step, Batch(own=64, own_weight=1.0))
    assert np.array_equal(a.sample(16, ("pts",))["pts"]["x"], b.sample(16, ("pts",))["pts"]["x"])


# --------------------------------------------------------------------------- the registry

def test_the_registry_refuses_a_class_that_is_not_a_learner() -> None:
    with pytest.raises(ScenarioError) as e:
        check_learner_class("x", object)
    assert str(e.value).startswith("learner.kind = 'x' (plugin ")
    assert "is not a subclass of p2pgame.learners.base.Learner" in str(e.value)


def test_the_registry_refuses_a_learner_whose_config_is_not_a_learner_config() -> None:
    @dataclasses.dataclass(frozen=True)
    class Plain:  # a frozen dataclass, but not a LearnerConfig
        k: int = 1

    class Odd(Learner):
        Config = Plain

    with pytest.raises(ScenarioError, match=r"'x' .*subclassing "
                                            r"p2pgame\.learners\.base\.LearnerConfig"):
        check_learner_class("x", Odd)
    check_learner_class("x", type("Fine", (Learner,), {"Config": LearnerConfig}))
