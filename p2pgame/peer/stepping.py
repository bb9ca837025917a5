"""The measured phase's train loop: publish, release (the sync barrier), step, pace, and
now and then a resume state and a metrics line.

One step ``s`` of a peer, in order (every algorithm call through
:meth:`Device.call <p2pgame.peer.device.Device.call>`, awaited before the next):

1. publish round ``s`` (from ``comm.publish_from`` every ``comm.publish_every`` steps, if
   anyone listens);
2. release into the inbox what is due at ``s``: in sync mode until every active
   in-neighbour's needed round is complete (:meth:`Receiver.barrier
   <p2pgame.peer.receiving.Receiver.barrier>`), in async mode once, after letting the
   receive task drain the socket;
3. ``train_step(s, inbox, topology)``, its compute time timed;
4. a pause if the peer is paced (a straggler on purpose; receiving goes on);
5. a resume state every ``resume_every`` steps, a metrics line (with ``probe``) every
   ``metrics_every`` steps, at the algorithm's ``probe_every`` and at the last step.

See :mod:`p2pgame.peer.receiving` for what the loop and the step thread may do with the
inbox meanwhile.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import math
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from p2pgame.bus.traffic import Traffic
from p2pgame.config import PaceSpec, Scenario, is_round
from p2pgame.peer.device import Device
from p2pgame.peer.receiving import Receiver
from p2pgame.peer.reporting import Reporter
from p2pgame.rng import generator
from p2pgame.topology import Schedule


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


class Availability:
    """When a peer is away on the virtual clock: its ``offline`` windows, and its seeded
    on/off process (:class:`~p2pgame.config.PaceSpec`), drawn from the peer's own stream
    as its clock advances (asked at non-decreasing times)."""

    def __init__(self, spec: PaceSpec, seed: int, peer: int) -> None:
        self.spec = spec
        self.rng = generator(seed, "peer", peer, "availability")
        self.windows: list[tuple[float, float]] = []  # the process's, drawn so far
        self.drawn_to = 0.0  # the process is drawn up to here

    def is_away(self, t: float) -> bool:
        if self.spec.is_away(t):
            return True
        spec = self.spec
        if spec.offline_mean_s <= 0:
            return False
        while self.drawn_to <= t:  # online for a while, then offline for a while
            start = self.drawn_to + self.rng.exponential(spec.online_mean_s)
            self.drawn_to = start + self.rng.exponential(spec.offline_mean_s)
            self.windows.append((start, self.drawn_to))
        while self.windows and self.windows[0][1] <= t:
            self.windows.pop(0)
        return any(a <= t < b for a, b in self.windows)

    def window_at(self, t: float) -> float | None:
        """The start of the offline window that virtual time ``t`` falls in, or None;
        asked at any times (an instance for this alone: it keeps every window it drew,
        where :meth:`is_away` forgets the past ones).  The receiver's links ask it where
        their messages arrive (:class:`p2pgame.bus.links.VirtualLink`)."""
        for a, b in self.spec.offline:
            if a <= t < b:
                return a
        spec = self.spec
        if spec.offline_mean_s <= 0:
            return None
        while self.drawn_to <= t:
            start = self.drawn_to + self.rng.exponential(spec.online_mean_s)
            self.drawn_to = start + self.rng.exponential(spec.offline_mean_s)
            self.windows.append((start, self.drawn_to))
        k = bisect.bisect_right(self.windows, (t, math.inf)) - 1
        if k >= 0 and self.windows[k][0] <= t < self.windows[k][1]:
            return self.windows[k][0]
        return None


@dataclass(frozen=True)
class StepPlan:
    """The loop's settings.  ``first_step``: where a resumed peer continues."""

    steps: int
    sync: bool = True
    publish_every: int = 1
    publish_from: int = 0
    metrics_every: int = 0  # 0: about 100 lines per run
    resume_every: int = 0  # 0: no resume states
    first_step: int = 0
    virtual: bool = False  # runtime.clock = "virtual"
    compute_s: float = 0.0  # (virtual) a step's modelled compute time, before the pace
    pace: PaceSpec = PaceSpec()  # (virtual) the peer's pace: its offline windows
    seed: int = 0  # (virtual) the run's seed: the on/off process's stream
    measured_scale: float = 0.0  # (virtual, runtime.compute = "measured") 0: modelled

    @classmethod
    def of(cls, scenario: Scenario, resumable: bool, first_step: int = 0,
           peer: int | None = None) -> StepPlan:
        rt, steps = scenario.runtime, scenario.steps
        # Resume states: every checkpoint_every steps (for --resume), or by default every
        # steps/20 when restarts are on.
        resume_every = (rt.checkpoint_every or (max(1, steps // 20) if rt.restart else 0)
                        ) if resumable else 0
        return cls(steps=steps, sync=scenario.comm.mode == "sync",
                   publish_every=scenario.comm.publish_every,
                   publish_from=scenario.comm.publish_from, metrics_every=rt.metrics_every,
                   resume_every=resume_every, first_step=first_step,
                   virtual=rt.clock == "virtual", compute_s=rt.compute_s,
                   pace=scenario.player(peer).pace if peer is not None else PaceSpec(),
                   seed=scenario.seed,
                   measured_scale=rt.compute_scale if rt.compute == "measured" else 0.0)


class StepLoop:
    """One peer's train loop.  ``publish(bus, step)``: the runtime's publishing (looked up
    at each call, so a test may replace it; on the virtual clock ``publish(bus, step,
    send_time, promise)``, true if the promise went with the step's data);
    ``stopped()``: whether a stop was asked."""

    def __init__(self, me: int, plan: StepPlan, schedule: Schedule, algorithm: Any,
                 device: Device, receiver: Receiver, reporter: Reporter, traffic: Traffic,
                 publish: Callable[..., Awaitable[Any]], publishes: bool,
                 stopped: Callable[[], bool], pacer: Pacer | None = None,
                 timers: Counter[str] | None = None,
                 promise: Callable[[Any, int, float], Awaitable[None]] | None = None) -> None:
        self.me = me
        self.plan = plan
        self.schedule = schedule
        self.algorithm = algorithm
        self.device = device
        self.receiver = receiver
        self.reporter = reporter
        self.traffic = traffic
        self.publish = publish
        self.publishes = publishes  # anyone to publish to (out-neighbours)
        self.stopped = stopped
        self.pacer = pacer
        self.timers: Counter[str] = Counter() if timers is None else timers
        self.promise = promise  # (the virtual clock) the runtime's clock message
        self.step = self.steps_done = plan.first_step
        self.wall = 0.0
        self.virtual_s = 0.0  # (the virtual clock) this peer's virtual time
        self.offline_steps = 0  # (the virtual clock) steps skipped in offline windows
        self.measured_s = 0.0  # the host's wall time of the latest training step

    def step_cost(self, step: int = 0) -> float:
        """The virtual clock: a step's virtual duration, ``compute_s`` (or the step's line of
        the peer's compute trace) divided by the peer's speed plus its drawn step delay (the
        pacer's seeded stream: no host clock).

        With ``runtime.compute = "measured"`` the compute time is ``compute_scale`` x the
        host's wall time of the peer's previous training step (its first takes
        ``compute_s``): the step's cost is needed before it trains, for the promise that
        gives its neighbours their lookahead, so it cannot be the step's own time."""
        trace = self.plan.pace.compute_trace_s
        if self.plan.measured_scale and self.measured_s > 0:
            c = self.plan.measured_scale * self.measured_s
        else:
            c = trace[step % len(trace)] if trace else self.plan.compute_s
        return c + (self.pacer.pause(c) if self.pacer is not None else 0.0)

    async def run(self, bus: Any) -> None:
        """The measured phase.  With ``P2PGAME_PROFILE_LOOP=<folder>`` in the environment,
        the event loop's thread (every task of the peer, not the step thread) runs under
        cProfile, written to ``<folder>/peer-<id>.prof`` (a diagnostic, for bench work)."""
        folder = os.environ.get("P2PGAME_PROFILE_LOOP")
        if not folder:
            return await self._run(bus)
        import cProfile

        profile = cProfile.Profile()
        profile.enable()
        try:
            await self._run(bus)
        finally:
            profile.disable()
            os.makedirs(folder, exist_ok=True)
            profile.dump_stats(os.path.join(folder, f"peer-{self.me}.prof"))

    async def _run(self, bus: Any) -> None:
        plan, algorithm, receiver, timers = self.plan, self.algorithm, self.receiver, self.timers
        delivery = receiver.delivery
        steps = plan.steps
        every = plan.metrics_every or max(1, steps // 100)
        period, first_round = plan.publish_every, plan.publish_from
        heavy = algorithm.heavy
        call = self.device.call
        clock, monotonic = time.perf_counter, time.monotonic
        t_start, cpu_start = monotonic(), time.process_time()
        virtual, vt_ns = plan.virtual, round(self.virtual_s * 1e9)
        away = Availability(plan.pace, plan.seed, self.me)
        for step in range(plan.first_step, steps):
            if self.stopped():
                break
            self.step = receiver.step = step
            top = self.schedule.at(step)
            # (Away: an offline window of the virtual clock.  The step's time passes, but it
            # neither publishes, nor takes messages in, nor trains.)
            # (Virtual times are whole nanoseconds, summed exactly: 400 steps of 10 ms end at
            # 4.0 s, not at 3.9999999999999.)
            cost_ns = round(self.step_cost(step) * 1e9) if virtual else 0
            vt = vt_ns / 1e9
            gone = virtual and away.is_away(vt)
            carried = False  # (virtual) our promise rode in the step's last data message
            if gone:
                self.offline_steps += 1
            elif is_round(step, period, first_round) and self.publishes:
                if virtual:
                    carried = await self.publish(bus, step, vt, (vt_ns + cost_ns) / 1e9)
                else:
                    await self.publish(bus, step)
            if virtual and self.publishes and not carried:
                # nothing more from us before our next step
                await self.promise(bus, step, (vt_ns + cost_ns) / 1e9)
            t0 = clock()
            if gone:
                pass
            elif plan.sync:
                await receiver.barrier(step, self.stopped)
            elif virtual:
                await receiver.advance(step, vt, self.stopped)
            else:
                await asyncio.sleep(0)  # let the receive task drain the socket
                receiver.release(step, monotonic())
            timers["wait"] += clock() - t0
            if self.stopped():
                break
            t0 = clock()
            out = {} if gone else await call(heavy, algorithm.train_step, step,
                                             delivery.inbox, top)
            compute = clock() - t0
            timers["train"] += compute
            if plan.measured_scale and not gone:  # (the measured mode's next step cost)
                self.measured_s = self.device.last_s if heavy else compute
            if heavy and not gone:  # within "train": the hand-off to the step thread and
                # back, and the step thread's CPU time (torch's own threads aside)
                timers["train_handoff"] += compute - self.device.last_s
                timers["train_cpu"] += self.device.last_cpu_s
            if virtual:  # (the pace is in the step's virtual cost: no sleep)
                vt_ns += cost_ns
                vt = self.virtual_s = vt_ns / 1e9
            elif self.pacer is not None:
                t0 = clock()
                await asyncio.sleep(self.pacer.pause(compute))  # receiving goes on
                timers["pace"] += clock() - t0
            self.steps_done = step + 1
            if (plan.resume_every and self.steps_done % plan.resume_every == 0
                    and step < steps - 1):
                # The launcher keeps the latest in the run folder, for a restart.
                state = {"step": self.steps_done, "algorithm": algorithm.resume_state()}
                if virtual:  # where its clock resumes (whole nanoseconds)
                    state["virtual_ns"] = vt_ns
                self.reporter.artifact(f"resume/peer-{self.me}.json", json.dumps(state).encode())
            probe_every = algorithm.probe_every
            if (step % every == 0 or step == steps - 1
                    or (probe_every and step % probe_every == 0)):
                line = {"step": step, "t": round(monotonic() - t_start, 4), **out}
                if virtual:  # the virtual time at the step's end
                    line["time/virtual_s"] = vt
                line.update(await call(heavy, algorithm.probe, step))
                line["comm/bytes_sent"] = self.traffic.sent.totals()["bytes"]
                # Released bytes: deterministic in sync mode (arrivals are not).
                line["comm/bytes_received"] = delivery.delivered_bytes
                line["comm/staleness_mean"] = delivery.inbox.staleness_summary()[0]
                self.reporter.metrics_buffer.append(line)
        if virtual and self.publishes:  # done: nothing more from us, ever
            await self.promise(bus, steps, math.inf)
        self.wall = monotonic() - t_start
        if virtual:  # (not in the wall time: the steps are done)
            await receiver.settle_virtual(self.stopped)
        # The CPU time of the whole process meanwhile, every thread (the loop's, the step
        # thread, ZeroMQ's I/O thread; the other peers' too in a worker that hosts several).
        timers["process_cpu"] = time.process_time() - cpu_start
        timers["encode"] = getattr(bus, "encode_s", 0.0)
        timers["send"] = getattr(bus, "send_s", 0.0)
