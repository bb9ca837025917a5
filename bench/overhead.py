"""Runtime overhead of a game peer: steps/s in a real 2-peer run against a bare loop.

1. A real run of ``topologies/mnist-2peers.toml`` through ``p2pgame.launch.run``
   (``steps``, a small ``learner.eval_samples``, ``learner.checkpoint=false``,
   plus any ``--set``): each peer's ``steps_per_s`` and its own wall-time split
   (``time_split_s``: train, sample, encode, send, receive_decode, wait).
2. The same model (``make_model(cfg.model)``, ``SymmetricLearner``) trained in a bare
   loop without any bus, with the threads a peer gets (``threads_per_peer`` of the
   run) and the same batch composition: ``round(alpha * batch)`` real images of the
   peer's own partition + the rest synthetic tuples drawn locally from the model
   itself (``model.sample(samples_per_message)`` once per step, converted to numpy
   as the peer does before publishing; then the same random pick). Run as
   ``n`` concurrent processes (like the peers: the baseline) and as 1 process.

ratio = mean peer steps/s / mean bare steps/s (n processes).  A sync run is also compared
with the bare loops moving in lockstep (a barrier where a sync peer waits, between its
draw and its training step; nothing exchanged):
``lockstep_cost`` = lockstep / free bare loops is what synchronisation costs by itself,
``ratio_vs_lockstep`` = peer / lockstep what the runtime costs on top.  With ``--repeats R`` the
whole measurement (bare loops, then the run) is made R times in a row and the ratio
reported is the median of the R ratios (each repeat's ratio, rates and load average are
in the JSON too): on a shared machine one repeat can land on a busy moment.

Usage: ``.venv/bin/python bench/overhead.py [--steps 300] [--repeats 3] [--data data]
[--set k=v ...] [--smoke]``. The last stdout line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import benchenv

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SPLIT_KEYS = ("train", "sample", "encode", "send", "receive_decode", "wait")


def bare_worker(peer: int, raw: dict, source: str, data_root: str, threads: int, steps: int,
                barrier, queue, lockstep: bool = False) -> None:
    """One bare training loop (its own process), the peer's batch composition, no bus.
    ``lockstep``: the loops wait for each other where a sync run's peers do, between
    drawing a round and training on the neighbours' (a barrier, nothing exchanged): what
    moving in lockstep costs by itself."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from p2pgame.data.image import peer_images
    from p2pgame.models import SymmetricLearner, make_model
    from p2pgame.rng import derive_seed
    from p2pgame.scenario import resolve
    from p2pgame.topology import build_schedule

    scenario = resolve(raw, source)
    player = scenario.player(peer)
    cfg = player.learner if hasattr(player, "learner") else player.algorithm
    overrides = {"seed": derive_seed(scenario.seed, "peer", peer, "model-init")}
    if cfg.lr:
        overrides.update(lr_p=cfg.lr, lr_q=cfg.lr)
    model = make_model(getattr(cfg, "model", None) or cfg.kind, **overrides)  # (learner: kind)
    learner = SymmetricLearner(model)
    images, _ = peer_images(scenario.data, scenario.n, scenario.seed, peer, Path(data_root))
    row = build_schedule(scenario.topology, scenario.steps, scenario.seed).at(0).row(peer)
    n_own = round(row[peer] * cfg.batch)
    n_syn = sum(round(w * cfg.batch) for j, w in row.items() if j != peer and w > 0)
    spm = scenario.comm.samples_per_message or cfg.batch
    gen = torch.Generator().manual_seed(derive_seed(scenario.seed, "peer", peer, "sampling"))
    data_gen = torch.Generator().manual_seed(derive_seed(scenario.seed, "peer", peer, "order"))
    t_sample = t_train = cpu_train = 0.0
    barrier.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        a = time.perf_counter()
        tuples = {k: v.cpu().numpy() for k, v in model.sample(spm, gen).items()}  # publish
        if lockstep:  # a sync peer waits here: for its neighbours' round of this step
            barrier.wait()
        b, cb = time.perf_counter(), time.thread_time()
        syn = None
        if n_syn:
            pick = torch.randint(0, spm, (n_syn,), generator=data_gen).numpy()
            syn = {f: torch.from_numpy(np.ascontiguousarray(t[pick])) for f, t in tuples.items()}
        idx = torch.randint(0, len(images), (n_own,), generator=data_gen)
        learner.step(images[idx], syn, gen, q_batch=n_own if n_own else None)
        t_sample += b - a
        t_train += time.perf_counter() - b
        cpu_train += time.thread_time() - cb
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    queue.put({"peer": peer, "steps_per_s": steps / wall, "wall_s": wall,
               "time_split_s": {"train": round(t_train, 4), "sample": round(t_sample, 4),
                                "train_cpu": round(cpu_train, 4), "process_cpu": round(cpu, 4)}})


