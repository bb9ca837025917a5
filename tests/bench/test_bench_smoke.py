"""The benchmark scripts at tiny size, as subprocesses; asserts on their last-line JSON.

No real MNIST: ``bench/overhead.py`` gets tiny IDX data written into ``tmp_path``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import write_tiny_mnist

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def run_script(name: str, *args: str, timeout: float = 120) -> dict:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / name), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert lines, proc.stderr[-3000:]
    assert len(lines) > 1, "a human-readable table comes before the JSON line"
    out = json.loads(lines[-1])
    # every bench's JSON says where it ran: the commit, the package versions, the CPU, the load
    env = out["env"]
    assert len(env["commit"]) == 40 and env["cpu"] and env["packages"]["pyzmq"]
    assert len(env["load_before"]) == 3 and len(env["load_after"]) == 3
    return out




@pytest.mark.timeout(120)
def test_bus_smoke():
    out = run_script("bus.py", "--smoke")
    cases = {f"{t}/{p}" for t in ("ipc", "tcp")
             for p in ("binary200", "binary200-bool", "float200", "params1.5M")}
    assert set(out["ratios"]) == cases
    for case in cases:
        assert out["ratios"][case] > 0
        assert out["msgs_per_s"][case]["raw"] > 0 and out["msgs_per_s"][case]["p2pgame"] > 0
        assert out["mb_per_s"][case]["p2pgame"] > 0
        assert out["dropped"][case] == 0


@pytest.mark.timeout(150)
def test_overhead_smoke(tmp_path):
    data = tmp_path / "data"
    write_tiny_mnist(data)
    out = run_script("overhead.py", "--smoke", "--data", str(data),
                     "--set", "learner.evaluator_epochs=1", timeout=140)
    assert out["ratio"] > 0 and math.isfinite(out["ratio"])
    assert out["peer_steps_per_s"] > 0 and out["bare_steps_per_s"] > 0
    assert set(out["time_split_s"]) == {"train", "sample", "encode", "send",
                                        "receive_decode", "wait"}
    assert out["time_split_s"]["train"] > 0
    assert out["threads_per_peer"] >= 1


@pytest.mark.timeout(120)
def test_scaling_smoke(tmp_path):
    out = run_script("scaling.py", "--smoke", "--out", str(tmp_path / "scaling"))
    rows = out["rows"]
    assert {(r["placement"], r["graph"], r["n"]) for r in rows} == {
        ("process", g, n) for g in ("ring", "complete") for n in (2, 4)} | {
        ("workers", g, 4) for g in ("ring", "complete")}
    for r in rows:
        assert r["algorithm"] == "expfam"
        assert r["wall_per_step_ms"] > 0 and r["bytes_sent_per_peer_step"] > 0
        assert r["peak_rss_mb_mean"] > 0
    by = {(r["placement"], r["graph"], r["n"]): r for r in rows}
    # complete n=4 has degree 3, ring n=4 degree 2: more bytes per peer per step
    assert by[("process", "complete", 4)]["bytes_sent_per_peer_step"] > by[
        ("process", "ring", 4)]["bytes_sent_per_peer_step"]
    # Placement changes where peers live, not what they send.
    for g in ("ring", "complete"):
        assert by[("workers", g, 4)]["bytes_sent_per_peer_step"] == by[("process", g, 4)][
            "bytes_sent_per_peer_step"]
    assert (tmp_path / "scaling" / "scaling.csv").is_file()
    assert (tmp_path / "scaling" / "scaling.png").is_file()


@pytest.mark.timeout(120)
def test_faults_smoke():
    cases = run_script("faults.py", "--smoke")["cases"]
    assert cases["spoof"]["survived"] and "spoofed" in cases["spoof"]["detail"]
    assert cases["intruder"]["survived"]


@pytest.mark.timeout(180)
def test_probe_smoke(tmp_path):
    """bench/probe.py's quick cases (the whole probe takes minutes): each did its fault and
    computed whether it held."""
    out = run_script("probe.py", "--cases", "oversized-frame,decoy-package,data-verify",
                     "--out", str(tmp_path), timeout=170)
    assert set(out["cases"]) == {"oversized-frame", "decoy-package", "data-verify"}
    for name, case in out["cases"].items():
        assert case["rows"] and case["held"], (name, case["rows"])
    assert out["held"] and out["not_held"] == []


@pytest.mark.timeout(120)
def test_clock_smoke(tmp_path):
    """bench/clock.py on the expfam case, a few steps, once on each clock: both runs'
    loop and wall times and their ratio."""
    out = run_script("clock.py", "--cases", "expfam-ring8-async", "--steps", "30",
                     "--repeats", "1", "--out", str(tmp_path / "clock"), timeout=110)
    case = out["cases"]["expfam-ring8-async"]
    for clock in ("real", "virtual"):
        assert case[clock]["loop_s"] > 0 and case[clock]["wall_s"] >= case[clock]["loop_s"]
    assert case["ratio_loop"] == case["virtual"]["loop_s"] / case["real"]["loop_s"]
    assert out["repeats"] == 1
    assert list((tmp_path / "clock" / "expfam-ring8-async").iterdir())  # the runs' folders


@pytest.mark.timeout(60)
def test_sink_cost_smoke():
    out = run_script("sink_cost.py", "--peers", "4", "--lines", "5", "--repeats", "1",
                     timeout=50)
    assert set(out["cpu_s"]) == {"jsonl", "tensorboard"}
    assert all(v >= 0 for v in out["cpu_s"].values()) and out["peers"] == 4


@pytest.mark.timeout(150)
def test_network_smoke(tmp_path):
    """bench/network.py at few steps: a capped link (bounded and unbounded buffer) and the
    slow hub, each row's accounts adding up."""
    out = run_script("network.py", "--steps", "200", "--out", str(tmp_path), timeout=140)
    assert len(out["capped"]) == len(out["capped_unbounded_buffer"]) == 2  # both ways
    for row in out["capped"] + out["capped_unbounded_buffer"]:
        assert row["identity"] and row["sent"] > 0, row
    assert len(out["slow_hub_star"]) == 6  # a star of 4: 3 edges, both ways
    for row in out["slow_hub_star"]:
        assert 0 < row["used"] <= row["delivered"] <= row["sent"], row
