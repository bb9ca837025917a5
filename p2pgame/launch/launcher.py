"""The launcher: start the peers through a backend, supervise them, write the run folder.

It owns the run folder and the control channel.  It starts the peers, waits
for every ``Hello`` (endpoint), tells each peer whom to connect to, waits for
every ``Linked`` (handshake complete), says ``Go``, shows progress while it
writes the metrics lines and files the peers report, and finally asks
everyone to ``Shutdown``.  A peer that dies or reports an error is named in
``summary.json`` and in the exit status; the others are asked to stop.
SIGINT/SIGTERM: ask, wait, terminate, kill.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from typing import Any

import p2pgame.peer.control as ctl
from p2pgame.bus.transport import ControlServer
from p2pgame.config import Scenario
from p2pgame.launch.backends import Backend
from p2pgame.launch.rundir import RunFolder
from p2pgame.topology import Schedule

LIVENESS_EVERY_S = 0.2


class Launcher:
    def __init__(self, scenario: Scenario, schedule: Schedule, folder: RunFolder,
                 backend: Backend, progress: bool = True) -> None:
        self.scenario = scenario
        self.schedule = schedule
        self.folder = folder
        self.backend = backend
        self.progress = progress
        self.peers = list(range(scenario.n))
        self.failures: dict[int, str] = {}
        self.warnings: dict[int, str] = {}
        self.summaries: dict[int, dict] = {}
        self.files: dict[int, list[str]] = {}
        self.interrupted = 0
        self.step_of: dict[int, int] = {}
        self.rejected_artifacts = 0
        self.wall = 0.0
        self._checked_alive = 0.0
        self.bad_control = 0
        self.last_heard: dict[int, float] = {}

    def log(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    async def _recv(self, server: ControlServer, timeout: float = 0.2) -> tuple[int, Any] | None:
        """One control message, or None; notices dead peers and handles reports on the way."""
        got = await server.recv(timeout)
        now = time.monotonic()
        # Liveness costs a system call per peer: at most every LIVENESS_EVERY_S, not per
        # message (a thousand peers report thousands of messages a second).
        if got is None or now - self._checked_alive > LIVENESS_EVERY_S:
            self._checked_alive = now
            for i in self.peers:
                if i not in self.summaries and i not in self.failures and not self.backend.alive(i):
                    self.failures[i] = f"process exited with code {self.backend.exit_code(i)}"
        if got is None:
            return None
        peer, data = got
        if peer not in self.peers:
            return None
        self.last_heard[peer] = now
        try:
            msg = ctl.decode(data)
        except ctl.ControlError:  # authentic but malformed: ignored, counted
            self.bad_control += 1
            return None
        if isinstance(msg, ctl.Error):
            self.failures.setdefault(peer, msg.error)
            if msg.traceback:
                self.folder.log(peer, msg.traceback)
        elif isinstance(msg, ctl.Metrics):
            self.folder.metrics(peer, msg.lines)
        elif isinstance(msg, ctl.Artifact):
            if not self.folder.artifact(msg.name, msg.data):
                self.rejected_artifacts += 1
        return peer, msg

    async def _gather(self, server, kind: type, timeout: float) -> dict[int, Any]:
        deadline = time.monotonic() + timeout
        got: dict[int, Any] = {}
        want = set(self.peers)
        while set(got) < want - set(self.failures):
            if self.failures or self.interrupted:
                return got
            if time.monotonic() > deadline:
                for i in sorted(want - set(got)):
                    self.failures.setdefault(i, f"no '{kind.__name__.lower()}' within {timeout:g} s")
                return got
            m = await self._recv(server)
            if m and isinstance(m[1], kind):
                got[m[0]] = m[1]
        return got

    async def _send_all(self, server: ControlServer, msg: Any, peers=None) -> None:
        data = ctl.encode(msg)
        for i in self.peers if peers is None else peers:
            await server.send(i, data)

    async def supervise(self, server: ControlServer) -> None:
        rt = self.scenario.runtime
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)
        hellos = await self._gather(server, ctl.Hello, rt.start_timeout_s)
        if not self.failures and not self.interrupted:
            endpoints = {i: m.endpoint for i, m in hellos.items()}
            # Where each peer publishes, for outside subscribers (README, "Wire format").
            (self.folder.path / "endpoints.json").write_text(json.dumps(
                {str(i): {"endpoint": endpoints[i], "pid": hellos[i].pid}
                 for i in sorted(endpoints)}, indent=1))
            for i in self.peers:
                peers = {j: endpoints[j] for j in self.schedule.union_in(i)}
                await server.send(i, ctl.encode(ctl.Connect(peers)))
            await self._gather(server, ctl.Linked, rt.start_timeout_s)
        if self.failures or self.interrupted:
            await self._send_all(server, ctl.Stop())
            return
        await self._send_all(server, ctl.Go())
        t_go = time.monotonic()
        await self._measured_phase(server)
        self.wall = time.monotonic() - t_go

    async def _measured_phase(self, server: ControlServer) -> None:
        everyone = set(self.peers)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.scenario.steps * len(everyone), desc=self.scenario.name,
                       unit="step", file=sys.stderr)
        stop_sent = False
        stop_deadline = None
        timeout_s = self.scenario.runtime.peer_timeout_s
        t_go = checked = time.monotonic()
        for i in self.peers:
            self.last_heard[i] = t_go
        while set(self.summaries) | set(self.failures) < everyone:
            m = await self._recv(server)
            now = time.monotonic()
            # Heartbeats: every peer reports every half second (checked a few times a second).
            silent = [] if now - checked < LIVENESS_EVERY_S else self.peers
            if silent:
                checked = now
            for i in silent:
                if (i not in self.summaries and i not in self.failures
                        and now - self.last_heard[i] > timeout_s):
                    self.failures[i] = (
                        f"silent for {now - self.last_heard[i]:.0f} s (runtime.peer_timeout_s "
                        f"= {timeout_s:g}): frozen, or cut off from the launcher")
            if m:
                peer, msg = m
                if isinstance(msg, ctl.Progress):
                    self.step_of[peer] = msg.step
                elif isinstance(msg, ctl.Done):
                    self.summaries[peer] = msg.summary
                    self.files[peer] = list(msg.files)
                    self.step_of[peer] = msg.summary.get("steps", 0)
                if bar is not None:
                    bar.n = sum(self.step_of.values())
                    bar.refresh()
            if (self.failures or self.interrupted) and not stop_sent:
                stop_sent = True
                stop_deadline = time.monotonic() + self.scenario.runtime.stop_timeout_s
                await self._send_all(server, ctl.Stop(), [
                    i for i in self.peers if i not in self.summaries and i not in self.failures])
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                break
            if self.interrupted > 1:
                break
        if bar is not None:
            bar.close()
        await self._drain(server)
        await self._send_all(server, ctl.Shutdown())

    async def _drain(self, server: ControlServer) -> None:
        """Take what is already queued (reports that came with or after a failure)."""
        while await self._recv(server, timeout=0.0):
            pass

    def _on_signal(self) -> None:
        self.interrupted += 1
        if self.interrupted == 1:
            self.log("stopping: asking peers to stop (again to force)")

    def stop_processes(self) -> None:
        """Ask (already sent over the control channel), wait, terminate, kill."""
        deadline = time.monotonic() + self.scenario.runtime.stop_timeout_s
        for i in self.peers:
            self.backend.join(i, deadline - time.monotonic())
        for i in self.peers:
            if self.backend.alive(i):
                self.backend.terminate(i)
        for i in self.peers:
            self.backend.join(i, 2.0)
            if self.backend.alive(i):
                self.backend.kill(i)
                self.backend.join(i, 10.0)
        for i in self.peers:
            code = self.backend.exit_code(i)
            if code in (0, None) or i in self.failures:
                continue
            if i in self.summaries:
                # It finished and reported everything; only its exit was late (a loaded
                # machine): its results stand, and the run is not failed for it.
                self.warnings[i] = (f"reported its results but did not exit within "
                                    f"runtime.stop_timeout_s = {self.scenario.runtime.stop_timeout_s:g} s "
                                    f"(exit code {code} after being stopped)")
                self.log(f"warning: peer {i} {self.warnings[i]}")
            else:
                self.failures[i] = f"process exited with code {code}"
