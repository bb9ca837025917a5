"""The launcher: validate a scenario, spawn one process per peer, supervise, collect.

The launcher owns the run folder and the control channel.  It starts the peers
(spawn start method), waits for every ``hello`` (endpoint), tells each peer
whom to connect to, waits for every ``linked`` (handshake complete), says
``go``, shows progress, and finally asks everyone to ``shutdown``.  A peer
that dies or reports an error is named in ``summary.json`` and in the exit
status; the others are asked to stop.  SIGINT/SIGTERM: ask, wait, terminate,
kill.
"""

from __future__ import annotations

import asyncio
import csv
import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from p2pgame.algorithms import get_algorithm
from p2pgame.bus.transport import ControlServer
from p2pgame.config import Scenario, apply_overrides, load_raw, scenario_from_dict, to_plain
from p2pgame.peer import peer_main
from p2pgame.topology import Schedule, build_schedule


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def threads_per_peer(scenario: Scenario) -> int:
    if scenario.runtime.threads_per_peer:
        return scenario.runtime.threads_per_peer
    return max(1, cpu_count() // scenario.n)


def resolve_devices(scenario: Scenario) -> list[str]:
    """``auto``: CUDA when present, peers spread over the GPUs; else the CPU."""
    want = scenario.runtime.device
    if want == "cpu" or scenario.algorithm.get("name") == "expfam":
        return ["cpu"] * scenario.n
    try:
        import torch

        n_gpu = torch.cuda.device_count()
    except Exception:  # torch missing or broken: CPU
        n_gpu = 0
    if want == "auto":
        return [f"cuda:{i % n_gpu}" for i in range(scenario.n)] if n_gpu else ["cpu"] * scenario.n
    return [want] * scenario.n


def make_run_dir(out: Path, name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(out) / f"{name}-{stamp}"
    run_dir, k = base, 1
    while run_dir.exists():
        k += 1
        run_dir = Path(f"{base}-{k}")
    run_dir.mkdir(parents=True)
    return run_dir


def write_topology(run_dir: Path, schedule: Schedule) -> None:
    epochs = [
        {
            "start_step": start,
            "edges": [list(e) for e in top.edges],
            "weights": top.weights.round(12).tolist(),
            "second_eigenvalue_modulus": top.second_eigenvalue_modulus(),
        }
        for start, top in zip(schedule.starts, schedule.topologies, strict=True)
    ]
    (run_dir / "topology.json").write_text(json.dumps({"epochs": epochs}, indent=1))
    first = schedule.topologies[0]
    with (run_dir / "edges.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["src", "dst", "weight"])
        for s, d in first.edges:
            w.writerow([s, d, float(first.weights[d, s])])
    with (run_dir / "weights.csv").open("w", newline="") as f:
        csv.writer(f).writerows(first.weights.tolist())


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    exit_code: int
    failures: dict[int, str] = field(default_factory=dict)


class Launcher:
    def __init__(
        self,
        scenario: Scenario,
        raw: dict,
        run_dir: Path,
        data_root: Path,
        progress: bool = True,
    ) -> None:
        self.scenario = scenario
        self.raw = raw
        self.run_dir = run_dir
        self.data_root = data_root
        self.progress = progress
        self.schedule = build_schedule(scenario)
        self.failures: dict[int, str] = {}
        self.summaries: dict[int, dict] = {}
        self.interrupted = 0
        self.step_of: dict[int, int] = {}

    def log(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    async def _recv(self, server: ControlServer, procs: dict[int, Any], timeout: float = 0.2):
        """One control message, or None; notices dead peers on the way."""
        got = await server.recv(timeout)
        for i, p in procs.items():
            if not p.is_alive() and i not in self.summaries and i not in self.failures:
                self.failures[i] = f"process exited with code {p.exitcode}"
        if got is not None:
            peer, msg = got
            if msg.get("type") == "error":
                self.failures.setdefault(peer, msg.get("error", "error"))
        return got

    async def _gather(self, server, procs, kind: str, timeout: float, want: set[int]):
        deadline = time.monotonic() + timeout
        got: dict[int, dict] = {}
        while set(got) < want - set(self.failures):
            if self.failures or self.interrupted:
                return got
            if time.monotonic() > deadline:
                missing = sorted(want - set(got))
                for i in missing:
                    self.failures.setdefault(i, f"no '{kind}' within {timeout:g} s")
                return got
            m = await self._recv(server, procs)
            if m and m[1].get("type") == kind:
                got[m[0]] = m[1]
        return got

    async def supervise(self, procs: dict[int, Any], server: ControlServer) -> None:
        rt = self.scenario.runtime
        everyone = set(procs)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)
        hellos = await self._gather(server, procs, "hello", rt.start_timeout_s, everyone)
        if not self.failures and not self.interrupted:
            endpoints = {i: m["endpoint"] for i, m in hellos.items()}
            # Where each peer publishes, for outside subscribers (README, "Wire format").
            (self.run_dir / "endpoints.json").write_text(json.dumps(
                {str(i): {"endpoint": endpoints[i], "pid": hellos[i].get("pid")}
                 for i in sorted(endpoints)}, indent=1))
            for i in procs:
                peers = {str(j): endpoints[j] for j in self.schedule.union_in(i)}
                await server.send(i, {"type": "connect", "endpoints": peers})
            await self._gather(server, procs, "linked", rt.start_timeout_s, everyone)
        if self.failures or self.interrupted:
            for i in procs:
                await server.send(i, {"type": "stop"})
            return
        for i in procs:
            await server.send(i, {"type": "go"})
        self.t_go = time.monotonic()
        await self._measured_phase(procs, server)

    async def _measured_phase(self, procs, server) -> None:
        total = self.scenario.steps * len(procs)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=total, desc=self.scenario.name, unit="step", file=sys.stderr)
        stop_sent = False
        stop_deadline = None
        while set(self.summaries) | set(self.failures) < set(procs):
            m = await self._recv(server, procs)
            if m:
                peer, msg = m
                kind = msg.get("type")
                if kind == "progress":
                    self.step_of[peer] = msg["step"]
                elif kind == "done":
                    self.summaries[peer] = msg["summary"]
                    self.step_of[peer] = msg["summary"]["steps"]
                if bar is not None:
                    bar.n = sum(self.step_of.values())
                    bar.refresh()
            if (self.failures or self.interrupted) and not stop_sent:
                stop_sent = True
                stop_deadline = time.monotonic() + self.scenario.runtime.stop_timeout_s
                for i in procs:
                    if i not in self.summaries and i not in self.failures:
                        await server.send(i, {"type": "stop"})
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                break
            if self.interrupted > 1:
                break
        if bar is not None:
            bar.close()
        self.wall = time.monotonic() - self.t_go
        for i in procs:
            await server.send(i, {"type": "shutdown"})

    def _on_signal(self) -> None:
        self.interrupted += 1
        if self.interrupted == 1:
            self.log("stopping: asking peers to stop (again to force)")

    def stop_processes(self, procs: dict[int, Any]) -> None:
        """Ask (already sent), join with timeout, terminate, kill."""
        deadline = time.monotonic() + self.scenario.runtime.stop_timeout_s
        for p in procs.values():
            p.join(max(0.0, deadline - time.monotonic()))
        for p in procs.values():
            if p.is_alive():
                p.terminate()
        for p in procs.values():
            p.join(2.0)
            if p.is_alive():
                p.kill()
                p.join()
        for i, p in procs.items():
            if p.exitcode not in (0, None) and i not in self.failures:
                self.failures[i] = f"process exited with code {p.exitcode}"


def run(
    scenario_path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    out: str | Path = "runs",
    data_root: str | Path = "data",
    progress: bool = True,
    run_dir: str | Path | None = None,
) -> RunResult:
    """Run one scenario; the public entry point of ``p2pgame run``."""
    raw = apply_overrides(load_raw(scenario_path), overrides)
    scenario = scenario_from_dict(raw, str(scenario_path))  # every check before any process
    cls = get_algorithm(scenario.algorithm["name"])
    data_root = Path(data_root)
    cls.prepare(scenario, data_root, lambda m: print(m, file=sys.stderr, flush=True))
    if run_dir is None:
        run_dir = make_run_dir(Path(out), scenario.name)
    else:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(scenario_path, run_dir / "scenario.toml")
    # The scenario exactly as run (file + --set overrides), re-loadable by scenario_from_dict.
    (run_dir / "resolved.json").write_text(json.dumps(
        {"source": str(scenario_path), "overrides": list(overrides), "raw": raw}, indent=1))
    (run_dir / "scenario.json").write_text(json.dumps(to_plain(scenario), indent=1))
    launcher = Launcher(scenario, raw, run_dir, data_root, progress)
    write_topology(run_dir, launcher.schedule)
    threads = threads_per_peer(scenario)
    devices = resolve_devices(scenario)
    sock_dir = run_dir / "sock"
    tmp_sock = None
    if len(str(sock_dir.resolve())) > 80:  # unix socket paths are short; fall back to /tmp
        tmp_sock = Path(tempfile.mkdtemp(prefix="p2pg-"))
        sock_dir = tmp_sock
    sock_dir.mkdir(exist_ok=True)
    comm = scenario.comm
    ctx = mp.get_context("spawn")
    server = ControlServer(comm.transport, comm.host, sock_dir.resolve())
    procs = {
        i: ctx.Process(
            target=peer_main,
            name=f"p2pgame-peer-{i}",
            args=(i, raw, str(scenario_path), str(run_dir.resolve()), server.endpoint,
                  str(sock_dir.resolve()), str(data_root.resolve()), threads, devices[i]),
        )
        for i in range(scenario.n)
    }
    t0 = time.monotonic()
    try:
        for p in procs.values():
            p.start()
        asyncio.run(launcher.supervise(procs, server))
    finally:
        launcher.stop_processes(procs)
        server.close()
        shutil.rmtree(tmp_sock or sock_dir, ignore_errors=True)
    summary = {
        "scenario": scenario.name,
        "seed": scenario.seed,
        "mode": comm.mode,
        "overrides": list(overrides),
        "n_peers": scenario.n,
        "steps": scenario.steps,
        "wall_s": getattr(launcher, "wall", time.monotonic() - t0),
        "threads_per_peer": threads,
        "failed_peers": sorted(launcher.failures),
        "failures": {str(k): v for k, v in sorted(launcher.failures.items())},
        "interrupted": bool(launcher.interrupted),
        "peers": {str(i): launcher.summaries[i] for i in sorted(launcher.summaries)},
    }
    if not launcher.failures and not launcher.interrupted:
        cls.after_run(scenario, run_dir, summary)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    code = 0
    if launcher.failures:
        code = 1
    elif launcher.interrupted:
        code = 130
    return RunResult(run_dir, summary, code, dict(launcher.failures))
