"""Real runs: one OS process per peer over ZeroMQ, launched in-process or by the CLI.

Small on purpose (2-4 peers, <= 200 steps): the whole file must stay well under a minute
and a half on two cores.  Every run's leftover processes are checked by conftest.py.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import p2pgame
from p2pgame import launch
from p2pgame.launch import backends
from p2pgame.peer import control
from tests.helpers import hooked_control_server

pytestmark = pytest.mark.integration

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "expfam-ring4.toml"
ROOT = Path(__file__).resolve().parents[2]

PEER_KEYS = ("steps", "steps_per_s", "bytes_sent", "bytes_received", "messages_sent",
             "messages_received", "messages_dropped", "messages_rejected", "staleness_mean",
             "ne_max_abs")
SUMMARY_KEYS = ("scenario", "seed", "mode", "wall_s", "failed_peers", "peers")
TIMING_KEYS = {"wall_s", "steps_per_s", "time_split_s", "t", "delay_mean_s", "active_s",
               # where peers lived and their memory: facts of the machine, not results
               "pid", "process_peak_rss_mb", "processes"}


def _run(out: Path, overrides=(), scenario=SCENARIO) -> launch.RunResult:
    return launch.run(scenario, list(overrides), out=out / "runs", data_root=out / "data",
                      progress=False)


def _lines(run_dir: Path, peer: int) -> list[dict]:
    with (run_dir / "metrics" / f"peer-{peer}.jsonl").open() as f:
        return [json.loads(line) for line in f]


def _strip(obj, drop=TIMING_KEYS):
    if isinstance(obj, dict):
        return {k: _strip(v, drop) for k, v in obj.items() if k not in drop}
    if isinstance(obj, list):
        return [_strip(v, drop) for v in obj]
    return obj


@pytest.fixture(scope="module")
def ring4_twice(tmp_path_factory, list_session_processes):
    """The base sync scenario run twice with the same seed (shared by several tests)."""
    before = set(list_session_processes())
    results = [_run(tmp_path_factory.mktemp(f"ring4-{k}")) for k in range(2)]
    left = set(list_session_processes()) - before
    assert not left, f"processes left alive after the runs: {left}"
    return results


# --------------------------------------------------------------------------- (a) a sync run


def test_sync_ring_summary_and_run_folder(ring4_twice):
    result = ring4_twice[0]
    assert result.exit_code == 0 and result.failures == {}
    run_dir = result.run_dir
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))
    for key in SUMMARY_KEYS:
        assert key in summary, key
    assert (summary["scenario"], summary["seed"], summary["mode"]) == ("expfam-ring4", 7, "sync")
    assert summary["failed_peers"] == [] and summary["wall_s"] > 0
    assert sorted(summary["peers"]) == ["0", "1", "2", "3"]
    for pid, peer in summary["peers"].items():
        for key in PEER_KEYS:
            assert key in peer, (pid, key)
        assert peer["steps"] == 200 and peer["steps_per_s"] > 0
        # 200 rounds to 2 ring neighbours, 200 rounds from each; nothing lost or refused.
        assert peer["messages_sent"] == 400 and peer["messages_received"] == 400
        assert peer["messages_dropped"] == 0 and peer["messages_rejected"] == 0
        assert peer["bytes_sent"] == peer["bytes_received"] == peer["bytes_delivered"] > 0
        assert peer["payload_bytes_sent"] == 400 * 64  # 64 samples x 8 bits, bit-packed
        assert peer["staleness_mean"] == 0.0 and peer["staleness_hist"] == {"0": 400}
        # The players reach the analytic equilibrium of the game.
        assert math.isfinite(peer["ne_max_abs"]) and peer["ne_max_abs"] < 0.05
        assert len(peer["mu"]) == 8

    for name in ("scenario.toml", "scenario.json", "topology.json", "edges.csv",
                 "weights.csv"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "scenario.toml").read_text() == SCENARIO.read_text()
    topo = json.loads((run_dir / "topology.json").read_text())
    (epoch,) = topo["epochs"]
    assert epoch["start_step"] == 0 and len(epoch["edges"]) == 8
    assert epoch["second_eigenvalue_modulus"] == pytest.approx(0.5)  # 1/2 + 1/2 cos(pi/2)
    with (run_dir / "edges.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["src", "dst", "weight"] and len(rows) == 9
    assert all(float(r[2]) == 0.25 for r in rows[1:])
    with (run_dir / "weights.csv").open() as f:
        w = np.array([[float(v) for v in r] for r in csv.reader(f)])
    assert w.shape == (4, 4)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    np.testing.assert_allclose(np.diag(w), 0.5)

    for i in range(4):
        lines = _lines(run_dir, i)
        assert [ln["step"] for ln in lines] == [*range(0, 200, 10), 199]
        for ln in lines:
            # (namespaced: the learner's train/, the exchange's and the bus's comm/, the
            # learner's evaluation eval/)
            assert set(ln) == {"step", "t", "eval/ne_max_abs", "comm/bytes_sent",
                               "comm/bytes_received", "comm/staleness_mean", "train/lr",
                               "train/coverage"}, ln
        assert lines[-1]["eval/ne_max_abs"] < lines[0]["eval/ne_max_abs"]
    assert not (run_dir / "sock").exists()  # sockets cleaned up


# --------------------------------------------------------------------------- (b) determinism


def test_sync_runs_are_reproducible(ring4_twice):
    a, b = ring4_twice
    assert a.run_dir != b.run_dir
    sa, sb = a.summary, b.summary
    assert _strip(sa) == _strip(sb)
    for i in range(4):
        # Per-step metrics: everything but timing, and bytes_received, which counts what
        # has *arrived* by the time a line is written.
        drop = TIMING_KEYS | {"bytes_received"}
        assert _strip(_lines(a.run_dir, i), drop) == _strip(_lines(b.run_dir, i), drop)
    assert [p["mu"] for p in sa["peers"].values()] == [p["mu"] for p in sb["peers"].values()]


def test_sync_metric_lines_reproducible_except_time(ring4_twice):
    a, b = ring4_twice
    for i in range(4):
        assert _strip(_lines(a.run_dir, i)) == _strip(_lines(b.run_dir, i))


# --------------------------------------------------------------------------- (c) regimes


def test_delay_steps_gives_that_staleness_over_tcp(tmp_path):
    result = _run(tmp_path, ["topology.n=3", "steps=100", "comm.delay_steps=5",
                             "comm.transport=\"tcp\""])
    assert result.exit_code == 0
    for pid, peer in result.summary["peers"].items():
        assert peer["steps"] == 100
        # Sync: at step s >= 5 each of the 2 neighbours' round s - 5 is the freshest held.
        assert peer["staleness_mean"] == pytest.approx(5.0)
        assert peer["staleness_hist"] == {"5": 2 * 95}, pid
        assert math.isfinite(peer["ne_max_abs"])
        assert peer["messages_received"] >= 2 * 95


def test_drop_rate_via_cli(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "p2pgame.cli", "run", str(SCENARIO), "--quiet",
         "--run-dir", str(run_dir), "--data", str(tmp_path / "data"),
         "--set", "topology.n=3", "--set", "comm.drop=0.3"],
        capture_output=True, text=True, timeout=100, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"results: {run_dir}" in proc.stdout and "mode sync, 3 peers" in proc.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    dropped = total = 0
    for pid, peer in summary["peers"].items():
        # Sync: every round of every in-neighbour is resolved, delivered or dropped.
        n = peer["messages_received"]  # arrivals, dropped or not
        assert n == 2 * 200, pid
        assert abs(peer["messages_dropped"] / n - 0.3) < 0.08, pid
        assert peer["bytes_delivered"] < peer["bytes_received"]
        assert math.isfinite(peer["ne_max_abs"])
        dropped += peer["messages_dropped"]
        total += n
    assert abs(dropped / total - 0.3) < 0.04
    assert json.loads((run_dir / "scenario.json").read_text())["comm"]["link"]["drop"] == 0.3


def test_bandwidth_cap_limits_delivery_rate(tmp_path):
    cap = 4000.0  # bytes/s on each link
    result = _run(tmp_path, ["topology.n=2", "topology.graph=\"complete\"", "steps=40",
                             f"comm.bandwidth={cap}"])
    assert result.exit_code == 0
    for pid, peer in result.summary["peers"].items():
        assert peer["steps"] == 40 and peer["messages_dropped"] == 0
        delivered = peer["bytes_delivered"]
        assert delivered == peer["bytes_received"]
        (row,) = peer["traffic_in"]  # one in-link, one topic
        assert row["messages"] == 40
        # All messages of this run have the same size, up to a byte or two of header.
        largest = math.ceil((row["header_bytes"] + row["payload_bytes"]) / row["messages"]) + 4
        assert delivered / cap > 1.0, "the cap must bind for the test to mean anything"
        # One link in; after the first message (the bucket starts full) bytes leave at <= cap.
        # Every release lies between the launcher's 'go' and its last 'done': exact bound.
        assert (delivered - largest) / result.summary["wall_s"] <= cap * 1.001, pid
        # The peer's own clock starts a little after 'go' (scheduling skew): loose bound.
        wall = peer["steps"] / peer["steps_per_s"]
        assert wall >= 0.9 * (delivered - largest) / cap, pid


# --------------------------------------------------------------------------- (d) bad scenario


def test_bad_scenario_exits_2_before_anything_starts(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(SCENARIO.read_text().replace("[comm]\n", "[comm]\ndorp = 0.3\n"))
    out = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "p2pgame.cli", "run", str(bad), "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "'dorp'" in proc.stderr and str(bad) in proc.stderr and "allowed" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_bad_override_exits_2_without_spawning(tmp_path, monkeypatch, capsys):
    from p2pgame import cli

    def no_processes(*a, **k):
        raise AssertionError("a process was about to start")

    monkeypatch.setattr(backends.LocalSpawnBackend, "start", no_processes)
    out = tmp_path / "runs"
    code = cli.main(["run", str(SCENARIO), "--out", str(out), "--quiet",
                     "--set", "runtime.colour=\"red\""])
    assert code == 2
    err = capsys.readouterr().err
    assert "'colour'" in err and "runtime" in err and "allowed" in err
    assert not out.exists()
    code = cli.main(["run", str(tmp_path / "missing.toml"), "--out", str(out)])
    assert code == 2 and "not found" in capsys.readouterr().err


# --------------------------------------------------------------------------- (e) a dead peer


def test_killed_peer_is_reported(tmp_path, monkeypatch):
    victim = 1
    killed: list[int] = []

    def kill(peer, msg, pids):
        """SIGKILL the victim at its first progress report."""
        if isinstance(msg, control.Progress) and peer == victim and not killed:
            os.kill(pids[victim], signal.SIGKILL)
            killed.append(pids[victim])

    monkeypatch.setattr(launch, "ControlServer", hooked_control_server(kill))
    steps = 1_000_000  # far more than can run: the kill is certainly mid-run
    result = _run(tmp_path, ["topology.n=3", f"steps={steps}"])
    assert killed, "the victim never reported progress"
    assert result.exit_code == 1
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["failed_peers"] == [victim] == sorted(result.failures)
    assert "-9" in summary["failures"][str(victim)]
    # The survivors were stopped and still reported.
    assert sorted(summary["peers"]) == ["0", "2"]
    for peer in summary["peers"].values():
        assert 0 <= peer["steps"] < steps
        assert peer["messages_received"] > 0  # they had been talking to the victim
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)


# --------------------------------------------------------------------------- async


def test_async_run_with_drop_and_delay(tmp_path):
    result = _run(tmp_path, ["topology.n=3", "comm.mode=\"async\"", "comm.delay_steps=2",
                             "comm.drop=0.2"])
    assert result.exit_code == 0 and result.summary["mode"] == "async"
    dropped = 0
    for pid, peer in result.summary["peers"].items():
        assert peer["steps"] == 200
        assert math.isfinite(peer["ne_max_abs"]) and peer["ne_max_abs"] < 0.5, pid
        hist = peer["staleness_hist"]
        assert hist and all(isinstance(v, int) and v > 0 for v in hist.values())
        gaps = {int(k): v for k, v in hist.items()}
        # The age of use is >= 0 (a sender ahead: age 0), the lead apart.
        mean = sum(max(k, 0) * v for k, v in gaps.items()) / sum(gaps.values())
        assert peer["staleness_mean"] == pytest.approx(mean) and peer["staleness_mean"] >= 0
        assert peer["staleness_max"] == max(max(gaps), 0)
        ahead = {k: v for k, v in gaps.items() if k < 0}
        assert peer["ahead_uses"] == sum(ahead.values())
        assert peer["ahead_mean"] == pytest.approx(
            sum(-k * v for k, v in ahead.items()) / max(sum(ahead.values()), 1))
        assert all(line["comm/staleness_mean"] >= 0 for line in _lines(result.run_dir, int(pid)))
        dropped += peer["messages_dropped"]
        lines = _lines(result.run_dir, int(pid))
        assert lines[-1]["step"] == 199 and math.isfinite(lines[-1]["eval/ne_max_abs"])
    assert dropped > 0


def test_a_peer_that_used_few_of_a_neighbours_messages_is_warned(tmp_path, capsys):
    """Async, nearly every message lost: each peer trained on a few percent of its
    neighbours' messages; the summary's warnings name them, as does the table that
    ``p2pgame run`` prints, and the results stand."""
    from p2pgame import cli

    out = tmp_path / "runs"
    code = cli.main(["run", str(SCENARIO), "--out", str(out), "--quiet", "--data",
                     str(tmp_path / "data"), "--set", "topology.n=3", "--set",
                     "comm.mode=\"async\"", "--set", "comm.drop=0.97"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    (run_dir,) = out.iterdir()
    result = p2pgame.load(run_dir)
    warnings = result.summary["warnings"]
    table = printed.splitlines()
    assert table[0].split()[-1] == "warning", printed
    assert all(table[1 + int(pid)].endswith("see below") for pid in warnings), printed
    for pid, text in warnings.items():
        assert f"warning: peer {pid} {text}" in table, printed
    assert set(warnings) == {"0", "1", "2"}, warnings
    for pid, text in warnings.items():
        assert "of the" in text and "it could have used" in text, text
        used = {e["src"]: e["used"] for e in result.summary["peers"][pid]["links_in"]}
        assert any(f"trained on {n} of peer {j}'s" in text for j, n in used.items()), text


# --------------------------------------------------------------------------- time-varying


def test_time_varying_topology_sync_run(tmp_path):
    """The shipped time-varying scenario, shrunk: ring -> star (step 50) -> complete (100)."""
    scenario = ROOT / "topologies" / "expfam-timevarying.toml"
    result = _run(tmp_path, [
        "topology.n=4", "steps=150",
        'topology.schedule=[{at = 50, graph = "star"}, {at = 100, graph = "complete"}]',
        "learner.n_data=200", "learner.batch=64", "comm.samples_per_message=32",
        "runtime.threads_per_peer=1", "runtime.stop_timeout_s=5.0",
    ], scenario=scenario)
    assert result.exit_code == 0, result.failures
    topo = json.loads((result.run_dir / "topology.json").read_text())
    assert [e["start_step"] for e in topo["epochs"]] == [0, 50, 100]
    assert [len(e["edges"]) for e in topo["epochs"]] == [8, 6, 12]
    for pid, peer in result.summary["peers"].items():
        assert peer["steps"] == 150
        # Everyone publishes to every peer it is ever linked to, every step.
        assert peer["messages_sent"] == 3 * 150 and peer["messages_received"] == 3 * 150
        # Sync: the active neighbours' current rounds are used, and only theirs:
        # 50 steps x 2 ring neighbours, 50 x (3 for the hub 0, else 1), 50 x 3.
        uses = 100 + (150 if pid == "0" else 50) + 150
        assert peer["staleness_hist"] == {"0": uses}, pid
        assert math.isfinite(peer["ne_max_abs"]) and len(peer["mu"]) == 2 * 8


# --------------------------------------------------------------------------- (f) the guard


def test_leftover_guard_sees_orphaned_processes(list_session_processes):
    """The conftest guard finds a process of ours even outside our process tree."""
    # A process that lives until we close its stdin (or kill it).
    # It says "up" once its interpreter runs: Popen returns as soon as exec starts, when
    # /proc/<pid>/environ can still be empty (the kernel sets it up later in exec).
    proc = subprocess.Popen([sys.executable, "-c", "import sys; print('up', flush=True); "
                             "sys.stdin.read()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout.readline() == b"up\n"
        assert proc.pid in list_session_processes()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert proc.pid not in list_session_processes()


# --------------------------------------------------------------------------- no lost results


def test_an_earlier_run_folder_is_never_reused(tmp_path):
    first = _run(tmp_path, ["topology.n=2", "steps=20"])
    assert first.exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in first.run_dir.rglob("*") if p.is_file()}
    proc = subprocess.run(
        [sys.executable, "-m", "p2pgame.cli", "run", str(SCENARIO), "--quiet",
         "--run-dir", str(first.run_dir), "--set", "topology.n=2", "--set", "steps=20"],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert "never reused" in proc.stderr and str(first.run_dir) in proc.stderr
    after = {p: p.stat().st_mtime_ns for p in first.run_dir.rglob("*") if p.is_file()}
    assert after == before  # nothing of the earlier run was touched


def test_an_output_path_that_cannot_be_written_is_refused_first(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = subprocess.run(
        [sys.executable, "-m", "p2pgame.cli", "run", str(SCENARIO), "--quiet",
         "--out", str(blocker / "runs")],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert "--out" in proc.stderr and "is a file, not a folder" in proc.stderr
    assert "Traceback" not in proc.stderr
