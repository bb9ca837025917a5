"""The link traces shipped in this folder, made here (synthetic: no measured network).

Each file is a Mahimahi bandwidth trace (one line per delivery opportunity of 1500 bytes,
its time in milliseconds; the trace repeats after its last line), for ``comm.trace``:

- ``const-12mbps.txt``: one opportunity every millisecond for 1 s: 12 Mbit/s exactly;
- ``const-1mbps.txt``: one opportunity every 12 ms for 1.2 s: 1 Mbit/s;
- ``varying-2mbps.txt``: 10 s of a rate that wanders (a seeded random walk between
  0.25 and 4 Mbit/s, redrawn every 100 ms; mean about 2 Mbit/s), with two outages of
  300 ms: a stand-in for a mobile link's trace, shape only;
- ``compute-slow-device.txt`` (for ``compute_trace``, not ``comm.trace``): 1000 step
  times in seconds, log-normal around 0.1 s (ten times the default compute_s) with a
  stall of 1 s every few hundred steps: a slow, busy device, shape only.

    .venv/bin/python topologies/traces/generate.py   # rewrites the files
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BITS_PER_OPPORTUNITY = 1500 * 8


def constant(mbps: float, seconds: float) -> list[int]:
    """Opportunities evenly spaced for ``mbps`` over ``seconds`` (integer ms)."""
    n = round(mbps * 1e6 * seconds / BITS_PER_OPPORTUNITY)
    return [round((k + 1) * seconds * 1000 / n) for k in range(n)]


def varying(seed: int = 0, seconds: float = 10.0, slot_ms: int = 100) -> list[int]:
    rng = np.random.default_rng(seed)
    out: list[int] = []
    log_rate = np.log(2.0)
    outages = {30, 31, 32, 71, 72, 73}  # slots with no opportunity at all
    carry = 0.0
    for slot in range(int(seconds * 1000 / slot_ms)):
        log_rate = float(np.clip(log_rate + rng.normal(0, 0.35), np.log(0.25), np.log(4.0)))
        if slot in outages:
            continue
        per_ms = np.exp(log_rate) * 1e6 / BITS_PER_OPPORTUNITY / 1000  # opportunities/ms
        for ms in range(slot * slot_ms + 1, (slot + 1) * slot_ms + 1):
            carry += per_ms
            while carry >= 1.0:
                out.append(ms)
                carry -= 1.0
    if out[-1] != int(seconds * 1000):  # the period: the trace's full length
        out.append(int(seconds * 1000))
    return out


def slow_device(seed: int = 1, steps: int = 1000) -> list[str]:
    rng = np.random.default_rng(seed)
    times = 0.1 * np.exp(0.3 * rng.normal(size=steps))
    times[rng.random(steps) < 0.004] = 1.0
    return [f"{t:.4f}" for t in times]


TRACES = {
    "const-12mbps.txt": lambda: constant(12.0, 1.0),
    "const-1mbps.txt": lambda: constant(1.0, 1.2),
    "varying-2mbps.txt": varying,
    "compute-slow-device.txt": slow_device,
}


def text(name: str) -> str:
    return "".join(f"{t}\n" for t in TRACES[name]())


if __name__ == "__main__":
    for name in TRACES:
        (HERE / name).write_text(text(name))
        print(f"wrote {HERE / name}")
