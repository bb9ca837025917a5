"""The contract between a peer's step thread and its event loop (p2pgame/peer/receiving.py),
checked on real :class:`PeerRuntime` step loops over the in-memory bus (no sockets, no
torch): a tiny fake algorithm, heavy, so its steps run in worker threads while the
receive tasks run on the loop."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from p2pgame.bus.memory import MemoryNetwork
from p2pgame.config import (
    CommSpec,
    GraphSpec,
    LinkSpec,
    PaceSpec,
    PlayerSpec,
    Scenario,
    TopologySpec,
)
from p2pgame.peer.device import Device
from p2pgame.peer.runtime import PeerLaunch, PeerRuntime
from p2pgame.topology import build_schedule

DEADLINE_S = 20.0


class FakeAlgorithm:
    """The algorithm interface the runtime uses, recording what each step's inbox held.

    ``publish``: one message per space it publishes, its payload the step; ``train_step``
    takes the freshest message of every in-neighbour and space (``Inbox.use``), and
    records the inbox as it was when the step began and when it ended (after ``hold``,
    which may wait for arrivals: the receive task runs meanwhile)."""

    heavy = True
    probe_every = 0
    resumable = False

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.me = ctx.peer_id
        self.spaces = ctx.player.publishes
        self.learns = ctx.player.learns
        self.hold = None  # (peer runtime, step) -> None, called in the step thread
        self.runtime = None
        self.steps: list[dict] = []
        self.threads: set[str] = set()

    def publish(self, step):
        return {s: {"v": np.array([[self.me, step]], np.int64)} for s in self.spaces}

    def check(self, env):
        return None

    def train_step(self, step, inbox, topology):
        self.threads.add(threading.current_thread().name)
        start = dict(inbox.latest)  # the envelopes themselves
        arrived = self.runtime.delivery.arrived
        used = {}
        for j in topology.in_neighbours(self.me):
            for s in self.learns:
                env = inbox.use(j, s, step)
                if env is not None:
                    assert env.tensors["v"].tolist() == [[j, env.step]]
                    used[(j, s)] = env.step
        if self.hold is not None:
            self.hold(self.runtime, step)
        self.steps.append({"step": step, "start": start, "end": dict(inbox.latest),
                           "used": used, "arrived_during": self.runtime.delivery.arrived
                           - arrived})
        return {"n": float(len(used))}

    def probe(self, step):
        return {}

    def finish(self):
        return {"fake_steps": len(self.steps)}

    def checkpoint_state(self):
        return None

    def resume_state(self):
        raise NotImplementedError

    def load_resume_state(self, state):
        raise NotImplementedError


def fake_info(spaces=("x",)):
    """A registry entry as the runtime uses it (p2pgame/peer/method.py)."""
    return SimpleNamespace(spaces={s: "samples" for s in spaces}, uses_torch=False,
                           peer=lambda: FakeAlgorithm)


def make_peers(n=3, steps=12, mode="sync", spaces=("x",), link=None, pace=None,
               publish_every=1, graph="complete"):
    paces = pace or {}
    players = tuple(PlayerSpec(i, None, spaces, spaces, paces.get(i, PaceSpec()))
                    for i in range(n))
    topology = TopologySpec(n=n, graphs=(GraphSpec(graph=graph),))
    given = dict(name="memory", topology=topology, players=players, seed=3, steps=steps,
                 comm=CommSpec(mode=mode, publish_every=publish_every, link=link or LinkSpec(),
                               sync_timeout_s=5.0))
    # (What names the algorithm is the registry's business: the fake one is given, so the
    # scenario's other required fields are left empty.)
    required = {f.name: None for f in dataclasses.fields(Scenario)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    sc = Scenario(**{**required, **given})
    schedule = build_schedule(topology, steps, sc.seed)
    rts = []
    for i in range(n):
        launch = PeerLaunch(peer_id=i, scenario={}, schedule={}, control_endpoint="",
                            ipc_dir="", data_root="", artifact_dir="")
        rt = PeerRuntime(launch, log=lambda m: None, scenario=sc, schedule=schedule,
                         info=fake_info(spaces))
        rt.algorithm.runtime = rt
        rts.append(rt)
    return rts


async def run_measured(rts, net=None):
    """The measured phase of every peer in one event loop: the runtime's own receive task
    and train loop, over an in-memory bus; then each peer's summary."""
    net = net or MemoryNetwork()
    transports = {rt.id: net.transport(rt.id) for rt in rts}
    endpoints = net.endpoints()
    buses = {rt.id: rt.attach(transports[rt.id], {j: endpoints[j] for j in rt.in_peers})
             for rt in rts}
    for rt in rts:  # (after every peer subscribed: the start's subscriptions are no news)
        rt.start_measured(buses[rt.id])
    receiving = [asyncio.create_task(rt.receive_loop(buses[rt.id])) for rt in rts]
    try:
        await asyncio.wait_for(asyncio.gather(*(rt.train_loop(buses[rt.id]) for rt in rts)),
                               DEADLINE_S)
        return [(await rt.finish())[0] for rt in rts]
    finally:
        for t in receiving:
            t.cancel()
        await asyncio.gather(*receiving, return_exceptions=True)
        for t in transports.values():
            t.close()


