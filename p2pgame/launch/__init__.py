"""Launching a scenario, in four stages; :func:`run` (``p2pgame run``) is the four in order.

1. :func:`prepare` -> :class:`Prepared`: the scenario (resolved, or the resumed run's
   own), every check that needs no process (an output that can be written, devices,
   workers), the method's preparation (data, evaluator), then the run folder with the
   scenario and the topology in it.  Anything wrong is a ScenarioError (exit status 2).
2. :func:`start` -> :class:`Started`: the run's socket folder, the backend, the control
   server with a token (and CURVE keys) per peer, the launcher; nothing runs yet.
   :func:`start_peers` gives each peer its PeerLaunch and starts them (in stage 3).
3. :func:`supervise` -> :class:`Ended`: the peers started, the launcher's control loop
   until each reported or failed, then whatever happened everything stopped and closed.
4. :func:`summarise` -> :class:`RunResult`: ``summary.json``, ``links.csv``, refused
   edges, the method's work after the run, TensorBoard's end-of-run part (sample grids,
   the edges' accounts), the exit status.

Which backend runs the peers is the backend's own business (:mod:`.backends`): this
module asks its class what it needs (placement, workers, threads, devices, whether
peers are remote) and never which backend it is.  The method of a scenario (its
exchange x learner pairs, from their registries) is reached through :func:`method_of`
alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pgame.bus.transport import ControlServer, Curve, control_token, curve_keypair
from p2pgame.config import Scenario, ScenarioError, to_plain
from p2pgame.exchange import Method, method
from p2pgame.launch.accounts import accounts_csv, edge_accounts, refused_edges
from p2pgame.launch.backends import Backend, BackendError, backend_class, cpu_count, make_backend
from p2pgame.launch.hold import SignalHold, private_folder, signals_counted
from p2pgame.launch.launcher import Launcher
from p2pgame.launch.logs import setup_logging
from p2pgame.launch.rundir import RunFolder, RunLayout, make_run_dir, write_error, write_topology
from p2pgame.launch.sinks import JsonlSink, MetricSink, TargetSink
from p2pgame.launch.summary import (
    add_before_resume,
    exit_code,
    process_memory,
    refusal,
    unbalanced_edges,
)
from p2pgame.launch.tensorboard import TensorBoardSink, tensorboard_sink
from p2pgame.peer import raise_open_files
from p2pgame.peer.runtime import PeerLaunch
from p2pgame.scenario import apply_overrides, load_raw, load_text, resolve
from p2pgame.topology import Schedule, build_schedule, schedule_to_plain
from p2pgame.writable import why_unwritable

__all__ = ["RunResult", "ScenarioText", "run", "threads_per_peer", "n_workers", "placement_of",
           "resolve_devices", "cpu_count", "method_of", "check_writable", "prepare", "start",
           "supervise", "summarise", "Prepared", "Started", "Ended"]

log = logging.getLogger(__name__)


# -- the method, and what the backend decides ------------------------------------------

def method_of(scenario: Scenario) -> Method:
    """The scenario's method (its exchange x learner pairs).  The launcher's one way to
    it: everything else here takes what this returns."""
    return method(scenario)


def placement_of(scenario: Scenario) -> str:
    """``process`` or ``workers``: as set, or what ``auto`` means to the scenario's
    backend (locally: one process per peer up to max(8, 2 x cores) peers, workers
    beyond)."""
    want = scenario.runtime.placement
    if want != "auto":
        return want
    return backend_class(scenario.runtime).auto_placement(scenario)


def n_workers(scenario: Scenario) -> int:
    """How many processes host the peers: the backend's answer for the placement
    (locally: one per peer, or with placement ``workers`` as set, or one per core, one per
    GPU when peers run on GPUs, never more than the peers).  A count the backend cannot
    place is refused (ScenarioError)."""
    return backend_class(scenario.runtime).n_workers(scenario, placement_of(scenario))


def threads_per_peer(scenario: Scenario, workers: int | None = None) -> int:
    """Threads per process a peer lives in: as set, else the backend's answer (locally
    cores // processes, at least 1; with placement ``workers`` the worker's share, used by
    its peers' steps).  ``workers``: :func:`n_workers`, if known already."""
    rt = scenario.runtime
    if rt.threads_per_peer:
        return rt.threads_per_peer
    return backend_class(rt).threads_per_peer(scenario, placement_of(scenario), workers)


