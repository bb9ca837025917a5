"""The virtual clock (``runtime.clock = "virtual"``) on real peer processes: async runs
that give the same results whatever the host's load and wherever the peers live, and a
straggler whose neighbours use exactly the messages the virtual times say they can."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import p2pgame
from tests.fixtures.record_same_results import TIMING_KEYS

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "tests" / "scenarios" / "expfam-ring4.toml"
# 8 async peers on a ring with loss, latency jitter and a bandwidth cap that queues
# (messages of 157 bytes every 10 ms of virtual time, 12 kB/s: about 1.3x the cap).
FAULTY_RING8 = {"topology.n": 8, "comm.mode": "async", "runtime.clock": "virtual",
                "comm.drop": 0.2, "comm.latency_ms": 5.0, "comm.jitter_ms": 3.0,
                "comm.bandwidth": 12000.0, "runtime.target": "ne_max_abs<=0.05"}


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _hogs(n: int) -> list[subprocess.Popen]:
    """``n`` processes that spin on the CPU (the host's load, for a run beside them)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def test_a_faulty_async_ring_gives_the_same_results_beside_a_cpu_hog_and_in_workers(tmp_path):
    quiet = p2pgame.run(SCENARIO, {**FAULTY_RING8, "runtime.placement": "process"},
                        out=tmp_path / "quiet", data=tmp_path / "data")
    hogs = _hogs(4)
    try:
        loaded = p2pgame.run(SCENARIO, {**FAULTY_RING8, "runtime.placement": "workers",
                                        "runtime.workers": 2},
                             out=tmp_path / "loaded", data=tmp_path / "data")
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert quiet.ok and loaded.ok, (quiet.failures, loaded.failures)
    # Bit-identical, timings aside: every metrics line and every peer's summary.
    assert _strip(loaded.metrics) == _strip(quiet.metrics)
    assert _strip(loaded.peers) == _strip(quiet.peers)
    assert _strip(loaded.edges) == _strip(quiet.edges)
    assert quiet.summary["clock"] == {"kind": "virtual", "compute": "model",
                                      "deterministic": True}
    # ... of a run in which the faults did something: losses, queueing, stale messages.
    peers = quiet.peers.values()
    assert sum(p["messages_dropped_loss"] for p in peers) > 0
    assert min(p["staleness_mean"] for p in peers) > 2  # the cap's queue ages messages
    # The virtual time: in every line, and 200 steps of 10 ms at the end.
    for lines in quiet.metrics.values():
        assert all("time/virtual_s" in line for line in lines)
        assert lines[-1]["time/virtual_s"] == pytest.approx(2.0)
    for pid, p in quiet.peers.items():
        assert p["virtual_s"] == pytest.approx(2.0)
        # Time to quality: the first metrics line that met the target, in virtual time.
        at = p["target_reached"]
        assert at is not None and at["virtual_s"] == pytest.approx((at["step"] + 1) * 0.01)
        line = next(x for x in quiet.metrics[pid] if x["step"] == at["step"])
        assert line["eval/ne_max_abs"] <= 0.05
        assert all(x["eval/ne_max_abs"] > 0.05 for x in quiet.metrics[pid]
                   if x["step"] < at["step"])
        # The age of use in virtual seconds, per in-neighbour: at least the latency.
        assert all(e["staleness_mean_s"] >= 0.005 for e in p["links_in"])
        # One promise per step and the last one, to each of the two out-neighbours: each
        # step's rides in its data message, the last (nothing more, ever) in a clock
        # message, counted apart from the exchange's messages.
        assert p["clock_promises_carried"] == 200
        assert p["clock_messages_sent"] == 2 * 1
        assert p["messages_sent"] == 2 * 200


def _step_times(cost: float, steps: int) -> list[float]:
    """A peer's step start times: whole nanoseconds, summed (as the peer sums them)."""
    ns = round(cost * 1e9)
    return [k * ns / 1e9 for k in range(steps)]


def test_a_stragglers_neighbours_use_the_messages_the_virtual_times_allow(tmp_path):
    """Peer 0 steps ten times slower (speed 0.1) on a ring of 4.  A peer's step at
    virtual time t trains on the newest message of each in-neighbour that arrived by t
    (sent at the sender's step time, arriving latency_ms later), so the count of an
    in-neighbour's messages it used is the number of distinct newest ones over its
    steps, computed here from the step times alone."""
    compute_s, latency_s, steps = 0.01, 0.0055, 200
    text = SCENARIO.read_text() + "\n[[peers]]\nids = [0]\nruntime = { speed = 0.1 }\n"
    result = p2pgame.run(text, {"comm.mode": "async", "runtime.clock": "virtual",
                                "comm.latency_ms": latency_s * 1000,
                                "runtime.compute_s": compute_s},
                         out=tmp_path / "runs", data=tmp_path / "data")
    assert result.ok, result.failures
    times = {i: _step_times(compute_s / (0.1 if i == 0 else 1.0), steps) for i in range(4)}
    checked = 0
    for i, peer in result.peers.items():
        for edge in peer["links_in"]:
            arrivals = [t + latency_s for t in times[edge["src"]]]
            newest = set()
            for t in times[i]:
                arrived = [m for m, a in enumerate(arrivals) if a <= t]
                if arrived:
                    newest.add(arrived[-1])
            assert edge["used"] == len(newest), (i, edge)
            checked += 1
    assert checked == 8
    # The straggler's neighbours used one message in ten of it (20 of 200).
    assert {e["used"] for p in (result.peers[1], result.peers[3]) for e in p["links_in"]
            if e["src"] == 0} == {20}
    assert result.peers[0]["virtual_s"] == pytest.approx(20.0)
    last = result.metrics[1][-1]
    assert last["step"] == steps - 1 and last["time/virtual_s"] == pytest.approx(2.0)


def test_a_peer_offline_for_a_third_of_the_run_still_leaves_every_peer_at_its_equilibrium(
        tmp_path):
    """Peer 1 is away from virtual second 2 to 4 of a 6 s run (a third): its 200 steps
    there are skipped (no training, no messages out, none taken in), its neighbours go on
    with its last message, and every peer ends near the equilibrium of the weights it
    effectively applied.  The window comes from an availability file."""
    away_file = tmp_path / "away.txt"
    away_file.write_text("# peer 1: offline [from, to) in virtual seconds\n2.0 4.0\n")
    text = SCENARIO.read_text() + (
        f"\n[[peers]]\nids = [1]\nruntime = {{ availability = '{away_file}' }}\n")
    result = p2pgame.run(text, {"comm.mode": "async", "runtime.clock": "virtual",
                                "comm.latency_ms": 5.0, "steps": 600},
                         out=tmp_path / "runs", data=tmp_path / "data")
    assert result.ok, result.failures
    away = result.peers[1]
    assert away["offline_steps"] == 200 and away["virtual_s"] == pytest.approx(6.0)
    assert away["messages_sent"] == 2 * 400  # two out-neighbours, 400 steps online
    # Its promises: in its 400 data messages, and as clock messages while it is away (it
    # publishes nothing then, and its time goes on), and the last one.
    assert away["clock_promises_carried"] == 400
    assert away["clock_messages_sent"] == 2 * (200 + 1)
    assert all(p["offline_steps"] == 0 for i, p in result.peers.items() if i != 1)
    for p in result.peers.values():
        assert p["ne_eff_max_abs"] <= 0.02
    # Its metrics lines in the window have no training keys; its steps go on after it.
    lines = {x["step"]: x for x in result.metrics[1]}
    assert "train/lr" not in lines[300] and "train/lr" in lines[190] and "train/lr" in lines[410]
    assert lines[300]["time/virtual_s"] == pytest.approx(3.01)


def test_the_measured_compute_mode_takes_the_hosts_step_times_and_says_so(tmp_path):
    """``runtime.compute = "measured"``: each step's virtual time is the host's time of
    the peer's previous training step (x compute_scale), so the peers' clocks end at what
    their steps took, not at steps x compute_s, and the summary marks the run as one the
    host's load can change."""
    steps, scale = 100, 3.0
    result = p2pgame.run(SCENARIO, {"comm.mode": "async", "runtime.clock": "virtual",
                                    "runtime.compute": "measured",
                                    "runtime.compute_scale": scale, "steps": steps,
                                    "comm.latency_ms": 1.0},
                         out=tmp_path / "runs", data=tmp_path / "data")
    assert result.ok, result.failures
    assert result.summary["clock"] == {"kind": "virtual", "compute": "measured",
                                       "deterministic": False}
    for peer in result.peers.values():
        # the first step's compute_s (0.01) plus 3x each later step's host time: positive
        # host times, and not the modelled 100 x 0.01
        assert peer["virtual_s"] > 0.01 and peer["virtual_s"] != pytest.approx(steps * 0.01)
        # a bound from the host's side: no more than 3x the peer's whole wall time
        assert peer["virtual_s"] <= 0.01 + scale * peer["steps"] / peer["steps_per_s"]
