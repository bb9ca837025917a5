"""The emulated network, end to end: per-edge accounts that add up, finite buffers on capped
links, and stragglers.  Real peer processes on the exp-family ring scenario (fast steps)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from p2pgame import launch
from p2pgame.config import ScenarioError
from p2pgame.exchange.mixing import dense_row

pytestmark = pytest.mark.integration

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "expfam-ring4.toml"
ACCOUNT_KEYS = ("delivered", "dropped_loss", "dropped_buffer", "rejected", "held")


def _run(out: Path, overrides) -> launch.RunResult:
    result = launch.run(SCENARIO, list(overrides), out=out / "runs", data_root=out / "data",
                        progress=False)
    assert result.exit_code == 0, result.failures
    return result


def _check_accounts(result: launch.RunResult, edges: int | None = None) -> list[dict]:
    rows = result.summary["links"]
    n = result.summary["n_peers"]
    assert len(rows) == (n * (n - 1) if edges is None else edges)  # a row per directed edge
    with (result.run_dir / "links.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [(int(r["src"]), int(r["dst"])) for r in table] == [(r["src"], r["dst"]) for r in rows]
    for r in rows:
        edge = f"{r['src']}->{r['dst']}"
        # The receiver's side: every message offered to the link is in one account.
        assert r["arrived"] == r["delivered"] + r["dropped_loss"] + r["dropped_buffer"] \
            + r["held"], edge
        # Both sides: what was sent is delivered, dropped, rejected or still in flight.
        assert r["in_transport"] >= 0, edge
        assert r["in_flight"] == r["held"] + r["in_transport"], edge
        assert r["sent"] == sum(r[k] for k in ACCOUNT_KEYS) + r["in_transport"], edge
        sender = result.summary["peers"][str(r["src"])]
        sent = sum(t["messages"] for t in sender["traffic_out"] if t["receiver"] == r["dst"])
        assert r["sent"] == sent, edge
        assert r["used"] <= r["delivered"], edge
    for pid, peer in result.summary["peers"].items():
        mine = [r for r in rows if r["dst"] == int(pid)]
        assert peer["messages_received"] == sum(r["arrived"] for r in mine)
        assert peer["messages_dropped_loss"] == sum(r["dropped_loss"] for r in mine)
        assert peer["messages_dropped_buffer"] == sum(r["dropped_buffer"] for r in mine)
        assert peer["bytes_delivered"] == sum(r["delivered_bytes"] for r in mine)
    return rows


FAULTS = ["comm.drop=0.2", "comm.delay_steps=1", "comm.latency_ms=1.0", "comm.jitter_ms=2.0",
          'comm.jitter_dist="exponential"', "comm.reorder=true", "comm.bandwidth=40000",
          "comm.buffer_messages=1"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_accounts_add_up_with_every_fault_on(tmp_path, mode):
    result = _run(tmp_path, ["topology.n=3", 'topology.graph="complete"', "steps=150",
                             f'comm.mode="{mode}"', *FAULTS])
    rows = _check_accounts(result)
    assert sum(r["dropped_loss"] for r in rows) > 0
    if mode == "sync":
        # Every round a step needed was settled (delivered or dropped), so the barrier
        # never waited for a lost message: all but the last delay_steps rounds.
        for r in rows:
            assert r["delivered"] + r["dropped_loss"] + r["dropped_buffer"] >= 150 - 1
    else:
        # Async peers outrun a 40 kB/s link with one waiting slot: the buffer overflows.
        assert sum(r["dropped_buffer"] for r in rows) > 0


def test_capped_async_link_drops_rather_than_ages(tmp_path):
    """Two peers flooding each other over 20 kB/s links with a 2 kB buffer: a message
    spends at most about buffer / rate on the link, and the link carries its cap."""
    rate, buffer = 20_000.0, 2000.0
    result = _run(tmp_path, ["topology.n=2", 'topology.graph="complete"', 'comm.mode="async"',
                             f"comm.bandwidth={rate}", f"comm.buffer_bytes={buffer}",
                             "steps=2000"])
    rows = _check_accounts(result)
    for r in rows:
        size = r["sent_bytes"] / r["sent"]
        assert r["dropped_buffer"] > r["delivered"]  # offered far more than the cap
        # Waiting (at most the buffer) plus its own transmission: the bound, not 2x it.
        assert r["delay_mean_s"] <= (buffer + size) / rate * 1.05
        # Saturated: bytes delivered over the link's active time are the cap (the first
        # message leaves at once, so one message of slack).
        assert abs((r["delivered_bytes"] - size) / (rate * r["active_s"]) - 1) < 0.05
    for peer in result.summary["peers"].values():
        assert peer["bytes_delivered"] < peer["bytes_received"]


def test_slow_hub_star_reports_used_messages(tmp_path):
    """An async star whose hub pauses 20 ms a step: the leaves use every hub message they
    get, the hub uses at most one per step of each leaf's much faster stream."""
    steps = 60
    result = _run(tmp_path, ["topology.n=4", 'topology.graph="star"', 'comm.mode="async"',
                             f"steps={steps}",
                             "peers=[{ids = [0], runtime = {step_delay_ms = 20.0}}]"])
    rows = _check_accounts(result, edges=6)
    peers = result.summary["peers"]
    hub_rate = peers["0"]["steps_per_s"]
    for r in rows:
        if r["src"] == 0:  # hub -> leaf: each hub message the leaf got, it used
            assert r["used"] >= r["delivered"] - 1
            leaf_wall = steps / peers[str(r["dst"])]["steps_per_s"]
            # ... so its use matches the hub's rate over the leaf's life
            assert r["used"] <= hub_rate * leaf_wall + 2
        else:  # leaf -> hub: a fast sender, most of whose messages the hub never used
            assert r["used"] <= steps
            assert r["sent"] >= steps and r["used"] < r["sent"]
    assert peers["0"]["time_split_s"]["pace"] >= 0.9 * steps * 0.020
    for leaf in ("1", "2", "3"):
        assert peers[leaf]["steps_per_s"] > 3 * hub_rate
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["links"] == rows


