"""Backends: how the launcher starts and ends peer processes.

The launcher talks to its peers over the control channel; a backend only
starts them and, when asking is not enough, ends them.  ``local`` spawns one
OS process per peer on this machine (the spawn start method: a fresh
interpreter, its own zmq context and torch state).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from typing import Any, Protocol

from p2pgame.peer import peer_main


class Backend(Protocol):
    """Where peers live.  Every method takes the peer id."""

    def start(self, peer: int, launch: dict[str, Any]) -> None:
        """Start peer ``peer`` with its PeerLaunch (plain data)."""

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


class LocalSpawnBackend:
    """One spawned OS process per peer.

    A peer takes its first SIGTERM as a request to stop and the next one as
    the end, so ``ask_stop`` and ``terminate`` both send SIGTERM: after an ask,
    a terminate ends the peer.
    """

    def __init__(self) -> None:
        self.ctx = mp.get_context("spawn")
        self.procs: dict[int, Any] = {}

    def start(self, peer: int, launch: dict[str, Any]) -> None:
        p = self.ctx.Process(target=peer_main, name=f"p2pgame-peer-{peer}", args=(launch,))
        p.start()
        self.procs[peer] = p

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

    def ask_stop(self, peer: int) -> None:
        self._signal(peer, signal.SIGTERM)

    def terminate(self, peer: int) -> None:
        self._signal(peer, signal.SIGTERM)

    def kill(self, peer: int) -> None:
        self._signal(peer, signal.SIGKILL)


BACKENDS = {"local": LocalSpawnBackend}


def make_backend(name: str) -> Backend:
    return BACKENDS[name]()
