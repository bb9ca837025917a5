"""Placement changes where peers live, never what they exchange or learn.

The same sync scenario, one seed, run with one process per peer and with the
peers hosted in W = 1, 2 and 3 worker processes: every peer metric and every
metrics line (timings, pids and memory aside) must be identical.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from p2pgame import launch
from p2pgame.launch.backends import worker_blocks
from p2pgame.peer import control
from tests.fixtures.record_same_results import TINY_GAME
from tests.helpers import hooked_control_server, placement_results

pytestmark = pytest.mark.integration

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "expfam-ring4.toml"
def _placements(workers: list[int]) -> list[tuple[str, list[str]]]:
    return [("process", ['runtime.placement="process"'])] + [
        (f"workers={w}", ['runtime.placement="workers"', f"runtime.workers={w}"])
        for w in workers]


def test_worker_blocks_are_contiguous_and_balanced():
    assert worker_blocks(list(range(7)), 3) == [[0, 1], [2, 3], [4, 5, 6]]
    assert worker_blocks(list(range(2)), 5) == [[0], [1]]  # never an empty worker
    assert worker_blocks(list(range(4)), 1) == [[0, 1, 2, 3]]


def test_expfam_ring_is_identical_under_every_placement(tmp_path, list_session_processes):
    before = set(list_session_processes())
    base = ["topology.n=6", "steps=120"]
    results = {}
    for name, extra in _placements([1, 2, 3]):
        res = launch.run(SCENARIO, base + extra, out=tmp_path / name, progress=False)
        assert res.exit_code == 0, (name, res.failures)
        results[name] = (placement_results(res.run_dir), res.summary)
    want, s0 = results["process"]
    assert s0["placement"] == "process" and len(s0["processes"]) == 6
    for name, (got, summary) in results.items():
        assert got == want, f"{name} differs from one process per peer"
        if name.startswith("workers="):
            w = int(name.split("=")[1])
            assert summary["placement"] == "workers" and summary["workers"] == w
            # The peers really shared w processes, each reporting its memory.
            procs = summary["processes"]
            assert len(procs) == w
            assert sorted(p for proc in procs for p in proc["peers"]) == list(range(6))
            assert all(proc["peak_rss_mb"] > 0 for proc in procs)
    assert not set(list_session_processes()) - before, "a worker outlived its run"


def test_tiny_game_is_identical_in_processes_and_workers(tmp_path, tiny_mnist_root):
    scenario = tmp_path / "game-tiny.toml"
    scenario.write_text(TINY_GAME)
    results = {}
    for name, extra in _placements([2]):
        res = launch.run(scenario, extra, out=tmp_path / name, data_root=tiny_mnist_root,
                         progress=False)
        assert res.exit_code == 0, (name, res.failures)
        results[name] = placement_results(res.run_dir)
    for name, got in results.items():
        assert got == results["process"], f"{name} differs from one process per peer"
    assert results["process"]["peers"]["0"]["fid_all"] > 0  # a real evaluation ran


def test_a_killed_worker_names_every_peer_it_hosted(tmp_path, monkeypatch):
    """SIGKILL one of two workers mid-run: its peers are the failed ones, the other worker's
    peers are stopped and still report."""
    killed: list[int] = []

    def kill(peer, msg, pids):
        if isinstance(msg, control.Progress) and peer == 3 and not killed:
            os.kill(pids[3], signal.SIGKILL)
            killed.append(pids[3])

    monkeypatch.setattr(launch, "ControlServer", hooked_control_server(kill))
    res = launch.run(SCENARIO, ["steps=1000000", 'runtime.placement="workers"',
                                "runtime.workers=2"], out=tmp_path, progress=False)
    assert killed, "peer 3 never reported progress"
    assert res.exit_code == 1
    summary = res.summary
    assert summary["failed_peers"] == [2, 3]  # the second worker hosted peers 2 and 3
    assert all("-9" in summary["failures"][p] for p in ("2", "3"))
    assert sorted(summary["peers"]) == ["0", "1"]
    assert len({p["pid"] for p in summary["peers"].values()}) == 1



def test_256_peers_start_and_finish_with_default_settings(tmp_path):
    """placement = "auto": more peers than max(8, 2 x cores) go to workers."""
    res = launch.run(SCENARIO, ["topology.n=256", "steps=10"], out=tmp_path, progress=False)
    assert res.exit_code == 0, res.failures
    s = res.summary
    assert s["placement"] == "workers" and len(s["peers"]) == 256
    assert all(p["steps"] == 10 for p in s["peers"].values())
    assert len(s["processes"]) == s["workers"] < 256
