"""``p2pgame report``: a Markdown report (tables + plots) of one run or a comparison of runs.

Reads only what a run folder holds (summary.json, metrics/peer-*.jsonl,
topology.json) and writes ``report.md`` and PNG figures into the report
folder (``RUN_DIR/report`` for one run; ``--out`` for several).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from p2pgame.config import ScenarioError
from p2pgame.sweep import mean_finite

# (Nothing is said on the way yet: the report's path is the command's output.)
log = logging.getLogger(__name__)

# Per-step series worth plotting when present in the metrics (a panel per key), with
# the figure's title.
SERIES = {
    "loss": (["train/p_loss", "train/q_loss", "train/d_loss", "train/g_loss",
              "train/cls_loss", "eval/ne_max_abs"], "losses and distance to the equilibrium"),
    "fid": (["eval/fid_all"], "classifier-FID"),
    "accuracy": (["eval/accuracy"], "test accuracy"),
    "bytes": (["comm/bytes_sent"], "bytes sent"),
}
TABLE_KEYS = ("steps", "steps_per_s", "bytes_sent", "bytes_received", "messages_dropped",
              "messages_rejected", "staleness_mean", "ahead_uses", "ne_max_abs", "fid_all", "fid_own",
              "fid_other", "unseen_mass", "tv_to_ne", "accuracy", "tv_prior_to_ne")


def _json(path: Path, what: str) -> Any:
    """The JSON in ``path``; ScenarioError naming the file (and line) when it is not."""
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ScenarioError(f"{path}: not valid JSON ({what}): {e}") from None


def _jsonl(path: Path) -> list[dict]:
    """The metrics lines of ``path``; a truncated last line (a run killed while writing
    it) is skipped, any other bad line is an error naming it."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ScenarioError(f"{path}: cannot read the metrics: {e}") from None
    rows = []
    for k, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            if k == len(lines):
                continue
            raise ScenarioError(f"{path}: line {k} is not valid JSON: {e}") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), (int, float)):
            raise ScenarioError(f"{path}: line {k} is not a metrics record (no step)")
        rows.append(row)
    return rows


def load_run(run_dir: Path) -> dict[str, Any]:
    """What a report reads of a finished run folder: its summary, every peer's metrics
    lines and the topology; ScenarioError naming the file that is not what it should be."""
    from p2pgame.launch.rundir import RunLayout

    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    path = layout.summary
    if not path.is_file():
        raise ScenarioError(f"{run_dir}: not a finished run folder (no summary.json)")
    summary = _json(path, "the run's summary")
    if not isinstance(summary, dict) or not isinstance(summary.get("peers"), dict) or not all(
            isinstance(p, dict) for p in summary["peers"].values()):
        raise ScenarioError(f"{path}: not a run's summary (no 'peers' table); {run_dir} is "
                            "not a finished run folder")
    metrics = {peer: _jsonl(f) for peer, f in layout.metrics_files().items()}
    topo = layout.topology
    topology = _json(topo, "the run's topology") if topo.is_file() else {}
    return {"dir": run_dir, "summary": summary, "metrics": metrics,
            "topology": topology if isinstance(topology, dict) else {}}


def _value(row: dict, key: str) -> Any:
    """A metrics line's ``key`` (``train/``, ``comm/``, ``eval/``...), or its bare name in
    a run folder written before the keys had namespaces."""
    if key in row:
        return row[key]
    return row.get(key.split("/", 1)[-1])


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# What a metric is, for its panel's axis (the key itself is the panel's title).
METRIC_LABELS = {
    "train/p_loss": "p loss (the generator's)",
    "train/q_loss": "q loss (the encoder's)",
    "train/d_loss": "discriminator loss",
    "train/g_loss": "generator loss",
    "train/cls_loss": "classifier loss",
    "eval/ne_max_abs": "max |mean parameter - equilibrium's|",
    "eval/fid_all": "classifier-FID, all classes (lower: better)",
    "eval/accuracy": "test accuracy",
    "comm/bytes_sent": "bytes sent so far",
}
PEER_STYLES = ("-", "--", ":", "-.")  # peer k draws in style k % 4 ...
MAX_LEGEND = 12  # ... and more lines than this get a legend of runs alone


def _peers(metrics: dict[str, list]) -> list[str]:
    """A run's peers, in number order (peer-10 after peer-2)."""
    return sorted(metrics, key=lambda p: (int(p), p) if p.isdigit() else (1 << 30, p))


