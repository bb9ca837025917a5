"""Backends: how the launcher starts and ends the processes its peers live in.

The launcher talks to its peers over the control channel; a backend only
starts them and, when asking is not enough, ends them.  Two placements on this
machine, both started by multiprocessing's fork server (:func:`start_context`):

- ``LocalSpawnBackend``, placement ``process``: one OS process per peer;
- ``WorkerBackend``, placement ``workers``: W worker processes, each hosting a
  block of peers as asyncio tasks (:func:`p2pgame.peer.worker_main`).

Either way the methods take a peer id: for a hosted peer they act on its
worker (ending a worker ends all its peers, which is what the launcher's last
resort wants anyway).

Every process a peer lives in runs the launcher's own ``p2pgame`` (the fork
server resolves imports as the launcher does; a peer checks the package it got,
a Ray worker its source digest), and a backend that cannot start its peers
raises :class:`BackendError`, one line, before any peer runs.

What differs between backends beyond starting and ending is theirs to say, so that
the launcher never asks which backend it has (:class:`Backend`): whether peers may
live on other machines (:attr:`~Backend.remote`), the address this machine is
reached at, and, before any backend object exists (:func:`backend_class`), the
placement ``auto`` means, the worker count, the threads per process and the
devices of the peers.  ``RayBackend`` is the only place that knows Ray.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import multiprocessing as mp
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from p2pgame.config import ScenarioError
from p2pgame.peer import peer_main, refuse_launches, worker_main


class BackendError(RuntimeError):
    """The backend could not start the peers (e.g. Ray could not place its workers): one
    line, raised by ``start`` before any peer runs."""


class Backend(Protocol):
    """Where peers live.  Every method takes the peer id.

    The class also answers, before any instance exists (the launcher asks
    :func:`backend_class`), what the run needs to know of it: see the classmethods."""

    # Peers may live on other machines: no disk shared with the launcher (it writes every
    # file they report) and no launcher pid to watch.
    remote: bool = False

    @classmethod
    def auto_placement(cls, scenario: Any) -> str:
        """What ``runtime.placement = "auto"`` means here: ``process`` or ``workers``."""

    @classmethod
    def n_workers(cls, scenario: Any, placement: str) -> int:
        """How many processes host the peers; ScenarioError if that cannot be placed."""

    @classmethod
    def threads_per_peer(cls, scenario: Any, placement: str, workers: int | None) -> int:
        """Threads of a process peers live in, unless the scenario sets them."""

    @classmethod
    def devices(cls, scenario: Any, placement: str) -> list[str]:
        """Each peer's torch device for ``runtime.device`` other than ``cpu``;
        ScenarioError for one that cannot be had."""

    @classmethod
    def create(cls, runtime: Any, placement: str, workers: int, bind_node: bool = False,
               preload: Sequence[str] = ()) -> Backend:
        """The backend object of a run (nothing started yet)."""

    def node_address(self) -> str:
        """The address this machine is reached at (``comm.host = "node"``)."""

    def start(self, launches: dict[int, dict[str, Any]]) -> None:
        """Start every peer with its PeerLaunch (plain data; peers share one scenario
        object, which pickling sends once per process)."""

    def alive(self, peer: int) -> bool: ...

    def exit_code(self, peer: int) -> int | None:
        """None while it runs."""

    def join(self, peer: int, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for it to exit."""

    def ask_stop(self, peer: int) -> None:
        """Ask it to stop outside the control channel (finish the step, report)."""

    def terminate(self, peer: int) -> None:
        """End it now, letting it clean up."""

    def kill(self, peer: int) -> None:
        """End it now."""

    def close(self) -> None:
        """Release what the backend holds (Ray: actors, the placement group)."""

    def nodes(self) -> list[dict[str, Any]]:
        """Where each process ran, for the summary (Ray: the node of each worker)."""