def resolve_devices(scenario: Scenario, info: Method) -> list[str]:
    """Each peer's device: the CPU for a method that computes with numpy, or
    ``runtime.device = "cpu"``; else the backend's answer (``auto``: CUDA when present,
    round-robin over the GPUs by process).  A device that cannot be had is refused here,
    before any peer starts (ScenarioError)."""
    want = scenario.runtime.device
    if want.startswith("cuda") and not info.uses_torch:
        raise ScenarioError(f"runtime.device = {want!r}: {scenario.method_name} computes with "
                            'numpy on the CPU, not torch; use "auto" or "cpu"')
    if want == "cpu" or not info.uses_torch:
        return ["cpu"] * scenario.n
    return backend_class(scenario.runtime).devices(scenario, placement_of(scenario))


def peer_modules(info: Method) -> list[str]:
    """What a peer of this method imports, for the fork server to load once: the
    runtime, and for a torch method its modules and the evaluation (torchvision, and
    torch._dynamo with it, which a first optimiser step would import anyway)."""
    modules = ["p2pgame.peer.runtime"]
    if info.uses_torch:
        modules += [*info.modules, "p2pgame.eval", "torch._dynamo"]
    return modules


def check_writable(path: Path, option: str) -> None:
    """Can the run folder be created at or under ``path``?  ScenarioError (one line,
    naming ``option``, ``path`` and why) if not (:func:`p2pgame.writable.why_unwritable`:
    tried for real, nothing left behind)."""
    why = why_unwritable(path)
    if why is not None:
        raise ScenarioError(f"{option} {path}: {why}; choose a folder you can write to")


def _step_of(state: str) -> int:
    """The step a resume state continues from ("": none, step 0)."""
    return json.loads(state)["step"] if state else 0


# -- 1. prepare ------------------------------------------------------------------------

@dataclass
class Prepared:
    """A run settled before any process starts: what :func:`prepare` hands on."""

    scenario: Scenario
    method: Method
    hooks: Any  # the method's RunHooks for this scenario
    layout: RunLayout  # the run folder: made, with the scenario and topology written
    overrides: list[str]
    schedule: Schedule
    data_root: Path
    backend_kind: Any  # the backend's class (backends.backend_class)
    placement: str
    workers: int
    threads: int
    devices: list[str]
    # --resume: each peer's latest resume state ("": none, it starts at step 0); None: a
    # run of its own.
    resumed: dict[int, str] | None = None

    @property
    def resuming(self) -> bool:
        return self.resumed is not None


@dataclass(frozen=True)
class ScenarioText:
    """A scenario given as TOML text, not a file (``p2pgame.run`` with a string or a
    dict): ``source`` names it in errors and in ``resolved.json`` (``<string>``,
    ``<dict>``); the text itself is the run folder's ``scenario.toml``, and without a
    ``name`` key the run is named ``scenario``.  Nothing is staged outside the run folder."""

    text: str
    source: str = "<string>"


@dataclass
class _Source:
    """The scenario to run and where it came from."""

    path: Path | str  # the scenario file (on --resume: the run folder's copy; text: its name)
    overrides: list[str]
    raw: dict
    scenario: Scenario
    resumed: dict[int, str] | None = None
    layout: RunLayout | None = None  # --resume: the run folder it continues
    text: str | None = None  # a ScenarioText's: written as scenario.toml, not copied


