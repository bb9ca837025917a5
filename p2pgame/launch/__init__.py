"""Launching a scenario: resolve it, prepare, start the peers through a backend, collect.

:func:`run` is the public entry point of ``p2pgame run``.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pgame.algorithms import AlgorithmInfo, get_algorithm
from p2pgame.bus.transport import ControlServer, Curve, control_token, curve_keypair
from p2pgame.config import Scenario, ScenarioError, to_plain
from p2pgame.launch.accounts import accounts_csv, edge_accounts, refused_edges
from p2pgame.launch.backends import BackendError, make_backend, node_address, worker_blocks
from p2pgame.launch.hold import private_folder, signals_counted
from p2pgame.launch.launcher import Launcher
from p2pgame.launch.rundir import RunFolder, make_run_dir, write_error, write_topology
from p2pgame.peer import raise_open_files
from p2pgame.peer.runtime import PeerLaunch
from p2pgame.scenario import apply_overrides, load_raw, resolve
from p2pgame.topology import build_schedule, schedule_to_plain
from p2pgame.writable import why_unwritable

__all__ = ["RunResult", "run", "threads_per_peer", "n_workers", "placement_of",
           "resolve_devices", "cpu_count"]


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def placement_of(scenario: Scenario) -> str:
    """``process`` or ``workers``: as set, or for ``auto`` one process per peer up to
    max(8, 2 x cores) peers (each its own interpreter: isolation, no shared GIL), workers
    beyond (one interpreter, data set and evaluator per worker instead of per peer).  On
    Ray, ``auto`` is ``workers``: as many as the cluster holds (:func:`n_workers`)."""
    want = scenario.runtime.placement
    if want != "auto":
        return want
    if scenario.runtime.backend == "ray":  # (this machine's cores say nothing of the cluster)
        return "workers"
    return "process" if scenario.n <= max(8, 2 * cpu_count()) else "workers"


def n_workers(scenario: Scenario) -> int:
    """How many worker processes host the peers (placement ``workers``): as set, or one
    per core (one per GPU when peers run on GPUs), never more than the peers.

    On Ray (which this connects to) the actors are the workers: one per peer with
    placement ``process``, else as set, or as many as the cluster's nodes have room for
    (``worker_cpus``, ``worker_gpus`` each); a count that cannot be placed is refused
    (ScenarioError)."""
    rt = scenario.runtime
    if rt.backend == "ray":
        from p2pgame.launch.backends import ray_workers

        return ray_workers(rt, scenario.n, one_per_peer=placement_of(scenario) == "process")
    if placement_of(scenario) != "workers":
        return scenario.n
    want = rt.workers
    if not want:
        want = cpu_count()
        if rt.device != "cpu":
            try:
                import torch

                want = torch.cuda.device_count() or want
            except Exception:  # torch missing or broken: cores
                pass
    return max(1, min(want, scenario.n))


def threads_per_peer(scenario: Scenario, workers: int | None = None) -> int:
    """Threads per process a peer lives in: cores // processes (at least 1), unless set.
    With placement ``workers`` it is the worker's share, used by its peers' steps; on Ray,
    a worker's CPUs (``runtime.worker_cpus``: this machine's cores say nothing of the
    nodes).  ``workers``: :func:`n_workers`, if known already."""
    rt = scenario.runtime
    if rt.threads_per_peer:
        return rt.threads_per_peer
    if rt.backend == "ray":
        return max(1, int(rt.worker_cpus))
    return max(1, cpu_count() // (workers or n_workers(scenario)))


def peer_modules(info: AlgorithmInfo) -> list[str]:
    """What a peer of this algorithm imports, for the fork server to load once: the
    runtime, and for a torch algorithm its module and the evaluation (torchvision, and
    torch._dynamo with it, which a first optimiser step would import anyway)."""
    modules = ["p2pgame.peer.runtime"]
    if info.uses_torch:
        modules += [info.peer().__module__, "p2pgame.eval", "torch._dynamo"]
    return modules


def resolve_devices(scenario: Scenario, info: AlgorithmInfo) -> list[str]:
    """``auto``: CUDA when present, else the CPU.  Processes go round-robin over the GPUs:
    one per peer, or with placement ``workers`` one per worker (its peers share that GPU,
    each on its own stream).  On Ray a worker with a GPU bundle sees only its own GPU."""
    rt = scenario.runtime
    want = rt.device
    if want.startswith("cuda") and not info.uses_torch:
        raise ScenarioError(f"runtime.device = {want!r}: algorithm {scenario.algorithm_name!r} "
                            'computes with numpy on the CPU, not torch; use "auto" or "cpu"')
    if want == "cpu" or not info.uses_torch:
        return ["cpu"] * scenario.n
    if rt.backend == "ray":
        if want == "auto":
            return ["cuda:0" if rt.worker_gpus > 0 else "cpu"] * scenario.n
        return [want] * scenario.n
    try:
        import torch

        n_gpu = torch.cuda.device_count()
    except Exception:  # torch missing or broken: CPU
        n_gpu = 0
    if want != "auto":
        # Refused here, before any peer starts: else each peer fails on its own torch error.
        index = int(want.partition(":")[2] or 0)
        if not n_gpu:
            raise ScenarioError(f"runtime.device = {want!r}: no CUDA device is visible on this "
                                'machine; use "auto" or "cpu"')
        if index >= n_gpu:
            raise ScenarioError(f"runtime.device = {want!r}: only {n_gpu} CUDA device(s) are "
                                f"visible (cuda:0..cuda:{n_gpu - 1})")
    if want == "auto":
        if not n_gpu:
            return ["cpu"] * scenario.n
        process_of = list(range(scenario.n))
        if placement_of(scenario) == "workers":
            for w, block in enumerate(worker_blocks(list(range(scenario.n)),
                                                    n_workers(scenario))):
                for i in block:
                    process_of[i] = w
        return [f"cuda:{process_of[i] % n_gpu}" for i in range(scenario.n)]
    return [want] * scenario.n


def curve_keys(scenario: Scenario, run_dir: Path) -> tuple[dict[int, dict], Curve | None]:
    """``comm.security = "curve"``: a key pair per peer and one for the launcher, drawn for
    this run.  The public keys go to ``keys/`` in the run folder; each secret goes to its
    owner alone (in its launch data), never to a file, the summary or a log."""
    if scenario.comm.security != "curve":
        return {}, None
    pairs = {i: curve_keypair() for i in range(scenario.n)}
    public, secret = curve_keypair()
    peers = {i: pub for i, (pub, _) in pairs.items()}  # one object, shared by every launch
    folder = run_dir / "keys"
    folder.mkdir(exist_ok=True)
    (folder / "launcher.public").write_text(public + "\n")
    for i, pub in peers.items():
        (folder / f"peer-{i}.public").write_text(pub + "\n")
    launches = {i: {"curve_public": pub, "curve_secret": sec, "curve_peers": peers,
                    "curve_launcher": public} for i, (pub, sec) in pairs.items()}
    return launches, Curve(public, secret, frozenset(peers.values()))


def _resumable(run_dir: Path):
    """What ``--resume RUN_DIR`` continues: the run's own resolved scenario and each peer's
    latest resume state (``resume/peer-<i>.json``; none: that peer starts from step 0)."""
    where = f"--resume {run_dir}"
    try:
        rec = json.loads((run_dir / "resolved.json").read_text())
    except (OSError, ValueError):
        raise ScenarioError(f"{where}: no readable resolved.json: not a run folder") from None
    scenario_path = run_dir / "scenario.toml"
    scenario = resolve(rec["raw"], str(scenario_path))
    if scenario.comm.mode != "async":
        raise ScenarioError(f"{where}: a sync run cannot be resumed yet (each peer keeps only "
                            "its latest state, and sync peers must resume at one common step)")
    if not get_algorithm(scenario.algorithm_name).peer().resumable:
        raise ScenarioError(f"{where}: algorithm {scenario.algorithm_name!r} cannot resume a "
                            "peer yet (expfam can)")
    states = {i: run_dir / "resume" / f"peer-{i}.json" for i in range(scenario.n)}
    if not any(p.is_file() for p in states.values()):
        raise ScenarioError(f"{where}: no resume states (resume/peer-*.json); a run saves "
                            "them with runtime.checkpoint_every = K (or runtime.restart)")
    resumed = {i: p.read_text() if p.is_file() else "" for i, p in states.items()}
    return run_dir, scenario_path, rec.get("overrides", []), rec["raw"], scenario, resumed


def backend_node_address(backend: Any) -> str:
    """The address this machine is reached at: Ray's view of its node, or the host name's."""
    ray = getattr(backend, "ray", None)
    return ray.util.get_node_ip_address() if ray is not None else node_address()


def check_writable(path: Path, option: str) -> None:
    """Can the run folder be created at or under ``path``?  ScenarioError (one line,
    naming ``option``, ``path`` and why) if not (:func:`p2pgame.writable.why_unwritable`:
    tried for real, nothing left behind)."""
    why = why_unwritable(path)
    if why is not None:
        raise ScenarioError(f"{option} {path}: {why}; choose a folder you can write to")


# A peer's counters of what it sent and received: after --resume, the summary gives the
# whole run's (the interrupted part's added), and each part's apart.
TRAFFIC_KEYS = ("bytes_sent", "bytes_received", "header_bytes_sent", "payload_bytes_sent",
                "bytes_delivered", "messages_sent", "messages_received", "messages_delivered",
                "messages_dropped", "messages_rejected")


def add_before_resume(summary: dict[str, Any], before: Path) -> None:
    """A resumed run's traffic counters cover the whole run: the interrupted run's (from its
    summary, kept as ``summary-before-resume.json``) plus the resumed part's.  Steps redone
    from the last resume state were sent twice, and count twice: what was on the wire."""
    try:
        prior = json.loads(before.read_text())["peers"]
    except (OSError, ValueError, KeyError, TypeError):
        prior = {}
    for i, peer in summary["peers"].items():
        old = prior.get(i, {}) if isinstance(prior, dict) else {}
        peer["traffic_parts"] = {
            "before_resume": {k: old.get(k, 0) for k in TRAFFIC_KEYS},
            "resumed": {k: peer.get(k, 0) for k in TRAFFIC_KEYS}}
        for k in TRAFFIC_KEYS:
            if isinstance(old.get(k), int) and isinstance(peer.get(k), int):
                peer[k] += old[k]
    summary["traffic_covers"] = ("the whole run: the interrupted part and the resumed one "
                                 "(each apart in a peer's traffic_parts)")


def process_memory(peers: dict[str, dict]) -> list[dict[str, Any]]:
    """The processes peers lived in (one per peer, or one per worker), with their peak
    memory as last reported and the share of it per hosted peer."""
    procs: dict[int, dict[str, Any]] = {}
    for i, s in peers.items():
        if "pid" not in s:
            continue
        p = procs.setdefault(s["pid"], {"pid": s["pid"], "peers": [], "peak_rss_mb": 0.0})
        p["peers"].append(int(i))
        p["peak_rss_mb"] = max(p["peak_rss_mb"], s.get("process_peak_rss_mb", 0.0))
    for p in procs.values():
        p["peers"].sort()
        p["peak_rss_mb_per_peer"] = round(p["peak_rss_mb"] / len(p["peers"]), 1)
    return sorted(procs.values(), key=lambda p: p["peers"][0])


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    exit_code: int
    failures: dict[int, str] = field(default_factory=dict)


def run(
    scenario_path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    out: str | Path = "runs",
    data_root: str | Path = "data",
    progress: bool = True,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
) -> RunResult:
    """Run one scenario; the public entry point of ``p2pgame run``.

    ``resume``: the folder of an interrupted run, continued in place from each peer's
    latest resume state (``scenario_path`` and ``overrides`` are ignored: the run's own
    resolved scenario is used)."""
    resumed: dict[int, str] = {}
    if resume is not None:
        run_dir, scenario_path, overrides, raw, scenario, resumed = _resumable(Path(resume))
    else:
        raw = apply_overrides(load_raw(scenario_path), overrides)
        scenario = resolve(raw, str(scenario_path))  # every check before any process
    info = get_algorithm(scenario.algorithm_name)
    hooks = info.hooks()(scenario)
    data_root = Path(data_root)
    # Where results go is checked before anything is prepared or started.
    if resume is not None:
        check_writable(run_dir, "--resume")
        for name in ("summary.json", "links.csv", "endpoints.json"):
            if (run_dir / name).exists():  # the interrupted run's, kept beside the new ones
                (run_dir / name).replace(run_dir / name.replace(".", "-before-resume.", 1))
    elif run_dir is not None:
        run_dir = Path(run_dir)
        if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
            raise ScenarioError(
                f"--run-dir {run_dir}: already exists and is not an empty folder (an earlier "
                "run?); a run folder is never reused: name a new one, or omit --run-dir")
    if resume is None:
        check_writable(run_dir if run_dir is not None else Path(out),
                       "--run-dir" if run_dir is not None else "--out")
    # Refused before any work: no CUDA, more workers than a Ray cluster can place.
    devices = resolve_devices(scenario, info)
    workers = n_workers(scenario)
    threads = threads_per_peer(scenario, workers)
    hooks.prepare(data_root, lambda m: print(m, file=sys.stderr, flush=True))
    schedule = build_schedule(scenario.topology, scenario.steps, scenario.seed)
    where = Path(run_dir if run_dir is not None else out)
    try:
        if resume is None:
            if run_dir is None:
                run_dir = make_run_dir(Path(out), scenario.name)
            else:
                run_dir.mkdir(parents=True, exist_ok=True)
            where = run_dir
            shutil.copyfile(scenario_path, run_dir / "scenario.toml")
            # The scenario exactly as run (file + --set overrides), re-loadable by resolve.
            (run_dir / "resolved.json").write_text(json.dumps(
                {"source": str(scenario_path), "overrides": list(overrides), "raw": raw},
                indent=1))
            (run_dir / "scenario.json").write_text(json.dumps(to_plain(scenario), indent=1))
        write_topology(run_dir, schedule)
    except OSError as e:  # nothing started yet: one line, exit 2
        raise ScenarioError(write_error(Path(e.filename or where), e)) from None
    # The run's ipc sockets: short paths, this user's only (mkdtemp: mode 0700), in this
    # process's private folder, which a later start removes if this process is killed.
    sock_dir = Path(tempfile.mkdtemp(prefix="sock-", dir=private_folder()))
    comm = scenario.comm
    rt = scenario.runtime
    if scenario.n > 200:
        raise_open_files(scenario.n)  # the launcher holds a metrics file per peer
    remote = rt.backend == "ray"  # peers may live on other machines
    bind_node = comm.host == "node"
    if comm.transport == "tcp" and comm.security != "curve" and not comm.host.startswith("127."):
        print(f"warning: comm.host = {comm.host!r} is reachable from other machines and "
              "comm.security is 'none': anyone there can listen to the run and reach its "
              "sockets; set comm.security = \"curve\"", file=sys.stderr)
    placement = placement_of(scenario)
    backend = make_backend(rt, placement, workers, bind_node, peer_modules(info))
    host = comm.host
    if bind_node:  # the launcher listens on this machine's own address
        host = backend_node_address(backend)
    # Each peer gets its own token, derived from a secret of this run (README, "Security").
    secret = secrets.token_bytes(32)
    tokens = {i: control_token(secret, i) for i in range(scenario.n)}
    curve_launch, launcher_curve = curve_keys(scenario, run_dir)
    server = ControlServer(comm.transport, host, sock_dir.resolve(), tokens, launcher_curve)
    folder = RunFolder(run_dir, append=resume is not None)
    launcher = Launcher(scenario, schedule, folder, backend, progress)
    with signals_counted(launcher.on_signal) as hold:
        return _launch_and_summarise(
            scenario, overrides, resume, resumed, run_dir, hooks, info, data_root, threads,
            devices, sock_dir, workers, placement, backend, host, bind_node, remote, tokens,
            curve_launch, server, folder, launcher, hold)


def _launch_and_summarise(scenario, overrides, resume, resumed, run_dir, hooks, info,
                          data_root, threads, devices, sock_dir, workers, placement, backend,
                          host, bind_node, remote, tokens, curve_launch, server, folder,
                          launcher, hold) -> RunResult:
    """Start, supervise and stop the peers, then write the summary: whatever happens (a
    failed start, a full disk, Ctrl-C), the run folder says how the run ended."""
    comm, rt = scenario.comm, scenario.runtime
    plain_scenario, plain_schedule = to_plain(scenario), schedule_to_plain(launcher.schedule)
    t0 = time.monotonic()
    start_error = None
    try:
        # Every launch refers to the same scenario and schedule objects: pickling sends
        # them once per process, and a worker decodes them once for all its peers.
        # (vars, not asdict: asdict would copy them for every peer.)
        launcher.launches = {i: dict(vars(PeerLaunch(
            peer_id=i, scenario=plain_scenario, schedule=plain_schedule,
            control_endpoint=server.endpoint, ipc_dir=str(sock_dir.resolve()),
            data_root=str(data_root.resolve()),
            artifact_dir="" if remote else str(run_dir.resolve()),
            threads=threads, device=devices[i],
            bind_host=host if bind_node and not remote else "",
            token=tokens[i], launcher_pid=0 if remote else os.getpid(),
            incarnation=1 if resume is not None else 0, resume=resumed.get(i, ""),
            **curve_launch.get(i, {})))) for i in range(scenario.n)}
        for i, text in resumed.items():
            launcher.step_of[i] = json.loads(text)["step"] if text else 0
        try:
            backend.start(dict(launcher.launches))
        except (BackendError, OSError) as e:  # e.g. Ray could not place the workers
            start_error = f"the peers could not be started: {' '.join(str(e).split())}"
            print(f"error: {start_error}", file=sys.stderr)
            for i in launcher.peers:
                launcher.failures.setdefault(i, "not started: " + start_error)
        if start_error is None:
            asyncio.run(launcher.supervise(server))
    finally:
        launcher.stop_processes()
        nodes = backend.nodes()
        backend.close()
        server.close()
        folder.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
    summary = {
        "scenario": scenario.name,
        "seed": scenario.seed,
        "mode": comm.mode,
        "overrides": list(overrides),
        "n_peers": scenario.n,
        "steps": scenario.steps,
        "wall_s": launcher.wall or time.monotonic() - t0,
        "threads_per_peer": threads,
        "placement": placement,
        "workers": workers if placement == "workers" else None,
        "backend": rt.backend,
        "nodes": nodes,
        "failed_peers": sorted(launcher.failures),
        "failures": {str(k): v for k, v in sorted(launcher.failures.items())},
        "warnings": {str(k): v for k, v in sorted(launcher.warnings.items())},
        "interrupted": bool(launcher.interrupted),
        "start_error": start_error,
        "control_rejected": server.junk + launcher.bad_control,
        "restarts": {str(k): v for k, v in sorted(launcher.restarts.items())},
        "resumed_from": ({str(i): json.loads(t)["step"] if t else 0 for i, t in resumed.items()}
                         if resume is not None else None),
        "table_columns": list(hooks.table_columns),
        "peers": {str(i): launcher.summaries[i] for i in sorted(launcher.summaries)},
        "peer_files": {str(i): f for i, f in sorted(launcher.files.items()) if f},
    }
    if resume is not None:
        add_before_resume(summary, run_dir / "summary-before-resume.json")
    summary["processes"] = process_memory(summary["peers"])
    summary["links"] = edge_accounts(summary["peers"], frozenset(launcher.restarts))
    folder.write(run_dir / "links.csv", accounts_csv(summary["links"]))
    unbalanced = [f"{r['src']}->{r['dst']}" for r in summary["links"]
                  if r["in_transport"] < 0 and not r["restarted"]]
    if unbalanced:
        print(f"warning: the accounts of edges {', '.join(unbalanced)} do not add up "
              "(a receiver counted more than its sender sent)", file=sys.stderr)
    summary["refused_edges"] = refused = refused_edges(summary["links"])
    for e in refused:
        src, dst = e["src"], e["dst"]
        reasons = summary["peers"][str(dst)].get("rejected_reasons", {})
        why = (f"refused {e['rejected']} of the {e['offered']} messages that arrived from "
               f"peer {src} ({100 * e['share']:.1f} %; its reasons: "
               + (", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "none") + ")")
        if comm.mode == "sync":  # each refused message is a round done without
            launcher.failures.setdefault(dst, why)
            summary["failed_peers"] = sorted(launcher.failures)
            summary["failures"] = {str(k): v for k, v in sorted(launcher.failures.items())}
        else:
            prior = summary["warnings"].get(str(dst))
            summary["warnings"][str(dst)] = f"{prior}; {why}" if prior else why
        print(f"warning: peer {dst} {why}", file=sys.stderr)
    if not (launcher.failures or launcher.interrupted or folder.error or start_error):
        hold.raise_now = True  # Ctrl-C cuts a long evaluation short, not the summary
        try:
            hooks.after_run(run_dir, summary)
        except KeyboardInterrupt:
            summary["evaluation"] = "interrupted"
        except OSError as e:
            folder.error = folder.error or write_error(run_dir, e)
        finally:
            hold.raise_now = False
    summary["interrupted"] = bool(launcher.interrupted)
    summary["write_error"] = folder.error
    folder.write(run_dir / "summary.json", json.dumps(summary, indent=1))
    if folder.error:
        print(f"error: {folder.error}; every complete line already written is kept",
              file=sys.stderr)
    code = 0
    if launcher.interrupted:
        code = 130
    elif launcher.failures or folder.error or start_error:
        code = 1
    return RunResult(run_dir, summary, code, dict(launcher.failures))
