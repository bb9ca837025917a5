"""Scaling with the number of peers and the degree: wall time, memory and bytes per peer.

* ``expfam`` (``topologies/expfam-ring8.toml``) with N in ``--ns`` on a ring and on
  the complete graph, ``--steps`` steps each;
* ``game`` (``hvae-mlp``, ``topologies/mnist-ring5.toml`` with ``k_classes`` k=2
  partitions) with N in ``--game-ns`` on a ring, ``--game-steps`` steps, small
  evaluation, no checkpoint (skipped when the time budget is spent, or no data).

Per run: wall time per step of the measured phase (``summary.wall_s / steps``),
wall time of the whole ``launch.run`` call (start-up and evaluation included),
mean peer steps/s, bytes sent and received per peer per step (the runtime's own
counters: each published message counts once per subscriber), and the peak RSS
of each peer process: a monitor thread polls ``/proc/<pid>/status`` (VmHWM) of
this process's spawned children (the launcher runs in-process) every 0.1 s;
peer pids are matched with ``endpoints.json``.

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

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FIELDS = ("algorithm", "graph", "n", "degree", "steps", "wall_per_step_ms", "run_wall_s",
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
        out = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) != ppid:
                    continue
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    cmd = f.read()
            except (OSError, IndexError, ValueError):
                continue
            if b"spawn_main" in cmd and b"resource_tracker" not in cmd:
                out.append(int(name))
        return out

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
            extra: list[str]) -> dict:
    from p2pgame.launch import run

    if algorithm == "expfam":
        scenario = ROOT / "topologies" / "expfam-ring8.toml"
        overrides = [f"topology.n={n}", f'topology.graph="{graph}"', f"steps={steps}",
                     "runtime.threads_per_peer=1", *extra]
    else:
        scenario = ROOT / "topologies" / "mnist-ring5.toml"
        overrides = [f"topology.n={n}", f'topology.graph="{graph}"', f"steps={steps}",
                     'data.partition={kind="k_classes", k=2}', "algorithm.eval_samples=100",
                     "algorithm.checkpoint=false", 'runtime.device="cpu"', *extra]
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    with RssMonitor() as mon:
        res = run(scenario, overrides, out=out, data_root=data, progress=False)
    run_wall = time.monotonic() - t0
    if res.exit_code != 0:
        raise RuntimeError(f"{algorithm} {graph} n={n} failed: {res.failures}")
    s = res.summary
    peers = s["peers"]
    eps = json.loads((res.run_dir / "endpoints.json").read_text())
    rss = [mon.peak.get(int(e["pid"] or -1), 0) / 1024 for e in eps.values()]
    if not all(rss):  # pid not seen (too short-lived): fall back to all children seen
        rss = [v / 1024 for v in mon.peak.values()] or [0.0]
    steps_done = statistics.mean(p["steps"] for p in peers.values())
    return {
        "algorithm": algorithm, "graph": graph, "n": n, "degree": degree(graph, n),
        "steps": steps,
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
        series.setdefault(f"{r['algorithm']}/{r['graph']}", []).append(r)
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
    def pick(alg, graph):
        return sorted((r for r in rows if r["algorithm"] == alg and r["graph"] == graph),
                      key=lambda r: r["n"])

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
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ns", default="2,4,8,16,32")
    ap.add_argument("--graphs", default="ring,complete")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--game-ns", default="2,4,8")
    ap.add_argument("--game-steps", type=int, default=20)
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--budget-s", type=float, default=540,
                    help="skip the remaining game runs once this much time is spent")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "scaling"))
    ap.add_argument("--smoke", action="store_true", help="tiny: N 2,4, 20 steps, no game")
    args = ap.parse_args(argv)
    if args.smoke:
        args.ns, args.steps, args.game_ns = "2,4", 20, ""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    rows: list[dict] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="p2pg-scaling-") as tmp:
        for graph in [g for g in args.graphs.split(",") if g]:
            for n in [int(x) for x in args.ns.split(",") if x]:
                rows.append(one_run("expfam", graph, n, args.steps, Path(tmp), args.data, []))
                print(f"  done expfam {graph} n={n}: {rows[-1]['wall_per_step_ms']} ms/step",
                      file=sys.stderr, flush=True)
        game_ns = [int(x) for x in args.game_ns.split(",") if x]
        have_data = (Path(args.data) / "MNIST" / "raw").is_dir()
        for n in game_ns:
            # a game run costs about as much as the one before it, times n / previous n
            spent = time.monotonic() - t_start
            last = next((r for r in reversed(rows) if r["algorithm"] == "game"), None)
            est = last["run_wall_s"] * n / last["n"] if last else 60.0
            if not have_data or spent + est > args.budget_s:
                skipped.append(f"game/ring/{n}")
                continue
            rows.append(one_run("game", "ring", n, args.game_steps, Path(tmp), args.data, []))
            print(f"  done game ring n={n}: {rows[-1]['wall_per_step_ms']} ms/step",
                  file=sys.stderr, flush=True)
    with (out / "scaling.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    plot(rows, out / "scaling.png")

    hdr = (f"{'alg':<7}{'graph':<9}{'N':>4}{'deg':>4}{'steps':>6}{'ms/step':>9}{'run s':>7}"
           f"{'steps/s':>9}{'B sent/peer/step':>17}{'B recv/peer/step':>17}{'RSS MB':>8}"
           f"{'RSS max':>8}{'load':>6}")
    print(f"scaling ({os.cpu_count()} cpus; total {time.monotonic() - t_start:.0f} s)")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['algorithm']:<7}{r['graph']:<9}{r['n']:>4}{r['degree']:>4}{r['steps']:>6}"
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
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