def _resumable(run_dir: Path) -> _Source:
    """What ``--resume RUN_DIR`` continues: the run's own resolved scenario and each peer's
    latest resume state (``resume/peer-<i>.json``; none: that peer starts from step 0)."""
    layout = RunLayout(run_dir)
    where = f"--resume {run_dir}"
    try:
        rec = json.loads(layout.resolved.read_text())
    except (OSError, ValueError):
        raise ScenarioError(f"{where}: no readable {layout.RESOLVED}: not a run folder") from None
    scenario = resolve(rec["raw"], str(layout.scenario_toml))
    if scenario.comm.mode != "async":
        raise ScenarioError(f"{where}: a sync run cannot be resumed yet (each peer keeps only "
                            "its latest state, and sync peers must resume at one common step)")
    if not method_of(scenario).resumable:
        raise ScenarioError(f"{where}: {scenario.method_name} cannot resume a peer yet (the "
                            "expfam learners can)")
    states = {i: layout.resume_state(i) for i in range(scenario.n)}
    if not any(p.is_file() for p in states.values()):
        raise ScenarioError(f"{where}: no resume states (resume/peer-*.json); a run saves "
                            "them with runtime.checkpoint_every = K (or runtime.restart)")
    resumed = {i: p.read_text() if p.is_file() else "" for i, p in states.items()}
    return _Source(layout.scenario_toml, rec.get("overrides", []), rec["raw"], scenario,
                   resumed, layout)


def _source(scenario_path: str | Path | ScenarioText, overrides: list[str] | tuple[str, ...],
            resume: str | Path | None) -> _Source:
    """The scenario file (or text) plus ``--set`` overrides, resolved (every check before
    any process), or with ``resume`` the interrupted run's own."""
    if resume is not None:
        return _resumable(Path(resume))
    if isinstance(scenario_path, ScenarioText):
        given = scenario_path
        raw = apply_overrides(load_text(given.text, given.source), overrides)
        scenario = resolve(raw, given.source)
        if "name" not in raw:  # (not "<string>": a run folder's name is a file name)
            scenario = dataclasses.replace(scenario, name="scenario")
        return _Source(given.source, list(overrides), raw, scenario, text=given.text)
    raw = apply_overrides(load_raw(scenario_path), overrides)
    return _Source(scenario_path, list(overrides), raw, resolve(raw, str(scenario_path)))


def _check_output(source: _Source, out: str | Path, run_dir: str | Path | None) -> None:
    """Where results go is checked before anything is prepared or started: a folder that
    can be written, never an earlier run's (``--run-dir``).  ``--resume`` keeps the
    interrupted run's summary, links and endpoints beside the new ones."""
    if source.layout is not None:  # --resume
        layout = source.layout
        check_writable(layout.root, "--resume")
        for name in layout.REWRITTEN_ON_RESUME:
            if (layout.root / name).exists():
                (layout.root / name).replace(layout.before_resume(name))
        return
    if run_dir is not None:
        run_dir = Path(run_dir)
        if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
            raise ScenarioError(
                f"--run-dir {run_dir}: already exists and is not an empty folder (an earlier "
                "run?); a run folder is never reused: name a new one, or omit --run-dir")
        check_writable(run_dir, "--run-dir")
    else:
        check_writable(Path(out), "--out")


def _write_run_folder(source: _Source, schedule: Schedule, out: str | Path,
                      run_dir: str | Path | None) -> RunLayout:
    """The run folder, made (``--run-dir``, or a new ``OUT/NAME-DATE-TIME``) with the
    scenario as given and as resolved, and the topology (``--resume``: the topology
    only).  An OSError is one line naming the file (ScenarioError: nothing started)."""
    where = Path(run_dir if run_dir is not None else out)
    layout = source.layout
    try:
        if layout is None:
            if run_dir is None:
                layout = RunLayout(make_run_dir(Path(out), source.scenario.name))
            else:
                layout = RunLayout(Path(run_dir))
                layout.root.mkdir(parents=True, exist_ok=True)
            where = layout.root
            if source.text is not None:
                layout.scenario_toml.write_text(source.text)
            else:
                shutil.copyfile(source.path, layout.scenario_toml)
            # The scenario exactly as run (file + --set overrides), re-loadable by resolve.
            layout.resolved.write_text(json.dumps(
                {"source": str(source.path), "overrides": list(source.overrides),
                 "raw": source.raw}, indent=1))
            layout.scenario_json.write_text(json.dumps(to_plain(source.scenario), indent=1))
        write_topology(layout, schedule)
    except OSError as e:  # nothing started yet: one line, exit 2
        raise ScenarioError(write_error(Path(e.filename or where), e)) from None
    return layout