# --------------------------------------------------------------------------- relays and faults


def test_expfam_relay_line_and_given_means(tmp_path):
    """A line 0 - 1 - 2 whose middle peer has no data, ends given their data means: the
    relay ends at the average of the two ends' equilibria, everyone at the closed form."""
    means = [[0.1, 0.9, 0.2, 0.8], [0.7, 0.3, 0.6, 0.4]]
    result = _run(tmp_path, [
        "topology.n=3", 'topology.graph="line"', "topology.self_weight=[0.5, 0.0, 0.5]",
        "algorithm.dim=4", "steps=400", "comm.samples_per_message=2000",
        f"peers=[{{ids = [1], algorithm = {{n_data = 0}}}}, "
        f"{{ids = [0], algorithm = {{data_mean = {means[0]}}}}}, "
        f"{{ids = [2], algorithm = {{data_mean = {means[1]}}}}}]"])
    peers = result.summary["peers"]
    for pid, peer in peers.items():
        assert peer["ne_max_abs"] < 0.03, pid
    m0, m2 = np.array(means[0]), np.array(means[1])
    # mu0 = (m0 + mu1)/2, mu2 = (m2 + mu1)/2, mu1 = (mu0 + mu2)/2 -> mu1 = (m0 + m2)/2.
    assert np.abs(np.array(peers["1"]["mu"]) - (m0 + m2) / 2).max() < 0.03
    assert "1" not in peers["1"]["effective_row"]  # it never used own data: it has none


def test_relay_weight_on_missing_data_is_refused(tmp_path):
    with pytest.raises(ScenarioError, match="peer 1 has no data"):
        launch.run(SCENARIO, ["topology.n=3", 'topology.graph="line"',
                              "peers=[{ids = [1], algorithm = {n_data = 0}}]"],
                   out=tmp_path / "runs", data_root=tmp_path / "data", progress=False)
    assert not (tmp_path / "runs").exists()


def test_equilibrium_under_drops_and_startup_delays(tmp_path):
    """Sync, drop 0.3 on every link, a 30-step start-up delay on two edges.  The peers reuse
    the freshest message held, so after start-up the weights are exact: the effective weights
    the run reports equal the ideal ones to within the start-up's discounted share, their
    prediction equals the ideal equilibrium, and the means meet both."""
    result = _run(tmp_path, [
        "comm.drop=0.3", "steps=600", "algorithm.dim=6",
        "comm.edges=[{src = 0, dst = 1, delay_steps = 30}, {src = 2, dst = 3, delay_steps = 30}]"])
    s = result.summary
    eff = np.array([dense_row(r, 4) for r in s["effective_weights"]])
    ideal = np.zeros((4, 4))
    for i in range(4):
        ideal[i, i] = 0.5
        ideal[i, (i - 1) % 4] = ideal[i, (i + 1) % 4] = 0.25
    assert np.abs(eff - ideal).max() < 1e-3
    assert s["ne_shift_max_abs"] < 1e-3
    for pid, peer in s["peers"].items():
        assert peer["ne_eff_max_abs"] < 0.02, pid
        assert peer["ne_max_abs"] < 0.02, pid
        assert peer["messages_dropped_loss"] > 0


def test_a_link_that_never_delivers_moves_the_equilibrium_as_predicted(tmp_path):
    """Edge 0 -> 1 delays beyond the run: peer 1 renormalises its row over what it holds
    for the whole run (1/2, 1/4 -> 2/3, 1/3), so the fixed point moves.  The means miss
    the ideal equilibrium and meet the one the effective weights predict."""
    result = _run(tmp_path, [
        "comm.drop=0.3", "steps=600", "algorithm.dim=6",
        "comm.edges=[{src = 0, dst = 1, delay_steps = 100000}]"])
    s = result.summary
    eff = np.array([dense_row(r, 4) for r in s["effective_weights"]])
    np.testing.assert_allclose(eff[1], [0.0, 2 / 3, 1 / 3, 0.0], atol=1e-6)
    assert s["ne_shift_max_abs"] > 0.05  # the prediction really moved
    worst_ideal = max(p["ne_max_abs"] for p in s["peers"].values())
    assert worst_ideal > 0.05
    for pid, peer in s["peers"].items():
        assert peer["ne_eff_max_abs"] < 0.02, pid
    (row,) = [r for r in s["links"] if (r["src"], r["dst"]) == (0, 1)]
    assert row["delivered"] == 0 and row["held"] == row["arrived"] - row["dropped_loss"] > 0