def start_context(preload: Sequence[str] = ()) -> Any:
    """multiprocessing's ``forkserver`` start method, its server preloading ``preload``.

    A peer of a torch algorithm spends about 5 s of CPU importing (torch, and torch._dynamo,
    which the first optimiser step and torchvision pull in): with ``spawn`` every peer
    process paid it, 15 peers over a minute of a 2-core machine before their first step.
    The fork server is a fresh interpreter (started like ``spawn``, with none of the
    launcher's threads, sockets or CUDA state) that imports ``preload`` once; every peer is
    forked from it with those modules loaded, so it starts with its own zmq context and
    RNGs as before, without the import.  Nothing in ``preload`` may open a socket, start a
    thread that a child needs, or initialise CUDA (importing torch does none of these).

    The server is one per launching process and lives as long as it (multiprocessing's
    own); what it preloads, its environment variables and its working directory are fixed
    when it starts, at the first run.  So a later run of another algorithm in the same
    process may find its modules not preloaded (its peers import them, as with ``spawn``),
    and peers see the environment of the first run's time (every path a peer is given is
    absolute, and a peer sets its own torch thread count).  The backends start it through
    :func:`start_fork_server`, so that it imports what the launcher would.
    """
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(preload))
    return ctx


def start_fork_server() -> None:
    """Start the fork server, unless it runs, resolving imports as this process does.

    multiprocessing starts it as ``python -c ...``, which puts the working directory first
    on its path, and imports the preload there: run from a folder that held another copy of
    ``p2pgame`` (or a file named like any module a peer imports), every peer ran that copy
    while the launcher ran its own.  So the server starts with ``PYTHONSAFEPATH`` (no
    working directory) and this process's ``sys.path`` as ``PYTHONPATH``: its path is the
    launcher's (a working directory the launcher itself imports from included).  A peer
    takes the launcher's values of both variables back (:func:`_restore_env`), for the
    processes it may start.
    """
    from multiprocessing import forkserver

    path = [os.path.abspath(p) for p in sys.path if isinstance(p, str)]  # ('' is the cwd)
    env = {"PYTHONSAFEPATH": "1",
           "PYTHONPATH": os.pathsep.join(p for p in path if os.pathsep not in p)}
    saved = {k: os.environ.get(k) for k in _PATH_VARS}
    os.environ.update(env)  # (read once, as the server is spawned)
    try:
        forkserver.ensure_running()
    finally:
        _restore_env(saved)


_PATH_VARS = ("PYTHONSAFEPATH", "PYTHONPATH")

_MAIN_KEYS = ("__spec__", "__file__")


@contextlib.contextmanager
def main_hidden() -> Iterator[None]:
    """While a peer's process is started: this process's ``__main__`` without its
    ``__spec__`` and ``__file__``, so that the child does not import it again.

    multiprocessing (``spawn``, and ``forkserver``, whose children are prepared as
    spawned ones) re-imports the parent's ``__main__`` in each child, by module name
    (``python -m``) or by file.  A peer needs none of it: its entry point
    (:func:`_peer_process`, :func:`_worker_process`) lives in this module and its launch
    is plain data.  And re-importing fails in the ways a notebook or script meets:
    ``python - < script.py`` (``__file__`` is ``<stdin>``, no such file), a script without
    ``if __name__ == "__main__":`` (the child runs it again, and its ``run`` stops with
    multiprocessing's bootstrapping error), a module run with ``-m`` doing the same; and
    a Jupyter kernel's ``__main__`` is no file either.  ``python -c`` has neither key.
    Restored as it was when the process has started."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: main.__dict__[k] for k in _MAIN_KEYS if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        for k in _MAIN_KEYS:
            main.__dict__.pop(k, None)
        main.__dict__.update(saved)


def _restore_env(env: dict[str, str | None]) -> None:
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# -- the same code in every process ----------------------------------------------------

def package_file() -> str:
    """The ``p2pgame`` this process runs (its ``__init__.py``, symbolic links resolved).

    (The package is in ``sys.modules`` as this module is: no import of it, whose lazy
    ``run`` and ``load`` reach the API above the launcher.)"""
    return os.path.realpath(sys.modules[__name__.partition(".")[0]].__file__)


@functools.cache
def package_digest() -> str:
    """A digest of the package's source files: equal where the same code runs (a Ray
    node may hold it at another path)."""
    root = Path(package_file()).parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _same_package(launcher: str, launches: list[dict[str, Any]]) -> bool:
    mine = package_file()
    if mine == launcher:
        return True
    refuse_launches(launches, f"this process runs p2pgame from {Path(mine).parent}, the "
                    f"launcher from {Path(launcher).parent} (another copy in the working "
                    "directory or on PYTHONPATH?): a peer runs the launcher's code only")
    return False


def _peer_process(launcher: dict[str, Any], launch: dict[str, Any]) -> None:
    """A peer's process (placement ``process``): the launcher's environment taken back and
    its package checked (``launcher``: :meth:`LocalBackend._spawn`), then
    :func:`p2pgame.peer.peer_main`."""
    _restore_env(launcher["env"])
    if not _same_package(launcher["package"], [launch]):
        sys.exit(1)
    peer_main(launch)


def _worker_process(launcher: dict[str, Any], launches: list[dict[str, Any]],
                    worker: int) -> None:
    """A worker's process (placement ``workers``), started as :func:`_peer_process`."""
    _restore_env(launcher["env"])
    if not _same_package(launcher["package"], launches):
        sys.exit(1)
    worker_main(launches, worker)


