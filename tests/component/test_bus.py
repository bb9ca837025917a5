"""The bus over real loopback sockets: handshake, exact-topic filtering, control channel, teardown.

What needs no socket (release, rounds, routing, rejections) is tested with a fake
clock in tests/unit/test_delivery.py.  No sleeps as synchronisation: every wait
here is on a socket, a process or an event, with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import select
import sys
import time
from dataclasses import asdict

import msgpack
import numpy as np
import pytest
import zmq
import zmq.asyncio

from p2pgame.bus.codec import Envelope, decode, encode, frame_sizes
from p2pgame.bus.endpoint import PeerBus
from p2pgame.bus.topics import HANDSHAKE, Topic
from p2pgame.bus.traffic import Traffic
from p2pgame.bus.transport import ControlClient, ControlServer, Transport, control_token
from p2pgame.config import to_plain
from p2pgame.peer import control as ctl
from p2pgame.peer.runtime import PeerLaunch
from p2pgame.scenario import resolve
from p2pgame.topology import build_schedule, schedule_to_plain

DEADLINE_S = 10.0
PROBE = b"probe"  # second frame of a probe message (not a decodable envelope)


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


def _x(sender: int = 0) -> list[Topic]:
    return [Topic("samples", sender, "x")]


async def _recv_frames(t: Transport, timeout: float = DEADLINE_S) -> list[bytes]:
    return [bytes(f) for f in await asyncio.wait_for(t.recv(), timeout)]


async def _handshake(pub: Transport, sub: Transport, sender: int) -> int:
    """The peer protocol: publish handshakes until one arrives; returns how many were sent."""
    hs = encode(Envelope(sender, Topic.handshake(sender), 0, {}))
    deadline = time.monotonic() + DEADLINE_S
    sent = 0
    while time.monotonic() < deadline:
        await pub.send(hs)
        sent += 1
        try:
            frames = await _recv_frames(sub, timeout=0.02)
        except TimeoutError:
            continue
        env = decode(frames)
        assert env.topic == Topic.handshake(sender) and env.sender == sender
        return sent
    pytest.fail("handshake did not complete")


async def _link(pub: Transport, sub: Transport, sender: int, topics: list[Topic]) -> None:
    """Connect, handshake, then probe every data topic until it arrives.

    The probes make the tests below independent of the handshake order (see
    test_handshake_topic_is_subscribed_last): a received probe proves that topic is live.
    """
    sub.connect({sender: pub.endpoint}, {sender: topics})
    await _handshake(pub, sub, sender)
    for topic in topics:
        probe = [topic.subscription(), PROBE]
        deadline = time.monotonic() + DEADLINE_S
        while True:
            assert time.monotonic() < deadline, f"{topic} subscription never became live"
            await pub.send(probe)
            try:
                frames = await _recv_frames(sub, timeout=0.02)
            except TimeoutError:
                continue
            if frames == probe:
                break


def _next_turn() -> asyncio.Future:
    """Resolves at the event loop's next turn: every task ready now has run a step."""
    loop = asyncio.get_running_loop()
    turn = loop.create_future()
    loop.call_soon(turn.set_result, None)
    return turn


