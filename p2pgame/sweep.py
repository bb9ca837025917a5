"""``p2pgame sweep``: run a scenario over a grid of overrides and tabulate the results.

A sweep file (TOML) names a base scenario, common overrides, the grid and,
optionally, baselines and a plot (the grid may also sweep ``scenario``, a list of
files, to compare methods that differ by more than a key; see
``topologies/fmnist-sweep.toml``, whose plot has one panel per peer)::

    name = "mnist-alpha-sweep"
    scenario = "mnist-2peers.toml"          # relative to the sweep file
    set = ["steps=1500"]                    # applied to every point
    metrics = ["fid_all", "fid_own", "fid_other", "own_mass", "ne_own_mass"]

    [grid]                                   # the cartesian product is swept
    "topology.self_weight" = [0.1, 0.5, 1.0]

    [[baseline]]                             # drawn as dashed horizontal lines
    label = "centralized"
    scenario = "mnist-centralized.toml"
    set = ["steps=1500"]

    [plot]
    x = "topology.self_weight"              # default: the first grid key
    panels = [["fid_all", "fid_own", "fid_other"], ["own_mass", "ne_own_mass"]]

Every key, its default and what it allows: README, "Sweeps and reports".  The plot
draws one line per metric and value of the other grid keys (:func:`sweep_lines`).
Every point becomes one run folder under ``<out>/<name>-<time>/``; its
per-peer metrics are averaged into one row of ``sweep.csv`` (plus the
per-peer values in ``sweep.json``).  A point that fails is recorded with its
error and the sweep goes on.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
import tomllib
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from p2pgame.config import ScenarioError, clip, short
from p2pgame.scenario import apply_overrides, load_raw, resolve

log = logging.getLogger(__name__)

SWEEP_KEYS = ("name", "scenario", "set", "grid", "baseline", "plot", "metrics")
BASELINE_KEYS = ("label", "scenario", "set")
PLOT_KEYS = ("x", "panels", "log_x", "per_peer", "series")
DEFAULT_METRICS = ("fid_all", "fid_own", "fid_other", "unseen_mass", "tv_to_ne", "ne_max_abs",
                   "bytes_sent", "steps_per_s", "staleness_mean", "messages_dropped")


@dataclass
class Point:
    label: str
    scenario: Path
    overrides: list[str]
    values: dict[str, Any] = field(default_factory=dict)  # grid key -> value
    baseline: bool = False


@dataclass
class SweepSpec:
    name: str
    source: Path
    points: list[Point]
    metrics: list[str]
    plot: dict[str, Any]


def _toml_literal(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_literal(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table, e.g. a data.partition
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_literal(x)}" for k, x in v.items()) + "}"
    return repr(v)


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ScenarioError(f"{where}: expected a list of strings, got {short(value)}")
    return list(value)


def load_sweep(path: str | Path, extra: list[str] = ()) -> SweepSpec:
    """Parse and check a sweep file; every point's scenario is validated before any run."""
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"{path}: sweep file not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ScenarioError(f"{path}: not valid TOML: not UTF-8 text (byte {e.start})") from None
    except (ValueError, RecursionError) as e:  # an integer of 5000 digits; deep nesting
        why = "nested too deeply" if isinstance(e, RecursionError) else clip(str(e), 80)
        raise ScenarioError(f"{path}: not a sweep p2pgame can read ({why})") from None
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read the sweep file: {e.strerror or e}") from None
    where = str(path)
    unknown = sorted(set(raw) - set(SWEEP_KEYS))
    if unknown:
        raise ScenarioError(f"{where}: unknown key {short(unknown[0])}; allowed: "
                            f"{', '.join(SWEEP_KEYS)}")
    grid = raw.get("grid", {})
    if not isinstance(grid, dict) or not grid:
        raise ScenarioError(f"{where}: [grid] must map at least one key to a list of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ScenarioError(f"{where}: grid.{short(key)} is an empty range; give a list of "
                                "values")
    files = grid.get("scenario")
    if files is not None:
        _strings(files, f"{where}: grid.scenario")
    elif not isinstance(raw.get("scenario"), str):
        raise ScenarioError(f"{where}: 'scenario' (path of the base scenario file) is required, "
                            "or a list of files as grid.scenario")
    common = _strings(raw.get("set", []), f"{where}: set") + list(extra)
    keys = list(grid)
    points = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo, strict=True))
        base = (path.parent / values.get("scenario", raw.get("scenario"))).resolve()
        if not base.is_file():
            raise ScenarioError(f"{where}: scenario file {clip(str(base), 200)} not found")
        label = ",".join(f"{k}={_toml_literal(v)}" for k, v in values.items())
        over = common + [f"{k}={_toml_literal(v)}" for k, v in values.items() if k != "scenario"]
        points.append(Point(label, base, over, values))
    baselines = raw.get("baseline", [])
    if not isinstance(baselines, list):
        raise ScenarioError(f"{where}: baseline must be an array of tables ([[baseline]])")
    for i, b in enumerate(baselines):
        bw = f"{where}: baseline[{i}]"
        if not isinstance(b, dict):
            raise ScenarioError(f"{bw}: expected a table")
        unknown = sorted(set(b) - set(BASELINE_KEYS))
        if unknown:
            raise ScenarioError(f"{bw}: unknown key {short(unknown[0])}; allowed: "
                                f"{', '.join(BASELINE_KEYS)}")
        if not isinstance(b.get("label"), str) or not isinstance(b.get("scenario"), str):
            raise ScenarioError(f"{bw}: 'label' and 'scenario' are required strings")
        over = _strings(b.get("set", []), f"{bw}.set") + list(extra)
        points.append(Point(b["label"], (path.parent / b["scenario"]).resolve(), over,
                            baseline=True))
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise ScenarioError(f"{where}: name must be a non-empty string, got {short(name)}")
    metrics = _strings(raw.get("metrics", list(DEFAULT_METRICS)), f"{where}: metrics")
    if not metrics:
        raise ScenarioError(f"{where}: metrics is empty; name at least one summary key")
    plot = _check_plot(raw.get("plot", {}), keys, metrics, where)
    for k, p in enumerate(points):  # refuse bad points before anything runs
        try:
            resolve(apply_overrides(load_raw(p.scenario), p.overrides), str(p.scenario))
        except ScenarioError as e:  # which point: its grid values (or baseline label)
            what = "baseline" if p.baseline else "point"
            raise ScenarioError(f"{where}: {what} {k + 1}/{len(points)} "
                                f"({clip(p.label, 120)}): {e}") from None
    return SweepSpec(name, path, points, metrics, plot)


