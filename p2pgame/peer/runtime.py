"""The peer runtime: one peer's tasks (train, receive, control), its device and its stream.

A peer is three parts: :mod:`delivery` (pure: links, queues, rounds), the
typed :mod:`control` protocol, and this runtime, which wires them to the bus
and to the algorithm.  The runtime, not the algorithm, owns the torch device,
the peer's own CUDA stream (every algorithm call runs on it) and checkpoint
writing.

Lifecycle (see README, "Peer lifecycle"):

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
import io
import json
import os
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import p2pgame.peer.control as ctl
from p2pgame.algorithms import AlgorithmInfo, decode_scenario, get_algorithm
from p2pgame.algorithms.base import PeerContext
from p2pgame.bus.codec import Envelope, pack_bools
from p2pgame.bus.endpoint import PeerBus
from p2pgame.bus.links import Link
from p2pgame.bus.topics import RESYNC, Topic
from p2pgame.bus.traffic import Traffic
from p2pgame.bus.transport import ControlClient, Curve, Transport
from p2pgame.config import PaceSpec, Scenario
from p2pgame.peer.delivery import Delivery
from p2pgame.rng import generator
from p2pgame.topology import Schedule, schedule_from_plain

PROGRESS_EVERY_S = 0.5
HANDSHAKE_EVERY_S = 0.02


class PeerFailure(RuntimeError):
    pass


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
    launcher_pid: int = 0  # the process to outlive never (0: on another machine, e.g. on Ray)
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


def subscriptions(scenario: Scenario, info: AlgorithmInfo, schedule: Schedule,
                  me: int) -> dict[int, list[Topic]]:
    """The topics ``me`` takes from each in-neighbour: the spaces it learns that j publishes."""
    learns = scenario.player(me).learns
    out = {}
    for j in schedule.union_in(me):
        spaces = [s for s in scenario.player(j).publishes if s in learns]
        out[j] = [Topic(info.spaces[s], j, s) for s in spaces]
    return out


def subscribers(scenario: Scenario, info: AlgorithmInfo, schedule: Schedule,
                me: int) -> dict[Topic, tuple[int, ...]]:
    """Who takes each of ``me``'s topics: out-neighbours that learn the space."""
    out = {}
    for s in scenario.player(me).publishes:
        takers = tuple(r for r in schedule.union_out(me) if s in scenario.player(r).learns)
        out[Topic(info.spaces[s], me, s)] = takers
    return out


class Pacer:
    """A straggler on purpose (:class:`~p2pgame.config.PaceSpec`): how long to pause after
    a step, drawn from the peer's own seeded stream."""

    def __init__(self, spec: PaceSpec, seed: int, peer: int) -> None:
        self.spec = spec
        self.rng = generator(seed, "peer", peer, "pace")

    def pause(self, compute_s: float) -> float:
        spec = self.spec
        extra = compute_s * (1.0 / spec.speed - 1.0)
        if spec.step_delay_ms > 0:
            mean = spec.step_delay_ms / 1000.0
            if spec.step_delay_dist == "uniform":
                extra += 2 * mean * self.rng.random()
            elif spec.step_delay_dist == "exponential":
                extra += self.rng.exponential(mean)
            else:
                extra += mean
        return extra


