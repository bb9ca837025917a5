"""The peer runtime without sockets: subscriptions, publishing order and flags, device and stream."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from p2pgame.bus.topics import Topic
from p2pgame.config import to_plain
from p2pgame.exchange import method
from p2pgame.peer.runtime import PeerLaunch, PeerRuntime, subscribers, subscriptions
from p2pgame.scenario import load_scenario
from p2pgame.topology import build_schedule, schedule_to_plain
from tests.helpers import FakeBus

ROOT = Path(__file__).resolve().parents[2]
SPACES = ROOT / "topologies" / "expfam-spaces.toml"


@pytest.fixture
def spaces():
    sc = load_scenario(SPACES, ["steps=20", "learner.dim=4", "learner.n_data=50"])
    assert sc.method_name == "samples x expfam-bernoulli"
    return sc, build_schedule(sc.topology, sc.steps, sc.seed), method(sc)


def test_subscriptions_are_the_learnt_spaces_each_neighbour_publishes(spaces) -> None:
    sc, schedule, info = spaces
    # Peer 1 learns only x: it takes samples/j/x from everyone, never params/j/mu.
    assert subscriptions(sc, info, schedule, 1) == {
        j: [Topic("samples", j, "x")] for j in (0, 2, 3)}
    # Peer 2 learns only mu.
    assert subscriptions(sc, info, schedule, 2) == {
        j: [Topic("params", j, "mu")] for j in (0, 1, 3)}
    # Peer 0 learns both, in the publisher's order.
    assert subscriptions(sc, info, schedule, 0)[1] == [Topic("samples", 1, "x"),
                                                       Topic("params", 1, "mu")]


def test_subscribers_are_the_out_neighbours_that_learn_the_space(spaces) -> None:
    sc, schedule, info = spaces
    assert subscribers(sc, info, schedule, 0) == {
        Topic("samples", 0, "x"): (1,),
        Topic("params", 0, "mu"): (2, 3),
    }


def _runtime(sc, schedule, peer: int) -> PeerRuntime:
    launch = PeerLaunch(peer_id=peer, scenario=to_plain(sc), schedule=schedule_to_plain(schedule),
                        control_endpoint="ipc:///nonexistent", ipc_dir="/tmp", data_root="/tmp",
                        artifact_dir="/tmp", threads=1, device="cpu")
    return PeerRuntime(PeerLaunch(**asdict(launch)), log=lambda m: None)


def test_runtime_publishes_every_space_and_flags_the_last(spaces) -> None:
    sc, schedule, _ = spaces
    rt = _runtime(sc, schedule, 0)
    assert rt.scenario == sc  # what the peer rebuilt from plain data is the resolved scenario
    assert rt.device == "cpu" and rt.stream is None  # expfam never imports torch
    bus = FakeBus()
    asyncio.run(rt.publish(bus, 7))
    assert [str(e.topic) for e in bus.sent] == ["samples/0/x", "params/0/mu"]
    assert [e.last for e in bus.sent] == [False, True]
    assert {e.step for e in bus.sent} == {7}
    assert bus.sent[1].tensors["mu"].shape == (1, 4)


def test_runtime_rejects_what_its_player_does_not_learn(spaces) -> None:
    sc, schedule, _ = spaces
    rt = _runtime(sc, schedule, 1)  # learns x only
    bus = FakeBus()
    asyncio.run(_runtime(sc, schedule, 0).publish(bus, 0))
    for env in bus.sent:
        rt.on_envelope(env, 100, now=0.0)
    assert dict(rt.traffic.rejected) == {"space": 1}
    assert rt.delivery.admitted == 1


@pytest.mark.parametrize("pack_bool", [True, False])
def test_runtime_packs_bool_samples_before_they_reach_the_bus(pack_bool) -> None:
    """Bernoulli samples are bools: packed by the runtime (in the drawing thread of a heavy
    algorithm), so the bus only sends bytes; as arrays when the scenario sends bytes."""
    from p2pgame.bus.codec import PackedBits

    sc = load_scenario(SPACES, ["steps=20", "learner.dim=4", "learner.n_data=50",
                                'learner.kind="expfam-bernoulli"', f"comm.pack_bool={pack_bool}".lower()])
    bus = FakeBus()
    asyncio.run(_runtime(sc, build_schedule(sc.topology, sc.steps, sc.seed), 0).publish(bus, 7))
    x = {str(e.topic): e for e in bus.sent}["samples/0/x"].tensors["x"]
    assert type(x) is (PackedBits if pack_bool else np.ndarray) and x.dtype == bool
    mu = {str(e.topic): e for e in bus.sent}["params/0/mu"].tensors["mu"]
    assert type(mu) is np.ndarray  # only bools are packed