def prepare(scenario_path: str | Path | ScenarioText, overrides: list[str] | tuple[str, ...] = (),
            out: str | Path = "runs", data_root: str | Path = "data",
            run_dir: str | Path | None = None, resume: str | Path | None = None) -> Prepared:
    """Stage 1: everything before a process starts, in this order: the scenario; the
    output checked (nothing is created when it cannot be written); devices, workers and
    threads (refused now: no CUDA, more workers than a cluster can place); the method's
    preparation (``hooks.prepare``: data, evaluator); the run folder written.

    ``resume``: the folder of an interrupted run, continued in place (``scenario_path``
    and ``overrides`` are ignored: the run's own resolved scenario is used)."""
    source = _source(scenario_path, overrides, resume)
    scenario = source.scenario
    method = method_of(scenario)
    hooks = method.hooks()(scenario)
    data_root = Path(data_root)
    _check_output(source, out, run_dir)
    devices = resolve_devices(scenario, method)
    workers = n_workers(scenario)
    threads = threads_per_peer(scenario, workers)
    hooks.prepare(data_root, log.info)
    schedule = build_schedule(scenario.topology, scenario.steps, scenario.seed)
    layout = _write_run_folder(source, schedule, out, run_dir)
    return Prepared(scenario=scenario, method=method, hooks=hooks, layout=layout,
                    overrides=list(source.overrides), schedule=schedule, data_root=data_root,
                    backend_kind=backend_class(scenario.runtime),
                    placement=placement_of(scenario), workers=workers, threads=threads,
                    devices=devices, resumed=source.resumed)


# -- 2. start --------------------------------------------------------------------------

def curve_keys(scenario: Scenario, layout: RunLayout) -> tuple[dict[int, dict], Curve | None]:
    """``comm.security = "curve"``: a key pair per peer and one for the launcher, drawn for
    this run.  The public keys go to ``keys/`` in the run folder; each secret goes to its
    owner alone (in its launch data), never to a file, the summary or a log."""
    if scenario.comm.security != "curve":
        return {}, None
    pairs = {i: curve_keypair() for i in range(scenario.n)}
    public, secret = curve_keypair()
    peers = {i: pub for i, (pub, _) in pairs.items()}  # one object, shared by every launch
    layout.keys_dir.mkdir(exist_ok=True)
    layout.public_key(None).write_text(public + "\n")
    for i, pub in peers.items():
        layout.public_key(i).write_text(pub + "\n")
    launches = {i: {"curve_public": pub, "curve_secret": sec, "curve_peers": peers,
                    "curve_launcher": public} for i, (pub, sec) in pairs.items()}
    return launches, Curve(public, secret, frozenset(peers.values()))


@dataclass
class Started:
    """What :func:`start` made for a run: all of it released by :meth:`close`."""

    sock_dir: Path  # the run's ipc sockets (removed by close)
    backend: Backend
    host: str  # where the launcher listens (and a peer binds, comm.host = "node")
    bind_node: bool
    tokens: dict[int, bytes]  # each peer's control token
    curve_launch: dict[int, dict]  # each peer's CURVE keys ({}: comm.security = "none")
    server: ControlServer
    folder: RunFolder
    launcher: Launcher
    tensorboard: TensorBoardSink | None = None  # runtime.tensorboard (and it can be written)
    target: TargetSink | None = None  # runtime.target: time to quality

    def close(self) -> list[dict[str, Any]]:
        """Stop what still runs (ask, wait, terminate, kill) and release everything; the
        nodes the backend used (for the summary)."""
        self.launcher.stop_processes()
        nodes = self.backend.nodes()
        self.backend.close()
        self.server.close()
        self.launcher.close()
        shutil.rmtree(self.sock_dir, ignore_errors=True)
        return nodes