def jitter(seed):
    """A step that takes a random 0-3 ms (the peers' steps interleave differently)."""
    rng = np.random.default_rng(seed)

    def hold(rt, step):
        time.sleep(float(rng.uniform(0, 0.003)))

    return hold


@pytest.mark.parametrize("publish_every,delay_steps", [(1, 0), (2, 0), (1, 2)])
async def test_a_sync_step_holds_exactly_the_round_it_needs(publish_every, delay_steps):
    """Sync: step s of every peer uses, of each in-neighbour, exactly the round the barrier
    waited for (s - delay, rounded down to a publishing step), never a newer one that
    arrived early, whatever the order the threads ran in."""
    rts = make_peers(n=3, steps=10, publish_every=publish_every,
                     link=LinkSpec(delay_steps=delay_steps))
    for rt in rts:
        rt.algorithm.hold = jitter(rt.id)
    summaries = await run_measured(rts)
    for rt in rts:
        steps = rt.algorithm.steps
        assert [s["step"] for s in steps] == list(range(10))
        assert all(name.startswith(("asyncio", "ThreadPool")) for name in rt.algorithm.threads)
        for rec in steps:
            q = rec["step"] - delay_steps
            want = {} if q < 0 else {(j, "x"): q - q % publish_every
                                     for j in range(3) if j != rt.id}
            assert rec["used"] == want, (rt.id, rec["step"])
    for s in summaries:
        assert s["steps"] == 10 and s["fake_steps"] == 10
        assert s["messages_rejected"] == 0


async def test_messages_arriving_during_a_step_leave_its_inbox_alone():
    """Async: peer 0's steps are slow (each waits, in its thread, until the receive task
    has taken two more of peer 1's messages); peer 1 steps every 5 ms.  The inbox a step
    of peer 0 sees at its end is the one it began with, object for object, although
    messages arrived meanwhile; the next step's release brings them."""
    rts = make_peers(n=2, steps=12, mode="async", pace={1: PaceSpec(step_delay_ms=5.0)})

    # The receive task tells the step thread of each message it took (a condition, no
    # polling); the step waits for two more, or 50 ms at most.
    arrived = threading.Condition()
    take = rts[0].receiver.on_envelope

    def on_envelope(env, nbytes, now):
        take(env, nbytes, now)
        with arrived:
            arrived.notify_all()

    rts[0].receiver.on_envelope = on_envelope

    def wait_for_arrivals(rt, step):
        before = rt.delivery.arrived
        with arrived:
            arrived.wait_for(lambda: rt.delivery.arrived >= before + 2, timeout=0.05)

    rts[0].algorithm.hold = wait_for_arrivals
    await run_measured(rts)
    steps = rts[0].algorithm.steps
    busy = [rec for rec in steps if rec["arrived_during"] > 0]
    assert len(busy) >= 3, [rec["arrived_during"] for rec in steps]
    for rec in steps:
        assert rec["end"].keys() == rec["start"].keys()
        assert all(rec["end"][k] is rec["start"][k] for k in rec["start"]), rec["step"]
    # What arrived during a step is released before the next one: it sees newer rounds.
    for rec, nxt in zip(steps, steps[1:], strict=False):
        if rec["arrived_during"] > 0 and (1, "x") in rec["used"]:
            assert nxt["used"][(1, "x")] > rec["used"][(1, "x")], rec["step"]


