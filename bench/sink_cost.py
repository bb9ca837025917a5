"""The launcher's CPU per metrics line for each sink: TensorBoard's event files against
the JSONL files, measured in one run (the JSONL sink is the baseline).

Each peer's lines come in batches of ``--batch`` (as the launcher receives them), each
line ten numeric keys plus ``step`` and ``t``, as a game peer's; the time is the
process's CPU time (``time.process_time``) of the sink's ``write`` calls over all peers,
median of ``--repeats``.  Prints one table and a JSON line.

    .venv/bin/python bench/sink_cost.py [--peers 1024] [--lines 100]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchenv import environment, finished

from p2pgame.launch.rundir import RunFolder
from p2pgame.launch.sinks import JsonlSink
from p2pgame.launch.tensorboard import TensorBoardSink, event_writer
from p2pgame.peer import raise_open_files

KEYS = [f"{ns}/{k}" for ns, k in [("train", "loss"), ("train", "nll"), ("train", "kl"),
                                  ("comm", "bytes_sent"), ("comm", "received"),
                                  ("comm", "staleness_mean"), ("eval", "fid_all"),
                                  ("eval", "fid_own"), ("eval", "fid_other"),
                                  ("eval", "unseen_mass")]]


def _lines(peer: int, n: int) -> list[dict]:
    return [{"step": 10 * k, "t": 0.01 * k, **{key: peer + k / (j + 1)
                                                for j, key in enumerate(KEYS)}}
            for k in range(n)]


def _cost(make, peers: int, lines: int, batch: int) -> float:
    """CPU seconds of the sink's writes of every peer's lines (files closed after)."""
    data = {p: _lines(p, lines) for p in range(peers)}
    with tempfile.TemporaryDirectory() as tmp:
        sink = make(RunFolder(Path(tmp)))
        start = time.process_time()
        for k in range(0, lines, batch):
            for p in range(peers):
                sink.write(p, data[p][k:k + batch])
        sink.close()
        return time.process_time() - start


def main() -> None:
    env = environment()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=1024)
    ap.add_argument("--lines", type=int, default=100)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    raise_open_files(args.peers)  # (a file per peer and sink open at once)
    writer = event_writer()
    assert writer is not None, "tensorboard is not installed"
    sinks = {"jsonl": JsonlSink, "tensorboard": lambda f: TensorBoardSink(f, writer)}
    runs: dict[str, list[float]] = {k: [] for k in sinks}
    for _ in range(args.repeats):  # (interleaved: a load change hits both alike)
        for name, make in sinks.items():
            runs[name].append(_cost(make, args.peers, args.lines, args.batch))
    total = args.peers * args.lines
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"{args.peers} peers x {args.lines} lines of {len(KEYS)} keys, batches of "
          f"{args.batch}, median of {args.repeats} (CPU s)")
    print("| sink | CPU s | ms per line | ratio to jsonl |")
    print("|---|---:|---:|---:|")
    for k, v in med.items():
        print(f"| {k} | {v:.2f} | {1000 * v / total:.3f} | {v / med['jsonl']:.1f} |")
    print(json.dumps({"bench": "sink_cost", "peers": args.peers,
                      "lines": args.lines, "batch": args.batch,
                      "cpu_s": med, "ms_per_line": {k: 1000 * v / total for k, v in med.items()},
                      "env": finished(env)}))


if __name__ == "__main__":
    main()
