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

# Per-step series worth plotting when present in the metrics, with their axis label.
SERIES = {
    "loss": (["train/p_loss", "train/q_loss", "train/d_loss", "train/g_loss",
              "train/cls_loss", "eval/ne_max_abs"], "loss / distance"),
    "fid": (["eval/fid_all"], "classifier-FID"),
    "accuracy": (["eval/accuracy"], "test accuracy"),
    "bytes": (["comm/bytes_sent"], "bytes sent"),
}
TABLE_KEYS = ("steps", "steps_per_s", "bytes_sent", "bytes_received", "messages_dropped",
              "messages_rejected", "staleness_mean", "ne_max_abs", "fid_all", "fid_own",
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


def _series_plot(runs: list[dict], keys: list[str], ylabel: str, path: Path) -> bool:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    drawn = False
    for r_i, run in enumerate(runs):
        for peer, rows in run["metrics"].items():
            for k_i, key in enumerate(keys):
                pts = [(row["step"], v) for row in rows
                       if isinstance(v := _value(row, key), (int, float))]
                if not pts:
                    continue
                label = f"{run['label']} peer {peer} {key}" if len(runs) > 1 else \
                    f"peer {peer} {key}"
                ax.plot(*zip(*pts, strict=True), color=f"C{(r_i * 3 + k_i) % 10}",
                        alpha=0.35 + 0.65 / (1 + int(peer)), lw=1, label=label)
                drawn = True
    if drawn:
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if len(labels) <= 12:
            ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


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
    axes[0][0].legend(fontsize=6)
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
        ax.set_xlabel("staleness of used messages (steps; < 0: sender ahead)")
        ax.set_ylabel("fraction")
        ax.legend(fontsize=7)
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
    for name, (keys, ylabel) in SERIES.items():
        path = out / f"{name}.png"
        if _series_plot(runs, keys, ylabel, path):
            figures.append((f"{ylabel} over steps", path.name))
    if _staleness_plot(runs, out / "staleness.png"):
        figures.append(("staleness histogram", "staleness.png"))
    for k, run in enumerate(runs):
        path = out / f"class-mass-{k}.png"
        if _class_mass_plot(run, path):
            figures.append((f"{run['label']}: class mass against the equilibrium", path.name))
    if figures:
        lines += ["## Figures", ""]
        for title, name in figures:
            lines += [f"### {title}", "", f"![{title}]({name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