def cpu_count() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def _gpu_count() -> int:
    """CUDA devices visible here (0: torch missing or broken)."""
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # torch missing or broken: none
        return 0


class LocalBackend:
    """Peers in processes of this machine: signals and joins for them, by peer (the
    placements are its subclasses), and what this machine's cores and GPUs decide."""

    remote = False  # peers share this machine's disk and watch the launcher's pid

    def __init__(self, preload: Sequence[str] = ()) -> None:
        self.ctx = start_context(preload)
        self.procs: dict[int, Any] = {}  # peer -> the process it lives in
        self.package = package_file()

    def _spawn(self, target: Any, name: str, *args: Any) -> Any:
        """A process forked from the fork server, running ``target(launcher, *args)``:
        ``launcher`` says which package the launcher runs and its path variables."""
        launcher = {"package": self.package, "env": {k: os.environ.get(k) for k in _PATH_VARS}}
        p = self.ctx.Process(target=target, name=name, args=(launcher, *args))
        with main_hidden():
            start_fork_server()
            p.start()
        return p

    # A peer whose start failed (spawning raised part-way) has no process: the launcher's
    # shutdown still asks about every peer, and such a peer is simply not running.
    def alive(self, peer: int) -> bool:
        return peer in self.procs and self.procs[peer].is_alive()

    def exit_code(self, peer: int) -> int | None:
        return self.procs[peer].exitcode if peer in self.procs else None

    def join(self, peer: int, timeout: float) -> None:
        if peer in self.procs:
            self.procs[peer].join(max(0.0, timeout))

    def _signal(self, peer: int, sig: int) -> None:
        p = self.procs.get(peer)
        if p is not None and p.pid is not None and p.exitcode is None:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass

    # A peer (or a worker) takes its first SIGTERM as a request to stop and the next one
    # as the end, so ``ask_stop`` and ``terminate`` both send SIGTERM: after an ask, a
    # terminate ends it.
    def ask_stop(self, peer: int) -> None:
        self._signal(peer, signal.SIGTERM)

    def terminate(self, peer: int) -> None:
        self._signal(peer, signal.SIGTERM)

    def kill(self, peer: int) -> None:
        self._signal(peer, signal.SIGKILL)

    def close(self) -> None:
        pass

    def nodes(self) -> list[dict[str, Any]]:
        return []  # all on this machine

    # -- what this machine's cores and GPUs decide (asked before any backend exists) --

    @classmethod
    def auto_placement(cls, scenario: Any) -> str:
        """One process per peer up to max(8, 2 x cores) peers (each its own interpreter:
        isolation, no shared GIL), workers beyond (one interpreter, data set and
        evaluator per worker instead of per peer)."""
        return "process" if scenario.n <= max(8, 2 * cpu_count()) else "workers"

    @classmethod
    def n_workers(cls, scenario: Any, placement: str) -> int:
        """One per peer (placement ``process``); else as set, or one per core (one per GPU
        when peers run on GPUs), never more than the peers."""
        if placement != "workers":
            return scenario.n
        rt = scenario.runtime
        want = rt.workers
        if not want:
            want = cpu_count()
            if rt.device != "cpu":
                want = _gpu_count() or want
        return max(1, min(want, scenario.n))

    @classmethod
    def threads_per_peer(cls, scenario: Any, placement: str, workers: int | None) -> int:
        """Cores // processes, at least 1 (``workers``: :meth:`n_workers`, if known)."""
        return max(1, cpu_count() // (workers or cls.n_workers(scenario, placement)))

    @classmethod
    def devices(cls, scenario: Any, placement: str) -> list[str]:
        """``auto``: CUDA when present, else the CPU.  Processes go round-robin over the
        GPUs: one per peer, or with placement ``workers`` one per worker (its peers share
        that GPU, each on its own stream).  ``cuda[:N]`` is refused here, before any peer
        starts, when this machine has no such device (else each peer fails on its own
        torch error)."""
        want = scenario.runtime.device
        n_gpu = _gpu_count()
        if want != "auto":
            index = int(want.partition(":")[2] or 0)
            if not n_gpu:
                raise ScenarioError(f"runtime.device = {want!r}: no CUDA device is visible on "
                                    'this machine; use "auto" or "cpu"')
            if index >= n_gpu:
                raise ScenarioError(f"runtime.device = {want!r}: only {n_gpu} CUDA device(s) "
                                    f"are visible (cuda:0..cuda:{n_gpu - 1})")
            return [want] * scenario.n
        if not n_gpu:
            return ["cpu"] * scenario.n
        process_of = list(range(scenario.n))
        if placement == "workers":
            for w, block in enumerate(worker_blocks(list(range(scenario.n)),
                                                    cls.n_workers(scenario, placement))):
                for i in block:
                    process_of[i] = w
        return [f"cuda:{process_of[i] % n_gpu}" for i in range(scenario.n)]

    @classmethod
    def create(cls, runtime: Any, placement: str, workers: int, bind_node: bool = False,
               preload: Sequence[str] = ()) -> Backend:
        if placement == "workers":
            return WorkerBackend(workers, preload)
        return LocalSpawnBackend(preload)

    def node_address(self) -> str:
        return node_address()


class LocalSpawnBackend(LocalBackend):
    """One OS process per peer (placement ``process``)."""

    def start(self, launches: dict[int, dict[str, Any]]) -> None:
        for peer, launch in sorted(launches.items()):
            self.procs[peer] = self._spawn(_peer_process, f"p2pgame-peer-{peer}", launch)


def worker_blocks(peers: list[int], workers: int) -> list[list[int]]:
    """Contiguous blocks of peers, one per worker, sizes differing by at most one
    (ring and line neighbours mostly share a worker; the bus carries them all the same)."""
    workers = max(1, min(workers, len(peers)))
    return [peers[w * len(peers) // workers:(w + 1) * len(peers) // workers]
            for w in range(workers)]


class WorkerBackend(LocalBackend):
    """W worker processes, each hosting a block of peers (placement ``workers``)."""

    def __init__(self, workers: int, preload: Sequence[str] = ()) -> None:
        super().__init__(preload)
        self.workers = workers

    def start(self, launches: dict[int, dict[str, Any]]) -> None:
        for w, block in enumerate(worker_blocks(sorted(launches), self.workers)):
            p = self._spawn(_worker_process, f"p2pgame-worker-{w}",
                            [launches[i] for i in block], w)
            for i in block:
                self.procs[i] = p


# -- Ray ---------------------------------------------------------------------------------

_ray_ours = False  # whether p2pgame started the Ray this process is connected to


def connect_ray(address: str = "") -> Any:
    """The ``ray`` module, connected: to Ray of this process, else ``address`` (or
    ``RAY_ADDRESS``), else a local one started here (and ended by ``RayBackend.close``)."""
    global _ray_ours
    try:
        import ray
    except ImportError:
        raise RuntimeError('runtime.backend = "ray" needs Ray: pip install "p2pgame[ray]"'
                           ) from None
    if not ray.is_initialized():
        try:
            ray.init(address=address or None, log_to_driver=True)
        except ConnectionError as e:  # e.g. "auto" with no cluster running
            where = (f"runtime.ray_address = {address!r}" if address
                     else "RAY_ADDRESS = " + repr(os.environ.get("RAY_ADDRESS", "")))
            raise ScenarioError(
                f"{where}: no Ray cluster there ({' '.join(str(e).split())[:160]}); start "
                "one with `ray start --head`, or leave runtime.ray_address empty for a local "
                "Ray of this run's own") from None
        _ray_ours = True
    return ray


def _ray_room(ray: Any, cpus: float, gpus: float) -> tuple[int | None, str]:
    """How many workers of ``cpus`` CPUs and ``gpus`` GPUs the cluster's live nodes hold
    (a bundle lives on one node; None: a worker asks for nothing), and the cluster in words."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    total_cpu = sum(r.get("CPU", 0) for r in nodes)
    total_gpu = sum(r.get("GPU", 0) for r in nodes)
    said = f"{total_cpu:g} CPUs, {total_gpu:g} GPUs on {len(nodes)} node(s)"
    if not cpus and not gpus:
        return None, said
    room = 0
    for r in nodes:
        # (a little slack: 0.1 CPU x 3 is 0.30000000000000004)
        fits = [int(r.get("CPU", 0) / cpus + 1e-9)] if cpus else []
        if gpus:
            fits.append(int(r.get("GPU", 0) / gpus + 1e-9))
        room += min(fits)
    return room, said


def _bundle(cpus: float, gpus: float) -> str:
    return f"{cpus:g} CPU" + (f" + {gpus:g} GPU" if gpus else "")


def ray_workers(runtime: Any, peers: int, one_per_peer: bool = False) -> int:
    """How many Ray workers host ``peers`` peers: one per peer (``one_per_peer``: placement
    ``process``), ``runtime.workers`` (never more than the peers), or, neither set, as many
    as the cluster has room for, one at least.  Connects to Ray (:func:`connect_ray`).

    ScenarioError (one line) when the count asked for cannot be placed on the cluster's
    nodes, however long one waits: better refused at once than after a placement timeout
    (a Ray started here for the question is ended first).
    """
    global _ray_ours
    ray = connect_ray(runtime.ray_address)
    try:
        return _fit_workers(runtime, peers, one_per_peer, *_ray_room(
            ray, runtime.worker_cpus, runtime.worker_gpus))
    except ScenarioError:
        if _ray_ours:
            ray.shutdown()
            _ray_ours = False
        raise


def _fit_workers(runtime: Any, peers: int, one_per_peer: bool, room: int | None,
                 cluster: str) -> int:
    cpus, gpus = runtime.worker_cpus, runtime.worker_gpus
    each = f"workers of {_bundle(cpus, gpus)} each"
    if one_per_peer:
        asked = peers
        what = f'runtime.placement = "process" puts each of the {peers} peers in a Ray worker'
        fix = 'use runtime.placement = "workers" or "auto" (fitted to the cluster)'
    elif runtime.workers:
        asked = min(runtime.workers, peers)
        what = f"runtime.workers = {runtime.workers}"
        fix = "lower runtime.workers (0: as many as fit)"
    else:
        if room == 0:
            raise ScenarioError(f'runtime.backend = "ray": no node has room for one worker of '
                                f"{_bundle(cpus, gpus)} (cluster: {cluster}); lower "
                                "runtime.worker_cpus / runtime.worker_gpus, or add nodes")
        return peers if room is None else max(1, min(peers, room))
    if room is not None and asked > room:
        raise ScenarioError(f"{what}: the Ray cluster has room for {room} {each} (cluster: "
                            f"{cluster}); {fix}, lower runtime.worker_cpus, or add nodes")
    return asked


class RayBackend:
    """Workers as Ray actors, one bundle of a placement group each (``pack`` or ``spread``
    over the cluster's nodes); the peers inside are hosted as with ``WorkerBackend``.

    The actors bind tcp on their node's address when ``comm.host = "node"`` (each peer's
    endpoint travels through the launcher as usual); metrics, files and summaries come
    back over the control channel, and the driver writes the run folder.  A stop is asked
    through an actor method (the actor's second thread), ending is ``ray.kill``; ``close``
    kills what is left and removes the placement group.  A peer of a worker that never
    started (``start`` failed) is simply not running.
    """

    remote = True  # actors on any node of the cluster: no shared disk, no launcher pid

    def __init__(self, workers: int, address: str = "", strategy: str = "spread",
                 cpus: float = 1.0, gpus: float = 0.0, bind_node: bool = False) -> None:
        self.ray = connect_ray(address)
        self.workers = workers
        self.strategy = strategy.upper()
        self.cpus, self.gpus = cpus, gpus
        self.bind_node = bind_node
        self.pg = None
        self.actors: list[Any] = []
        self.refs: list[Any] = []
        self.worker_of: dict[int, int] = {}
        self.blocks: list[list[int]] = []
        self.node_ids: list[str] = []
        self._done: set[int] = set()  # workers seen finished

    def start(self, launches: dict[int, dict[str, Any]]) -> None:
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        ray = self.ray
        blocks = worker_blocks(sorted(launches), self.workers)
        bundle = {"CPU": self.cpus, **({"GPU": self.gpus} if self.gpus else {})}
        room, cluster = _ray_room(ray, self.cpus, self.gpus)
        if room is not None and len(blocks) > room:  # (run() refuses it earlier: n_workers)
            raise BackendError(
                f"Ray cannot place {len(blocks)} workers of {_bundle(self.cpus, self.gpus)} "
                f"each: its nodes have room for {room} (cluster: {cluster}); lower "
                "runtime.workers or runtime.worker_cpus, or add nodes")
        self.pg = placement_group([dict(bundle) for _ in blocks], strategy=self.strategy)
        ready, _ = ray.wait([self.pg.ready()], timeout=60)
        if not ready:
            raise BackendError(
                f"Ray could not place {len(blocks)} workers of {_bundle(self.cpus, self.gpus)} "
                f"each within 60 s (strategy {self.strategy.lower()}; cluster: {cluster}, "
                f"available now: {ray.available_resources()}): other jobs hold them?")
        self.blocks = blocks
        # The driver's working directory, which Ray puts first on every worker's path, is
        # dropped there unless the driver itself imports from it (see RayHost).
        cwd = os.path.abspath(os.curdir)
        drop = [] if cwd in {os.path.abspath(p) for p in sys.path if isinstance(p, str)} else [cwd]
        actor_cls = ray.remote(max_concurrency=2)(_ray_host_class())
        for w, block in enumerate(blocks):
            actor = actor_cls.options(
                num_cpus=self.cpus, num_gpus=self.gpus, name=None,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=self.pg, placement_group_bundle_index=w)).remote(
                        drop, package_digest())
            self.actors.append(actor)
            self.refs.append(actor.run.remote([launches[i] for i in block], w, self.bind_node))
            for i in block:
                self.worker_of[i] = w
        self.node_ids = ray.get([a.node.remote() for a in self.actors])

    def _finished(self, w: int, timeout: float = 0.0) -> bool:
        if w in self._done:
            return True
        ready, _ = self.ray.wait([self.refs[w]], timeout=max(0.0, timeout))
        if ready:
            self._done.add(w)
        return bool(ready)

    def _running(self, peer: int) -> int | None:
        """The worker hosting ``peer`` while it runs; None once finished, or never started."""
        w = self.worker_of.get(peer)
        return None if w is None or self._finished(w) else w

    def alive(self, peer: int) -> bool:
        return self._running(peer) is not None

    def exit_code(self, peer: int) -> int | None:
        w = self.worker_of.get(peer)
        if w is None or not self._finished(w):
            return None
        try:
            return int(self.ray.get(self.refs[w]))
        except Exception:  # the actor died (killed, node lost): like a killed process
            return -9

    def join(self, peer: int, timeout: float) -> None:
        w = self.worker_of.get(peer)
        if w is not None:
            self._finished(w, timeout)

    def ask_stop(self, peer: int) -> None:
        w = self._running(peer)
        if w is not None:
            self.actors[w].stop.remote()

    def terminate(self, peer: int) -> None:
        self.kill(peer)

    def kill(self, peer: int) -> None:
        w = self._running(peer)
        if w is not None:
            self.ray.kill(self.actors[w], no_restart=True)

    def close(self) -> None:
        global _ray_ours
        from ray.util.placement_group import remove_placement_group

        for actor in self.actors:  # done or not: an idle actor still holds a process
            self.ray.kill(actor, no_restart=True)
        self.actors.clear()
        if self.pg is not None:
            remove_placement_group(self.pg)
            self.pg = None
        if _ray_ours:
            self.ray.shutdown()
            _ray_ours = False

    def node_address(self) -> str:
        """Ray's view of this node."""
        return self.ray.util.get_node_ip_address()

    def nodes(self) -> list[dict[str, Any]]:
        if not self.node_ids:  # never started (or its start failed)
            return []
        return [{"worker": w, "node": node, "peers": block}
                for w, (node, block) in enumerate(zip(self.node_ids, self.blocks, strict=True))]

    # -- what the cluster decides (asked before any backend exists) ---------------------

    @classmethod
    def auto_placement(cls, scenario: Any) -> str:
        """``workers``: as many as the cluster holds (this machine's cores say nothing of
        the cluster)."""
        return "workers"

    @classmethod
    def n_workers(cls, scenario: Any, placement: str) -> int:
        """The actors are the workers: one per peer with placement ``process``, else as
        set, or as many as the cluster's nodes have room for (``worker_cpus``,
        ``worker_gpus`` each); a count that cannot be placed is refused (ScenarioError).
        Connects to Ray."""
        return ray_workers(scenario.runtime, scenario.n, one_per_peer=placement == "process")

    @classmethod
    def threads_per_peer(cls, scenario: Any, placement: str, workers: int | None) -> int:
        """A worker's CPUs (``runtime.worker_cpus``)."""
        return max(1, int(scenario.runtime.worker_cpus))

    @classmethod
    def devices(cls, scenario: Any, placement: str) -> list[str]:
        """A worker with a GPU bundle sees only its own GPU: ``auto`` is ``cuda:0`` there."""
        rt = scenario.runtime
        if rt.device == "auto":
            return ["cuda:0" if rt.worker_gpus > 0 else "cpu"] * scenario.n
        return [rt.device] * scenario.n

    @classmethod
    def create(cls, runtime: Any, placement: str, workers: int, bind_node: bool = False,
               preload: Sequence[str] = ()) -> Backend:
        return cls(workers, runtime.ray_address, runtime.ray_strategy, runtime.worker_cpus,
                   runtime.worker_gpus, bind_node)


def _ray_host_class() -> type:
    """The class of the Ray actors: a shell that fixes the worker's path, then hosts a
    :class:`RayWorker`.

    Ray puts the driver's working directory first on every worker's path, and a class of an
    importable module is imported there by name: run from a folder holding another copy of
    p2pgame, the actors ran that copy.  A class made in a function is shipped with its code
    instead (cloudpickle), so this one runs before any p2pgame module is imported; it names
    none until the path is fixed (the imports are inside its methods)."""

    class RayHost:
        def __init__(self, drop: list[str], digest: str) -> None:
            import sys

            sys.path[:] = [p for p in sys.path if p not in drop]
            from p2pgame.launch.backends import RayWorker

            self.worker = RayWorker(digest)

        def node(self) -> str:
            return self.worker.node()

        def run(self, launches: list[dict[str, Any]], worker: int, bind_node: bool) -> int:
            return self.worker.run(launches, worker, bind_node)

        def stop(self) -> None:
            self.worker.stop()

    return RayHost


class RayWorker:
    """The body of a Ray actor: hosts a block of peers (``p2pgame.peer.run_worker``) in one
    of its threads, while the other answers ``stop`` and ``node``.  Its peers start only if
    its package's sources are the driver's (``digest``, :func:`package_digest`)."""

    def __init__(self, digest: str = "") -> None:
        from p2pgame.peer import WorkerHandle

        self.handle = WorkerHandle()
        self.refused = ""
        if digest and package_digest() != digest:
            self.refused = (f"this Ray worker runs p2pgame from {Path(package_file()).parent}, "
                            "whose sources differ from the driver's: every node must hold the "
                            "driver's code")

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def run(self, launches: list[dict[str, Any]], worker: int, bind_node: bool) -> int:
        from p2pgame.peer import run_worker

        if self.refused:
            refuse_launches(launches, self.refused)
            return 1
        if bind_node:
            import ray

            ip = ray.util.get_node_ip_address()
            launches = [{**launch, "bind_host": ip} for launch in launches]
        return run_worker(launches, worker, self.handle)

    def stop(self) -> None:
        self.handle.request_stop()


def node_address() -> str:
    """This machine's own address (``comm.host = "node"`` without Ray)."""
    import socket

    return socket.gethostbyname(socket.gethostname())


BACKENDS: dict[str, type] = {"local": LocalBackend, "ray": RayBackend}


def backend_class(runtime: Any) -> Any:
    """The backend class of a resolved ``[runtime]`` (:class:`p2pgame.config.RuntimeSpec`):
    its classmethods answer what the launcher must know before a backend exists."""
    try:
        return BACKENDS[runtime.backend]
    except KeyError:
        raise ValueError(f"runtime.backend = {runtime.backend!r} is not known") from None


def make_backend(runtime: Any, placement: str, workers: int, bind_node: bool = False,
                 preload: Sequence[str] = ()) -> Backend:
    """The backend of a resolved ``[runtime]`` for a placement (``process`` or ``workers``:
    ``auto`` decided by the caller); ``preload``: the modules its peers import, loaded once
    by the fork server (:func:`start_context`)."""
    return backend_class(runtime).create(runtime, placement, workers, bind_node, preload)
