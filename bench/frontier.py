"""Bandwidth against quality: the synthetic-data game against Diffusion GAN.

Five peers on a ring, two MNIST digits each (non-homogeneous), a fixed step
budget per method.  Each point varies one communication knob:

- game: samples per message, publish period, bit-packing off, drop rate, staleness;
- Diffusion GAN: float16 on the wire, drop rate, staleness (async), and the
  non-cooperative baseline (no exchange at all).

Every point is one real run (``p2pgame.launch.run``) in the output folder; the
script writes ``frontier.csv`` (one row per point: MB sent per peer, fid_all,
unseen-class coverage, tv_to_ne) and ``frontier.png`` (fid_all against MB sent
per peer, log x, each method's Pareto frontier), prints a table, and prints
one JSON object as its last line.

    .venv/bin/python bench/frontier.py                  # default: 9 points (<= 10 min)
    .venv/bin/python bench/frontier.py --preset wide    # all 13 points, longer (about 16 min)
    .venv/bin/python bench/frontier.py --preset full    # longer budgets (about an hour)
    .venv/bin/python bench/frontier.py --preset smoke --data DIR   # seconds, tiny data
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from p2pgame.sweep import Point, SweepSpec, run_sweep  # noqa: E402

CLASSES = {5: "[[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]", 3: "[[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]"}
SMOKE_POINTS = {"spm=250", "spm=10", "spm=250,every=5", "spm=250,no-pack", "float32", "float16",
                "non-cooperative"}
# The default preset runs a subset so that it stays within 10 minutes on 2 cores.
DEFAULT_POINTS = SMOKE_POINTS | {"spm=250,drop=0.3", "spm=250,delay=5"}
SUBSETS = {"smoke": SMOKE_POINTS, "default": DEFAULT_POINTS}


def common(n: int) -> list[str]:
    return [f"topology.n={n}", 'topology.graph="ring"', "runtime.threads_per_peer=1",
            f"data.partition={{ kind = \"classes\", classes = {CLASSES[n]} }}"]

PRESETS = {
    #          game steps, gan steps, eval samples, per-peer images
    # smoke: the three peers of a point in one worker process (one torch start-up, not
    # three; placement changes no byte count)
    "smoke": dict(n=3, game_steps=4, gan_steps=6, eval=100, per_peer=0, evaluator_epochs=1,
                  where=['runtime.placement="workers"', "runtime.workers=1"]),
    "default": dict(n=5, game_steps=100, gan_steps=200, eval=500, per_peer=2000,
                    evaluator_epochs=2),
    "wide": dict(n=5, game_steps=150, gan_steps=300, eval=1000, per_peer=2000,
                 evaluator_epochs=2),
    "full": dict(n=5, game_steps=1500, gan_steps=3000, eval=5000, per_peer=12000,
                 evaluator_epochs=2),
}


def game_points(p: dict) -> list[tuple[str, list[str]]]:
    base = [f"steps={p['game_steps']}", f"learner.eval_samples={p['eval']}",
            "learner.checkpoint=false", "topology.self_weight=0.5",
            f"learner.evaluator_epochs={p['evaluator_epochs']}"]
    if p["per_peer"]:
        base.append(f"data.per_peer={p['per_peer']}")
    pts = [
        ("spm=250", ["comm.samples_per_message=250"]),
        ("spm=50", ["comm.samples_per_message=50"]),
        ("spm=10", ["comm.samples_per_message=10"]),
        ("spm=250,every=5", ["comm.samples_per_message=250", "comm.publish_every=5"]),
        ("spm=50,every=10", ["comm.samples_per_message=50", "comm.publish_every=10"]),
        ("spm=250,no-pack", ["comm.samples_per_message=250", "comm.pack_bool=false"]),
        ("spm=250,drop=0.3", ["comm.samples_per_message=250", "comm.drop=0.3"]),
        ("spm=250,delay=5", ["comm.samples_per_message=250", "comm.delay_steps=5"]),
    ]
    return [(label, base + extra) for label, extra in pts]


def gan_points(p: dict) -> list[tuple[str, list[str]]]:
    base = [f"steps={p['gan_steps']}", f"learner.eval_samples={p['eval']}",
            "learner.checkpoint=false", 'topology.weights="metropolis"',
            f"learner.evaluator_epochs={p['evaluator_epochs']}", "exchange.snapshots=0"]
    if p["per_peer"]:
        base.append(f"data.per_peer={p['per_peer']}")
    pts = [
        ("float32", []),
        ("float16", ['exchange.wire_dtype="float16"']),
        ("float16,drop=0.3", ['exchange.wire_dtype="float16"', "comm.drop=0.3"]),
        ("async,delay=5", ['comm.mode="async"', "comm.delay_steps=5"]),
        # The whole [exchange] table replaced (its params keys, snapshots, go with it).
        ("non-cooperative", ['exchange={kind="none"}', 'comm.mode="async"']),
    ]
    return [(label, base + extra) for label, extra in pts]


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated in (bytes lower, fid lower), sorted by bytes."""
    front, best = [], math.inf
    for b, f in sorted(points):
        if f < best:
            front.append((b, f))
            best = f
    return front


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, method in enumerate(("game", "diffgan")):
        pts = [(r["mb_per_peer"], r["fid_all"], r["label"]) for r in rows
               if r["method"] == method and r["fid_all"] is not None and r["mb_per_peer"] > 0]
        if not pts:
            continue
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=f"C{k}", label=method)
        for x, y, label in pts:
            ax.annotate(label, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        front = pareto([(p[0], p[1]) for p in pts])
        ax.step([f[0] for f in front], [f[1] for f in front], where="post", color=f"C{k}",
                alpha=0.6, label=f"{method} Pareto frontier")
    for r in rows:
        if r["mb_per_peer"] == 0 and r["fid_all"] is not None:
            ax.axhline(r["fid_all"], color="grey", ls="--", lw=1, label=f"{r['method']} "
                       f"{r['label']} (no bytes)")
    ax.set_xscale("log")
    ax.set_xlabel("MB sent per peer")
    ax.set_ylabel("classifier-FID (all digits), mean over peers")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def ratio_at_equal_fid(rows: list[dict]) -> float | None:
    """MB the GAN needs over MB the game needs, at the best fid_all both methods reach.

    Takes the worse of the two methods' best FIDs as the common quality level, and the
    fewest bytes with which each method reaches it.
    """
    best = {}
    for m in ("game", "diffgan"):
        fids = [r["fid_all"] for r in rows if r["method"] == m and r["fid_all"] is not None
                and r["mb_per_peer"] > 0]
        if not fids:
            return None
        best[m] = min(fids)
    level = max(best.values())
    need = {}
    for m in best:
        need[m] = min(r["mb_per_peer"] for r in rows if r["method"] == m
                      and r["fid_all"] is not None and r["mb_per_peer"] > 0
                      and r["fid_all"] <= level)
    return need["diffgan"] / need["game"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default")
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    ap.add_argument("--only", choices=("game", "diffgan"), default=None)
    args = ap.parse_args(argv)
    preset = PRESETS[args.preset]
    points = []
    for method, scen, make in (("game", "mnist-ring5.toml", game_points),
                               ("diffgan", "diffgan-mnist-nonhomogeneous.toml", gan_points)):
        if args.only and args.only != method:
            continue
        for label, over in make(preset):
            if args.preset in SUBSETS and label not in SUBSETS[args.preset]:
                continue
            where = preset.get("where", [])
            pt = Point(f"{method}:{label}", ROOT / "topologies" / scen,
                       common(preset["n"]) + where + over)
            pt.values = {"method": method, "point": label}
            points.append(pt)
    metrics = ["fid_all", "unseen_mass", "tv_to_ne", "bytes_sent", "steps_per_s"]
    spec = SweepSpec(f"frontier-{args.preset}", Path(__file__), points, metrics, {})
    t0 = time.monotonic()
    sweep_dir = run_sweep(spec, Path(args.out), Path(args.data), progress=False,
                          log=lambda m: print(m, file=sys.stderr, flush=True))
    records = json.loads((sweep_dir / "sweep.json").read_text())["points"]
    rows = []
    for rec in records:
        peers = rec["peers"].values()
        masses = [p.get("class_mass") for p in peers if p.get("class_mass")]
        covered = [sum(1 for v in m if v >= 0.03) for m in masses]
        rows.append({
            "method": rec["values"]["method"], "label": rec["values"]["point"],
            "status": rec["status"],
            "mb_per_peer": (rec["row"]["bytes_sent"] or 0) / 1e6,
            "fid_all": rec["row"]["fid_all"], "unseen_mass": rec["row"]["unseen_mass"],
            "tv_to_ne": rec["row"]["tv_to_ne"],
            "classes_covered": sum(covered) / len(covered) if covered else None,
            "steps_per_s": rec["row"]["steps_per_s"], "error": rec.get("error", ""),
        })
    with (sweep_dir / "frontier.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(rows, sweep_dir / "frontier.png")
    ratio = ratio_at_equal_fid(rows)
    print(f"{'method':8} {'point':18} {'status':6} {'MB/peer':>9} {'fid_all':>8} "
          f"{'unseen':>7} {'tv_to_ne':>8} {'classes>=3%':>11}")
    for r in rows:
        def f(v, fmt):
            return format(v, fmt) if isinstance(v, (int, float)) else "-"
        print(f"{r['method']:8} {r['label']:18} {r['status']:6} {f(r['mb_per_peer'], '9.3f')} "
              f"{f(r['fid_all'], '8.2f')} {f(r['unseen_mass'], '7.3f')} "
              f"{f(r['tv_to_ne'], '8.3f')} {f(r['classes_covered'], '11.1f')}")
    print(f"bytes ratio (Diffusion GAN / game) at equal fid_all: "
          f"{'-' if ratio is None else f'{ratio:.1f}x'}; wall {time.monotonic() - t0:.0f} s; "
          f"results: {sweep_dir}")
    print(json.dumps({"preset": args.preset, "dir": str(sweep_dir),
                      "bytes_ratio_at_equal_fid": ratio, "points": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