class _Sequential:
    """Stands in for the barrier and the queue when the bare loops run in this process."""

    def __init__(self) -> None:
        self.items: list[dict] = []

    def wait(self) -> None:
        pass

    def put(self, item: dict) -> None:
        self.items.append(item)


def run_bare(n_procs: int, raw: dict, source: str, data_root: str, threads: int,
             steps: int, inprocess: bool = False, lockstep: bool = False) -> list[dict]:
    if inprocess:  # smoke tests: one after the other in this process, no torch start-up
        seq = _Sequential()
        for i in range(n_procs):
            bare_worker(i, raw, source, data_root, threads, steps, seq, seq)
        return seq.items
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n_procs)
    queue = ctx.Queue()
    procs = [ctx.Process(target=bare_worker, name=f"bench-bare-{i}",
                         args=(i, raw, source, data_root, threads, steps, barrier, queue,
                               lockstep))
             for i in range(n_procs)]
    for p in procs:
        p.start()
    out = []
    try:
        for _ in procs:
            out.append(queue.get(timeout=600))
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.terminate()
                p.join()
    if any(p.exitcode != 0 for p in procs):
        raise RuntimeError(f"bare worker failed: {[p.exitcode for p in procs]}")
    return sorted(out, key=lambda r: r["peer"])