def _shade(color: str, k: int, n: int) -> tuple[float, float, float]:
    """``color`` lightened for the k-th of n peers (the first in full colour)."""
    from matplotlib.colors import to_rgb

    t = 0.6 * k / max(n - 1, 1)
    return tuple(c + (1 - c) * t for c in to_rgb(color))  # type: ignore[return-value]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def series_figure(runs: list[dict], keys: list[str], title: str):
    """A figure of per-step metrics: one panel per key some run's lines hold (its title
    the key, its y axis what the key is), one line per run and peer: the colour says the
    run, the line style and the shade the peer, and the legend says which (``run / peer
    N``; beyond MAX_LEGEND lines, the runs, and how the peers are told apart).  None when
    no run holds any of ``keys``."""
    from matplotlib.lines import Line2D

    present = [k for k in keys if any(_number(_value(row, k)) for run in runs
                                       for rows in run["metrics"].values() for row in rows)]
    if not present:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(present), figsize=(min(5.2 * len(present), 18), 4),
                             squeeze=False)
    several = len(runs) > 1
    for ax, key in zip(axes[0], present, strict=True):
        n_lines = 0
        for r_i, run in enumerate(runs):
            peers = _peers(run["metrics"])
            for p_i, peer in enumerate(peers):
                pts = [(row["step"], v) for row in run["metrics"][peer]
                       if _number(v := _value(row, key))]
                if not pts:
                    continue
                label = f"{run['label']} / peer {peer}" if several else f"peer {peer}"
                ax.plot(*zip(*pts, strict=True), color=_shade(f"C{r_i % 10}", p_i, len(peers)),
                        ls=PEER_STYLES[p_i % len(PEER_STYLES)], lw=1.2, label=label)
                n_lines += 1
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(METRIC_LABELS.get(key, key), fontsize=8)
        ax.grid(alpha=0.3)
        if n_lines <= MAX_LEGEND:
            ax.legend(fontsize=6, title="run / peer" if several else None, title_fontsize=6)
        else:  # the runs by colour; the peers by style and shade, in words
            handles = [Line2D([], [], color=f"C{r_i % 10}", lw=1.5, label=run["label"])
                       for r_i, run in enumerate(runs)]
            ax.legend(handles=handles, fontsize=6, title_fontsize=6,
                      title="colour: run; style " + " ".join(PEER_STYLES)
                            + ": peer 0 1 2 3 (then again), lighter: higher peer")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _series_plot(runs: list[dict], keys: list[str], title: str, path: Path) -> bool:
    fig = series_figure(runs, keys, title)
    if fig is None:
        return False
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return True


MAX_GRIDS = 16  # sample grids drawn per run (the first peers')