async def _until(condition, what: str) -> None:
    """Let the loop turn until ``condition()`` holds (within DEADLINE_S)."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await _next_turn()


def _is_noise(frames: list) -> bool:
    """Handshakes and probes that may still be queued after _link."""
    first = bytes(frames[0])
    return first.startswith(f"{HANDSHAKE}/".encode()) or (
        len(frames) == 2 and bytes(frames[1]) == PROBE)


async def _next_data(sub: Transport, timeout: float = DEADLINE_S) -> Envelope:
    """The next message that is not a handshake or probe."""
    deadline = time.monotonic() + timeout
    while True:
        frames = await _recv_frames(sub, timeout=max(0.0, deadline - time.monotonic()))
        if not _is_noise(frames):
            return decode(frames)


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
    b.connect({0: a.endpoint}, {0: _x()})
    await _handshake(a, b, sender=0)
    # Publish right after the handshake: the slow-joiner problem must be solved already.
    x = np.random.default_rng(0).random((64, 16)) < 0.5
    await a.send(encode(Envelope(0, Topic("samples", 0, "x"), 0, {"x": x}, last=False,
                                 meta={"k": 1})))
    env = await _next_data(b, timeout=3.0)
    assert (str(env.topic), env.step, env.last, env.meta) == ("samples/0/x", 0, False, {"k": 1})
    np.testing.assert_array_equal(env.tensors["x"], x)


async def test_burst_arrives_complete_and_in_order(pair):
    a, b = pair
    await _link(a, b, 0, _x())
    k = 300
    for step in range(k):
        await a.send(encode(Envelope(0, "samples/0/x", step,
                                     {"x": np.full((50, 8), step, np.float32)})))
    steps = []
    while len(steps) < k:
        for frames in await asyncio.wait_for(b.recv_ready(), DEADLINE_S):
            if _is_noise(frames):
                continue
            env = decode(frames)
            steps.append(env.step)
            assert env.tensors["x"][0, 0] == env.step
    assert steps == list(range(k))


async def test_recv_ready_takes_everything_queued(pair):
    a, b = pair
    await _link(a, b, 0, [Topic("samples", 0, "x"), Topic("samples", 0, "end")])
    for step in range(5):
        await a.send(encode(Envelope(0, "samples/0/x", step, {})))
    await a.send(encode(Envelope(0, "samples/0/end", 5, {})))
    got: list[str] = []
    while "samples/0/end" not in got:
        batch = await asyncio.wait_for(b.recv_ready(), DEADLINE_S)
        assert batch
        got += [bytes(f[0]).decode() for f in batch if not _is_noise(f)]
    assert got == ["samples/0/x"] * 5 + ["samples/0/end"]


async def test_no_message_waits_for_a_later_one(tmp_path, transport_kind):
    """The receive path watches the sockets' descriptors (edge-triggered: they signal a
    change, not a level) and skips a socket found empty until it signals again.  Every
    message must still be received without waiting for a later one to arrive, whether it
    arrived while the receiving task waited, while it was busy elsewhere (the event loop
    ran the reader callbacks with nobody waiting), or on another neighbour's socket."""
    a, c, b = Transport(0), Transport(2), Transport(1)
    try:
        a.bind(transport_kind, "127.0.0.1", tmp_path)
        c.bind(transport_kind, "127.0.0.1", tmp_path)
        await _link(a, b, 0, _x(0))
        await _link(c, b, 2, _x(2))
        while True:  # let the handshakes and probes still queued go by
            try:
                await asyncio.wait_for(b.recv_ready(), 0.1)
            except TimeoutError:
                break
        rng = np.random.default_rng(0)
        for step in range(60):
            sender = (a, c)[step % 2]
            me = 0 if sender is a else 2
            how = step % 3
            if how == 0:  # the receiver waits already
                pending = asyncio.create_task(_next_data(b, timeout=2.0))
                await _until(lambda: b._waiter is not None, "the receiver waits")
                await sender.send(encode(Envelope(me, _x(me)[0], step, {})))
            else:  # the message arrives while nobody receives; the loop turns meanwhile
                await sender.send(encode(Envelope(me, _x(me)[0], step, {})))
                for _ in range(int(rng.integers(1, 20)) if how == 1 else 1):
                    await _next_turn()  # a random number of loop turns later
                pending = asyncio.create_task(_next_data(b, timeout=2.0))
            env = await pending
            assert (env.sender, env.step) == (me, step)
    finally:
        for t in (a, c, b):
            t.close()


# --------------------------------------------------------------------------- topic filtering


@pytest.mark.parametrize("subscribed", [
    ["samples/1/x"],
    ["params/1/w"],
    ["samples/1/x", "params/1/w"],
])
async def test_subscription_filters_kinds_senders_and_spaces(tmp_path, transport_kind,
                                                            subscribed):
    a, b = Transport(1), Transport(0)
    try:
        a.bind(transport_kind, "127.0.0.1", tmp_path)
        await _link(a, b, 1, [Topic.parse(t) for t in subscribed])
        # Raw frames: some of these topics are not even valid (they must not arrive either).
        topics = ["params/1/w", "samples/10/x", "samples/2/x", "samples/1x/x", "samples/1/x",
                  "hs/10/", "params/11/w", "other/1/x", "samples/1/z", "params/1/x",
                  "samples/1/w", "samples/1/", "params/1/", "samples/0/x"]
        for t in topics:
            await a.send([t.encode(), b"data"])
        marker = subscribed[-1].encode()
        await a.send([marker, b"marker"])  # delivery is FIFO: the marker comes last
        got = []
        while True:
            frames = await _recv_frames(b)
            if _is_noise(frames):
                continue
            if frames == [marker, b"marker"]:
                break
            got.append(frames[0].decode())
        assert got == [t for t in topics if t in subscribed]
    finally:
        a.close()
        b.close()