def start(prepared: Prepared, progress: bool = True) -> Started:
    """Stage 2: the run's socket folder, the backend, the control server (a token per
    peer, CURVE keys with ``comm.security = "curve"``) and the launcher writing the run
    folder through its metric sinks (JSONL, and TensorBoard unless ``runtime.tensorboard =
    false``).  No peer runs yet (:func:`start_peers`)."""
    scenario = prepared.scenario
    comm, rt = scenario.comm, scenario.runtime
    # The run's ipc sockets: short paths, this user's only (mkdtemp: mode 0700), in this
    # process's private folder, which a later start removes if this process is killed.
    sock_dir = Path(tempfile.mkdtemp(prefix="sock-", dir=private_folder()))
    if scenario.n > 200:
        raise_open_files(scenario.n)  # the launcher holds a metrics file per peer
    bind_node = comm.host == "node"
    if comm.transport == "tcp" and comm.security != "curve" and not comm.host.startswith("127."):
        log.warning(f"comm.host = {comm.host!r} is reachable from other machines and "
                    "comm.security is 'none': anyone there can listen to the run and reach its "
                    "sockets; set comm.security = \"curve\"")
    backend = make_backend(rt, prepared.placement, prepared.workers, bind_node,
                           peer_modules(prepared.method))
    # comm.host = "node": the launcher listens on this machine's own address.
    host = backend.node_address() if bind_node else comm.host
    # Each peer gets its own token, derived from a secret of this run (README, "Security").
    secret = secrets.token_bytes(32)
    tokens = {i: control_token(secret, i) for i in range(scenario.n)}
    curve_launch, launcher_curve = curve_keys(scenario, prepared.layout)
    server = ControlServer(comm.transport, host, sock_dir.resolve(), tokens, launcher_curve)
    folder = RunFolder(prepared.layout, append=prepared.resuming)
    sinks: list[MetricSink] = [JsonlSink(folder)]
    target = TargetSink(rt.target, folder) if rt.target else None
    if target is not None:  # (before the JSONL sink: it reads what the file held)
        sinks.insert(0, target)
    # (Imports TensorBoard's record writer now, before any peer runs; None: cannot, one
    # warning.)
    board = tensorboard_sink(folder) if rt.tensorboard else None
    if board is not None:
        sinks.append(board)
    launcher = Launcher(scenario, prepared.schedule, folder, backend, progress, sinks=sinks)
    return Started(sock_dir=sock_dir, backend=backend, host=host, bind_node=bind_node,
                   tokens=tokens, curve_launch=curve_launch, server=server, folder=folder,
                   launcher=launcher, tensorboard=board, target=target)


def peer_launches(prepared: Prepared, started: Started) -> dict[int, dict[str, Any]]:
    """Every peer's PeerLaunch, as data.  A remote backend's peers share no disk with the
    launcher (it writes every file they report) and have no launcher pid to watch."""
    scenario = prepared.scenario
    remote = prepared.backend_kind.remote
    resumed = prepared.resumed or {}
    # Every launch refers to the same scenario and schedule objects: pickling sends them
    # once per process, and a worker decodes them once for all its peers.  (vars, not
    # asdict: asdict would copy them for every peer.)
    plain_scenario, plain_schedule = to_plain(scenario), schedule_to_plain(prepared.schedule)
    return {i: dict(vars(PeerLaunch(
        peer_id=i, scenario=plain_scenario, schedule=plain_schedule,
        control_endpoint=started.server.endpoint, ipc_dir=str(started.sock_dir.resolve()),
        data_root=str(prepared.data_root.resolve()),
        artifact_dir="" if remote else str(prepared.layout.root.resolve()),
        threads=prepared.threads, device=prepared.devices[i],
        bind_host=started.host if started.bind_node and not remote else "",
        token=started.tokens[i], launcher_pid=0 if remote else os.getpid(),
        incarnation=1 if prepared.resuming else 0, resume=resumed.get(i, ""),
        **started.curve_launch.get(i, {})))) for i in range(scenario.n)}


def start_peers(prepared: Prepared, started: Started) -> str | None:
    """Give each peer its launch data and start them all through the backend; None, or
    why they could not be started (then logged, and every peer failed with it)."""
    launcher = started.launcher
    launcher.launches = peer_launches(prepared, started)
    for i, text in (prepared.resumed or {}).items():
        launcher.step_of[i] = _step_of(text)
    try:
        started.backend.start(dict(launcher.launches))
    except (BackendError, OSError) as e:  # e.g. the backend could not place its workers
        start_error = f"the peers could not be started: {' '.join(str(e).split())}"
        log.error(start_error)
        for i in launcher.peers:
            launcher.failures.setdefault(i, "not started: " + start_error)
        return start_error
    return None