def one_repeat(args, raw: dict, overrides: list[str], scenario, threads: int) -> dict:
    """One measurement: the bare loops (n processes), the peer run, the 1-process bare
    loop; prints its table, returns its numbers."""
    from p2pgame.launch import run

    n = scenario.n
    load = {}
    phase: dict[str, float] = {}
    t = time.monotonic()
    load["bare_n"] = os.getloadavg()[0]
    bare_n = run_bare(n, raw, args.scenario, args.data, threads, args.steps,
                      inprocess=args.bare_inprocess)
    phase["bare_n"] = time.monotonic() - t
    bare_lock = None
    if scenario.comm.mode == "sync" and n > 1 and not args.bare_inprocess:
        load["bare_lockstep"] = os.getloadavg()[0]
        t = time.monotonic()
        bare_lock = run_bare(n, raw, args.scenario, args.data, threads, args.steps,
                             lockstep=True)
        phase["bare_lockstep"] = time.monotonic() - t

    tmp = tempfile.TemporaryDirectory(prefix="p2pg-overhead-")
    out_dir = args.out or tmp.name
    load["peer_run"] = os.getloadavg()[0]
    t, launcher_cpu = time.monotonic(), time.process_time()
    res = run(args.scenario, overrides, out=out_dir, data_root=args.data, progress=False)
    phase["peer_run"] = time.monotonic() - t
    # The launcher's own CPU time over the whole run (this process: start-up, supervision,
    # the evaluator's preparation and the summary; not the peers').
    launcher_cpu = time.process_time() - launcher_cpu
    if res.exit_code != 0:
        raise SystemExit(f"peer run failed: {res.failures}")
    summary = res.summary
    peers = summary["peers"]
    assert summary["threads_per_peer"] == threads

    bare_1 = None
    if not args.no_bare1:
        load["bare_1"] = os.getloadavg()[0]
        t = time.monotonic()
        bare_1 = run_bare(1, raw, args.scenario, args.data, threads, args.steps)
        phase["bare_1"] = time.monotonic() - t
    tmp.cleanup()

    peer_sps = statistics.mean(p["steps_per_s"] for p in peers.values())
    bare_sps = statistics.mean(r["steps_per_s"] for r in bare_n)
    bare1_sps = bare_1[0]["steps_per_s"] if bare_1 else float("nan")
    ratio = peer_sps / bare_sps
    lock_sps = statistics.mean(r["steps_per_s"] for r in bare_lock) if bare_lock else None
    split = {k: statistics.mean(p["time_split_s"].get(k, 0.0) for p in peers.values())
             for k in SPLIT_KEYS}
    peer_wall = statistics.mean(p["steps"] / p["steps_per_s"] for p in peers.values())

    print(f"{'what':<28}{'steps/s':>9}{'wall s':>9}{'load avg':>10}")
    for i, p in sorted(peers.items()):
        print(f"{'peer ' + i + ' (2-peer run)':<28}{p['steps_per_s']:>9.2f}"
              f"{p['steps'] / p['steps_per_s']:>9.1f}{load['peer_run']:>10.2f}")
    for r in bare_n:
        label = (f"bare in-process, loop {r['peer']}" if args.bare_inprocess
                 else f"bare {n}-proc, proc {r['peer']}")
        print(f"{label:<28}{r['steps_per_s']:>9.2f}{r['wall_s']:>9.1f}{load['bare_n']:>10.2f}")
    if bare_1:
        print(f"{'bare 1-proc':<28}{bare1_sps:>9.2f}{bare_1[0]['wall_s']:>9.1f}"
              f"{load['bare_1']:>10.2f}")
    if bare_lock:
        for r in bare_lock:
            print(f"{'bare lockstep, proc ' + str(r['peer']):<28}{r['steps_per_s']:>9.2f}"
                  f"{r['wall_s']:>9.1f}{load['bare_lockstep']:>10.2f}")
    print(f"ratio peer / bare {n}-proc = {ratio:.3f}   (peer / bare 1-proc = "
          f"{peer_sps / bare1_sps:.3f})")
    if lock_sps:
        print(f"bare lockstep / bare = {lock_sps / bare_sps:.3f} (what lockstep itself costs); "
              f"peer / bare lockstep = {peer_sps / lock_sps:.3f}")
    print(f"peer wall-time split, mean over peers (s of {peer_wall:.1f} s):")
    for k in SPLIT_KEYS:
        print(f"  {k:<16}{split[k]:>8.2f}  {100 * split[k] / peer_wall:5.1f} %")
    bare_split = {k: statistics.mean(r["time_split_s"][k] for r in bare_n)
                  for k in ("train", "sample")}
    print(f"bare {n}-proc split: train {bare_split['train']:.2f} s, "
          f"sample {bare_split['sample']:.2f} s")
    # CPU time of the training thread: work, whatever the waits for a core (with one
    # torch thread a process, all of a step's compute).
    cpu = {"peer_train": statistics.mean(p["time_split_s"].get("train_cpu", 0.0)
                                         for p in peers.values()),
           "peer_train_handoff": statistics.mean(p["time_split_s"].get("train_handoff", 0.0)
                                                 for p in peers.values()),
           "peer_process": statistics.mean(p["time_split_s"].get("process_cpu", 0.0)
                                           for p in peers.values()),
           "bare_train": statistics.mean(r["time_split_s"]["train_cpu"] for r in bare_n),
           "bare_process": statistics.mean(r["time_split_s"]["process_cpu"] for r in bare_n),
           "launcher_run": launcher_cpu}
    print(f"CPU s, training thread: peer {cpu['peer_train']:.2f} (its hand-offs "
          f"{cpu['peer_train_handoff']:.3f} s of wall time), bare {cpu['bare_train']:.2f}; "
          f"whole process: peer {cpu['peer_process']:.2f}, bare {cpu['bare_process']:.2f}; "
          f"the launcher over the run: {cpu['launcher_run']:.2f}")
    return {"ratio": round(ratio, 4), "peer_steps_per_s": round(peer_sps, 3),
            "bare_steps_per_s": round(bare_sps, 3),
            "bare_1proc_steps_per_s": round(bare1_sps, 3) if bare_1 else None,
            "bare_lockstep_steps_per_s": round(lock_sps, 3) if lock_sps else None,
            "lockstep_cost": round(lock_sps / bare_sps, 4) if lock_sps else None,
            "ratio_vs_lockstep": round(peer_sps / lock_sps, 4) if lock_sps else None,
            "ratio_vs_1proc": round(peer_sps / bare1_sps, 4) if bare_1 else None,
            "time_split_s": {k: round(v, 4) for k, v in split.items()},
            "bare_time_split_s": {k: round(v, 4) for k, v in bare_split.items()},
            "cpu_s": {k: round(v, 4) for k, v in cpu.items()},
            "phase_s": {k: round(v, 1) for k, v in phase.items()},
            "loadavg": {k: round(v, 2) for k, v in load.items()}}