def samples_figure(run: dict):
    """A run's sample grids (``samples/peer-<i>.png``), one panel per peer titled with the
    peer, its own classes and the step the grid was drawn at (its last); None: no grid."""
    from p2pgame.launch.rundir import RunLayout

    layout = RunLayout(run["dir"])
    peers = run["summary"]["peers"]
    grids = [(p, layout.samples(int(p))) for p in _peers({p: [] for p in peers})
             if p.isdigit() and layout.samples(int(p)).is_file()][:MAX_GRIDS]
    if not grids:
        return None
    plt = _plt()
    cols = min(len(grids), 4)
    rows = -(-len(grids) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.7 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (p, path) in zip(axes.flat, grids, strict=False):
        s = peers[p]
        try:
            ax.imshow(plt.imread(path), cmap="gray", interpolation="nearest")
        except (OSError, ValueError, SyntaxError):  # a damaged file: named, not drawn
            ax.text(0.5, 0.5, f"unreadable:\n{path.name}", ha="center", va="center")
        own = s.get("own_classes")
        own_text = f"own classes {own}" if own is not None else "own classes: -"
        ax.set_title(f"peer {p}: {own_text}\nstep {s.get('steps', '?')} (its last)",
                     fontsize=8)
    fig.suptitle(f"{run['label']}: samples of each peer")
    fig.tight_layout()
    return fig


def _class_mass_plot(run: dict, path: Path) -> bool:
    """Each peer's class histogram (of generated images, or its learnt p(c)) and the
    equilibrium's."""
    peers = {p: s for p, s in run["summary"]["peers"].items()
             if s.get("class_mass") or s.get("prior")}
    if not peers:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(peers), figsize=(3.2 * len(peers), 3), squeeze=False)
    for ax, (p, s) in zip(axes[0], peers.items(), strict=True):
        key = "class_mass" if s.get("class_mass") else "prior"
        mass = s[key]
        xs = range(len(mass))
        ax.bar(xs, mass, color="C0", label="generated" if key == "class_mass" else "learnt p(c)")
        if s.get("ne_class_mass"):
            ax.plot(xs, s["ne_class_mass"], "k_", ms=14, mew=2, label="equilibrium")
        ax.set_title(f"peer {p} (own {s.get('own_classes')})", fontsize=8)
        ax.set_xticks(list(xs))
        ax.set_ylim(0, max(max(mass), max(s.get("ne_class_mass") or [0])) * 1.15 + 1e-9)
    axes[0][0].set_ylabel("mass")
    axes[0][0].legend(fontsize=6)
    for ax in axes[0]:
        ax.set_xlabel("class")
    fig.suptitle(f"{run['label']}: class mass against the equilibrium", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _staleness_plot(runs: list[dict], path: Path) -> bool:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    drawn = False
    for r_i, run in enumerate(runs):
        total: dict[int, int] = {}
        for s in run["summary"]["peers"].values():
            for k, v in (s.get("staleness_hist") or {}).items():
                total[int(k)] = total.get(int(k), 0) + v
        if total:
            xs = sorted(total)
            n = sum(total.values())
            ax.step(xs, [total[x] / n for x in xs], where="mid", color=f"C{r_i}",
                    label=run["label"])
            drawn = True
    if drawn:
        ax.set_title("step gap of the messages trained on (all peers)", fontsize=9)
        ax.set_xlabel("receiver's step - sender's step (> 0: age in steps; < 0: sender ahead)")
        ax.set_ylabel("fraction of the uses")
        ax.legend(fontsize=7, title="run", title_fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def write_report(run_dirs: list[Path], out: Path | None = None) -> Path:
    from p2pgame.launch import check_writable
    from p2pgame.launch.rundir import RunLayout

    if not run_dirs:
        raise ScenarioError("report: give at least one run folder")
    if out is None:
        if len(run_dirs) > 1:
            raise ScenarioError("report: several runs need --out DIR for the report folder")
        if Path(run_dirs[0]).is_dir():  # (else load_run says it is no run folder)
            check_writable(RunLayout(Path(run_dirs[0])).report_dir, "RUN_DIR")  # default --out
    else:
        check_writable(Path(out), "--out")  # before anything is read or written
    runs = [load_run(d) for d in run_dirs]
    out = RunLayout(Path(run_dirs[0])).report_dir if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for k, run in enumerate(runs):
        run["label"] = f"{k}:{run['summary'].get('scenario', run['dir'].name)}"
    lines = ["# p2pgame report", ""]
    lines += ["| run | folder | mode | peers | steps | wall s | failed |",
              "|---|---|---|---|---|---|---|"]
    for run in runs:
        s = run["summary"]
        lines.append(f"| {run['label']} | `{run['dir']}` | {s.get('mode')} | {s.get('n_peers')} | "
                     f"{s.get('steps')} | {_fmt(s.get('wall_s'))} | {s.get('failed_peers')} |")
    lines.append("")
    present = [k for k in TABLE_KEYS
               if any(k in p for r in runs for p in r["summary"]["peers"].values())]
    if len(runs) > 1:
        lines += ["## Comparison (mean over peers)", "",
                  "| run | " + " | ".join(present) + " |",
                  "|---" * (len(present) + 1) + "|"]
        for run in runs:
            peers = run["summary"]["peers"].values()
            lines.append(f"| {run['label']} | " + " | ".join(
                _fmt(mean_finite([p.get(k) for p in peers])) for k in present) + " |")
        lines.append("")
    for run in runs:
        lines += [f"## {run['label']}: per peer", "",
                  "| peer | " + " | ".join(present) + " |", "|---" * (len(present) + 1) + "|"]
        for pid, p in run["summary"]["peers"].items():
            lines.append(f"| {pid} | " + " | ".join(_fmt(p.get(k)) for k in present) + " |")
        epochs = run["topology"].get("epochs", [])
        if epochs:
            lam = ", ".join(_fmt(e.get("second_eigenvalue_modulus")) for e in epochs)
            lines += ["", f"Second-largest eigenvalue modulus of the weights: {lam}."]
        lines.append("")
    figures = []
    for name, (keys, title) in SERIES.items():
        path = out / f"{name}.png"
        if _series_plot(runs, keys, f"{title} over steps", path):
            figures.append((f"{title} over steps", path.name))
    if _staleness_plot(runs, out / "staleness.png"):
        figures.append(("staleness histogram", "staleness.png"))
    for k, run in enumerate(runs):
        path = out / f"class-mass-{k}.png"
        if _class_mass_plot(run, path):
            figures.append((f"{run['label']}: class mass against the equilibrium", path.name))
        fig = samples_figure(run)
        if fig is not None:
            path = out / f"samples-{k}.png"
            fig.savefig(path, dpi=110)
            _plt().close(fig)
            figures.append((f"{run['label']}: samples of each peer", path.name))
    if figures:
        lines += ["## Figures", ""]
        for title, name in figures:
            lines += [f"### {title}", "", f"![{title}]({name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
