"""The emulated network against what its settings allow (issue 10): real peer processes.

Three measurements on exp-family peers (fast steps, so the links are the bottleneck):

* **A capped async link.** Two peers flood each other over links capped at
  ``--rate`` bytes/s with a buffer of ``--buffer`` bytes.  Reported per edge: the mean
  time a delivered message spent on the link against the bound the buffer allows
  (``(buffer + one message) / rate``); the mean staleness in steps against that bound
  times the receiver's step rate; bytes delivered over the link's active time
  against the cap; and the accounting identity.  The same run with the buffer made
  effectively infinite is the baseline (what the link did before buffers existed):
  its messages age instead.
* **An async star with a slow hub** (a 5 ms pause after each of its steps,
  ``step_delay_ms``, which keeps its pace whatever the load; ``speed = 0.1`` would
  scale its compute time, which four processes on two cores inflate): per edge, the
  messages the receiver used against the sender's rate over the receiver's life.

Usage: ``.venv/bin/python bench/network.py [--steps 6000] [--out DIR]``; the last stdout
line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import benchenv

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from p2pgame import launch  # noqa: E402

SCENARIO = ROOT / "tests" / "scenarios" / "expfam-ring4.toml"


def run(out: Path, overrides: list[str]) -> dict:
    res = launch.run(SCENARIO, overrides, out=out, data_root=out / "data", progress=False)
    if res.exit_code != 0:
        raise SystemExit(f"run failed: {res.failures}")
    return res.summary


def capped(out: Path, steps: int, rate: float, buffer: float) -> list[dict]:
    s = run(out, ["topology.n=2", 'topology.graph="complete"', 'comm.mode="async"',
                  f"comm.bandwidth={rate}", f"comm.buffer_bytes={buffer}", f"steps={steps}"])
    rows = []
    for r in s["links"]:
        recv = s["peers"][str(r["dst"])]
        size = r["sent_bytes"] / r["sent"]
        bound_s = (buffer + size) / rate
        rows.append({
            "edge": f"{r['src']}->{r['dst']}", "buffer_bytes": buffer,
            "delay_mean_s": round(r["delay_mean_s"], 4), "delay_bound_s": round(bound_s, 4),
            "staleness_mean": round(recv["staleness_mean"], 1),
            "staleness_bound": round(bound_s * recv["steps_per_s"], 1),
            "delivered_over_cap": round((r["delivered_bytes"] - size) / (rate * r["active_s"]), 4),
            "sent": r["sent"], "delivered": r["delivered"], "dropped_buffer": r["dropped_buffer"],
            "in_flight": r["in_flight"],
            "identity": r["sent"] == (r["delivered"] + r["dropped_loss"] + r["dropped_buffer"]
                                      + r["rejected"] + r["in_flight"]),
        })
    return rows


def star(out: Path, steps: int) -> list[dict]:
    s = run(out, ["topology.n=4", 'topology.graph="star"', 'comm.mode="async"',
                  f"steps={steps}", "peers=[{ids = [0], runtime = {step_delay_ms = 5.0}}]"])
    rows = []
    for r in s["links"]:
        src, dst = s["peers"][str(r["src"])], s["peers"][str(r["dst"])]
        life = dst["steps"] / dst["steps_per_s"]
        rows.append({"edge": f"{r['src']}->{r['dst']}", "sender_steps_per_s":
                     round(src["steps_per_s"], 1), "receiver_life_s": round(life, 3),
                     "sent": r["sent"], "delivered": r["delivered"], "used": r["used"],
                     "sender_rate_x_life": round(min(src["steps_per_s"] * life, r["sent"]), 1)})
    return rows


def main() -> None:
    env = benchenv.environment()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--rate", type=float, default=20_000.0)
    ap.add_argument("--buffer", type=float, default=2000.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="p2pg-network-"))
    result = {
        "capped": capped(out, args.steps, args.rate, args.buffer),
        "capped_unbounded_buffer": capped(out, args.steps, args.rate, 1e12),
        "slow_hub_star": star(out, max(200, args.steps // 2)),
    }
    for name, rows in result.items():
        print(name)
        for row in rows:
            print("  " + "  ".join(f"{k}={v}" for k, v in row.items()))
    result["env"] = benchenv.finished(env)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