async def test_subscriber_of_x_only_never_receives_mu(tmp_path, transport_kind):
    """A peer learning only x takes samples/0/x and not one frame of peer 0's mu."""
    a, only_x, both = Transport(0), Transport(1), Transport(2)
    mu_topics = [Topic("samples", 0, "mu"), Topic("params", 0, "mu")]
    try:
        a.bind(transport_kind, "127.0.0.1", tmp_path)
        await _link(a, only_x, 0, _x())
        await _link(a, both, 0, [*_x(), *mu_topics])  # a witness that mu is really sent
        traffic = Traffic(0)
        subscribers = {Topic("samples", 0, "x"): (1, 2), **{t: (2,) for t in mu_topics}}
        bus = PeerBus(a, traffic, subscribers)
        rounds = 20
        for step in range(rounds):
            x = np.full((8, 4), step % 2 == 0)
            await bus.publish(Envelope(0, Topic("samples", 0, "x"), step, {"x": x}, last=False))
            await bus.publish(Envelope(0, Topic("samples", 0, "mu"), step,
                                       {"mu": np.ones((1, 4))}, last=False))
            await bus.publish(Envelope(0, Topic("params", 0, "mu"), step,
                                       {"mu": np.ones((1, 4))}))
        await bus.publish(Envelope(0, Topic("samples", 0, "x"), rounds, {}))  # the end marker

        async def topics_until_end(sub: Transport) -> list[str]:
            got = []
            while True:
                frames = await _recv_frames(sub)
                if _is_noise(frames):
                    continue
                env = decode(frames)
                got.append(f"{env.topic}@{env.step}")
                if env.topic == Topic("samples", 0, "x") and env.step == rounds:
                    return got

        assert await topics_until_end(only_x) == [f"samples/0/x@{s}" for s in range(rounds + 1)]
        got_both = await topics_until_end(both)
        assert got_both.count("samples/0/mu@0") == 1 and got_both.count("params/0/mu@7") == 1
        assert len(got_both) == 3 * rounds + 1
        # Bytes sent are counted once per subscriber of the topic.
        rows = {(r["receiver"], r["topic"]): r["messages"] for r in traffic.sent.rows()}
        assert rows == {(1, "samples/0/x"): rounds + 1, (2, "samples/0/x"): rounds + 1,
                        (2, "samples/0/mu"): rounds, (2, "params/0/mu"): rounds}
    finally:
        a.close()
        only_x.close()
        both.close()


def test_handshake_topic_is_subscribed_last(tmp_path):
    ctx = zmq.Context()
    xpub = ctx.socket(zmq.XPUB)
    xpub.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{tmp_path}/xpub.sock"
    xpub.bind(endpoint)
    t = Transport(1)
    try:
        t.connect({0: endpoint}, {0: [Topic("samples", 0, "x"), Topic("params", 0, "D")]})
        subs = []
        while len(subs) < 4:
            assert xpub.poll(int(DEADLINE_S * 1000)), f"only got subscriptions {subs}"
            subs.append(xpub.recv())
        assert sorted(subs) == sorted([b"\x01hs/0/", b"\x01samples/0/x", b"\x01params/0/D",
                                       b"\x01rs/0/1"])  # and our own resync topic
        assert subs[-1] == b"\x01hs/0/", f"subscription order {subs}"
        assert not xpub.poll(0), "subscribed to more than asked"
    finally:
        t.close()
        xpub.close()
        ctx.term()