def _check_plot(plot: Any, keys: list[str], metrics: list[str], where: str) -> dict[str, Any]:
    """The ``[plot]`` table, checked (README, "Sweeps and reports"), with ``x`` defaulting
    to the first grid key; {} (no table): no plot."""
    if not isinstance(plot, dict):
        raise ScenarioError(f"{where}: plot must be a table")
    unknown = sorted(set(plot) - set(PLOT_KEYS))
    if unknown:
        raise ScenarioError(f"{where}: plot: unknown key {short(unknown[0])}; allowed: "
                            f"{', '.join(PLOT_KEYS)}")
    if not plot:
        return {}
    plot = {"x": keys[0], **plot}
    for key in ("x", "series"):
        if key in plot and plot[key] not in keys:
            raise ScenarioError(f"{where}: plot.{key} must be one of the grid keys: "
                                f"{', '.join(keys)}")
    if "log_x" in plot and not isinstance(plot["log_x"], bool):
        raise ScenarioError(f"{where}: plot.log_x must be true or false, got "
                            f"{short(plot['log_x'])}")
    allowed = f"one of metrics: {', '.join(metrics)}"
    if "per_peer" in plot and plot["per_peer"] not in metrics:
        raise ScenarioError(f"{where}: plot.per_peer must be {allowed}; got "
                            f"{short(plot['per_peer'])}")
    if "panels" in plot:
        panels = plot["panels"]
        if not isinstance(panels, list) or not panels or not all(
                isinstance(p, list) and p for p in panels):
            raise ScenarioError(f"{where}: plot.panels must be a list of non-empty lists of "
                                f"metric names, got {short(panels)}")
        for k, panel in enumerate(panels):
            for m in _strings(panel, f"{where}: plot.panels[{k}]"):
                if m not in metrics:
                    raise ScenarioError(f"{where}: plot.panels[{k}]: {short(m)} is not "
                                        f"{allowed}")
    return plot


