"""Bandwidth against quality, like for like: one learner under every exchange.

The learner is the demo's (``topologies/mnist-demo.toml``: vae-conv, refine 1, a
mixture prior of 10, batch 64, lr 0.002) everywhere; only ``[exchange]`` and ``[comm]``
change from point to point, so a difference between two points is the exchange's.

Settings:

- ``demo2``: the demo's two peers (digits 0-4 and 5-9, complete graph, self weight 0.5);
- ``ring8``: 8 peers on a ring, Metropolis weights, a Dirichlet(0.5) split of the
  training set (drawn from the seed: each seed its own split).

Methods (each a few points): ``none`` (local only), ``samples`` (the game: samples per
message, period, bit images instead of float16 means, the self weight), ``params``
(float32, float16, local steps), ``compress`` (int8, QSGD, and top-k / random-k / sign
through CHOCO-Gossip at two ratios), ``model`` (the generator every K steps, or once),
and ``centralized`` (one peer holding all the data: the reference line, the same in both
settings).

Every point is one real run per seed (``p2pgame.sweep.run_sweep``); the output folder
gets ``runs.csv`` (one row per run), ``frontier.csv`` (one row per point: seed means and
standard deviations), ``frontier-<setting>.png`` (fid_all and TSTR accuracy against MB
sent per peer, log x, each method's Pareto envelope, ``none`` and ``centralized`` as
lines), ``to-target.csv`` (per method and target, the fewest MB and steps a point needs
to reach it, from the runs' evaluations over time; targets: fid_all <= 1.5x, 2x and 3x
the centralized run's, and <= the fid_all ``none`` ends at), ``frontier.md`` (the tables
as Markdown, for README and RESULTS) and ``frontier.json``; the last line printed is
that JSON (with the commit, the package versions, the CPU model and the load).

    .venv/bin/python bench/frontier.py                     # default preset (~36 min, 2 cores)
    .venv/bin/python bench/frontier.py --preset full       # every point, 3 seeds (hours)
    .venv/bin/python bench/frontier.py --preset smoke --data DIR   # seconds, tiny data
    .venv/bin/python bench/frontier.py --points 'demo2:params:*' --seeds 0   # a subset
    .venv/bin/python bench/frontier.py --reuse DIR [DIR ...]   # skip runs done there

Quality reads: ``fid_all`` (classifier-FID of a peer's samples against the whole test
set, mean over peers) and ``tstr_accuracy`` (a classifier trained on its samples, tested
on real digits).  Under ``samples`` and ``model`` with self weight > 0 the game's
equilibrium is by design not uniform over the digits (in ``demo2``: 2/3 of a peer's mass
on its own digits), so fid_all there has a floor above the centralized one; ``params``
converges towards one consensus model, uniform in the limit.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import benchenv  # noqa: E402

from p2pgame.sweep import Point, SweepSpec, run_sweep  # noqa: E402

SCENARIO = ROOT / "topologies" / "mnist-demo.toml"
# the methods in the order of every table and plot; the cooperative ones from "samples"
METHODS = ("centralized", "none", "samples", "params", "compress", "model")
COOPERATIVE = METHODS[2:]


def peers_all(n: int, space: str = "px") -> str:
    ids = ", ".join(str(i) for i in range(n))
    return f'peers=[{{ids=[{ids}], publishes=["{space}"], learns=["{space}"]}}]'


def setting_overrides(setting: str, n: int) -> list[str]:
    if setting == "demo2":
        return []  # the demo file as it is
    return [f"topology.n={n}", 'topology.graph="ring"', 'topology.weights="metropolis"',
            'data.partition={kind="dirichlet", beta=0.5}', peers_all(n)]


CENTRALIZED = ["topology.n=1", "peers=[]", 'data.partition={kind="iid"}',
               'exchange={kind="none"}']


def method_points(n: int, steps: int) -> list[tuple[str, str, list[str]]]:
    """(method, label, overrides) of every point; the presets pick among them."""
    params = 'exchange={kind="params"'
    pts = [
        ("none", "none", ['exchange={kind="none"}']),
        ("samples", "spm=32", []),
        ("samples", "spm=8", ["comm.samples_per_message=8"]),
        ("samples", "spm=32,every=10", ["comm.publish_every=10"]),
        ("samples", "spm=32,bits", [peers_all(n, "x")]),
        # the self weight a_ii (alpha): how much of a step's batch is own data; the
        # equilibrium moves with it (1: alone; smaller: closer to uniform over the digits)
        ("samples", "self=0.8", ['topology.weights="self_weight"', "topology.self_weight=0.8"]),
        ("samples", "self=0.2", ['topology.weights="self_weight"', "topology.self_weight=0.2"]),
        ("params", "f32", [params + "}"]),
        ("params", "f16", [params + ', wire_dtype="float16"}']),
        ("params", "f16,H=10", [params + ', wire_dtype="float16"}', "comm.publish_every=10"]),
        ("params", "f16,H=100", [params + ', wire_dtype="float16"}',
                                 "comm.publish_every=100"]),
        ("compress", "int8", [params + ', compress="int8"}']),
        ("compress", "int8,H=10", [params + ', compress="int8"}', "comm.publish_every=10"]),
        ("compress", "qsgd,s=4", [params + ', compress="qsgd", levels=4}']),
        ("compress", "topk=10%", [params + ', compress="topk", ratio=0.1, gamma=0.1}']),
        ("compress", "topk=1%", [params + ', compress="topk", ratio=0.01, gamma=0.025}']),
        ("compress", "randk=10%", [params + ', compress="randk", ratio=0.1, gamma=0.05}']),
        ("compress", "sign", [params + ', compress="sign", gamma=0.05}']),
    ]
    # the model: every K steps from step ``first`` (before it, peers learn alone), or once
    model = 'exchange={kind="model", space="px"}'
    first = max(1, steps // 6)
    for every in sorted({max(1, steps // 6), max(1, steps // 30)}, reverse=True):
        pts.append(("model", f"every={every}", [model, f"comm.publish_every={every}",
                                                 f"comm.publish_from={first}"]))
    pts.append(("model", "once", [model, "comm.publish_every=0",
                                  f"comm.publish_from={steps // 2}"]))
    # the demo file's [[peers]] name the samples space px: other exchanges their own
    return [(m, label, over if m == "samples" else ["peers=[]", *over])
            for m, label, over in pts]


PRESETS = {
    # smoke: tiny data, a handful of steps, one point per method; the peers of a point in
    # one worker process (one torch start-up; placement changes no byte count).
    "smoke": dict(steps=6, eval=100, evaluator_epochs=1, seeds=(0,), ring_n=3,
                  settings=("demo2", "ring8"),
                  points=["*:none:none", "*:samples:spm=32", "*:samples:spm=8",
                          "*:params:f32", "*:params:f16", "*:compress:int8",
                          "*:compress:topk=10%", "*:model:every=1", "*:model:once",
                          "*:centralized:all"],
                  where=['runtime.placement="workers"', "runtime.workers=1"]),
    # default: one point a method, at the budget where each method's point beats `none`
    # in both settings (measured: ring8 at 500 steps, samples and model do not yet;
    # bench/RESULTS.md section 22).  Measured: 8 min for demo2, 28 for ring8 on 2 cores.
    "default": dict(steps={"demo2": 1500, "ring8": 1500}, eval=2000, evaluator_epochs=2,
                    seeds=(0,), ring_n=8, settings=("demo2", "ring8"),
                    points=["*:none:none", "*:samples:spm=32", "*:params:f16,H=10",
                            "*:compress:int8,H=10", "*:model:every=250",
                            "*:centralized:all"],
                    where=[]),
    # full: every point, three seeds, the default's budgets (129 runs: about 7.5 hours on 2
    # cores, estimated from the default's run times)
    "full": dict(steps={"demo2": 1500, "ring8": 1500}, eval=2000, evaluator_epochs=2,
                 seeds=(0, 1, 2), ring_n=8, settings=("demo2", "ring8"), points=["*"],
                 where=[]),
}


def steps_of(preset: dict, setting: str) -> int:
    """A setting's step budget: the preset's ``steps``, one number or one per setting;
    the centralized reference (setting ``*``) runs the largest."""
    steps = preset["steps"]
    if isinstance(steps, int):
        return steps
    return max(steps.values()) if setting == "*" else steps[setting]


def build_points(preset: dict, patterns: list[str], seeds: tuple[int, ...]) -> list[Point]:
    def common(steps: int) -> list[str]:
        return [f"steps={steps}", f"learner.eval_samples={preset['eval']}",
                f"learner.eval_samples_during={preset['eval']}",
                f"learner.eval_every={max(1, steps // 5)}", "learner.checkpoint=false",
                f"learner.evaluator_epochs={preset['evaluator_epochs']}",
                "runtime.threads_per_peer=1", *preset["where"]]

    out = []
    for seed in seeds:
        # the reference, once per seed (both settings' data are the whole training set)
        if any(fnmatch.fnmatchcase("*:centralized:all", p) for p in patterns):
            steps = steps_of(preset, "*")
            pt = Point(f"centralized:all:s{seed}", SCENARIO,
                       common(steps) + CENTRALIZED + [f"seed={seed}"])
            pt.values = {"setting": "*", "method": "centralized", "point": "all", "seed": seed,
                         "steps": steps}
            out.append(pt)
        for setting in preset["settings"]:
            n = 2 if setting == "demo2" else preset["ring_n"]
            steps = steps_of(preset, setting)
            for method, label, over in method_points(n, steps):
                key = f"{setting}:{method}:{label}"
                if not any(fnmatch.fnmatchcase(key, p) for p in patterns):
                    continue
                pt = Point(f"{key}:s{seed}", SCENARIO, common(steps)
                           + setting_overrides(setting, n) + over + [f"seed={seed}"])
                pt.values = {"setting": setting, "method": method, "point": label,
                             "seed": seed, "steps": steps}
                out.append(pt)
    return out


def mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else None


def read_curve(run_dir: str | None, peers: int) -> list[tuple[int, float, float]]:
    """(step, fid_all mean over peers, MB sent per peer) at each evaluation over time."""
    if not run_dir:
        return []
    per: dict[int, dict[int, tuple[float, float]]] = {}
    for i in range(peers):
        path = Path(run_dir) / "metrics" / f"peer-{i}.jsonl"
        if not path.is_file():
            return []
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if "eval/fid_all" in rec:
                per.setdefault(rec["step"], {})[i] = (rec["eval/fid_all"],
                                                      rec.get("comm/bytes_sent", 0) / 1e6)
    return [(s, mean([v[0] for v in d.values()]), mean([v[1] for v in d.values()]))
            for s, d in sorted(per.items()) if len(d) == peers]


def run_row(rec: dict) -> dict:
    peers = list(rec["peers"].values())
    v = rec["values"]
    steps = v["steps"]
    curve = read_curve(rec.get("run_dir"), len(peers))
    return {
        "setting": v["setting"], "method": v["method"], "point": v["point"],
        "seed": v["seed"], "steps": steps, "status": rec["status"],
        "mb_per_peer": mean([(p.get("bytes_sent") or 0) / 1e6 for p in peers]) or 0.0,
        "fid_all": mean([p.get("fid_all") for p in peers]),
        "tstr_accuracy": mean([p.get("tstr_accuracy") for p in peers]),
        "unseen_mass": mean([p.get("unseen_mass") for p in peers]),
        "steps_per_s": mean([p.get("steps_per_s") for p in peers]),
        "curve": json.dumps([[s, round(f, 3), round(m, 4)] for s, f, m in curve]),
        "run_dir": rec.get("run_dir", ""), "error": rec.get("error", ""),
    }


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per (setting, method, point): means and spreads over the seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["status"] == "ok":
            groups.setdefault((r["setting"], r["method"], r["point"]), []).append(r)
    out = []
    for (setting, method, point), rs in groups.items():
        def stat(key, rs=rs):
            xs = [r[key] for r in rs if r[key] is not None]
            return (mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0) if xs else (None, None)
        fid, fid_sd = stat("fid_all")
        acc, acc_sd = stat("tstr_accuracy")
        mb, _ = stat("mb_per_peer")
        out.append({"setting": setting, "method": method, "point": point, "seeds": len(rs),
                    "mb_per_peer": mb, "fid_all": fid, "fid_all_sd": fid_sd,
                    "tstr_accuracy": acc, "tstr_accuracy_sd": acc_sd,
                    "steps_per_s": stat("steps_per_s")[0]})
    return out


def pareto(points: list[tuple[float, float]], lower_is_better: bool = True
           ) -> list[tuple[float, float]]:
    """Points no other dominates (fewer bytes and better quality), sorted by bytes."""
    front, best = [], math.inf
    for b, q in sorted(points):
        score = q if lower_is_better else -q
        if score < best:
            front.append((b, q))
            best = score
    return front


def targets(rows: list[dict]) -> list[tuple[str, str, float]]:
    """The quality targets of the to-target table, (setting, name, fid_all): 1.5x, 2x and
    3x the centralized run's fid_all (every setting), and per setting the fid_all that
    ``none`` ends at (the bytes a method needs to beat not cooperating)."""
    central = mean([r["fid_all"] for r in rows
                    if r["method"] == "centralized" and r["status"] == "ok"])
    out = []
    for setting in sorted({r["setting"] for r in rows} - {"*"}):
        if central is not None:
            out += [(setting, f"{k}x centralized", k * central) for k in (1.5, 2, 3)]
        alone = mean([r["fid_all"] for r in rows if r["setting"] == setting
                      and r["method"] == "none" and r["status"] == "ok"])
        if alone is not None:
            out.append((setting, "none's end", alone))
    return out


def to_target(rows: list[dict], target: float, setting: str | None = None,
              name: str = "") -> list[dict]:
    """Per (setting, method): the fewest MB (and the steps) with which one of its points
    reaches fid_all <= target, on the mean over seeds of each evaluation over time."""
    per: dict[tuple, dict[tuple, list]] = {}
    for r in rows:
        if (r["status"] == "ok" and r["method"] in COOPERATIVE
                and setting in (None, r["setting"])):
            per.setdefault((r["setting"], r["method"]), {}).setdefault(
                r["point"], []).append(json.loads(r["curve"]) + [
                    [r["steps"], r["fid_all"], r["mb_per_peer"]]])
    out = []
    for (setting, method), points in sorted(
            per.items(), key=lambda kv: (kv[0][0], METHODS.index(kv[0][1]))):
        best = None
        for point, curves in points.items():
            # one curve per seed; their evaluations fall at the same steps
            for k in range(min(len(c) for c in curves)):
                step = curves[0][k][0]
                fid = mean([c[k][1] for c in curves])
                mb = mean([c[k][2] for c in curves])
                if fid is not None and fid <= target:
                    if best is None or mb < best[1]:
                        best = (point, mb, step, fid)
                    break
        out.append({"setting": setting, "target": name, "target_fid_all": target,
                    "method": method, "point": best[0] if best else "not reached",
                    "mb_per_peer": best[1] if best else None,
                    "steps": best[2] if best else None, "fid_all": best[3] if best else None})
    return out


def plot(agg: list[dict], setting: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    rows = [r for r in agg if r["setting"] in (setting, "*")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    methods = [m for m in COOPERATIVE
               if any(r["method"] == m for r in rows)]
    for ax, key, better_low, label in ((axes[0], "fid_all", True, "fid_all (lower is better)"),
                                       (axes[1], "tstr_accuracy", False,
                                        "TSTR accuracy (higher is better)")):
        for k, m in enumerate(methods):
            pts = [r for r in rows if r["method"] == m and r[key] is not None
                   and r["mb_per_peer"] > 0]
            if not pts:
                continue
            ax.errorbar([r["mb_per_peer"] for r in pts], [r[key] for r in pts],
                        yerr=[r[f"{key}_sd"] or 0 for r in pts], fmt="o", color=f"C{k}",
                        label=m, capsize=2)
            for r in pts:
                ax.annotate(r["point"], (r["mb_per_peer"], r[key]), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
            front = pareto([(r["mb_per_peer"], r[key]) for r in pts], better_low)
            ax.step([f[0] for f in front], [f[1] for f in front], where="post",
                    color=f"C{k}", alpha=0.5)
        for m, style in (("none", "--"), ("centralized", ":")):
            for r in rows:
                if r["method"] == m and r[key] is not None:
                    ax.axhline(r[key], color="k", ls=style, lw=1, label=f"{m} (no bytes)"
                               if m == "none" else "centralized (all data, one peer)")
        ax.set_xscale("log")
        # ticks at 1, 2, 5 x 10^k, written as plain numbers (a narrow log range otherwise
        # labels its minor ticks in overlapping 10^k notation)
        ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("MB sent per peer (log)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(f"{setting}: vae-conv under every exchange (mean over seeds, bars: sd)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(v, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else "-"


def markdown(agg: list[dict], reach: list[dict], central: float | None, steps: int | dict,
             settings: tuple[str, ...], command: str) -> str:
    """The tables README and RESULTS quote, as Markdown: per setting, every point (seed
    means, sd) sorted by method and bytes, then the MB each method needs to reach the
    target.  Written as ``frontier.md`` so that no number is copied by hand."""
    budget = (f"{steps} steps per run" if isinstance(steps, int) else "steps per run: "
              + ", ".join(f"{k} {v}" for k, v in steps.items())
              + f" (centralized: {max(steps.values())})")
    lines = [f"Command: `{command}`", "",
             f"{budget}; centralized fid_all {_fmt(central, '.1f')} (the "
             "targets: 1.5x, 2x and 3x that, and the fid_all `none` ends at).", ""]
    central = [r for r in agg if r["method"] == "centralized"]
    for setting in settings:
        rows = sorted([r for r in agg if r["setting"] == setting] + central,
                      key=lambda r: (METHODS.index(r["method"]), r["mb_per_peer"] or 0))
        if not any(r["setting"] == setting for r in rows):
            continue
        lines += [f"**{setting}**", "",
                  "| method | point | seeds | MB sent per peer | fid_all | sd | "
                  "TSTR accuracy | sd |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['method']} | {r['point']} | {r['seeds']} | "
                         f"{_fmt(r['mb_per_peer'], '.2f')} | {_fmt(r['fid_all'], '.1f')} | "
                         f"{_fmt(r['fid_all_sd'], '.1f')} | "
                         f"{_fmt(r['tstr_accuracy'], '.3f')} | "
                         f"{_fmt(r['tstr_accuracy_sd'], '.3f')} |")
        got = [r for r in reach if r["setting"] == setting]
        if got:
            lines += ["", f"MB sent per peer to reach a target ({setting}; the fewest over "
                      "a method's points, on the mean over seeds at each evaluation, every "
                      "steps/5; `-`: not reached):", "",
                      "| target | fid_all | " + " | ".join(
                          dict.fromkeys(r["method"] for r in got)) + " |",
                      "|---|---:|" + "---:|" * len(dict.fromkeys(r["method"] for r in got))]
            for name in dict.fromkeys(r["target"] for r in got):
                row = [r for r in got if r["target"] == name]
                cells = [f"{_fmt(r['mb_per_peer'], '.2f')} ({r['point']}, step {r['steps']})"
                         if r["mb_per_peer"] is not None else "-" for r in row]
                lines.append(f"| {name} | {_fmt(row[0]['target_fid_all'], '.1f')} | "
                             + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def reuse_rows(folders: list[str] | None) -> dict[tuple, dict]:
    rows = []
    for folder in folders or []:
        path = Path(folder) / "runs.csv"
        if not path.is_file():
            raise SystemExit(f"--reuse {folder}: no runs.csv there")
        with path.open() as f:
            rows += list(csv.DictReader(f))
    done = {}
    for r in rows:
        if r["status"] != "ok":
            continue
        for k in ("mb_per_peer", "fid_all", "tstr_accuracy", "unseen_mass", "steps_per_s"):
            r[k] = float(r[k]) if r[k] not in ("", "None") else None
        r["seed"], r["steps"] = int(r["seed"]), int(r["steps"])
        done[(r["setting"], r["method"], r["point"], r["seed"], r["steps"])] = r
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default")
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    ap.add_argument("--points", nargs="*", default=None,
                    help="setting:method:point patterns (fnmatch), e.g. 'ring8:params:*'")
    ap.add_argument("--seeds", nargs="*", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="override the preset's steps")
    ap.add_argument("--reuse", nargs="*", default=None, help="earlier frontier folders: "
                    "their runs of the same point, seed and steps are not run again")
    args = ap.parse_args(argv)
    preset = dict(PRESETS[args.preset])
    if args.steps:
        preset["steps"] = args.steps
    # (the reference run is named "*:centralized:all"; "*" matches it too)
    patterns = args.points if args.points is not None else preset["points"]
    seeds = tuple(args.seeds) if args.seeds is not None else preset["seeds"]
    env = benchenv.environment()
    t0 = time.monotonic()
    points = build_points(preset, patterns, seeds)
    done = reuse_rows(args.reuse)

    def key(pt: Point) -> tuple:
        v = pt.values
        return (v["setting"], v["method"], v["point"], v["seed"], v["steps"])

    todo = [pt for pt in points if key(pt) not in done]
    spec = SweepSpec(f"frontier-{args.preset}", Path(__file__), todo,
                     ["fid_all", "tstr_accuracy", "bytes_sent", "steps_per_s"], {})
    sweep_dir = run_sweep(spec, Path(args.out), Path(args.data), progress=False,
                          log=lambda m: print(m, file=sys.stderr, flush=True))
    records = json.loads((sweep_dir / "sweep.json").read_text())["points"] if todo else []
    rows = [run_row(rec) for rec in records]
    rows += [done[key(pt)] for pt in points if key(pt) in done]
    fields = list(run_row({"values": {"setting": "", "method": "", "point": "", "seed": 0,
                                      "steps": 0}, "peers": {}, "status": ""}))
    with (sweep_dir / "runs.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    agg = aggregate(rows)
    with (sweep_dir / "frontier.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(agg[0]) if agg else ["setting"])
        w.writeheader()
        w.writerows(agg)
    central = mean([r["fid_all"] for r in rows
                    if r["method"] == "centralized" and r["status"] == "ok"])
    target = None if central is None else 1.5 * central
    reach = [r for setting, name, fid in targets(rows)
             for r in to_target(rows, fid, setting, name)]
    with (sweep_dir / "to-target.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["setting", "target", "target_fid_all", "method",
                                          "point", "mb_per_peer", "steps", "fid_all"])
        w.writeheader()
        w.writerows(reach)
    for setting in preset["settings"]:
        if any(r["setting"] == setting for r in agg):  # (a subset may leave one out)
            plot(agg, setting, sweep_dir / f"frontier-{setting}.png")

    command = " ".join(["bench/frontier.py", *(sys.argv[1:] if argv is None else argv)])
    (sweep_dir / "frontier.md").write_text(markdown(agg, reach, central, preset["steps"],
                                                    preset["settings"], command))
    f = _fmt
    print(f"{'setting':8} {'method':11} {'point':16} {'seeds':>5} {'MB/peer':>10} "
          f"{'fid_all':>8} {'sd':>6} {'tstr':>6} {'sd':>6}")
    for r in sorted(agg, key=lambda r: (r["setting"], r["method"], r["mb_per_peer"] or 0)):
        print(f"{r['setting']:8} {r['method']:11} {r['point']:16} {r['seeds']:5d} "
              f"{f(r['mb_per_peer'], '10.2f')} {f(r['fid_all'], '8.2f')} "
              f"{f(r['fid_all_sd'], '6.2f')} {f(r['tstr_accuracy'], '6.3f')} "
              f"{f(r['tstr_accuracy_sd'], '6.3f')}")
    if reach:
        print("\nMB sent per peer to reach a target fid_all:")
        for r in reach:
            print(f"{r['setting']:8} {r['target']:17} {f(r['target_fid_all'], '6.1f')} "
                  f"{r['method']:11} {r['point']:16} "
                  f"{f(r['mb_per_peer'], '10.2f')} MB  step {f(r['steps'], 'd')}")
    failed = [r for r in rows if r["status"] != "ok"]
    for r in failed:
        print(f"FAILED {r['setting']}:{r['method']}:{r['point']} seed {r['seed']}: "
              f"{r['error']}", file=sys.stderr)
    env = benchenv.finished(env)
    wall = time.monotonic() - t0
    print(f"wall {wall:.0f} s; results: {sweep_dir}")
    result = {"preset": args.preset, "dir": str(sweep_dir), "steps": preset["steps"],
              "seeds": list(seeds), "wall_s": round(wall, 1), "env": env,
              "target_fid_all": target, "points": agg, "to_target": reach,
              "runs": [{k: v for k, v in r.items() if k != "curve"} for r in rows]}
    (sweep_dir / "frontier.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