async def test_a_subscription_that_arrives_during_a_send_is_still_taken(pair):
    """A send processes the XPUB's pending commands, which clears its descriptor while a
    new subscription waits: the reader callback never fires for it.  The transport looks
    after each send, so a receiver that re-connected (after a cut) gets its resync marker
    (before, under load, such a receiver waited for it until its sync barrier failed)."""
    a, _ = pair
    got = asyncio.Event()
    seen: list[bytes] = []
    a.on_subscribe = lambda data: (seen.append(data), got.set())
    receiving = asyncio.create_task(a.recv_from())
    await asyncio.sleep(0)  # one turn: the task watches the sockets and waits
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    try:
        sub.connect(a.endpoint)
        sub.setsockopt(zmq.SUBSCRIBE, b"rs/0/1")
        # Without letting the loop run: wait (on the descriptor) until the subscription is
        # there, then send, which takes the descriptor's signal away.
        fd = a.pub.getsockopt(zmq.FD)
        assert select.select([fd], [], [], DEADLINE_S)[0], "the subscription never came"
        a.send_now(encode(Envelope(0, Topic("samples", 0, "x"), 0, {})))
        assert not select.select([fd], [], [], 0)[0]  # (what made this a bug)
        await asyncio.wait_for(got.wait(), DEADLINE_S)
        assert seen == [b"rs/0/1"]
    finally:
        receiving.cancel()
        sub.close()
        ctx.term()


# --------------------------------------------------------------------------- receiving


async def test_bus_counts_malformed_socket_messages_as_rejected(tmp_path, transport_kind):
    """What arrives as zmq frames is decoded, measured and refused exactly like bytes."""
    a, b = Transport(0), Transport(1)
    try:
        a.bind(transport_kind, "127.0.0.1", tmp_path)
        b.connect({0: a.endpoint}, {0: _x()})
        await _handshake(a, b, 0)  # the handshake is subscribed last: x is live now
        traffic = Traffic(1, max_message_bytes=4096)
        bus = PeerBus(b, traffic, {})

        def sample(step: int = 0, x=None) -> list[bytes]:
            x = np.zeros((8, 4), bool) if x is None else x
            return [bytes(f) for f in encode(Envelope(0, "samples/0/x", step, {"x": x}))]

        good = sample()
        header = msgpack.unpackb(good[1])
        sequence = [
            [good[0], b"\xc1 not msgpack", good[2]],  # malformed
            good,
            [good[0], good[1], good[2][:-1]],  # truncated
            [good[0], msgpack.packb({**header, "v": 99}), good[2]],  # version
            sample(x=np.zeros((10000, 4), bool)),  # oversized: 5000 B packed > 4096
            [good[0], msgpack.packb({**header, "time": "noon"}), good[2]],  # malformed
            sample(step=1),
            sample(step=99),  # the end marker
        ]
        for frames in sequence:
            await a.send(frames)
        taken: list[tuple[Envelope, int]] = []
        while not any(env.step == 99 for env, _ in taken):
            got = await asyncio.wait_for(bus.receive(), DEADLINE_S)
            taken += [(env, n) for env, n in got if not env.topic.is_handshake]
        assert dict(traffic.rejected) == {"malformed": 2, "truncated": 1, "version": 1,
                                          "oversized": 1}
        assert [env.step for env, _ in taken] == [0, 1, 99]
        assert taken[0][1] == sum(frame_sizes(good))
        totals = traffic.received.totals()
        assert totals["messages"] == 3
        assert (totals["header_bytes"], totals["payload_bytes"]) == (
            sum(frame_sizes(sample(s))[0] for s in (0, 1, 99)), 3 * frame_sizes(good)[1])
    finally:
        a.close()
        b.close()


# --------------------------------------------------------------------------- control channel