def mean_finite(values: list[Any]) -> float | None:
    """Mean of the finite numbers among ``values`` (None if there are none)."""
    nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    nums = [v for v in nums if math.isfinite(v)]
    return sum(nums) / len(nums) if nums else None


def point_row(point: Point, summary: dict | None, metrics: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"label": point.label, "baseline": point.baseline, **point.values}
    peers = (summary or {}).get("peers", {})
    for m in metrics:
        row[m] = mean_finite([s.get(m) for s in peers.values()])
    return row


def run_sweep(spec: SweepSpec, out: Path, data_root: Path, progress: bool = True,
              log: Callable[[str], None] | None = None) -> Path:
    """Run every point; return the sweep folder (sweep.csv, sweep.json, sweep.png).
    ``log``: where a line per point goes (default: this module's logger, on stderr)."""
    from p2pgame.launch import check_writable, run
    from p2pgame.launch.logs import setup_logging

    setup_logging()
    if log is None:
        log = logging.getLogger(__name__).info
    check_writable(Path(out), "--out")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(out) / f"{spec.name}-{stamp}"
    sweep_dir, k = base, 1
    while True:  # a new folder, never an earlier sweep's (two started in one second)
        try:
            sweep_dir.mkdir(parents=True, exist_ok=False)
            break
        except FileExistsError:
            k += 1
            sweep_dir = Path(f"{base}-{k}")
    records = []
    for k, point in enumerate(spec.points):
        log(f"[{k + 1}/{len(spec.points)}] {point.label}")
        record: dict[str, Any] = {"label": point.label, "baseline": point.baseline,
                                  "values": point.values, "overrides": point.overrides,
                                  "scenario": str(point.scenario)}
        summary = None
        try:
            res = run(point.scenario, point.overrides, data_root=data_root, progress=progress,
                      run_dir=sweep_dir / f"point-{k:03d}")
            summary = res.summary
            record["run_dir"] = str(res.run_dir)
            record["status"] = "ok" if res.exit_code == 0 else "failed"
            if res.exit_code:
                record["error"] = "; ".join(f"peer {p}: {w}" for p, w in res.failures.items())
        except Exception as e:  # a failing point is recorded; the sweep goes on
            record["status"] = "failed"
            record["error"] = f"{type(e).__name__}: {e}"
            (sweep_dir / f"point-{k:03d}.error.txt").write_text(traceback.format_exc())
        record["row"] = point_row(point, summary, spec.metrics)
        record["peers"] = (summary or {}).get("peers", {})
        records.append(record)
        _write(sweep_dir, spec, records)  # after every point: nothing is lost on Ctrl-C
        if record["status"] != "ok":
            log(f"  failed: {record.get('error')}")
    if spec.plot:
        plot_sweep(sweep_dir, spec, records)
    return sweep_dir


def _write(sweep_dir: Path, spec: SweepSpec, records: list[dict]) -> None:
    slim = [{k: v for k, v in r.items() if k != "peers"} | {
        "peers": {p: {m: s.get(m) for m in spec.metrics + ["own_classes", "class_mass"]}
                  for p, s in r["peers"].items()}} for r in records]
    (sweep_dir / "sweep.json").write_text(json.dumps(
        {"name": spec.name, "source": str(spec.source), "points": slim}, indent=1))
    cols = ["label", "baseline", *[k for k in records[0]["values"]], "status", *spec.metrics,
            "error", "run_dir"]
    seen = []
    for c in cols:
        if c not in seen:
            seen.append(c)
    with (sweep_dir / "sweep.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=seen, extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow({**r["row"], **r["values"], "status": r["status"],
                        "error": r.get("error", ""), "run_dir": r.get("run_dir", "")})


def _ordered(values: list[Any]) -> list[Any]:
    """Grid values in order (numbers ascending; mixed types as they came)."""
    try:
        return sorted(values)
    except TypeError:
        return list(values)


