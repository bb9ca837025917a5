"""The launcher: start the peers through a backend, supervise them, write the run folder.

It owns the run folder and the control channel.  It starts the peers, waits
for every ``Hello`` (endpoint), tells each peer whom to connect to, waits for
every ``Linked`` (handshake complete), says ``Go``, shows progress while it
writes the files the peers report and hands their metrics lines to its metric
sinks (:mod:`p2pgame.launch.sinks`), and finally asks everyone to ``Shutdown``.
Progress (:class:`RunProgress`) counts steps per peer: a tqdm bar on a terminal, a
plain line every few seconds otherwise.
A peer that dies or reports an error is named in ``summary.json`` and in the
exit status; the others are asked to stop.  SIGINT/SIGTERM: ask, wait,
terminate, kill.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

import p2pgame.peer.control as ctl
from p2pgame.bus.transport import ControlServer
from p2pgame.config import Scenario
from p2pgame.launch.backends import Backend
from p2pgame.launch.rundir import RunFolder
from p2pgame.launch.sinks import JsonlSink, MetricSink
from p2pgame.launch.summary import few_used
from p2pgame.topology import Schedule

log = logging.getLogger(__name__)

LIVENESS_EVERY_S = 0.2
EXITED = "process exited with code"
# stderr not a terminal: a plain progress line this often (P2PGAME_PROGRESS_EVERY_S: as
# set, e.g. 60 for a long run's log, or 0.5 for a test that waits for progress).
PLAIN_EVERY_S = 10.0
EVERY_S_VAR = "P2PGAME_PROGRESS_EVERY_S"


def plain_every_s() -> float:
    """Seconds between plain progress lines: P2PGAME_PROGRESS_EVERY_S when it is a
    positive number, else PLAIN_EVERY_S."""
    try:
        every = float(os.environ.get(EVERY_S_VAR, ""))
    except ValueError:
        return PLAIN_EVERY_S
    return every if every > 0 and every < float("inf") else PLAIN_EVERY_S
BAR_EVERY_S = 0.2  # a terminal: the bar redrawn at most this often
PROGRESS_EVERY_S = 0.2  # the peers' steps looked at this often (a min over the peers)


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h``: a time left or taken, as a reader says it."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def is_terminal(stream: Any) -> bool:
    """Is ``stream`` a terminal a bar can be drawn on (one with columns: a pseudo-terminal
    of size 0, as ``script`` makes, shows no tqdm bar at all)?"""
    try:
        return bool(stream.isatty()) and os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):
        return False


class RunProgress:
    """A run's progress on stderr, in steps per peer: the slowest running peer's step
    (the run ends when it does; a failed peer no longer counts), and the mean of them
    all when it differs.  The rate counts from the step the run started at (after
    ``--resume``, the step the peers resumed from, not 0).

    On a terminal: a tqdm bar, redrawn at most every BAR_EVERY_S.  Otherwise (a log
    file, a pipe, CI): one plain line every ``every_s`` seconds, e.g.
    ``mnist-demo: step 1200/6000 per peer (20 %), 16.1 steps/s per peer, eta 5 min``
    (``every_s``: default :func:`plain_every_s`),
    and a last one when the run ends; never a carriage return.  A stage
    (:meth:`stage`, e.g. the peers evaluating) is a plain line of its own, said once."""

    def __init__(self, name: str, steps: int, n_peers: int, start: Mapping[int, int],
                 stream: TextIO | None = None, tty: bool | None = None,
                 every_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self.steps, self.n_peers = name, steps, n_peers
        self.stream = sys.stderr if stream is None else stream
        self.tty = is_terminal(self.stream) if tty is None else tty
        self.every_s = plain_every_s() if every_s is None else every_s
        every_s = self.every_s
        self.clock = clock
        self.t0 = self.last_line = self.last_draw = clock()
        self.first = min((start.get(i, 0) for i in range(n_peers)), default=0)
        self.slowest, self.mean = self.first, float(self.first)
        self.said: set[str] = set()
        self._at_end_said = False  # a plain line at the last step written (not repeated)
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=steps, initial=self.first, desc=name, unit="step",
                            file=self.stream,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| step {n_fmt}/"
                                       "{total_fmt} per peer [{elapsed}<{remaining}, "
                                       "{rate_fmt}]{postfix}")
        else:
            resumed = f", from step {self.first} on" if self.first else ""
            self._write(f"{name}: {n_peers} peer(s) running, {steps} steps each{resumed}; "
                        f"progress every {every_s:g} s (the slowest peer's step)")

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def rate(self) -> float:
        """Steps per second per peer (the slowest peer's) since the run started."""
        elapsed = self.clock() - self.t0
        return (self.slowest - self.first) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """The plain progress line of now."""
        pct = 100.0 * self.slowest / self.steps if self.steps else 100.0
        text = f"{self.name}: step {self.slowest}/{self.steps} per peer ({pct:.0f} %"
        if self.n_peers > 1 and self.mean - self.slowest >= 1:
            text += f"; the slowest peer's, mean {self.mean:.0f}"
        text += ")"
        rate = self.rate()
        text += f", {rate:.3g} steps/s per peer"
        if self.slowest < self.steps:
            text += f", eta {duration((self.steps - self.slowest) / rate)}" if rate > 0 \
                else ", eta unknown"
        return text

    def update(self, step_of: Mapping[int, int], running: Sequence[int]) -> None:
        """The peers' steps now (``running``: the peers that count, the failed ones out)."""
        steps = [step_of.get(i, 0) for i in running]
        if steps:
            self.slowest = min(steps)
            self.mean = sum(steps) / len(steps)
        now = self.clock()
        if self.bar is not None:
            if now - self.last_draw >= BAR_EVERY_S:
                self.last_draw = now
                self._draw()
        elif now - self.last_line >= self.every_s:
            self.last_line = now
            if self.slowest >= self.steps and self._at_end_said:
                return  # (every peer at its last step, said once: it is evaluating)
            self._at_end_said = self.slowest >= self.steps
            self._write(self.line())

    def _draw(self) -> None:
        self.bar.n = self.slowest
        differs = self.n_peers > 1 and self.mean - self.slowest >= 1
        self.bar.set_postfix_str(f"slowest peer; mean {self.mean:.0f}" if differs else "",
                                 refresh=False)
        self.bar.refresh()

    def stage(self, text: str) -> None:
        """A stage of the run (``evaluating ...``), once."""
        if text not in self.said:
            self.said.add(text)
            self._write(f"{self.name}: {text}")

    def close(self) -> None:
        """The run has ended: the bar's last state, or a last plain line."""
        if self.bar is not None:
            self._draw()
            self.bar.close()
            return
        took = self.clock() - self.t0
        self._write(f"{self.line()}; {'done' if self.slowest >= self.steps else 'stopped'} "
                    f"after {duration(took)}")


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
        self.started_at: dict[int, int] = {}  # each peer's step at Go (--resume: not 0)
        self.rejected_artifacts = 0
        self.wall = 0.0
        self._checked_alive = 0.0
        self.bad_control = 0
        self.last_heard: dict[int, float] = {}
        # The latest moment the launcher had read every control message waiting for it:
        # silence is measured up to there, not up to now.  A launcher behind on its queue
        # (thousands of peers reporting on 2 cores) has not heard messages that were sent;
        # it must not call their senders silent.
        self.caught_up = 0.0
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
        if got is None or not server.queued():
            self.caught_up = now
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

    def fail_silent(self, timeout_s: float) -> None:
        """Fail every running peer the launcher has heard nothing from for ``timeout_s``
        (``runtime.peer_timeout_s``), counted up to the last moment the launcher had read
        every message waiting for it (``caught_up``), not up to now: behind on its queue,
        it cannot tell a silent peer from one whose messages it has not read yet."""
        for i in self.peers:
            quiet = self.caught_up - self.last_heard[i]
            if (quiet > timeout_s and i not in self.summaries and i not in self.failures
                    and i not in self.rejoining):
                self.failures[i] = (
                    f"silent for {quiet:.0f} s (runtime.peer_timeout_s = {timeout_s:g}): "
                    "frozen, or cut off from the launcher")

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
        steps = self.scenario.steps
        # Where each peer starts (after --resume: the step it resumed from).
        self.started_at = dict(self.step_of)
        progress = None
        if self.progress:
            progress = RunProgress(self.scenario.name, steps, len(self.peers), self.started_at)
        looked = 0.0
        stop_sent = False
        stop_deadline = None
        timeout_s = self.scenario.runtime.peer_timeout_s
        t_go = checked = time.monotonic()
        self.caught_up = t_go
        for i in self.peers:
            self.last_heard[i] = t_go
        while set(self.summaries) | set(self.failures) < everyone:
            m = await self._recv(server)
            if m and m[0] in self.rejoining:
                await self._rejoin(server, *m)
            now = time.monotonic()
            # Heartbeats: every peer reports every half second (checked a few times a second).
            if now - checked >= LIVENESS_EVERY_S:
                checked = now
                self.fail_silent(timeout_s)
            if m:
                peer, msg = m
                if isinstance(msg, ctl.Progress):
                    self.step_of[peer] = msg.step
                elif isinstance(msg, ctl.Done):
                    self.summaries[peer] = msg.summary
                    self.files[peer] = list(msg.files)
                    self.step_of[peer] = msg.summary.get("steps", 0)
            if progress is not None and now - looked >= PROGRESS_EVERY_S:
                looked = now
                running = [i for i in self.peers if i not in self.failures]
                progress.update(self.step_of, running)
                waiting = [i for i in running if i not in self.summaries]
                # Every peer still at work has done its last step: it is evaluating.
                if waiting and not stop_sent and all(
                        self.step_of.get(i, 0) >= steps for i in waiting):
                    progress.stage(f"every peer at its last step ({steps}): evaluating, "
                                   "then the summary")
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
        if progress is not None:
            progress.update(self.step_of, [i for i in self.peers if i not in self.failures])
            progress.close()
        await self._drain(server)
        self._warn_few_used()
        await self._send_all(server, ctl.Shutdown())

    def warn(self, peer: int, text: str) -> None:
        """A warning about ``peer`` (summary.json's ``warnings``: joined with '; ')."""
        prior = self.warnings.get(peer)
        self.warnings[peer] = f"{prior}; {text}" if prior else text

    def _warn_few_used(self) -> None:
        """A finished peer that trained on few of an in-neighbour's messages is named
        (summary.py, :func:`few_used`): a warning, its results stand."""
        found = few_used({str(i): s for i, s in self.summaries.items()}, self.schedule,
                         self.started_at, frozenset(self.restarts))
        for peer, lines in sorted(found.items()):
            for text in lines:
                log.warning(f"peer {peer} {text}")
                self.warn(peer, text)

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
                late = (f"reported its results but did not exit within "
                        f"runtime.stop_timeout_s = {self.scenario.runtime.stop_timeout_s:g} s "
                        f"(exit code {code} after being stopped)")
                self.warn(i, late)
                log.warning(f"peer {i} {late}")
            else:
                self.failures[i] = f"process exited with code {code}"
