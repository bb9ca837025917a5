"""Wall time of the virtual clock against the real clock, on the same async scenarios.

Each case runs on both clocks, alternating (real, virtual, real, ...), ``--repeats``
times; what is compared is the peers' measured phase (the train loops: a peer's steps
over its steps per second, the mean over peers), which is what the clock changes (the
start-up and the final evaluation are the same on both).  The ratio virtual / real of
the medians is the clock's cost: promises to wait for, a peer held back to its
neighbours' virtual times.  Prints a table and a JSON line.

    .venv/bin/python bench/clock.py [--repeats 3] [--out bench/out/clock] [--cases NAME ...]
        [--steps N]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from benchenv import environment, finished

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    # 8 expfam peers, async, losses and a 5-step delay (the shipped scenario, shortened).
    "expfam-ring8-async": ("topologies/expfam-ring8-async.toml", ["steps=1000"]),
    # The 2-peer MNIST game (HVAE-MLP), async, its evaluation cut down.
    "mnist-2peers-async": ("topologies/mnist-2peers.toml",
                           ["steps=150", 'comm.mode="async"', "learner.eval_samples=500",
                            "learner.tstr=false"]),
}


def _run(scenario: str, overrides: list[str], clock: str, out: Path, data: str) -> dict:
    import p2pgame

    result = p2pgame.run(ROOT / scenario, [*overrides, f'runtime.clock="{clock}"'],
                         out=out, data=data)
    if not result.ok:
        raise SystemExit(f"{scenario} on the {clock} clock failed: {result.failures}")
    loops = [p["steps"] / p["steps_per_s"] for p in result.peers.values() if p["steps_per_s"]]
    return {"loop_s": statistics.mean(loops), "wall_s": result.summary["wall_s"]}


def main() -> None:
    env = environment()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench/out/clock")
    ap.add_argument("--data", default="data")
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--steps", type=int, default=0,
                    help="every case's steps (default: each case's own; a smoke test's few)")
    args = ap.parse_args()
    out = Path(args.out)
    rows = {}
    for name in args.cases:
        scenario, overrides = CASES[name]
        if args.steps:
            overrides = [*overrides, f"steps={args.steps}"]
        got: dict[str, list[dict]] = {"real": [], "virtual": []}
        for _ in range(args.repeats):
            for clock in ("real", "virtual"):
                got[clock].append(_run(scenario, overrides, clock, out / name / clock,
                                       args.data))
        med = {c: {k: statistics.median(r[k] for r in v) for k in ("loop_s", "wall_s")}
               for c, v in got.items()}
        rows[name] = {**med, "ratio_loop": med["virtual"]["loop_s"] / med["real"]["loop_s"],
                      "ratio_wall": med["virtual"]["wall_s"] / med["real"]["wall_s"],
                      "runs": got}
    print(f"median of {args.repeats}, clocks alternating; loop: the peers' train loops "
          "(mean over peers); wall: the whole run")
    print("| case | real loop s | virtual loop s | ratio | real wall s | virtual wall s "
          "| ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['real']['loop_s']:.2f} | {r['virtual']['loop_s']:.2f} | "
              f"**{r['ratio_loop']:.2f}** | {r['real']['wall_s']:.1f} | "
              f"{r['virtual']['wall_s']:.1f} | {r['ratio_wall']:.2f} |")
    print(json.dumps({"bench": "clock", "repeats": args.repeats,
                      "cases": {k: {kk: v[kk] for kk in ("real", "virtual", "ratio_loop",
                                                          "ratio_wall")}
                                for k, v in rows.items()},
                      "env": finished(env)}))


if __name__ == "__main__":
    main()