def _groups(spec: SweepSpec, grid: list[dict]) -> list[tuple[dict[str, Any], list[dict]]]:
    """The grid's points as lines: one per value (combination) of the grid keys other than
    ``plot.x``, in the grid's order, each line's points sorted by x.  (With one key, one
    line; with two, one per value of the second: never one zigzag through all points.)"""
    x = spec.plot["x"]
    others = [k for k in (grid[0]["values"] if grid else {}) if k != x]
    series = spec.plot.get("series")
    if series in others:  # the series key names the lines first
        others.remove(series)
        others.insert(0, series)
    order: dict[tuple, list[dict]] = {}
    for r in grid:
        order.setdefault(tuple(_hashable(r["values"][k]) for k in others), []).append(r)
    xs = _ordered(list(dict.fromkeys(_hashable(r["values"][x]) for r in grid)))
    rank = {v: k for k, v in enumerate(xs)}
    return [(dict(zip(others, (rows[0]["values"][k] for k in others), strict=True)),
             sorted(rows, key=lambda r: rank[_hashable(r["values"][x])]))
            for rows in order.values()]


def _hashable(v: Any) -> Any:
    return json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v


def _group_label(group: dict[str, Any], series: str | None = None) -> str:
    """A line's name: its grid values (``plot.series``'s value alone, a file by its stem)."""
    return ", ".join(_series_name(v) if k == series else f"{k}={_series_name(v)}"
                     for k, v in group.items())


def default_panels(metrics: list[str]) -> list[list[str]]:
    """Without ``plot.panels``: one panel of the classifier-FIDs among the metrics, else
    of the first metric."""
    return [[m for m in metrics if m.startswith("fid")] or metrics[:1]]


def sweep_lines(spec: SweepSpec, records: list[dict]) -> list[dict[str, Any]]:
    """What ``sweep.png`` draws, as data (a test can read it): per panel, its ``metrics``
    and ``lines`` (``label``, ``metric``, ``group``: the other grid keys' values, ``x``,
    ``y``: the mean over the point's peers, ``color``, ``style``) and ``baselines``
    (``label``, ``metric``, ``y``, ``color``, ``style``).  One line per metric and value
    of the grid keys besides x; the colour tells the lines of one group (or, with one
    group, the metrics), the style the metrics."""
    x = spec.plot["x"]
    grid = [r for r in records if not r["baseline"] and r["status"] == "ok"]
    baselines = [r for r in records if r["baseline"] and r["status"] == "ok"]
    groups = _groups(spec, grid)
    panels = []
    for metrics in spec.plot.get("panels") or default_panels(spec.metrics):
        lines, flat = [], []
        for m_i, m in enumerate(metrics):
            for g_i, (group, rows) in enumerate(groups):
                pts = [(r["values"][x], r["row"][m]) for r in rows
                       if r["row"].get(m) is not None]
                if not pts:
                    continue
                parts = ([m] if len(metrics) > 1 or not group else []) + (
                    [_group_label(group, spec.plot.get("series"))] if group else [])
                one = len(groups) == 1
                lines.append({"label": ", ".join(parts), "metric": m, "group": group,
                              "x": [p[0] for p in pts], "y": [p[1] for p in pts],
                              "color": f"C{(m_i if one else g_i) % 10}",
                              "style": "-" if one else ["-", "--", ":", "-."][m_i % 4]})
            for b_i, b in enumerate(baselines):
                if b["row"].get(m) is not None:
                    flat.append({"label": f"{m} ({b['label']})" if len(metrics) > 1 else
                                 b["label"], "metric": m, "y": b["row"][m],
                                 "color": f"C{m_i % 10}" if len(groups) == 1 else "k",
                                 "style": ["--", ":", "-."][b_i % 3]})
        panels.append({"metrics": list(metrics), "lines": lines, "baselines": flat})
    return panels