# -- 3. supervise ----------------------------------------------------------------------

@dataclass
class Ended:
    """How the peers' part of a run ended, for :func:`summarise`."""

    start_error: str | None  # the peers could not be started: why
    nodes: list[dict[str, Any]]  # where the backend ran them
    wall_s: float  # from Go to the last peer's report (or the whole stage, if no Go)


def supervise(prepared: Prepared, started: Started) -> Ended:
    """Stage 3: start the peers and supervise them over the control channel until each has
    reported or failed (or the run was stopped); then, whatever happened (a failed start,
    a full disk, Ctrl-C), stop and release everything (:meth:`Started.close`)."""
    t0 = time.monotonic()
    start_error = None
    try:
        start_error = start_peers(prepared, started)
        if start_error is None:
            asyncio.run(started.launcher.supervise(started.server))
    finally:
        nodes = started.close()
    return Ended(start_error, nodes, started.launcher.wall or time.monotonic() - t0)


# -- 4. summarise ----------------------------------------------------------------------

def _failures(launcher: Launcher) -> dict[str, str]:
    return {str(k): v for k, v in sorted(launcher.failures.items())}


def build_summary(prepared: Prepared, started: Started, ended: Ended) -> dict[str, Any]:
    """``summary.json``'s keys from the run as resolved and what the peers reported
    (README, "The run folder"); the accounts and checks are added by :func:`summarise`."""
    scenario, launcher = prepared.scenario, started.launcher
    resumed_from = None
    if prepared.resumed is not None:
        resumed_from = {str(i): _step_of(t) for i, t in prepared.resumed.items()}
    return {
        "scenario": scenario.name,
        "seed": scenario.seed,
        "mode": scenario.comm.mode,
        "overrides": list(prepared.overrides),
        "n_peers": scenario.n,
        "steps": scenario.steps,
        "wall_s": ended.wall_s,
        "threads_per_peer": prepared.threads,
        "placement": prepared.placement,
        "workers": prepared.workers if prepared.placement == "workers" else None,
        "backend": scenario.runtime.backend,
        "nodes": ended.nodes,
        "failed_peers": sorted(launcher.failures),
        "failures": _failures(launcher),
        "warnings": {str(k): v for k, v in sorted(launcher.warnings.items())},
        "interrupted": bool(launcher.interrupted),
        "start_error": ended.start_error,
        "control_rejected": started.server.junk + launcher.bad_control,
        "restarts": {str(k): v for k, v in sorted(launcher.restarts.items())},
        "resumed_from": resumed_from,
        "table_columns": list(prepared.hooks.table_columns),
        "peers": {str(i): launcher.summaries[i] for i in sorted(launcher.summaries)},
        "peer_files": {str(i): f for i, f in sorted(launcher.files.items()) if f},
    }


def _refused(summary: dict[str, Any], launcher: Launcher, mode: str) -> list[dict[str, Any]]:
    """Edges whose receiver refused more than 1 % of what arrived: a failure of the
    receiver in sync mode (each refused message is a round done without), else a warning."""
    refused = refused_edges(summary["links"])
    for e in refused:
        dst = e["dst"]
        why = refusal(e, summary["peers"][str(dst)].get("rejected_reasons", {}))
        if mode == "sync":
            launcher.failures.setdefault(dst, why)
            summary["failed_peers"] = sorted(launcher.failures)
            summary["failures"] = _failures(launcher)
        else:
            prior = summary["warnings"].get(str(dst))
            summary["warnings"][str(dst)] = f"{prior}; {why}" if prior else why
        log.warning(f"peer {dst} {why}")
    return refused


