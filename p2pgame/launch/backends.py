"""Backends: how the launcher starts and ends the processes its peers live in.

The launcher talks to its peers over the control channel; a backend only
starts them and, when asking is not enough, ends them.  Two placements on this
machine, both with the spawn start method (a fresh interpreter, its own zmq
context and torch state):

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


class _Processes:
    """Signals and joins for spawned processes, by peer."""

    def __init__(self) -> None:
        self.ctx = mp.get_context("spawn")
        self.procs: dict[int, Any] = {}  # peer -> the process it lives in

    def alive(self, peer: int) -> bool:
        return self.procs[peer].is_alive()

    def exit_code(self, peer: int) -> int | None:
        return self.procs[peer].exitcode

    def join(self, peer: int, timeout: float) -> None:
        self.procs[peer].join(max(0.0, timeout))

    def _signal(self, peer: int, sig: int) -> None:
        p = self.procs[peer]
        if p.pid is not None and p.exitcode is None:
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


class LocalSpawnBackend(_Processes):
    """One spawned OS process per peer (placement ``process``)."""

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
    """W spawned worker processes, each hosting a block of peers (placement ``workers``)."""

    def __init__(self, workers: int) -> None:
        super().__init__()
        self.workers = workers

    def start(self, launches: dict[int, dict[str, Any]]) -> None:
        for w, block in enumerate(worker_blocks(sorted(launches), self.workers)):
            p = self.ctx.Process(target=worker_main, name=f"p2pgame-worker-{w}",
                                 args=([launches[i] for i in block], w))
            p.start()
            for i in block:
                self.procs[i] = p


def make_backend(name: str, placement: str = "process", workers: int = 1) -> Backend:
    if name != "local":
        raise ValueError(f"runtime.backend = {name!r} is not known")
    if placement == "workers":
        return WorkerBackend(workers)
    return LocalSpawnBackend()