def main(argv=None) -> dict:
    env = benchenv.environment()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", default=str(ROOT / "topologies" / "mnist-2peers.toml"))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--eval-samples", type=int, default=500)
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="extra scenario override (both the run and the bare loop)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="measure this many times; the ratio reported is the median")
    ap.add_argument("--out", default="", help="run folder parent (default: a temp dir)")
    ap.add_argument("--no-bare1", action="store_true", help="skip the 1-process bare loop")
    ap.add_argument("--bare-inprocess", action="store_true",
                    help="run the bare loops one after the other in this process (smoke)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny: 6 steps, batch 64, 64 eval samples, no 1-process bare loop")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    from p2pgame.launch import threads_per_peer
    from p2pgame.scenario import apply_overrides, load_raw, resolve

    # The learner's keys: [learner] in the new form, [algorithm] in the old one.
    key = "algorithm" if "algorithm" in load_raw(args.scenario) else "learner"
    if args.smoke:
        args.steps, args.eval_samples, args.no_bare1, args.bare_inprocess = 6, 64, True, True
        args.overrides = [f"{key}.batch=64", "comm.samples_per_message=32", *args.overrides]
    overrides = [f"steps={args.steps}", f"{key}.eval_samples={args.eval_samples}",
                 f"{key}.checkpoint=false", 'runtime.device="cpu"', *args.overrides]
    raw = apply_overrides(load_raw(args.scenario), overrides)
    scenario = resolve(raw, args.scenario)
    n = scenario.n
    threads = threads_per_peer(scenario)
    batch = raw.get("algorithm", raw.get("learner", {})).get("batch")
    print(f"overhead: {scenario.name}, {n} peers, {args.steps} steps, batch {batch}, "
          f"{threads} thread(s) per process, cpus {os.cpu_count()}, {args.repeats} repeat(s)")
    reps = []
    for k in range(args.repeats):
        if args.repeats > 1:
            print(f"-- repeat {k + 1}/{args.repeats}")
        reps.append(one_repeat(args, raw, overrides, scenario, threads))
    ratios = [r["ratio"] for r in reps]
    med = statistics.median(ratios)
    mid = min(reps, key=lambda r: abs(r["ratio"] - med))  # (the median repeat's details)
    locks = [r["ratio_vs_lockstep"] for r in reps if r["ratio_vs_lockstep"] is not None]
    if args.repeats > 1:
        print(f"ratio per repeat: {', '.join(f'{x:.3f}' for x in ratios)}; median {med:.3f}")
        if locks:
            print(f"peer / bare lockstep per repeat: {', '.join(f'{x:.3f}' for x in locks)}; "
                  f"median {statistics.median(locks):.3f}")
    out = {**mid, "ratio": round(med, 4), "ratios": ratios,
           "ratio_vs_lockstep": round(statistics.median(locks), 4) if locks else None,
           "ratios_vs_lockstep": locks,
           "peer_steps_per_s_per_repeat": [r["peer_steps_per_s"] for r in reps],
           "bare_steps_per_s_per_repeat": [r["bare_steps_per_s"] for r in reps],
           "loadavg_per_repeat": [r["loadavg"] for r in reps],
           "bare_mode": "in-process sequential" if args.bare_inprocess else f"{n} processes",
           "threads_per_peer": threads, "steps": args.steps, "n_peers": n, "batch": batch,
           "repeats": args.repeats, "env": benchenv.finished(env)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