async def test_control_server_believes_tokens_not_names(tmp_path):
    """Only frames carrying a peer's token count.  A stranger that names itself peer 0 (its
    ZeroMQ identity, its auth frame) or sends junk is dropped and counted, never fatal."""
    tokens = {0: control_token(b"secret", 0), 5: control_token(b"secret", 5)}
    server = ControlServer("ipc", "127.0.0.1", tmp_path, tokens)
    ctx = zmq.asyncio.Context()
    socks = []

    def dealer(identity: bytes) -> zmq.asyncio.Socket:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.IDENTITY, identity)
        s.connect(server.endpoint)
        socks.append(s)
        return s

    try:
        stranger = dealer(b"peer-0")  # connects first, under the name a peer once had
        await stranger.send(ctl.encode(ctl.Stop()))  # one frame
        await stranger.send_multipart([b"\xff\xfe", b"two"])  # not UTF-8
        await stranger.send_multipart([b"0:" + b"0" * 64, ctl.encode(ctl.Hello("x", 1))])
        await stranger.send_multipart([tokens[0].encode(), b"no peer id"])
        peer0 = ControlClient(0, server.endpoint, ctx, tokens[0])
        socks.append(peer0.sock)
        hello = ctl.Hello("ipc:///somewhere", 1234)
        await peer0.send(ctl.encode(hello))
        got = await server.recv(timeout_s=DEADLINE_S)
        assert got is not None
        peer, data = got
        assert peer == 0 and ctl.decode(data) == hello
        # The stranger's junk may be queued behind it (fair queuing across connections).
        deadline = time.monotonic() + DEADLINE_S
        while server.junk < 4:
            assert time.monotonic() < deadline, f"junk counted: {server.junk}"
            assert await server.recv(timeout_s=0.05) is None
        assert server.junk == 4
        # Replies go to the authenticated connection, not to the one named peer-0.
        assert await server.send(0, ctl.encode(ctl.Go()))
        assert ctl.decode(await asyncio.wait_for(peer0.recv(), DEADLINE_S)) == ctl.Go()
        assert not await stranger.poll(200)
        # A peer cannot speak for another with its own token.
        liar = ControlClient(5, server.endpoint, ctx, tokens[0])
        socks.append(liar.sock)
        await liar.send(ctl.encode(ctl.Progress(7)))
        real = ControlClient(5, server.endpoint, ctx, tokens[5])
        socks.append(real.sock)
        await real.send(ctl.encode(ctl.Progress(8)))
        got = await server.recv(timeout_s=DEADLINE_S)
        assert got is not None and got[0] == 5 and ctl.decode(got[1]) == ctl.Progress(8)
        deadline = time.monotonic() + DEADLINE_S
        while server.junk < 5:  # the liar's frame may be queued behind the real one
            assert time.monotonic() < deadline, f"junk counted: {server.junk}"
            assert await server.recv(timeout_s=0.05) is None
        assert server.junk == 5
        assert not await server.send(3, ctl.encode(ctl.Stop()))  # never spoke: no route
    finally:
        for s in socks:
            s.close(linger=0)
        ctx.term()
        server.close()


# --------------------------------------------------------------------------- teardown

# Regression: the peer used to close the Transport (ctx.term()) while the control DEALER on
# the same context was still open, so every peer hung until the launcher's SIGTERM.
_PEER_MAIN = "import json, sys\nfrom p2pgame.peer import peer_main\npeer_main(json.loads(sys.argv[1]))"


async def test_stopped_peer_process_exits_promptly(tmp_path, tiny_raw, no_leftover_processes):
    scenario = resolve(tiny_raw, "tiny.toml")
    schedule = build_schedule(scenario.topology, scenario.steps, scenario.seed)
    server = ControlServer("ipc", "127.0.0.1", tmp_path)
    launch = asdict(PeerLaunch(
        peer_id=0, scenario=to_plain(scenario), schedule=schedule_to_plain(schedule),
        control_endpoint=server.endpoint, ipc_dir=str(tmp_path), data_root=str(tmp_path),
        artifact_dir=str(tmp_path / "artifacts"), threads=1, device="cpu"))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _PEER_MAIN,
                                                json.dumps(launch))
    try:
        got = await server.recv(timeout_s=60)
        assert got is not None and got[0] == 0
        hello = ctl.decode(got[1])
        assert isinstance(hello, ctl.Hello) and hello.pid == proc.pid
        assert hello.endpoint == f"ipc://{tmp_path}/peer-0.sock"
        await server.send(0, ctl.encode(ctl.Stop()))  # stopped before start
        try:
            rc = await asyncio.wait_for(proc.wait(), 4.0)
        except TimeoutError:
            pytest.fail("the peer did not exit within 4 s of Stop")
        assert rc == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        server.close()