async def test_after_a_release_the_inbox_holds_the_freshest_message_per_sender_and_space():
    """Async, two spaces, links that reorder (jitter): releases bring older messages after
    newer ones.  At every step the inbox holds, per (sender, space), the newest message
    released so far, and a step never goes back to an older one."""
    link = LinkSpec(latency_ms=1.0, jitter_ms=30.0, reorder=True)
    rts = make_peers(n=3, steps=25, mode="async", spaces=("x", "y"), link=link,
                     pace={i: PaceSpec(step_delay_ms=2.0) for i in range(3)})
    released: dict[int, list] = {rt.id: [] for rt in rts}
    for rt in rts:
        inbox = rt.delivery.inbox
        honest_put = inbox.put

        def put(env, honest_put=honest_put, log=released[rt.id], rt=rt):
            log.append((env.sender, env.space, env.step, rt.algorithm.steps_seen()))
            honest_put(env)

        inbox.put = put
        rt.algorithm.steps_seen = lambda alg=rt.algorithm: len(alg.steps)
    await run_measured(rts)
    out_of_order = 0
    for rt in rts:
        log = released[rt.id]
        last: dict = {}
        for sender, space, step, _ in log:
            if step < last.get((sender, space), -1):
                out_of_order += 1
            last[(sender, space)] = max(step, last.get((sender, space), -1))
        prev: dict = {}
        for k, rec in enumerate(rt.algorithm.steps):
            # released before step k began: what the log says went in before it
            newest: dict = {}
            for sender, space, step, seen in log:
                if seen <= k:
                    newest[(sender, space)] = max(step, newest.get((sender, space), -1))
            assert {key: env.step for key, env in rec["start"].items()} == newest, k
            for key, step in rec["used"].items():
                assert step >= prev.get(key, -1), (rt.id, k, key)
                prev[key] = step
    assert out_of_order > 0  # (the links did reorder: the test tested something)


async def test_nothing_is_released_while_an_algorithm_call_is_in_flight():
    """The guard of rule 2: a release while a heavy call runs is a bug, and says so."""
    rt = make_peers(n=2, steps=4)[0]
    gate, started = threading.Event(), threading.Event()
    device: Device = rt._device

    def held() -> bool:
        started.set()
        return gate.wait(5.0)

    call = asyncio.create_task(device.call(True, held))
    assert await asyncio.to_thread(started.wait, 5.0) and device.busy()
    with pytest.raises(RuntimeError, match="in flight"):
        rt.receiver.release(0, time.monotonic())
    gate.set()
    await call
    assert not device.busy()
    rt.receiver.release(0, time.monotonic())  # between calls: fine


async def test_a_cut_connection_is_resynced_and_the_sync_run_completes():
    """The in-memory bus cuts peer 0's connection to peer 1 for a while (what peer 0 sends
    meanwhile is lost), then re-makes it: peer 1's new subscription gets a resync marker
    from peer 0, peer 1 gives up the lost rounds instead of waiting for them, counts the
    cut, and every peer finishes."""
    rts = make_peers(n=2, steps=30)
    net = MemoryNetwork()
    loop = asyncio.get_running_loop()
    cut, sent6 = threading.Event(), threading.Event()
    publish = rts[0].publisher.publish

    async def publish_then_tell(bus, step):
        await publish(bus, step)
        if step >= 6:
            sent6.set()

    rts[0].publisher.publish = publish_then_tell

    def hold(rt, step):
        if rt.id == 0 and step == 5:
            assert cut.wait(5.0)  # peer 1 cuts before peer 0 publishes round 6
        if rt.id == 1 and step == 5:
            net.peers[1].cut(0)
            cut.set()
            assert sent6.wait(5.0)  # round 6 went out while the connection was down
            # (re-made on the loop, where the transport notices a cut)
            loop.call_soon_threadsafe(net.peers[1].remake, 0)
        time.sleep(0.001)  # (a step's simulated compute)

    for rt in rts:
        rt.algorithm.hold = hold
    summaries = await run_measured(rts, net)
    assert [s["steps"] for s in summaries] == [30, 30]
    assert summaries[1]["rejected_reasons"] == {"connection-cut": 1}
    used = [rec["used"].get((0, "x")) for rec in rts[1].algorithm.steps]
    # Round 6 was lost on the cut connection: step 6 did without it (round 5 is the
    # freshest it holds); from round 7 on peer 0's messages arrive again.
    assert used == [*range(6), 5, *range(7, 30)]
    edge = summaries[1]["links_in"][0]
    assert edge["delivered"] == 29 and edge["rejected"] == 1
