"""The peer runtime: one peer's tasks (train, receive, control), its device and its stream.

A peer is three parts: :mod:`delivery` (pure: links, queues, rounds), the
typed :mod:`control` protocol, and this runtime, which wires them to the bus
and to the algorithm.  The runtime, not the algorithm, owns the torch device,
the peer's own CUDA stream (every algorithm call runs on it) and checkpoint
writing.  :class:`PeerRuntime` composes one object per job:

* :mod:`~p2pgame.peer.method`: the algorithm registry, looked up there alone;
* :class:`~p2pgame.peer.device.Device`: device, stream, where an algorithm call runs;
* :class:`~p2pgame.peer.receiving.Receiver`: envelopes into delivery, the release into
  the inbox and the sync barrier (with the contract between the step thread and the
  event loop);
* :class:`~p2pgame.peer.publishing.Publisher`: a step's messages, drawn in the step
  thread and sent on the loop; resync markers;
* :class:`~p2pgame.peer.stepping.StepLoop`: the train loop;
* :class:`~p2pgame.peer.reporting.Reporter`: metrics lines, files, heartbeat; the summary.

This module keeps the lifecycle and the control channel.

Lifecycle (see README, "How a run works"):

1. build the algorithm (data, model), bind the PUB socket, report ``Hello``;
2. on ``Connect``, subscribe to exactly the topics it learns from and publish
   handshakes until every in-neighbour's has arrived (so the subscriptions are
   live), then report ``Linked``;
3. on ``Go``, run the measured phase: train, receive and control as tasks of
   one TaskGroup; in sync mode each step waits for the in-neighbours' messages
   of the round it needs (a barrier), in async mode it uses the freshest it holds;
4. report ``Done`` with the summary and wait for ``Shutdown``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import p2pgame.peer.control as ctl
from p2pgame.bus.codec import Envelope
from p2pgame.bus.endpoint import PeerBus
from p2pgame.bus.links import Link, VirtualLink
from p2pgame.bus.topics import Topic
from p2pgame.bus.traffic import Traffic
from p2pgame.bus.transport import ControlClient, Curve, Transport
from p2pgame.config import Scenario
from p2pgame.peer import method as registry
from p2pgame.peer.delivery import Delivery
from p2pgame.peer.device import Device
from p2pgame.peer.publishing import Publisher
from p2pgame.peer.receiving import PeerFailure, Receiver
from p2pgame.peer.reporting import (
    PROGRESS_EVERY_S,
    Reporter,
    accounts,
    error_message,
    failure_line,
    peak_rss_mb,
    process_facts,
    save_checkpoint,
)
from p2pgame.peer.stepping import Availability, Pacer, StepLoop, StepPlan
from p2pgame.topology import Schedule, schedule_from_plain

HANDSHAKE_EVERY_S = 0.02

__all__ = ["HANDSHAKE_EVERY_S", "PROGRESS_EVERY_S", "Pacer", "PeerFailure", "PeerLaunch",
           "PeerRuntime", "error_message", "failure_line", "peak_rss_mb", "subscribers",
           "subscriptions"]


@dataclass(frozen=True)
class PeerLaunch:
    """Everything a peer process is started with: plain data only."""

    peer_id: int
    scenario: dict  # config.to_plain(Scenario)
    schedule: dict  # topology.schedule_to_plain(Schedule)
    control_endpoint: str
    ipc_dir: str  # where ipc:// sockets live
    data_root: str
    # Where the peer writes large files itself (checkpoints); "" (a peer on another
    # machine): it sends them over the control channel like every other file.
    artifact_dir: str
    threads: int = 1
    device: str = "cpu"
    bind_host: str = ""  # the address to bind tcp on ("": comm.host), e.g. a Ray node's
    token: str = ""  # this peer's credential on the control channel (never logged)
    # the process to outlive never (0: on another machine, e.g. on Ray; watched from the
    # process's entry, p2pgame.peer.exit_with_launcher)
    launcher_pid: int = 0
    # comm.security = "curve": this peer's key pair, every peer's public key, the
    # launcher's (Z85 text; the secret is never logged or reported).
    curve_public: str = ""
    curve_secret: str = ""
    curve_peers: dict | None = None
    curve_launcher: str = ""
    # runtime.restart: 0 for the first process of a peer, k for its k-th restart, which
    # continues from ``resume`` (its latest resume state, JSON; "" = from the start).
    incarnation: int = 0
    resume: str = ""

    def curve(self) -> Curve | None:
        if not self.curve_secret:
            return None
        return Curve(self.curve_public, self.curve_secret,
                     frozenset((self.curve_peers or {}).values()))


def subscriptions(scenario: Scenario, info: Any, schedule: Schedule,
                  me: int) -> dict[int, list[Topic]]:
    """The topics ``me`` takes from each in-neighbour: the spaces it learns that j publishes.
    ``info``: the algorithm's registry entry (:func:`p2pgame.peer.method.lookup`)."""
    learns = scenario.player(me).learns
    out = {}
    for j in schedule.union_in(me):
        spaces = [s for s in scenario.player(j).publishes if s in learns]
        out[j] = [Topic(registry.topic_kind(info, s), j, s) for s in spaces]
    return out