async def test_a_neighbour_cannot_speak_for_another(tmp_path, transport_kind):
    """Peer 1 hears peers 0 and 2, each on its own connection.  Peer 2 publishing peer 0's
    topic under peer 0's name reaches nobody (its connection carries only peer 2's topics);
    forced onto peer 2's own topic it is refused as spoofed."""
    p0, p2, me = Transport(0), Transport(2), Transport(1)
    try:
        p0.bind(transport_kind, "127.0.0.1", tmp_path)
        p2.bind(transport_kind, "127.0.0.1", tmp_path)
        await _link(p0, me, 0, _x(0))
        await _link(p2, me, 2, _x(2))
        traffic = Traffic(1)
        bus = PeerBus(me, traffic, {})
        forged = Envelope(0, Topic("samples", 0, "x"), 5, {"x": np.ones((2, 3), bool)})
        await p2.send(encode(forged))  # filtered: peer 2's connection is not subscribed
        # On peer 2's own topic, with a header claiming peer 0: it arrives, and is refused.
        await p2.send(encode(Envelope(0, Topic("samples", 2, "x"), 5,
                                      {"x": np.ones((2, 3), bool)})))
        # Honest messages of both; each connection is FIFO, so once peer 2's has arrived
        # so has everything peer 2 sent before it.
        for t, sender in ((p0, 0), (p2, 2)):
            await t.send(encode(Envelope(sender, Topic("samples", sender, "x"), 6,
                                         {"x": np.zeros((2, 3), bool)})))
        got: list = []
        deadline = time.monotonic() + DEADLINE_S
        while len(got) < 2 and time.monotonic() < deadline:
            got += [(env.sender, env.step, bool(env.tensors["x"].any()))
                    for env, _ in await asyncio.wait_for(bus.receive(), DEADLINE_S)
                    if not env.topic.is_handshake and env.tensors]
        assert sorted(got) == [(0, 6, False), (2, 6, False)]  # the honest ones only
        assert traffic.rejected == {"spoofed": 1}
    finally:
        for t in (p0, p2, me):
            t.close()


async def test_an_oversized_frame_is_refused_by_zeromq_before_it_is_received(tmp_path,
                                                                               transport_kind):
    """max_message_bytes becomes ZeroMQ's MAXMSGSIZE: a 4 MiB frame at a 64 KiB limit never
    reaches the receiver's memory; ZeroMQ cuts the connection that sent it."""
    pub, sub = Transport(0), Transport(1, max_message_bytes=64 * 1024)
    try:
        pub.bind(transport_kind, "127.0.0.1", tmp_path)
        await _link(pub, sub, 0, _x(0))
        topic = Topic("samples", 0, "x").subscription()
        await pub.send([topic, b"before"])
        await pub.send([topic, bytes(4 << 20)])
        await pub.send([topic, b"after"])
        seen = []
        while True:
            try:
                frames = await _recv_frames(sub, timeout=1.0)
            except TimeoutError:
                break
            seen.append(frames[1])
        assert seen == [b"before"]  # nothing of, or after, the oversized frame
    finally:
        pub.close()
        sub.close()


async def test_publish_encodes_large_messages_in_a_thread_and_keeps_their_order(
        tmp_path, transport_kind):
    """Messages with more than encode_in_thread_bytes to pack are encoded in a worker
    thread, the rest inline; either way they leave in the order of the publish calls, and
    the receiver gets their bit-packed tensors still packed until it reads them."""
    a, b = Transport(0), Transport(1)
    topic = Topic("samples", 0, "x")
    try:
        a.bind(transport_kind, "127.0.0.1", tmp_path)
        await _link(a, b, 0, [topic])
        traffic = Traffic(0)
        bus = PeerBus(a, traffic, {topic: (1,)}, encode_in_thread_bytes=1000)
        sizes = [5000, 10, 5000, 5000, 10, 10, 5000, 10, 4000, 3]  # bools: 1 byte each
        rng = np.random.default_rng(1)
        sent = [rng.random(n) < 0.5 for n in sizes]
        for step, x in enumerate(sent):
            await bus.publish(Envelope(0, topic, step, {"x": x, "f": np.full(2, step, np.float32)},
                                       last=step == len(sizes) - 1))
        assert bus.encoded_in_thread == sum(n > 1000 for n in sizes)
        assert bus.encode_s > 0 and bus.send_s > 0
        assert traffic.sent.totals()["messages"] == len(sizes)

        receiver = PeerBus(b, Traffic(1), {})
        got: list[Envelope] = []
        deadline = time.monotonic() + DEADLINE_S
        while len(got) < len(sizes) and time.monotonic() < deadline:
            got += [env for env, _ in await asyncio.wait_for(receiver.receive(), DEADLINE_S)
                    if not env.topic.is_handshake]
        assert [env.step for env in got] == list(range(len(sizes)))
        for env, x in zip(got, sent, strict=True):
            assert env.tensors.packed == ("x",)
            np.testing.assert_array_equal(env.tensors["f"], np.full(2, env.step, np.float32))
            np.testing.assert_array_equal(env.tensors["x"], x)
        assert got[-1].last and not got[0].last
    finally:
        a.close()
        b.close()


