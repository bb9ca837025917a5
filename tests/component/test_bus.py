"""The bus over real loopback sockets, in one process: handshake, prefix filtering, rejects.

No sleeps as synchronisation: every wait is on a socket or an event, with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import msgpack
import numpy as np
import pytest
import zmq

from p2pgame.bus.codec import Envelope, decode, encode, frame_sizes
from p2pgame.bus.transport import HANDSHAKE, ControlServer, Transport
from p2pgame.config import scenario_from_dict
from p2pgame.peer import Peer

DEADLINE_S = 10.0


@pytest.fixture(params=["ipc", "tcp"])
def transport_kind(request):
    return request.param


@pytest.fixture
async def pair(tmp_path, transport_kind):
    """Publisher peer 0 bound, subscriber peer 1 not yet connected (made in the test's loop)."""
    a, b = Transport(0), Transport(1)
    a.bind(transport_kind, "127.0.0.1", tmp_path)
    yield a, b
    a.close()
    b.close()


async def _recv_env(t: Transport, timeout: float = DEADLINE_S) -> Envelope:
    return decode(await asyncio.wait_for(t.recv(), timeout))


async def _handshake(pub: Transport, sub: Transport, sender: int) -> int:
    """The peer protocol: publish handshakes until one arrives; returns how many were sent."""
    hs = encode(Envelope(sender, f"{HANDSHAKE}/{sender}/", 0, {}))
    deadline = time.monotonic() + DEADLINE_S
    sent = 0
    while time.monotonic() < deadline:
        await pub.send(hs)
        sent += 1
        try:
            env = await _recv_env(sub, timeout=0.02)
        except TimeoutError:
            continue
        assert env.topic == f"{HANDSHAKE}/{sender}/" and env.sender == sender
        return sent
    pytest.fail("handshake did not complete")


async def _link(pub: Transport, sub: Transport, sender: int, kinds: tuple[str, ...]) -> None:
    """Connect, handshake, then probe every data topic until it arrives.

    The probes make the tests below independent of the handshake-order bug (see
    test_handshake_topic_is_subscribed_last): a received probe proves that topic is live.
    """
    sub.connect({sender: pub.endpoint}, kinds)
    await _handshake(pub, sub, sender)
    for kind in kinds:
        probe = encode(Envelope(sender, f"{kind}/{sender}/probe", 0, {}))
        deadline = time.monotonic() + DEADLINE_S
        while True:
            assert time.monotonic() < deadline, f"{kind} subscription never became live"
            await pub.send(probe)
            try:
                env = await _recv_env(sub, timeout=0.02)
            except TimeoutError:
                continue
            if env.topic == f"{kind}/{sender}/probe":
                break


def _is_noise(topic: str) -> bool:
    """Handshakes and probes that may still be queued after _link."""
    return topic.startswith(HANDSHAKE + "/") or topic.endswith("/probe")


async def _next_data(sub: Transport, timeout: float = DEADLINE_S) -> Envelope:
    """The next non-handshake message (handshakes may still be queued)."""
    deadline = time.monotonic() + timeout
    while True:
        env = await _recv_env(sub, timeout=max(0.0, deadline - time.monotonic()))
        if not env.topic.startswith(HANDSHAKE + "/"):
            return env


# --------------------------------------------------------------------------- handshake


async def test_endpoint_forms(pair, transport_kind, tmp_path):
    a, _ = pair
    if transport_kind == "ipc":
        assert a.endpoint == f"ipc://{tmp_path}/peer-0.sock"
        assert (tmp_path / "peer-0.sock").exists()
    else:
        assert a.endpoint.startswith("tcp://127.0.0.1:")
        assert int(a.endpoint.rsplit(":", 1)[1]) > 0


async def test_first_message_after_handshake_is_received(pair):
    a, b = pair
    b.connect({0: a.endpoint}, ("samples",))
    await _handshake(a, b, sender=0)
    # Publish right after the handshake: the slow-joiner problem must be solved already.
    x = np.random.default_rng(0).random((64, 16)) < 0.5
    await a.send(encode(Envelope(0, "samples/0/x", 0, {"x": x}, meta={"last": True})))
    env = await _next_data(b, timeout=3.0)
    assert (env.topic, env.step, env.meta) == ("samples/0/x", 0, {"last": True})
    np.testing.assert_array_equal(env.tensors["x"], x)


async def test_burst_arrives_complete_and_in_order(pair):
    a, b = pair
    await _link(a, b, 0, ("samples",))
    k = 300
    for step in range(k):
        await a.send(encode(Envelope(0, "samples/0/x", step,
                                     {"x": np.full((50, 8), step, np.float32)})))
    steps = []
    while len(steps) < k:
        for frames in await asyncio.wait_for(b.recv_ready(), DEADLINE_S):
            env = decode(frames)
            if not _is_noise(env.topic):
                steps.append(env.step)
                assert env.tensors["x"][0, 0] == env.step
    assert steps == list(range(k))


async def test_recv_ready_takes_everything_queued(pair):
    a, b = pair
    await _link(a, b, 0, ("samples",))
    for step in range(5):
        await a.send(encode(Envelope(0, "samples/0/x", step, {})))
    await a.send(encode(Envelope(0, "samples/0/end", 5, {})))
    got: list[str] = []
    while "samples/0/end" not in got:
        batch = await asyncio.wait_for(b.recv_ready(), DEADLINE_S)
        assert batch
        got += [decode(f).topic for f in batch]
    assert [t for t in got if not _is_noise(t)] == ["samples/0/x"] * 5 + ["samples/0/end"]


# --------------------------------------------------------------------------- prefixes


@pytest.mark.parametrize("kinds", [("samples",), ("params",), ("samples", "params")])
async def test_prefix_subscription_filters_kinds_and_senders(tmp_path, transport_kind, kinds):
    a, b = Transport(1), Transport(0)
    try:
        a.bind(transport_kind, "127.0.0.1", tmp_path)
        await _link(a, b, 1, kinds)
        topics = ["params/1/w", "samples/10/x", "samples/2/x", "samples/1x/x", "samples/1/x",
                  "hs/10/", "params/11/w", "other/1/x", "samples/1/z"]
        for t in topics:
            await a.send(encode(Envelope(1, t, 0, {})))
        await a.send(encode(Envelope(1, "end/1/", 0, {})))  # 'end' is not subscribed...
        marker = f"{kinds[-1]}/1/marker"
        await a.send(encode(Envelope(1, marker, 0, {})))  # ... the marker is: delivery is FIFO
        got = []
        while marker not in got:
            env = await _recv_env(b)
            if not _is_noise(env.topic):
                got.append(env.topic)
        wanted = [t for t in topics if any(t.startswith(f"{k}/1/") for k in kinds)]
        assert got == [*wanted, marker]
    finally:
        a.close()
        b.close()


def test_handshake_topic_is_subscribed_last(tmp_path):
    ctx = zmq.Context()
    xpub = ctx.socket(zmq.XPUB)
    xpub.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{tmp_path}/xpub.sock"
    xpub.bind(endpoint)
    t = Transport(1)
    try:
        t.connect({0: endpoint}, ("samples", "params"))
        subs = []
        while len(subs) < 3:
            assert xpub.poll(int(DEADLINE_S * 1000)), f"only got subscriptions {subs}"
            subs.append(xpub.recv())
        assert sorted(subs) == sorted([b"\x01hs/0/", b"\x01samples/0/", b"\x01params/0/"])
        assert subs[-1] == b"\x01hs/0/", f"subscription order {subs}"
    finally:
        t.close()
        xpub.close()
        ctx.term()


# --------------------------------------------------------------------------- a receiving peer


def _peer(tmp_path, peer_id=1, **comm) -> Peer:
    raw = {
        "seed": 1,
        "steps": 20,
        "topology": {"n": 3, "graph": "line"},  # 0 - 1 - 2
        "comm": {"samples_per_message": 8, **comm},
        "algorithm": {"name": "expfam", "family": "bernoulli", "dim": 4, "n_data": 20,
                      "batch": 8},
    }
    return Peer(peer_id, scenario_from_dict(raw, "bus-test.toml"), tmp_path / "run",
                "ipc:///nonexistent", tmp_path, tmp_path)


def _sample(sender=0, step=0, topic=None, x=None, last=True) -> list[bytes]:
    x = np.zeros((8, 4), bool) if x is None else x
    env = Envelope(sender, topic or f"samples/{sender}/x", step, {"x": x}, meta={"last": last})
    return [bytes(f) for f in encode(env)]


async def test_peer_counts_malformed_socket_messages_as_rejected(tmp_path, transport_kind):
    peer = _peer(tmp_path, max_message_bytes=4096)
    a, b = Transport(0), Transport(1)
    try:
        a.bind(transport_kind, "127.0.0.1", tmp_path)
        await _link(a, b, 0, ("samples",))
        good = _sample()
        bad_header = [good[0], b"\xc1 not msgpack", good[2]]
        truncated = [good[0], good[1], good[2][:-1]]
        header = msgpack.unpackb(good[1])
        header["v"] = 99
        wrong_version = [good[0], msgpack.packb(header), good[2]]
        oversized = _sample(x=np.zeros((10000, 4), bool))  # 5000 B packed > 4096
        sequence = [bad_header, good, truncated, wrong_version, oversized, _sample(step=1)]
        for frames in sequence:
            await a.send(frames)
        seen = 0
        while seen < len(sequence):
            for frames in await asyncio.wait_for(b.recv_ready(), DEADLINE_S):
                if _is_noise(bytes(frames[0]).decode()):
                    continue
                peer.on_frames(frames, time.monotonic())
                seen += 1
        assert dict(peer.rejected) == {"malformed": 1, "truncated": 1, "version": 1,
                                       "oversized": 1}
        assert peer.links[0].admitted == 2 and len(peer.pending[0]) == 2
        assert peer.summary()["messages_rejected"] == 4
        assert peer.summary()["rejected_reasons"]["truncated"] == 1
    finally:
        a.close()
        b.close()


def test_peer_on_frames_routes_and_checks(tmp_path):
    peer = _peer(tmp_path)
    assert peer.in_peers == (0, 2) and set(peer.links) == {0, 2}
    now = time.monotonic()
    # Handshakes are noted, not counted as traffic.
    peer.on_frames(_hs(0), now)
    assert peer.heard == {0} and not peer.heard_all.is_set()
    peer.on_frames(_hs(2), now)
    assert peer.heard_all.is_set()
    assert peer.received.totals()["messages"] == 0
    # A good message is counted and queued on its link.
    good = _sample(sender=2, step=0)
    peer.on_frames(good, now)
    assert len(peer.pending[2]) == 1 and peer.links[2].admitted == 1
    row = peer.received.rows()[0]
    assert (row["sender"], row["receiver"], row["topic"]) == (2, 1, "samples/2/x")
    assert (row["header_bytes"], row["payload_bytes"]) == frame_sizes(good)
    # Wrong sender in the topic, a sender we do not listen to, a wrong space, a wrong schema.
    peer.on_frames(_sample(sender=0, topic="samples/2/x"), now)
    peer.on_frames(_sample(sender=3, topic="samples/3/x"), now)
    peer.on_frames(_sample(sender=0, topic="samples/0/y"), now)
    peer.on_frames(_sample(sender=0, x=np.zeros((8, 4), np.float32)), now)
    peer.on_frames(_sample(sender=0, x=np.zeros((8, 5), bool)), now)
    assert dict(peer.rejected) == {"sender": 2, "space": 1, "schema": 2}
    assert peer.links[0].admitted == 0 and not peer.pending[0]


def _hs(sender: int) -> list[bytes]:
    return [bytes(f) for f in encode(Envelope(sender, f"{HANDSHAKE}/{sender}/", 0, {}))]


def test_peer_release_respects_sync_delay(tmp_path):
    peer = _peer(tmp_path, delay_steps=2)
    now = time.monotonic()
    for step in range(5):
        peer.on_frames(_sample(sender=0, step=step), now)
    assert [p.release_step for p in peer.pending[0]] == [2, 3, 4, 5, 6]
    assert peer.needed_round(0, 1) == -1 and peer.needed_round(0, 4) == 2
    assert peer.release(1, now) is None and peer.inbox.latest == {}
    peer.release(3, now)
    assert peer.resolved[0] == 1 and peer.inbox.latest[(0, "x")].step == 1
    assert peer.inbox.use(0, "x", 3).step == 1
    assert peer.inbox.staleness_summary() == (2.0, {"2": 1})
    assert peer.delivered_bytes == 2 * sum(frame_sizes(_sample(sender=0)))


def test_peer_drop_resolves_the_round(tmp_path):
    peer = _peer(tmp_path, drop=0.5)
    now = time.monotonic()
    for step in range(200):
        peer.on_frames(_sample(sender=0, step=step), now)
    peer.release(199, now)
    # Dropped or delivered, every round is resolved: a sync barrier never waits for a loss.
    assert peer.resolved[0] == 199
    assert peer.dropped + peer.links[0].admitted == 200
    assert 60 < peer.dropped < 140
    assert peer.summary()["messages_dropped"] == peer.dropped


async def test_peer_barrier_waits_for_time_release(tmp_path):
    peer = _peer(tmp_path, latency_ms=150.0)
    now = time.monotonic()
    peer.on_frames(_sample(sender=0, step=0), now)
    peer.on_frames(_sample(sender=2, step=0), now)
    t0 = time.monotonic()
    await asyncio.wait_for(peer.barrier(0), DEADLINE_S)
    assert time.monotonic() - t0 >= 0.15 - 0.01 - (t0 - now)
    assert peer.resolved == {0: 0, 2: 0}


def test_peer_survives_non_numeric_time(tmp_path):
    peer = _peer(tmp_path)
    good = _sample(sender=0)
    header = msgpack.unpackb(good[1])
    header["time"] = "noon"
    peer.on_frames([good[0], msgpack.packb(header), good[2]], time.monotonic())
    assert peer.rejected["malformed"] == 1


# --------------------------------------------------------------------------- teardown

# Regression: Peer.run used to close the Transport (ctx.term()) while the control DEALER on
# the same context was still open, so every peer hung until the launcher's SIGTERM.
_PEER_MAIN = "import json, sys\nfrom p2pgame.peer import peer_main\npeer_main(**json.loads(sys.argv[1]))"


async def test_stopped_peer_process_exits_promptly(tmp_path, tiny_raw, no_leftover_processes):
    server = ControlServer("ipc", "127.0.0.1", tmp_path)
    args = dict(peer_id=0, raw=tiny_raw, source="tiny.toml", run_dir=str(tmp_path / "run"),
                control_endpoint=server.endpoint, ipc_dir=str(tmp_path),
                data_root=str(tmp_path), threads=1, device="cpu")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _PEER_MAIN,
                                                json.dumps(args))
    try:
        got = await server.recv(timeout_s=60)
        assert got is not None and got[0] == 0 and got[1]["type"] == "hello"
        assert got[1]["pid"] == proc.pid
        await server.send(0, {"type": "stop"})  # stopped before start
        try:
            rc = await asyncio.wait_for(proc.wait(), 4.0)
        except TimeoutError:
            pytest.fail("the peer did not exit within 4 s of 'stop'")
        assert rc == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        server.close()
