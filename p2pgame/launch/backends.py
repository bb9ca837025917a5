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
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from collections.abc import Sequence
from typing import Any, Protocol

from p2pgame.peer import peer_main, worker_main


class Backend(Protocol):
    """Where peers live.  Every method takes the peer id."""

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
    absolute, and a peer sets its own torch thread count).
    """
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(preload))
    return ctx


class _Processes:
    """Signals and joins for the processes peers live in, by peer."""

    def __init__(self, preload: Sequence[str] = ()) -> None:
        self.ctx = start_context(preload)
        self.procs: dict[int, Any] = {}  # peer -> the process it lives in

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


class LocalSpawnBackend(_Processes):
    """One OS process per peer (placement ``process``)."""

    def start(self, launches: dict[int, dict[str, Any]]) -> None:
        for peer, launch in sorted(launches.items()):
            p = self.ctx.Process(target=peer_main, name=f"p2pgame-peer-{peer}", args=(launch,))
            p.start()
            self.procs[peer] = p


def worker_blocks(peers: list[int], workers: int) -> list[list[int]]:
    """Contiguous blocks of peers, one per worker, sizes differing by at most one
    (ring and line neighbours mostly share a worker; the bus carries them all the same)."""
    workers = max(1, min(workers, len(peers)))
    return [peers[w * len(peers) // workers:(w + 1) * len(peers) // workers]
            for w in range(workers)]


class WorkerBackend(_Processes):
    """W worker processes, each hosting a block of peers (placement ``workers``)."""

    def __init__(self, workers: int, preload: Sequence[str] = ()) -> None:
        super().__init__(preload)
        self.workers = workers

    def start(self, launches: dict[int, dict[str, Any]]) -> None:
        for w, block in enumerate(worker_blocks(sorted(launches), self.workers)):
            p = self.ctx.Process(target=worker_main, name=f"p2pgame-worker-{w}",
                                 args=([launches[i] for i in block], w))
            p.start()
            for i in block:
                self.procs[i] = p


class RayBackend:
    """Workers as Ray actors, one bundle of a placement group each (``pack`` or ``spread``
    over the cluster's nodes); the peers inside are hosted as with ``WorkerBackend``.

    The actors bind tcp on their node's address when ``comm.host = "node"`` (each peer's
    endpoint travels through the launcher as usual); metrics, files and summaries come
    back over the control channel, and the driver writes the run folder.  A stop is asked
    through an actor method (the actor's second thread), ending is ``ray.kill``; ``close``
    kills what is left and removes the placement group.
    """

    def __init__(self, workers: int, address: str = "", strategy: str = "spread",
                 cpus: float = 1.0, gpus: float = 0.0, bind_node: bool = False) -> None:
        try:
            import ray
        except ImportError:
            raise RuntimeError('runtime.backend = "ray" needs Ray: pip install "p2pgame[ray]"'
                               ) from None
        self.ray = ray
        self.workers = workers
        self.strategy = strategy.upper()
        self.cpus, self.gpus = cpus, gpus
        self.bind_node = bind_node
        self.started_ray = False
        if not ray.is_initialized():
            ray.init(address=address or None, log_to_driver=True)
            self.started_ray = True
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
        self.blocks = worker_blocks(sorted(launches), self.workers)
        bundle = {"CPU": self.cpus, **({"GPU": self.gpus} if self.gpus else {})}
        self.pg = placement_group([dict(bundle) for _ in self.blocks], strategy=self.strategy)
        ready, _ = ray.wait([self.pg.ready()], timeout=60)
        if not ready:
            raise RuntimeError(
                f"Ray could not place {len(self.blocks)} workers of {bundle} each "
                f"(strategy {self.strategy.lower()}; cluster has {ray.cluster_resources()}); "
                "lower runtime.workers or runtime.worker_cpus, or add nodes")
        actor_cls = ray.remote(max_concurrency=2)(RayWorker)
        for w, block in enumerate(self.blocks):
            actor = actor_cls.options(
                num_cpus=self.cpus, num_gpus=self.gpus, name=None,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=self.pg, placement_group_bundle_index=w)).remote()
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

    def alive(self, peer: int) -> bool:
        return not self._finished(self.worker_of[peer])

    def exit_code(self, peer: int) -> int | None:
        w = self.worker_of[peer]
        if not self._finished(w):
            return None
        try:
            return int(self.ray.get(self.refs[w]))
        except Exception:  # the actor died (killed, node lost): like a killed process
            return -9

    def join(self, peer: int, timeout: float) -> None:
        self._finished(self.worker_of[peer], timeout)

    def ask_stop(self, peer: int) -> None:
        w = self.worker_of[peer]
        if not self._finished(w):
            self.actors[w].stop.remote()

    def terminate(self, peer: int) -> None:
        self.kill(peer)

    def kill(self, peer: int) -> None:
        w = self.worker_of[peer]
        if not self._finished(w):
            self.ray.kill(self.actors[w], no_restart=True)

    def close(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for actor in self.actors:  # done or not: an idle actor still holds a process
            self.ray.kill(actor, no_restart=True)
        self.actors.clear()
        if self.pg is not None:
            remove_placement_group(self.pg)
            self.pg = None
        if self.started_ray:
            self.ray.shutdown()

    def nodes(self) -> list[dict[str, Any]]:
        return [{"worker": w, "node": node, "peers": block}
                for w, (node, block) in enumerate(zip(self.node_ids, self.blocks, strict=True))]


class RayWorker:
    """The body of a Ray actor: hosts a block of peers (``p2pgame.peer.run_worker``) in one
    of its threads, while the other answers ``stop`` and ``node``."""

    def __init__(self) -> None:
        from p2pgame.peer import WorkerHandle

        self.handle = WorkerHandle()

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def run(self, launches: list[dict[str, Any]], worker: int, bind_node: bool) -> int:
        from p2pgame.peer import run_worker

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


def make_backend(runtime: Any, placement: str, workers: int, bind_node: bool = False,
                 preload: Sequence[str] = ()) -> Backend:
    """The backend of a resolved ``[runtime]`` (:class:`p2pgame.config.RuntimeSpec`) for a
    placement (``process`` or ``workers``: ``auto`` decided by the caller); ``preload``: the
    modules its peers import, loaded once by the fork server (:func:`start_context`)."""
    if runtime.backend == "ray":
        return RayBackend(workers, runtime.ray_address, runtime.ray_strategy,
                          runtime.worker_cpus, runtime.worker_gpus, bind_node)
    if runtime.backend != "local":
        raise ValueError(f"runtime.backend = {runtime.backend!r} is not known")
    if placement == "workers":
        return WorkerBackend(workers, preload)
    return LocalSpawnBackend(preload)
