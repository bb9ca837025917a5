"""Scaling with the number of peers, the degree and the placement: wall time, memory, bytes.

* ``expfam`` (``topologies/expfam-ring8.toml``) with N in ``--ns`` on a ring and on
  the complete graph, ``--steps`` steps each, one process per peer; and with N in
  ``--worker-ns`` hosted in worker processes (``runtime.placement = "workers"``, one
  worker per core; the complete graph only up to N = 32);
* ``game`` (``hvae-mlp``, ``topologies/mnist-ring5.toml`` with ``k_classes`` k=2
  partitions) with N in ``--game-ns`` (processes) and ``--game-worker-ns`` (workers) on
  a ring, ``--game-steps`` steps, small evaluation, no checkpoint.

A run is skipped when the time budget would be spent (estimated from the previous run
of its kind, scaled by N), and game runs when there is no data.

Per run: wall time per step of the measured phase (``summary.wall_s / steps``),
wall time of the whole ``launch.run`` call (start-up and evaluation included),
mean peer steps/s, bytes sent and received per peer per step (the runtime's own
counters: each published message counts once per subscriber), and the peak RSS
per peer: a monitor thread polls ``/proc/<pid>/status`` (VmHWM) of this process's
spawned children (the launcher runs in-process) every 0.1 s; each process's peak
is shared by the peers it hosted (``summary.json["processes"]``), so a worker's
peak counts once, divided among its peers.

Writes ``scaling.csv`` and ``scaling.png`` into ``--out`` (default
``bench/out/scaling``). Usage: ``.venv/bin/python bench/scaling.py [--smoke]``.
The last stdout line is a JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import benchenv

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FIELDS = ("algorithm", "placement", "graph", "n", "degree", "steps", "wall_per_step_ms", "run_wall_s",
          "steps_per_s", "bytes_sent_per_peer_step", "bytes_recv_per_peer_step",
          "peak_rss_mb_mean", "peak_rss_mb_max", "loadavg")


class RssMonitor:
    """Peak VmHWM (kB) of every spawned child of this process, polled in a thread."""

    def __init__(self, every_s: float = 0.1) -> None:
        self.every_s = every_s
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RssMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def children(ppid: int) -> list[int]:
        """The peer (or worker) processes under ``ppid``: the children of its fork server
        (p2pgame.launch.backends), and any spawned child of its own (Ray aside)."""
        parent: dict[int, int] = {}
        cmds: dict[int, bytes] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    cmds[int(name)] = f.read()
                parent[int(name)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
        servers = {p for p, c in cmds.items()
                   if parent.get(p) == ppid and b"multiprocessing.forkserver" in c}
        return [p for p, c in cmds.items() if b"resource_tracker" not in c and (
            parent.get(p) in servers or (parent.get(p) == ppid and b"spawn_main" in c))]

    def _loop(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            for pid in self.children(me):
                try:
                    with open(f"/proc/{pid}/status") as f:
                        for line in f:
                            if line.startswith("VmHWM:"):
                                kb = int(line.split()[1])
                                self.peak[pid] = max(self.peak.get(pid, 0), kb)
                                break
                except (OSError, ValueError):
                    pass
            self._stop.wait(self.every_s)


def degree(graph: str, n: int) -> int:
    if graph == "complete":
        return n - 1
    return 1 if n == 2 else 2


def one_run(algorithm: str, graph: str, n: int, steps: int, out: Path, data: str,
            placement: str = "process") -> dict:
    from p2pgame.launch import run

    where = [f'runtime.placement="{placement}"']
    if algorithm == "expfam":
        scenario = ROOT / "topologies" / "expfam-ring8.toml"
        overrides = [f"topology.n={n}", f'topology.graph="{graph}"', f"steps={steps}",
                     *where]
        if placement == "process":
            overrides.append("runtime.threads_per_peer=1")
    else:
        scenario = ROOT / "topologies" / "mnist-ring5.toml"
        overrides = [f"topology.n={n}", f'topology.graph="{graph}"', f"steps={steps}",
                     'data.partition={kind="k_classes", k=2}', "learner.eval_samples=100",
                     "learner.checkpoint=false", 'runtime.device="cpu"', *where]
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    with RssMonitor() as mon:
        res = run(scenario, overrides, out=out, data_root=data, progress=False)
    run_wall = time.monotonic() - t0
    if res.exit_code != 0:
        raise RuntimeError(f"{algorithm} {placement} {graph} n={n} failed: {res.failures}")
    s = res.summary
    peers = s["peers"]
    rss = []  # per peer: its process's peak, shared by the peers it hosted
    for proc in s["processes"]:
        kb = mon.peak.get(int(proc["pid"]), 0) or 1024 * proc["peak_rss_mb"]
        rss += [kb / 1024 / len(proc["peers"])] * len(proc["peers"])
    rss = rss or [0.0]
    steps_done = statistics.mean(p["steps"] for p in peers.values())
    return {
        "algorithm": algorithm, "placement": placement, "graph": graph, "n": n,
        "degree": degree(graph, n), "steps": steps,
        "wall_per_step_ms": round(1000 * s["wall_s"] / steps, 3),
        "run_wall_s": round(run_wall, 2),
        "steps_per_s": round(statistics.mean(p["steps_per_s"] for p in peers.values()), 2),
        "bytes_sent_per_peer_step": round(
            statistics.mean(p["bytes_sent"] for p in peers.values()) / steps_done, 1),
        "bytes_recv_per_peer_step": round(
            statistics.mean(p["bytes_received"] for p in peers.values()) / steps_done, 1),
        "peak_rss_mb_mean": round(statistics.mean(rss), 1),
        "peak_rss_mb_max": round(max(rss), 1),
        "loadavg": round(load, 2),
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {}
    for r in rows:
        series.setdefault(f"{r['algorithm']}/{r['graph']}/{r['placement']}", []).append(r)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for (label, rs) in series.items():
        ns = [r["n"] for r in rs]
        axes[0].plot(ns, [r["wall_per_step_ms"] for r in rs], "o-", label=label)
        axes[1].plot(ns, [r["peak_rss_mb_mean"] for r in rs], "o-", label=label)
        axes[2].plot(ns, [r["bytes_sent_per_peer_step"] for r in rs], "o-", label=label)
    titles = ("wall time per step (ms)", "peak RSS per peer (MB, mean)",
              "bytes sent per peer per step")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("peers N")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    axes[0].set_yscale("log")
    axes[2].set_yscale("log")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def growth_sentence(rows: list[dict]) -> str:
    def pick(alg, graph, placement="process"):
        return sorted((r for r in rows if r["algorithm"] == alg and r["graph"] == graph
                       and r["placement"] == placement), key=lambda r: r["n"])

    parts = []
    ring, comp = pick("expfam", "ring"), pick("expfam", "complete")
    if len(ring) >= 2:
        a, b = ring[0], ring[-1]
        parts.append(
            f"expfam ring N {a['n']}->{b['n']} (degree {a['degree']}->{b['degree']}): "
            f"wall/step x{b['wall_per_step_ms'] / a['wall_per_step_ms']:.1f}, bytes/peer/step "
            f"x{b['bytes_sent_per_peer_step'] / a['bytes_sent_per_peer_step']:.2f}, "
            f"peak RSS/peer x{b['peak_rss_mb_mean'] / a['peak_rss_mb_mean']:.2f}")
    if len(comp) >= 2:
        a, b = comp[0], comp[-1]
        parts.append(
            f"complete N {a['n']}->{b['n']} (degree {a['degree']}->{b['degree']}): "
            f"wall/step x{b['wall_per_step_ms'] / a['wall_per_step_ms']:.1f}, bytes/peer/step "
            f"x{b['bytes_sent_per_peer_step'] / a['bytes_sent_per_peer_step']:.1f} "
            f"(bytes per peer per step per neighbour: "
            f"{a['bytes_sent_per_peer_step'] / a['degree']:.0f} -> "
            f"{b['bytes_sent_per_peer_step'] / b['degree']:.0f})")
    game = pick("game", "ring")
    if len(game) >= 2:
        a, b = game[0], game[-1]
        parts.append(
            f"hvae game ring N {a['n']}->{b['n']}: wall/step "
            f"x{b['wall_per_step_ms'] / a['wall_per_step_ms']:.1f}, bytes/peer/step "
            f"x{b['bytes_sent_per_peer_step'] / a['bytes_sent_per_peer_step']:.2f}")
    for alg in ("expfam", "game"):
        hosted = pick(alg, "ring", "workers")
        if hosted:
            b = hosted[-1]
            parts.append(
                f"{alg} ring in workers up to N {b['n']}: {b['wall_per_step_ms']:.1f} ms/step, "
                f"{b['peak_rss_mb_max']:.0f} MB per peer at most")
            same = [r for r in pick(alg, "ring") if r["n"] in {h["n"] for h in hosted}]
            for a in same:
                h = next(h for h in hosted if h["n"] == a["n"])
                parts.append(
                    f"{alg} N {a['n']} workers/processes: wall/step "
                    f"x{h['wall_per_step_ms'] / a['wall_per_step_ms']:.2f}, RSS/peer "
                    f"x{h['peak_rss_mb_mean'] / a['peak_rss_mb_mean']:.2f}")
    import numpy as np

    head = []
    ex = [r for r in rows if r["algorithm"] == "expfam"]
    if ex:
        per_nb = [r["bytes_sent_per_peer_step"] / r["degree"] for r in ex]
        flat = max(per_nb) <= 1.05 * min(per_nb)
        head.append(
            f"bytes per peer per step = degree x {statistics.mean(per_nb):.0f} B "
            f"({'constant in N: they follow the degree, not N' if flat else 'NOT constant'})")
    for label, rs in (("ring", ring), ("complete", comp)):
        if len(rs) >= 3:
            slope = np.polyfit(np.log([r["n"] for r in rs]),
                               np.log([r["wall_per_step_ms"] for r in rs]), 1)[0]
            head.append(f"wall time per step ~ N^{slope:.2f} on the {label}")
    return "; ".join(head + parts) + "."


def main(argv=None) -> dict:
    env = benchenv.environment()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ns", default="2,4,8,16,32")
    ap.add_argument("--worker-ns", default="32,128,512",
                    help="expfam N hosted in workers (ring; complete up to 32)")
    ap.add_argument("--graphs", default="ring,complete")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--game-ns", default="2,4,8")
    ap.add_argument("--game-worker-ns", default="8,32,64")
    ap.add_argument("--game-steps", type=int, default=20)
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--budget-s", type=float, default=540,
                    help="skip the remaining runs once this much time would be spent")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "scaling"))
    ap.add_argument("--smoke", action="store_true",
                    help="tiny: N 2,4 (and 4 in workers), 20 steps, no game")
    args = ap.parse_args(argv)
    if args.smoke:
        args.ns, args.worker_ns, args.steps = "2,4", "4", 20
        args.game_ns = args.game_worker_ns = ""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    rows: list[dict] = []
    skipped: list[str] = []

    def ns(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    plan = []  # (algorithm, placement, graph, n, steps)
    for placement, sizes in (("process", args.ns), ("workers", args.worker_ns)):
        for graph in [g for g in args.graphs.split(",") if g]:
            plan += [("expfam", placement, graph, n, args.steps) for n in ns(sizes)
                     if graph != "complete" or placement == "process" or n <= 32]
    for placement, sizes in (("process", args.game_ns), ("workers", args.game_worker_ns)):
        plan += [("game", placement, "ring", n, args.game_steps) for n in ns(sizes)]
    have_data = (Path(args.data) / "MNIST" / "raw").is_dir()
    with tempfile.TemporaryDirectory(prefix="p2pg-scaling-") as tmp:
        for alg, placement, graph, n, steps in plan:
            # a run costs about as much as the previous one of its kind, times n / its n
            last = next((r for r in reversed(rows) if (r["algorithm"], r["placement"],
                                                        r["graph"]) == (alg, placement, graph)),
                        None)
            est = last["run_wall_s"] * n / last["n"] if last else (60.0 if alg == "game" else 5.0)
            if (alg == "game" and not have_data) or (
                    time.monotonic() - t_start + est > args.budget_s):
                skipped.append(f"{alg}/{placement}/{graph}/{n}")
                continue
            rows.append(one_run(alg, graph, n, steps, Path(tmp), args.data, placement))
            print(f"  done {alg} {placement} {graph} n={n}: "
                  f"{rows[-1]['wall_per_step_ms']} ms/step", file=sys.stderr, flush=True)
    with (out / "scaling.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    plot(rows, out / "scaling.png")

    hdr = (f"{'alg':<7}{'place':<8}{'graph':<9}{'N':>4}{'deg':>4}{'steps':>6}{'ms/step':>9}{'run s':>7}"
           f"{'steps/s':>9}{'B sent/peer/step':>17}{'B recv/peer/step':>17}{'RSS MB':>8}"
           f"{'RSS max':>8}{'load':>6}")
    print(f"scaling ({os.cpu_count()} cpus; total {time.monotonic() - t_start:.0f} s)")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['algorithm']:<7}{r['placement']:<8}{r['graph']:<9}{r['n']:>4}{r['degree']:>4}{r['steps']:>6}"
              f"{r['wall_per_step_ms']:>9.2f}{r['run_wall_s']:>7.1f}{r['steps_per_s']:>9.1f}"
              f"{r['bytes_sent_per_peer_step']:>17.0f}{r['bytes_recv_per_peer_step']:>17.0f}"
              f"{r['peak_rss_mb_mean']:>8.1f}{r['peak_rss_mb_max']:>8.1f}{r['loadavg']:>6.2f}")
    if skipped:
        print(f"skipped (time budget or no data): {', '.join(skipped)}")
    sentence = growth_sentence(rows)
    print(sentence)
    print(f"wrote {out / 'scaling.csv'} and {out / 'scaling.png'}")
    result = {"rows": rows, "skipped": skipped, "summary": sentence,
              "csv": str(out / "scaling.csv"), "png": str(out / "scaling.png"),
              "total_s": round(time.monotonic() - t_start, 1)}
    result["env"] = benchenv.finished(env)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