class PeerRuntime:
    """One peer.  ``scenario``, ``schedule`` and ``context`` are given by a worker that
    hosts many peers: decoded once and shared (a peer alone decodes its own, and its
    transport makes its own zmq context)."""

    def __init__(self, launch: PeerLaunch, log=print, *, scenario: Scenario | None = None,
                 schedule: Schedule | None = None, context: Any = None) -> None:
        self.launch = launch
        self.log = log
        self.id = me = launch.peer_id
        self.scenario = scenario = scenario or decode_scenario(launch.scenario)
        self.schedule = schedule or schedule_from_plain(launch.schedule)
        self.context = context
        self.info = get_algorithm(scenario.algorithm_name)
        self.artifacts: list[ctl.Artifact] = []
        self.device, self.stream = self._device(launch.device)
        self.ctx = PeerContext(
            peer_id=me,
            scenario=scenario,
            player=scenario.player(me),
            schedule=self.schedule,
            data_root=Path(launch.data_root),
            device=str(self.device),
            log=log,
            artifact=lambda name, data: self.artifacts.append(ctl.Artifact(name, data)),
        )
        self.algorithm = self.info.peer()(self.ctx)
        comm = scenario.comm
        self.sync = comm.mode == "sync"
        self.topics = subscriptions(scenario, self.info, self.schedule, me)
        self.in_peers = self.schedule.union_in(me)
        self.out_peers = self.schedule.union_out(me)
        links = {j: Link(j, me, comm.link_of(j, me), scenario.seed) for j in self.in_peers}
        self.delivery = Delivery(me, links, {j: [t.space for t in ts]
                                             for j, ts in self.topics.items()},
                                 self.sync, comm.publish_every, comm.max_samples_per_message,
                                 scenario.steps)
        self.traffic = Traffic(me, comm.max_message_bytes)
        pace = scenario.player(me).pace
        self.pace = None if pace.is_natural else Pacer(pace, scenario.seed, me)
        self.subscribers = subscribers(scenario, self.info, self.schedule, me)
        self.my_topics = {t.space: t for t in self.subscribers}  # space -> our topic
        self.step = 0
        self.steps_done = 0
        self.first_step = 0
        if launch.resume:
            state = json.loads(launch.resume)
            self.algorithm.load_resume_state(state["algorithm"])
            self.first_step = self.steps_done = self.step = int(state["step"])
        self.wall = 0.0
        self.heard: set[int] = set()
        self.published = -1  # our newest round whose every message has been sent
        self.stop_requested = False
        self.wakeup = asyncio.Event()
        self.heard_all = asyncio.Event()
        self.timers: Counter[str] = Counter()
        self.metrics_buffer: list[dict[str, Any]] = []

    # -- device ------------------------------------------------------------------------
    def _device(self, want: str):
        """The torch device and, on CUDA, this peer's own stream (None: no torch, or CPU)."""
        if not self.info.uses_torch:
            return "cpu", None
        import torch

        device = torch.device(want)
        if device.type != "cuda":
            return device, None
        fraction = self.scenario.runtime.gpu_memory_fraction
        if fraction:  # per process: the peers of a worker share the cap
            torch.cuda.set_per_process_memory_fraction(fraction, device)
        return device, torch.cuda.Stream(device=device)

    def _on_stream(self, fn, *args):
        if self.stream is None:
            return fn(*args)
        import torch

        with torch.cuda.stream(self.stream):
            out = fn(*args)
        self.stream.synchronize()  # results leave the stream (numpy, floats) complete
        return out

    async def _call(self, fn, *args):
        if self.algorithm.heavy:
            return await asyncio.to_thread(self._on_stream, fn, *args)
        return fn(*args)

    # -- receiving -----------------------------------------------------------------------
    def on_envelope(self, env: Envelope, nbytes: int, now: float) -> None:
        if env.topic.kind == RESYNC:
            # (A prefix subscription to rs/j/5 also takes rs/j/50's markers.)
            if env.topic.space == str(self.id) and env.topic.peer == env.sender:
                j = env.sender
                # A cut connection we re-made, or a first one (after j's restart or ours)?
                cut = self.transport.take_cut(j)
                self.delivery.resync(j, env.step, cut=cut)
                if cut:
                    self.traffic.reject("connection-cut")
                self.wakeup.set()
            return
        if env.topic.is_handshake:
            self.heard.add(env.sender)
            if self.heard >= set(self.in_peers):
                self.heard_all.set()
            return
        reason = self.delivery.accept(env, nbytes, now, self.step, self.algorithm.check)
        if reason:
            self.traffic.reject(reason)
        self.wakeup.set()

    async def receive_loop(self, bus: PeerBus) -> None:
        while True:
            batch = await bus.receive()
            t0 = time.perf_counter()
            now = time.monotonic()
            for env, nbytes in batch:
                self.on_envelope(env, nbytes, now)
            self.timers["receive_decode"] += time.perf_counter() - t0

    def on_subscribe(self, bus: PeerBus, data: bytes) -> None:
        """A receiver (re)subscribed to its resync topic in the measured phase: its
        connection to us was cut and re-made (or it re-connected to us after our restart).
        Tell it the newest round we have published in full, so that it gives up what it
        lost meanwhile instead of waiting for it."""
        try:
            topic = Topic.parse(data.decode())
        except (UnicodeDecodeError, ValueError):
            return
        if topic.kind == RESYNC and topic.peer == self.id:
            bus.publish_now(Envelope(self.id, topic, self.published, {}))

    async def barrier(self, step: int) -> None:
        """Sync mode: wait until every active in-neighbour's needed round is complete."""
        active = self.schedule.at(step).in_neighbours(self.id)
        timeout_s = self.scenario.comm.sync_timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            now = time.monotonic()
            next_time = self.delivery.release(step, now)
            missing = self.delivery.missing(step, active)
            if not missing or self.stop_requested:
                return
            if now > deadline:
                j = missing[0]
                raise PeerFailure(f"step {step}: no round {self.delivery.needed_round(j, step)} "
                                  f"from peer {j} after {timeout_s:g} s")
            self.wakeup.clear()
            timeout = deadline - now if next_time is None else max(0.0, next_time - now)
            try:
                await asyncio.wait_for(self.wakeup.wait(), timeout=min(timeout, 1.0))
            except TimeoutError:
                pass

    # -- publishing ----------------------------------------------------------------------
    def _draw_messages(self, step: int) -> dict[str, Any]:
        """The algorithm's messages of ``step``, their ``bool`` tensors bit-packed here
        (the training thread of a heavy algorithm) rather than on the event loop."""
        messages = self.algorithm.publish(step)
        if not self.scenario.comm.pack_bool:
            return messages
        memo: dict = {}  # (the arrays stay alive in ``messages``: their ids are stable)
        return {space: pack_bools(tensors, memo) for space, tensors in messages.items()}

    async def publish(self, bus: PeerBus, step: int) -> None:
        t0 = time.perf_counter()
        messages = await self._call(self._draw_messages, step)
        self.timers["sample"] += time.perf_counter() - t0
        items = list(messages.items())
        for k, (space, tensors) in enumerate(items):
            if space not in self.my_topics:
                raise PeerFailure(f"the algorithm published {space!r}, which peer {self.id} "
                                  f"does not publish ({', '.join(self.my_topics) or 'nothing'})")
            await bus.publish(Envelope(sender=self.id, topic=self.my_topics[space], step=step,
                                       tensors=tensors, last=k == len(items) - 1))
        self.published = step

    # -- the measured phase ----------------------------------------------------------------
    async def train_loop(self, bus: PeerBus, control: ControlClient) -> None:
        steps = self.scenario.steps
        every = self.scenario.runtime.metrics_every or max(1, steps // 100)
        period = self.scenario.comm.publish_every
        t_start = time.monotonic()
        rt = self.scenario.runtime
        # Resume states: every checkpoint_every steps (for --resume), or by default every
        # steps/20 when restarts are on.
        resume_every = (rt.checkpoint_every or (max(1, steps // 20) if rt.restart else 0)
                        ) if self.algorithm.resumable else 0
        for step in range(self.first_step, steps):
            if self.stop_requested:
                break
            self.step = step
            top = self.schedule.at(step)
            if step % period == 0 and self.out_peers:
                await self.publish(bus, step)
            t0 = time.perf_counter()
            if self.sync:
                await self.barrier(step)
            else:
                await asyncio.sleep(0)  # let the receive task drain the socket
                self.delivery.release(step, time.monotonic())
            self.timers["wait"] += time.perf_counter() - t0
            if self.stop_requested:
                break
            t0 = time.perf_counter()
            out = await self._call(self.algorithm.train_step, step, self.delivery.inbox, top)
            compute = time.perf_counter() - t0
            self.timers["train"] += compute
            if self.pace is not None:
                t0 = time.perf_counter()
                await asyncio.sleep(self.pace.pause(compute))  # receiving goes on
                self.timers["pace"] += time.perf_counter() - t0
            self.steps_done = step + 1
            if resume_every and self.steps_done % resume_every == 0 and step < steps - 1:
                # The launcher keeps the latest in the run folder, for a restart.
                state = {"step": self.steps_done, "algorithm": self.algorithm.resume_state()}
                self.artifacts.append(ctl.Artifact(f"resume/peer-{self.id}.json",
                                                   json.dumps(state).encode()))
            probe_every = self.algorithm.probe_every
            if (step % every == 0 or step == steps - 1
                    or (probe_every and step % probe_every == 0)):
                line = {"step": step, "t": round(time.monotonic() - t_start, 4), **out}
                line.update(await self._call(self.algorithm.probe, step))
                line["bytes_sent"] = self.traffic.sent.totals()["bytes"]
                # Released bytes: deterministic in sync mode (arrivals are not).
                line["bytes_received"] = self.delivery.delivered_bytes
                line["staleness_mean"] = self.delivery.inbox.staleness_summary()[0]
                self.metrics_buffer.append(line)
        self.wall = time.monotonic() - t_start
        self.timers["encode"] = bus.encode_s
        self.timers["send"] = bus.send_s

    async def heartbeat_loop(self, control: ControlClient) -> None:
        """Every PROGRESS_EVERY_S: the metrics lines and files so far, and ``Progress``,
        which is also the heartbeat: a launcher that hears nothing from a peer for
        ``runtime.peer_timeout_s`` declares it failed (frozen, or cut off).  Its own task,
        so a peer waiting at a barrier or in a long step still beats."""
        while True:
            await self.report(control, ctl.Progress(self.steps_done))
            await asyncio.sleep(PROGRESS_EVERY_S)

    async def watch_launcher(self) -> None:
        """Exit when the launcher is gone: a killed launcher must not leave its peers
        running, waiting for a Shutdown that never comes.

        The launcher is not our parent (we are forked from its fork server), so we hold a
        pidfd of it, which becomes readable when it exits: no polling, and no confusion with
        a later process given the same pid."""
        launcher = self.launch.launcher_pid
        if not launcher:  # not on this machine (a Ray actor): Ray ends actors with their driver
            return
        try:
            fd = os.pidfd_open(launcher)
        except ProcessLookupError:
            fd = None
        if fd is not None:
            loop = asyncio.get_running_loop()
            exited = asyncio.Event()
            loop.add_reader(fd, exited.set)
            try:
                await exited.wait()
            finally:
                loop.remove_reader(fd)
                os.close(fd)
        self.log(f"the launcher (pid {launcher}) is gone: exiting")
        os._exit(3)

    async def report(self, control: ControlClient, *extra: Any) -> None:
        """Send buffered metrics lines and artifacts, then ``extra`` messages."""
        if self.metrics_buffer:
            lines, self.metrics_buffer = self.metrics_buffer, []
            await control.send(ctl.encode(ctl.Metrics(lines)))
        while self.artifacts:
            await control.send(ctl.encode(self.artifacts.pop(0)))
        for msg in extra:
            await control.send(ctl.encode(msg))

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
        self.transport.reconnect(j, msg.endpoint, self.topics[j], keys.get(j))
        self.delivery.rebase(j, msg.from_step)
    def request_stop(self) -> None:
        self.stop_requested = True
        self.wakeup.set()

    def summary(self) -> dict[str, Any]:
        sent, recv = self.traffic.sent.totals(), self.traffic.received.totals()
        mean, hist = self.delivery.inbox.staleness_summary()
        edges = self.delivery.edge_accounts()
        steps, wall = self.steps_done, self.wall
        out = {
            "steps": steps,
            "steps_per_s": steps / wall if wall > 0 else 0.0,
            "bytes_sent": sent["bytes"],
            "bytes_received": recv["bytes"],
            "header_bytes_sent": sent["header_bytes"],
            "payload_bytes_sent": sent["payload_bytes"],
            "bytes_delivered": self.delivery.delivered_bytes,
            "messages_sent": sent["messages"],
            "messages_received": self.delivery.arrived,
            "messages_delivered": sum(e["delivered"] for e in edges),
            "messages_dropped": self.delivery.dropped,
            "messages_dropped_loss": sum(e["dropped_loss"] for e in edges),
            "messages_dropped_buffer": sum(e["dropped_buffer"] for e in edges),
            "messages_held": sum(e["held"] for e in edges),
            "messages_rejected": sum(self.traffic.rejected.values()),
            "rejected_reasons": dict(self.traffic.rejected),
            "staleness_mean": mean,
            "staleness_hist": hist,
            "time_split_s": {k: round(v, 4) for k, v in self.timers.items()},
            "traffic_out": self.traffic.sent.rows(),
            "traffic_in": self.traffic.received.rows(),
            "links_in": edges,
        }
        out.update(self._on_stream(self.algorithm.finish))
        # The process this peer lives in (a worker hosts several): the launcher joins them.
        out["pid"] = os.getpid()
        out["process_peak_rss_mb"] = round(peak_rss_mb(), 1)
        return out

    def save_checkpoint(self) -> list[str]:
        """The runtime writes checkpoints (large: on the peer's own disk, named in Done)."""
        state = self._on_stream(self.algorithm.checkpoint_state)
        if state is None:
            return []
        import torch

        name = f"checkpoints/peer-{self.id}.pt"
        if not self.launch.artifact_dir:  # no shared disk: the launcher writes it
            buf = io.BytesIO()
            torch.save(state, buf)
            self.artifacts.append(ctl.Artifact(name, buf.getvalue()))
            return []
        path = Path(self.launch.artifact_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
        return [name]

    def finish(self) -> tuple[dict[str, Any], list[str]]:
        summary = self.summary()
        return summary, self.save_checkpoint()

    async def run(self) -> int:
        # The largest frame ZeroMQ takes in: a message's largest frame is its payload.
        launch = self.launch
        transport = Transport(self.id, self.context,
                              max_message_bytes=self.scenario.comm.max_message_bytes,
                              send_hwm=self.scenario.comm.send_hwm, curve=launch.curve())
        control = transport.control(launch.control_endpoint, launch.token,
                                    launch.curve_launcher)
        comm = self.scenario.comm
        watch = asyncio.ensure_future(self.watch_launcher())
        try:
            self.transport = transport
            endpoint = transport.bind(comm.transport, self.launch.bind_host or comm.host,
                                      Path(self.launch.ipc_dir), launch.incarnation)
            await control.send(ctl.encode(ctl.Hello(endpoint, os.getpid())))
            msg = await self._next_control(control)
            if not isinstance(msg, ctl.Connect):
                return 0  # stopped before start
            transport.connect({int(k): v for k, v in msg.endpoints.items()}, self.topics,
                              launch.curve_peers)
            bus = PeerBus(transport, self.traffic, self.subscribers, comm.pack_bool)
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
                # Subscriptions of the start are no news; from now on a subscription to
                # our resync topic is a receiver that re-connected.
                transport.take_subscriptions()
                transport.on_subscribe = lambda data: self.on_subscribe(bus, data)
                ctl_task = tg.create_task(self.control_loop(control))
                beat_task = tg.create_task(self.heartbeat_loop(control))
                await self.train_loop(bus, control)
                summary, files = await asyncio.to_thread(self.finish)  # heavy: evaluation
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
            watch.cancel()
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


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux: VmHWM, which counts from the
    process's own start, or from its size when it was forked, unlike ``ru_maxrss``, which a
    child inherits from its parent)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:  # pragma: no cover - not Linux
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def failure_line(e: BaseException) -> str:
    """One line naming what failed: the exceptions inside a (nested) group, not the group
    ("ExceptionGroup: unhandled errors in a TaskGroup" names no cause)."""
    leaves: list[BaseException] = []

    def walk(x: BaseException) -> None:
        if isinstance(x, BaseExceptionGroup):
            for sub in x.exceptions:
                walk(sub)
        else:
            leaves.append(x)

    walk(e)
    return "; ".join(" ".join("".join(traceback.format_exception_only(x)).split())
                     for x in leaves)


def error_message(e: BaseException) -> ctl.Error:
    """One line naming the failure (every sub-exception of a group), and the traceback."""
    return ctl.Error(failure_line(e), "".join(traceback.format_exception(e)))