def subscribers(scenario: Scenario, info: Any, schedule: Schedule,
                me: int) -> dict[Topic, tuple[int, ...]]:
    """Who takes each of ``me``'s topics: out-neighbours that learn the space."""
    out = {}
    for s in scenario.player(me).publishes:
        takers = tuple(r for r in schedule.union_out(me) if s in scenario.player(r).learns)
        out[Topic(registry.topic_kind(info, s), me, s)] = takers
    return out


class PeerRuntime:
    """One peer.  ``scenario``, ``schedule`` and ``context`` are given by a worker that
    hosts many peers: decoded once and shared (a peer alone decodes its own, and its
    transport makes its own zmq context).  ``info``: the algorithm's registry entry
    (default: looked up by the scenario's algorithm name; a test may give its own)."""

    def __init__(self, launch: PeerLaunch, log=print, *, scenario: Scenario | None = None,
                 schedule: Schedule | None = None, context: Any = None,
                 info: Any = None) -> None:
        self.launch = launch
        self.log = log
        self.id = me = launch.peer_id
        self.scenario = scenario = scenario or registry.decode(launch.scenario)
        self.schedule = schedule = schedule or schedule_from_plain(launch.schedule)
        self.context = context
        self.info = info = info if info is not None else registry.lookup(scenario)
        comm = scenario.comm
        self.timers: Counter[str] = Counter()
        self.reporter = Reporter()
        self._device = Device(launch.device, registry.uses_torch(info),
                              scenario.runtime.gpu_memory_fraction)
        self.device, self.stream = self._device.device, self._device.stream
        self.ctx = registry.context(me, scenario, schedule, launch.data_root, str(self.device),
                                    log, self.reporter.artifact)
        self.algorithm = algorithm = registry.build(info, self.ctx)
        self.sync = comm.mode == "sync"
        self.topics = subscriptions(scenario, info, schedule, me)
        self.in_peers = schedule.union_in(me)
        self.out_peers = schedule.union_out(me)
        self.virtual = scenario.runtime.clock == "virtual"
        link_class = VirtualLink if self.virtual else Link
        links = {j: link_class(j, me, comm.link_of(j, me), scenario.seed)
                 for j in self.in_peers}
        pace = scenario.player(me).pace
        if self.virtual and pace.goes_offline:  # what arrives while we are away waits
            away = Availability(pace, scenario.seed, me).window_at  # (its own stream copy)
            for link in links.values():
                link.receiver_away = away
        self.delivery = Delivery(me, links, {j: [t.space for t in ts]
                                             for j, ts in self.topics.items()},
                                 self.sync, comm.publish_every, comm.max_samples_per_message,
                                 scenario.steps, comm.publish_from)
        self.traffic = Traffic(me, comm.max_message_bytes)
        self.subscribers = subscribers(scenario, info, schedule, me)
        self.my_topics = {t.space: t for t in self.subscribers}  # space -> our topic
        if self.virtual:  # our promises go to every out-neighbour
            self.subscribers[Topic.clock(me)] = tuple(sorted(self.out_peers))
        first_step, resume_ns = 0, 0
        if launch.resume:
            state = json.loads(launch.resume)
            algorithm.load_resume_state(state["algorithm"])
            first_step = int(state["step"])
            resume_ns = int(state.get("virtual_ns", 0))
        self.first_step = first_step
        self.stop_requested = False
        self.receiver = Receiver(me, self.delivery, self.traffic, schedule, self.in_peers,
                                 algorithm.check, comm.sync_timeout_s, self._device.busy,
                                 self.timers, scenario.runtime.start_timeout_s)
        self.receiver.step = first_step
        everyone = set(self.out_peers)
        self.publisher = Publisher(me, algorithm, self.my_topics, self._device, comm.pack_bool,
                                   self.timers,
                                   to_all=frozenset(t for t, rs in self.subscribers.items()
                                                    if set(rs) == everyone))
        pace = scenario.player(me).pace
        self.pace = None if pace.is_natural else Pacer(pace, scenario.seed, me)
        self.stepper = StepLoop(me, StepPlan.of(scenario, algorithm.resumable, first_step, me),
                                schedule, algorithm, self._device, self.receiver,
                                self.reporter, self.traffic,
                                publish=lambda bus, step, *vt: self.publish(bus, step, *vt),
                                publishes=bool(self.out_peers),
                                stopped=lambda: self.stop_requested, pacer=self.pace,
                                timers=self.timers, promise=self.publisher.promise)
        self.stepper.virtual_s = resume_ns / 1e9  # (the virtual clock: a restart's)
        self.transport: Any = None

    # -- state the parts share (read-only views) -------------------------------------------
    step = property(lambda self: self.stepper.step)
    steps_done = property(lambda self: self.stepper.steps_done)
    wall = property(lambda self: self.stepper.wall)
    published = property(lambda self: self.publisher.published)
    heard = property(lambda self: self.receiver.heard)
    heard_all = property(lambda self: self.receiver.heard_all)
    wakeup = property(lambda self: self.receiver.wakeup)
    artifacts = property(lambda self: self.reporter.artifacts)
    metrics_buffer = property(lambda self: self.reporter.metrics_buffer)

    # -- the parts' entry points (tests and benchmarks call or replace these) ---------------
    def on_envelope(self, env: Envelope, nbytes: int, now: float) -> None:
        self.receiver.on_envelope(env, nbytes, now)

    async def receive_loop(self, bus: PeerBus) -> None:
        await self.receiver.receive_loop(bus)

    async def barrier(self, step: int) -> None:
        await self.receiver.barrier(step, lambda: self.stop_requested)

    async def publish(self, bus: PeerBus, step: int, virtual_time: float | None = None,
                      until: float | None = None) -> bool:
        if virtual_time is None:  # (tests replace the publisher's publish with their own)
            await self.publisher.publish(bus, step)
            return False
        return await self.publisher.publish(bus, step, virtual_time, until)

    def wire_topics(self, j: int) -> list[Topic]:
        """What we subscribe to of in-neighbour ``j``: its topics we learn from, and on the
        virtual clock its promises."""
        return [*self.topics[j], Topic.clock(j)] if self.virtual else list(self.topics[j])

    def on_subscribe(self, bus: PeerBus, data: bytes) -> None:
        self.publisher.on_subscribe(bus, data)

    async def train_loop(self, bus: PeerBus, control: ControlClient | None = None) -> None:
        await self.stepper.run(bus)

    async def report(self, control: ControlClient, *extra: Any) -> None:
        await self.reporter.report(control, *extra)

    def request_stop(self) -> None:
        self.stop_requested = True
        self.receiver.wakeup.set()

    # -- the bus ---------------------------------------------------------------------------
    def attach(self, transport: Any, endpoints: dict[int, str]) -> PeerBus:
        """Connect ``transport`` (ZeroMQ, or :class:`p2pgame.bus.memory.MemoryTransport`)
        to the in-neighbours at ``endpoints`` (``Connect``'s); the bus the tasks use."""
        self.transport = self.receiver.transport = transport
        transport.connect(endpoints, {j: self.wire_topics(j) for j in self.topics},
                          self.launch.curve_peers)
        return PeerBus(transport, self.traffic, self.subscribers,
                       self.scenario.comm.pack_bool)

    def start_measured(self, bus: PeerBus) -> None:
        """Subscriptions of the start are no news; from now on a subscription to our resync
        topic is a receiver that re-connected."""
        self.transport.take_subscriptions()
        self.transport.on_subscribe = lambda data: self.on_subscribe(bus, data)

    # -- the end ---------------------------------------------------------------------------
    def _finish_algorithm(self) -> tuple[dict[str, Any], list[str]]:
        """In a worker thread: the algorithm's summary and its checkpoint, written."""
        on_stream = self._device.on_stream
        out = on_stream(self.algorithm.finish)
        state = on_stream(self.algorithm.checkpoint_state)
        return out, save_checkpoint(state, self.id, self.launch.artifact_dir,
                                    self.reporter.artifact)

    async def finish(self) -> tuple[dict[str, Any], list[str]]:
        """The summary and the checkpoint files written.  The runtime's accounts are read
        on the loop as the train loop ends; the algorithm's ``finish`` (heavy: evaluation)
        and checkpoint run in a worker thread after it, while receiving goes on
        (receiving.py, rule 5)."""
        summary = accounts(self.steps_done, self.wall, self.traffic, self.delivery,
                           self.timers)
        if self.virtual:
            clock = self.traffic.clock_sent.totals()
            summary.update({"virtual_s": self.stepper.virtual_s,
                            "offline_steps": self.stepper.offline_steps,
                            "clock_messages_sent": clock["messages"],
                            "clock_promises_carried": self.publisher.carried,
                            "clock_bytes_sent": (clock["bytes"]
                                                 + self.traffic.promise_bytes_sent)})
        self._device.in_flight += 1
        try:
            out, files = await asyncio.to_thread(self._finish_algorithm)
        finally:
            self._device.in_flight -= 1
        summary.update(out)
        summary.update(process_facts())
        return summary, files

    # -- control ---------------------------------------------------------------------------
    async def control_loop(self, control: ControlClient) -> None:
        while True:
            try:
                msg = ctl.decode(await control.recv())
            except ctl.ControlError:
                continue
            if isinstance(msg, ctl.Rewire) and msg.peer in self.topics:
                self.rewire(msg)
            if isinstance(msg, (ctl.Stop, ctl.Shutdown)):
                self.request_stop()
                if isinstance(msg, ctl.Shutdown):
                    return

    def rewire(self, msg: ctl.Rewire) -> None:
        """An in-neighbour was restarted: listen at its new endpoint; its steps start again
        from where it resumed."""
        j = msg.peer
        keys = self.launch.curve_peers or {}
        self.transport.reconnect(j, msg.endpoint, self.wire_topics(j), keys.get(j))
        self.delivery.rebase(j, msg.from_step)

    async def heartbeat_loop(self, control: ControlClient) -> None:
        await self.reporter.heartbeat_loop(control, lambda: self.steps_done)

    # -- the lifecycle ---------------------------------------------------------------------
    async def run(self) -> int:
        launch = self.launch
        comm = self.scenario.comm
        # The largest frame ZeroMQ takes in: a message's largest frame is its payload.
        transport = Transport(self.id, self.context, max_message_bytes=comm.max_message_bytes,
                              send_hwm=0 if self.virtual else comm.send_hwm,
                              curve=launch.curve())
        control = transport.control(launch.control_endpoint, launch.token,
                                    launch.curve_launcher)
        try:
            self.transport = self.receiver.transport = transport
            endpoint = transport.bind(comm.transport, launch.bind_host or comm.host,
                                      Path(launch.ipc_dir), launch.incarnation)
            await control.send(ctl.encode(ctl.Hello(endpoint, os.getpid())))
            msg = await self._next_control(control)
            if not isinstance(msg, ctl.Connect):
                return 0  # stopped before start
            bus = self.attach(transport, {int(k): v for k, v in msg.endpoints.items()})
            if not self.in_peers or launch.incarnation:
                # A restarted peer does not wait to hear everyone (its neighbours publish no
                # handshakes any more, some may have finished): async, it goes on with what
                # arrives.
                self.heard_all.set()
            async with asyncio.TaskGroup() as tg:
                recv_task = tg.create_task(self.receive_loop(bus))
                hs = Envelope(self.id, Topic.handshake(self.id), 0, {})
                go_task = asyncio.ensure_future(self._next_control(control))
                linked = False
                while not go_task.done():
                    if self.out_peers:
                        await bus.publish(hs)
                    if self.heard_all.is_set() and not linked:
                        linked = True
                        await control.send(ctl.encode(ctl.Linked()))
                    await asyncio.wait([go_task], timeout=HANDSHAKE_EVERY_S)
                if not isinstance(go_task.result(), ctl.Go):
                    recv_task.cancel()
                    return 0
                self.start_measured(bus)
                ctl_task = tg.create_task(self.control_loop(control))
                beat_task = tg.create_task(self.heartbeat_loop(control))
                await self.train_loop(bus, control)
                summary, files = await self.finish()  # heavy: evaluation
                beat_task.cancel()  # Done is the last word; nothing may follow it
                with contextlib.suppress(asyncio.CancelledError):
                    await beat_task
                await self.report(control, ctl.Done(summary, files))
                await ctl_task  # wait for shutdown: neighbours may still need our messages
                recv_task.cancel()
            return 0
        except BaseException as e:
            if not isinstance(e, asyncio.CancelledError):
                with contextlib.suppress(Exception):
                    await control.send(ctl.encode(error_message(e)))
            raise
        finally:
            # The control socket shares the transport's context: close it first, or the
            # context's term() would wait for it forever.
            control.close()
            transport.close()

    async def _next_control(self, control: ControlClient) -> Any:
        while True:
            try:
                return ctl.decode(await control.recv())
            except ctl.ControlError:
                continue
