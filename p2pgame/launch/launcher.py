"""The launcher: start the peers through a backend, supervise them, write the run folder.

It owns the run folder and the control channel.  It starts the peers, waits
for every ``Hello`` (endpoint), tells each peer whom to connect to, waits for
every ``Linked`` (handshake complete), says ``Go``, shows progress while it
writes the files the peers report and hands their metrics lines to its metric
sinks (:mod:`p2pgame.launch.sinks`), and finally asks everyone to ``Shutdown``.
A peer that dies or reports an error is named in ``summary.json`` and in the
exit status; the others are asked to stop.  SIGINT/SIGTERM: ask, wait,
terminate, kill.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import p2pgame.peer.control as ctl
from p2pgame.bus.transport import ControlServer
from p2pgame.config import Scenario
from p2pgame.launch.backends import Backend
from p2pgame.launch.rundir import RunFolder
from p2pgame.launch.sinks import JsonlSink, MetricSink
from p2pgame.topology import Schedule

log = logging.getLogger(__name__)

LIVENESS_EVERY_S = 0.2
EXITED = "process exited with code"


class Launcher:
    """Supervises one run's peers over the control channel (see the module).

    ``folder``: the run folder it writes what peers report into; ``sinks``: where their
    metrics lines go (default: ``metrics/peer-<i>.jsonl`` in ``folder``)."""

    def __init__(self, scenario: Scenario, schedule: Schedule, folder: RunFolder,
                 backend: Backend, progress: bool = True,
                 sinks: Sequence[MetricSink] | None = None) -> None:
        self.scenario = scenario
        self.schedule = schedule
        self.folder = folder
        self.backend = backend
        self.progress = progress
        if sinks is None:
            sinks = [JsonlSink(folder)] if folder is not None else []
        self.sinks: list[MetricSink] = list(sinks)
        self._sinks_open: set[int] = set()  # peers whose lines the sinks were opened for
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
        self.endpoints: dict[int, str] = {}
        # Restarts: every peer's launch data (set by run()), what is left, what happened.
        self.launches: dict[int, dict] = {}
        self.restarts_left = {i: scenario.runtime.restart for i in self.peers}
        self.restarts: dict[int, list[dict]] = {}
        self.rejoining: dict[int, int] = {}  # restarted, not yet running: peer -> from step
        # When the peers asked to stop must be gone (stop_processes keeps to it: a Ctrl-C
        # with a frozen peer waits runtime.stop_timeout_s once, not twice).
        self.stop_deadline: float | None = None
        self.stopped_by_launcher: dict[int, int] = {}  # peer -> the signal that ended it

    def metrics(self, peer: int, lines: list[dict[str, Any]]) -> None:
        """A peer's metrics lines, to every sink (opened for the peer on its first lines)."""
        if peer not in self._sinks_open:
            self._sinks_open.add(peer)
            for sink in self.sinks:
                sink.open(peer)
        for sink in self.sinks:
            sink.write(peer, lines)

    def close(self) -> None:
        """The run has ended: close the sinks."""
        for sink in self.sinks:
            sink.close()

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
                    self.failures[i] = f"{EXITED} {self.backend.exit_code(i)}"
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
            # The reason it gave is better than its exit code, noticed first by a liveness
            # check that ran before its last message was read.
            if self.failures.get(peer, EXITED).startswith(EXITED):
                self.failures[peer] = msg.error
            if msg.traceback:
                self.folder.log(peer, msg.traceback)
        elif isinstance(msg, ctl.Metrics):
            self.metrics(peer, msg.lines)
        elif isinstance(msg, ctl.Artifact):
            if not self.folder.artifact(msg.name, msg.data):
                self.rejected_artifacts += 1
        return peer, msg

    async def _gather(self, server, kind: type, timeout: float) -> dict[int, Any]:
        deadline = time.monotonic() + timeout
        got: dict[int, Any] = {}
        want = set(self.peers)
        while set(got) < want - set(self.failures):
            if self.failures or self.interrupted or self.folder.error:
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
        # SIGINT/SIGTERM reach on_signal through run()'s signal hold, which lasts from
        # the start to the summary (not the event loop's handlers: they end with the loop,
        # and a second Ctrl-C as it closes would lose the summary).
        rt = self.scenario.runtime
        hellos = await self._gather(server, ctl.Hello, rt.start_timeout_s)
        if not self.failures and not self.interrupted:
            endpoints = self.endpoints = {i: m.endpoint for i, m in hellos.items()}
            # Where each peer publishes, for outside subscribers (README, "Wire format").
            self.folder.write(self.folder.layout.endpoints, json.dumps(
                {str(i): {"endpoint": endpoints[i], "pid": hellos[i].pid}
                 for i in sorted(endpoints)}, indent=1))
            for i in self.peers:
                peers = {j: endpoints[j] for j in self.schedule.union_in(i)}
                await server.send(i, ctl.encode(ctl.Connect(peers)))
            await self._gather(server, ctl.Linked, rt.start_timeout_s)
        if self.failures or self.interrupted or self.folder.error:
            self.stop_deadline = time.monotonic() + rt.stop_timeout_s
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
            if m and m[0] in self.rejoining:
                await self._rejoin(server, *m)
            now = time.monotonic()
            # Heartbeats: every peer reports every half second (checked a few times a second).
            silent = [] if now - checked < LIVENESS_EVERY_S else self.peers
            if silent:
                checked = now
            for i in silent:
                if (i not in self.summaries and i not in self.failures
                        and i not in self.rejoining and now - self.last_heard[i] > timeout_s):
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
            if self.failures and not self.interrupted and not stop_sent:
                self._restart_failed()
            if (self.failures or self.interrupted or self.folder.error) and not stop_sent:
                stop_sent = True
                stop_deadline = self.stop_deadline = (
                    time.monotonic() + self.scenario.runtime.stop_timeout_s)
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

    # -- restarts (runtime.restart) ------------------------------------------------------
    def _restart_failed(self) -> None:
        """Start failed peers again, each from its latest resume state, while their
        restarts last; the others go on (async) with what they hold."""
        for i in sorted(self.failures):
            if self.restarts_left.get(i, 0) <= 0 or i in self.summaries:
                continue
            reason = self.failures.pop(i)
            self.restarts_left[i] -= 1
            if reason.startswith("silent") and self.backend.alive(i):
                self.backend.kill(i)  # frozen: it must not wake up beside its successor
                self.backend.join(i, 5.0)
            resume = self.folder.layout.resume_state(i)
            text = resume.read_text() if resume.is_file() else ""
            from_step = json.loads(text)["step"] if text else 0
            launch = dict(self.launches[i])
            launch.update(incarnation=launch.get("incarnation", 0) + 1, resume=text)
            self.launches[i] = launch
            self.restarts.setdefault(i, []).append({
                "reason": reason, "at_step": self.step_of.get(i, 0), "from_step": from_step,
                "lost_steps": max(0, self.step_of.get(i, 0) - from_step)})
            log.info(f"peer {i} failed ({reason}): restarting it from step {from_step} "
                     f"({self.restarts_left[i]} restart(s) left)")
            self.rejoining[i] = from_step
            self.step_of[i] = from_step
            self.backend.start({i: launch})

    async def _rejoin(self, server: ControlServer, peer: int, msg: Any) -> None:
        """A restarted peer's start-up, while the others run: Hello -> Connect (and its
        out-neighbours Rewire to its new endpoint) -> Linked -> Go."""
        if isinstance(msg, ctl.Hello):
            self.endpoints[peer] = msg.endpoint
            ins = {j: self.endpoints[j] for j in self.schedule.union_in(peer)}
            await server.send(peer, ctl.encode(ctl.Connect(ins)))
            rewire = ctl.encode(ctl.Rewire(peer, msg.endpoint, self.rejoining[peer]))
            for r in self.schedule.union_out(peer):
                if r not in self.summaries and r not in self.failures:
                    await server.send(r, rewire)
        elif isinstance(msg, ctl.Linked):
            await server.send(peer, ctl.encode(ctl.Go()))
            self.rejoining.pop(peer)
            self.last_heard[peer] = time.monotonic()

    async def _drain(self, server: ControlServer) -> None:
        """Take what is already queued (reports that came with or after a failure)."""
        while await self._recv(server, timeout=0.0):
            pass

    def on_signal(self) -> None:
        """SIGINT/SIGTERM: the first asks the peers to stop, a second ends them now."""
        self.interrupted += 1
        if self.interrupted == 1:
            log.info("stopping: asking peers to stop (again to force)")
        else:
            self.stop_deadline = time.monotonic()  # terminate at once, then kill

    def _write_error(self) -> str | None:
        return self.folder.error if self.folder is not None else None

    def stop_processes(self) -> None:
        """Ask (already sent over the control channel), wait, terminate, kill.

        The wait is runtime.stop_timeout_s from when the peers were asked to stop (the
        measured phase may have spent it already).  A peer ended here, after a Ctrl-C or
        a failure elsewhere, is not a failure of its own: it is named as stopped by the
        launcher."""
        deadline = self.stop_deadline or time.monotonic() + self.scenario.runtime.stop_timeout_s
        # Why the peers were asked to stop (before any is found ended below).
        stopped_for_cause = bool(self.interrupted or self.failures or self._write_error())
        for i in self.peers:
            self.backend.join(i, deadline - time.monotonic())
        for i in self.peers:
            if self.backend.alive(i):
                self.backend.terminate(i)
                self.stopped_by_launcher[i] = signal.SIGTERM
        for i in self.peers:
            self.backend.join(i, 2.0)
            if self.backend.alive(i):
                self.backend.kill(i)
                self.stopped_by_launcher[i] = signal.SIGKILL
                self.backend.join(i, 10.0)
        for i in self.peers:
            code = self.backend.exit_code(i)
            if code in (0, None) or i in self.failures:
                continue
            if i in self.stopped_by_launcher and i not in self.summaries:
                sig = signal.Signals(self.stopped_by_launcher[i]).name
                self.warnings[i] = (f"did not stop within runtime.stop_timeout_s = "
                                    f"{self.scenario.runtime.stop_timeout_s:g} s of being "
                                    f"asked: ended by the launcher ({sig}, exit code {code})")
                if not stopped_for_cause:
                    self.failures[i] = self.warnings.pop(i)
                continue
            if i in self.summaries:
                # It finished and reported everything; only its exit was late (a loaded
                # machine): its results stand, and the run is not failed for it.
                self.warnings[i] = (f"reported its results but did not exit within "
                                    f"runtime.stop_timeout_s = {self.scenario.runtime.stop_timeout_s:g} s "
                                    f"(exit code {code} after being stopped)")
                log.warning(f"peer {i} {self.warnings[i]}")
            else:
                self.failures[i] = f"process exited with code {code}"