def sweep_figure(spec: SweepSpec, records: list[dict]):
    """The figure of ``sweep.png`` (matplotlib; :func:`sweep_lines` says what it draws)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if spec.plot.get("per_peer"):
        return _per_peer_figure(spec, records, plt)
    x = spec.plot["x"]
    panels = sweep_lines(spec, records)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for line in panel["lines"]:
            ax.plot(line["x"], line["y"], marker="o", ls=line["style"], color=line["color"],
                    label=line["label"])
        for b in panel["baselines"]:
            ax.axhline(b["y"], color=b["color"], ls=b["style"], lw=1, label=b["label"])
        ax.set_title(", ".join(panel["metrics"]), fontsize=9)
        ax.set_xlabel(x)
        ax.set_ylabel(("" if len(panel["metrics"]) > 1 else panel["metrics"][0] + ", ")
                      + "mean over the peers")
        if spec.plot.get("log_x"):
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        if panel["lines"] or panel["baselines"]:
            ax.legend(fontsize=7)
    fig.suptitle(spec.name)
    fig.tight_layout()
    return fig


def plot_sweep(sweep_dir: Path, spec: SweepSpec, records: list[dict]) -> Path:
    """``sweep.png`` in ``sweep_dir``."""
    import matplotlib.pyplot as plt

    fig = sweep_figure(spec, records)
    path = sweep_dir / "sweep.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _series_name(value: Any) -> str:
    return Path(value).stem if isinstance(value, str) and value.endswith(".toml") else str(value)


def _per_peer_figure(spec: SweepSpec, records: list[dict], plt):
    """One panel per peer: ``plot.per_peer`` against ``plot.x``, one line per value of the
    other grid keys (``plot.series`` first); a baseline is a horizontal line at the mean
    over its peers."""
    x, metric = spec.plot["x"], spec.plot["per_peer"]
    grid = [r for r in records if not r["baseline"] and r["status"] == "ok"]
    peers = sorted({p for r in grid for p in r["peers"]}, key=int)
    baselines = [r for r in records if r["baseline"] and r["status"] == "ok"]
    fig, axes = plt.subplots(1, max(len(peers), 1), figsize=(4 * max(len(peers), 1), 3.6),
                             squeeze=False, sharey=True)
    groups = _groups(spec, grid)
    for ax, peer in zip(axes[0], peers, strict=False):
        for k, (group, rows) in enumerate(groups):
            pts = [(r["values"][x], v) for r in rows
                   if (v := mean_finite([r["peers"].get(peer, {}).get(metric)])) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", color=f"C{k % 10}",
                        label=_group_label(group, spec.plot.get("series")) if group else metric)
        for b, style in zip(baselines, ["--", ":", "-."] * 3, strict=False):
            value = b["row"].get(metric)
            if value is not None:
                ax.axhline(value, color="k", ls=style, lw=1,
                           label=f"{b['label']} (mean over its peers)")
        ax.set_title(f"peer {peer}")
        ax.set_xlabel(x)
        if spec.plot.get("log_x"):
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(spec.name)
    fig.tight_layout()
    return fig


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def sweep_table(metrics: list[str], records: list[dict]) -> str:
    """The table ``p2pgame sweep`` prints: a line saying what the values are, then one row
    per point (label and status left-aligned, values right-aligned), each column as wide
    as its longest cell."""
    head = ["point", "status", *metrics]
    rows = [head] + [[r["label"], r["status"], *[_cell(r["row"].get(m)) for m in metrics]]
                     for r in records]
    widths = [max(len(row[k]) for row in rows) for k in range(len(head))]

    def fmt(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if k < 2 else c.rjust(w)
                         for k, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

    note = ("each value: the mean over the point's peers (of those reporting a finite "
            "number; -: none)")
    return "\n".join([note, *map(fmt, rows)])


def main_sweep(args) -> int:
    from p2pgame.launch import check_writable

    check_writable(Path(args.out), "--out")  # before anything is checked or prepared
    spec = load_sweep(args.sweep, args.set)
    log.info(f"{spec.name}: {len(spec.points)} points")
    out = run_sweep(spec, Path(args.out), Path(args.data), progress=not args.quiet)
    records = json.loads((out / "sweep.json").read_text())["points"]
    print(sweep_table(spec.metrics, records))  # (print: the table is the command's output)
    print(f"results: {out}")  # (the command's output)
    return 0 if all(r["status"] == "ok" for r in records) else 1