def _after_run(prepared: Prepared, folder: RunFolder, summary: dict[str, Any],
               hold: SignalHold) -> None:
    """The method's work after a clean run (e.g. an evaluation): a Ctrl-C cuts it short,
    not the summary."""
    hold.raise_now = True
    try:
        prepared.hooks.after_run(prepared.layout.root, summary)
    except KeyboardInterrupt:
        summary["evaluation"] = "interrupted"
    except OSError as e:
        folder.error = folder.error or write_error(prepared.layout.root, e)
    finally:
        hold.raise_now = False


def _add_target(summary: dict[str, Any], target: TargetSink) -> None:
    """``target`` and each peer's ``target_reached`` (None: not met; a warning when no
    metrics line of the run had the key at all, a misspelt key, say)."""
    summary["target"] = target.target
    for pid, peer in summary["peers"].items():
        peer["target_reached"] = target.reached.get(int(pid))
    if summary["peers"] and not target.seen:
        log.warning(f"runtime.target = {target.target!r}: no metrics line of any peer has "
                    f"the key {target.key!r}, so no peer met it (see a peer's "
                    "metrics/peer-<i>.jsonl for the keys)")


def summarise(prepared: Prepared, started: Started, ended: Ended,
              hold: SignalHold) -> RunResult:
    """Stage 4: ``summary.json`` (with the per-edge accounts, also ``links.csv``, and the
    refused edges), the method's work after a clean run, and the exit status: 130
    interrupted, else 1 for a failed peer, a write error or a failed start, else 0."""
    launcher, folder, layout = started.launcher, started.folder, prepared.layout
    summary = build_summary(prepared, started, ended)
    if prepared.resuming:
        add_before_resume(summary, layout.before_resume(layout.SUMMARY))
    summary["processes"] = process_memory(summary["peers"])
    summary["links"] = edge_accounts(summary["peers"], frozenset(launcher.restarts))
    folder.write(layout.links, accounts_csv(summary["links"]))
    unbalanced = unbalanced_edges(summary["links"])
    if unbalanced:
        log.warning(f"the accounts of edges {', '.join(unbalanced)} do not add up "
                    "(a receiver counted more than its sender sent)")
    summary["refused_edges"] = _refused(summary, launcher, prepared.scenario.comm.mode)
    rt = prepared.scenario.runtime
    summary["clock"] = {"kind": rt.clock, "compute": rt.compute,
                        "deterministic": prepared.scenario.deterministic}
    if started.target is not None:  # time to quality: per peer, where it met the target
        _add_target(summary, started.target)
    if not (launcher.failures or launcher.interrupted or folder.error or ended.start_error):
        _after_run(prepared, folder, summary, hold)
    if started.tensorboard is not None:  # the sample grids, the edges' accounts
        started.tensorboard.finish(summary)
    summary["interrupted"] = bool(launcher.interrupted)
    summary["write_error"] = folder.error
    folder.write(layout.summary, json.dumps(summary, indent=1))
    if folder.error:
        log.error(f"{folder.error}; every complete line already written is kept")
    code = exit_code(bool(launcher.interrupted), bool(launcher.failures), folder.error,
                     ended.start_error)
    return RunResult(layout.root, summary, code, dict(launcher.failures))


# -- the four in order -----------------------------------------------------------------

@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    exit_code: int
    failures: dict[int, str] = field(default_factory=dict)


def run(
    scenario_path: str | Path | ScenarioText,
    overrides: list[str] | tuple[str, ...] = (),
    out: str | Path = "runs",
    data_root: str | Path = "data",
    progress: bool = True,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
) -> RunResult:
    """Run one scenario; the public entry point of ``p2pgame run``: prepare, start,
    supervise, summarise (see the module).

    ``resume``: the folder of an interrupted run, continued in place from each peer's
    latest resume state (``scenario_path`` and ``overrides`` are ignored: the run's own
    resolved scenario is used)."""
    setup_logging()  # (once; kept as it is when the caller configured it)
    prepared = prepare(scenario_path, overrides, out=out, data_root=data_root,
                       run_dir=run_dir, resume=resume)
    started = start(prepared, progress)
    # SIGINT/SIGTERM are counted by the launcher from here until the summary is written.
    with signals_counted(started.launcher.on_signal) as hold:
        ended = supervise(prepared, started)
        return summarise(prepared, started, ended, hold)