async def test_the_event_loop_runs_while_a_large_message_is_encoded(tmp_path):
    """Encoding in a thread leaves the event loop free: a ticker task keeps ticking while
    a message of 64 MiB of bools is packed (inline, it could not tick until the end)."""
    a = Transport(0)
    try:
        a.bind("ipc", "127.0.0.1", tmp_path)
        bus = PeerBus(a, Traffic(0), {})
        big = np.ones(64 * 2**20, bool)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await _next_turn()

        task = asyncio.create_task(ticker())
        await _until(lambda: ticks > 0, "the ticker ticks")
        before = ticks
        await bus.publish(Envelope(0, Topic("samples", 0, "x"), 0, {"x": big}))
        during = ticks - before
        task.cancel()
        assert bus.encoded_in_thread == 1
        assert during > 3, f"the loop ticked {during} times while encoding"
    finally:
        a.close()


class _Recorder:
    """A stand-in socket that writes what is done to it into a shared list."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls, self.closed = name, calls, False

    def disable_monitor(self) -> None:
        self.calls.append(f"{self.name}.disable_monitor")

    def close(self, linger=None) -> None:
        self.calls.append(f"{self.name}.close")
        self.closed = True


def test_a_moved_neighbours_monitor_stops_before_either_end_closes():
    """ZeroMQ's I/O thread writes monitor events with a blocking send.  If the PAIR that
    reads a SUB's monitor closed first and the SUB's teardown then reported a disconnection
    (its neighbour died just before it moved), that send would wait forever, and the
    context's I/O thread with it: every other neighbour of the peer went silent.  (Seen
    under load as test_reconnect_while_receiving_keeps_every_neighbour timing out: gdb
    showed the I/O thread in zmq_msg_send.)  So the monitor is stopped first, then the
    SUB closes, then the PAIR, on a move and on close."""
    t = Transport(0)
    try:
        calls: list[str] = []
        t.subs[3], t._monitors[3] = _Recorder("sub", calls), _Recorder("mon", calls)
        t._conns[3] = ("inproc://nowhere", [], None)
        t.connect = lambda *a, **k: None  # (the move's new connection is not the point)
        t._move(3, "inproc://nowhere", [], None)
        assert calls == ["sub.disable_monitor", "sub.close", "mon.close"]
        calls.clear()
        t.subs[4], t._monitors[4] = _Recorder("sub", calls), _Recorder("mon", calls)
        t.close()
        assert calls == ["sub.disable_monitor", "sub.close", "mon.close"]
    finally:
        if not t.pub.closed:
            t.close()



async def test_reconnect_while_receiving_keeps_every_neighbour(tmp_path, transport_kind):
    """A neighbour restarts (new endpoint) while the receiver's task waits in recv: the
    receiver goes on hearing its other neighbour and hears the moved one at its new
    endpoint.  (Closing the old socket under a pending poll once left a peer deaf to all.)"""
    old, other, sub = Transport(1), Transport(2), Transport(0)
    new = Transport(1)
    try:
        old.bind(transport_kind, "127.0.0.1", tmp_path)
        other.bind(transport_kind, "127.0.0.1", tmp_path)
        new.bind(transport_kind, "127.0.0.1", tmp_path, incarnation=1)
        await _link(old, sub, 1, _x(1))
        await _link(other, sub, 2, _x(2))
        old.close()  # killed: its socket is gone, the receiver's connection to it retries
        for _ in range(3):
            pending = asyncio.create_task(_next_data(sub))
            await _until(lambda: sub._waiter is not None, "the receive waits")
            sub.reconnect(1, new.endpoint, _x(1))
            await _until(lambda: not sub._moves, "the receiving task applies the move")
            await other.send(encode(Envelope(2, _x(2)[0], 5, {})))
            env = await asyncio.wait_for(pending, DEADLINE_S)
            assert env.sender == 2 and env.step == 5
        # The moved neighbour is heard at its new endpoint (handshake, then data).
        await _handshake(new, sub, 1)
        await new.send(encode(Envelope(1, _x(1)[0], 9, {})))
        env = await _next_data(sub)
        assert (env.sender, env.step) == (1, 9)
    finally:
        for t in (other, sub, new):
            t.close()
