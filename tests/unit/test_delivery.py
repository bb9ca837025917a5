"""Delivery without sockets or a real clock: release, round resolution, routing, rejections.

Every call takes ``now`` explicitly (a fake clock: plain floats); nothing sleeps.
Frames are encoded and decoded through :class:`Traffic`, as the peer's bus does,
so sizes and codec-level rejections are the real ones.
"""

from __future__ import annotations

from collections import Counter

import msgpack
import numpy as np
import pytest

from p2pgame.bus.codec import Envelope, encode, frame_sizes
from p2pgame.bus.links import Link
from p2pgame.bus.topics import Topic
from p2pgame.bus.traffic import Traffic
from p2pgame.config import LinkSpec
from p2pgame.learners.base import check_schema
from p2pgame.peer.delivery import Delivery

ME = 1
T0 = 1000.0  # the fake clock's start
X_SCHEMA = {"x": ("bool", (4,))}
IDEAL = LinkSpec()


def _delivery(spec: LinkSpec | dict[int, LinkSpec] = IDEAL, in_peers=(0, 2),
              subscribed=None, sync: bool = True, publish_every: int = 1,
              seed: int = 1, steps: int | None = 1000) -> Delivery:
    """Peer ``ME`` of the line 0 - 1 - 2 (by default), taking space ``x`` from each."""
    specs = spec if isinstance(spec, dict) else {j: spec for j in in_peers}
    links = {j: Link(j, ME, specs[j], seed) for j in in_peers}
    if subscribed is None:
        subscribed = {j: ["x"] for j in in_peers}
    return Delivery(ME, links, subscribed, sync, publish_every, steps=steps)


def _env(sender: int = 0, step: int = 0, space: str = "x", kind: str = "samples",
         topic_peer: int | None = None, x=None, last: bool = True) -> Envelope:
    x = np.zeros((8, 4), bool) if x is None else x
    topic = Topic(kind, sender if topic_peer is None else topic_peer, space)
    return Envelope(sender, topic, step, {"x": x}, last=last)


def _frames(env: Envelope) -> list[bytes]:
    return [bytes(f) for f in encode(env)]


def _nbytes(env: Envelope) -> int:
    return sum(frame_sizes(_frames(env)))


def _arrive(d: Delivery, env: Envelope, now: float, step: int = 0, check=None,
            traffic: Traffic | None = None) -> str | None:
    """What the runtime does with one message off the socket: decode, then accept."""
    got = (traffic or Traffic(ME)).decode(_frames(env))
    assert got is not None, "a well-formed message must decode"
    decoded, nbytes = got
    if check is None:
        return d.accept(decoded, nbytes, now, step)
    return d.accept(decoded, nbytes, now, step, check)


def _schema_check(env: Envelope) -> str | None:
    return check_schema(env.tensors, X_SCHEMA)


# --------------------------------------------------------------------------- release


def test_release_respects_sync_delay():
    d = _delivery(LinkSpec(delay_steps=2))
    for step in range(5):
        assert _arrive(d, _env(sender=0, step=step), T0) is None
    assert [p.release_step for p in d.pending[0]] == [2, 3, 4, 5, 6]
    assert d.needed_round(0, 1) == -1 and d.needed_round(0, 4) == 2
    assert d.release(1, T0) is None and d.inbox.latest == {}
    assert d.resolved[0] == -1
    d.release(3, T0)
    assert d.resolved[0] == 1 and d.inbox.latest[(0, "x")].step == 1
    assert len(d.pending[0]) == 3
    assert d.inbox.use(0, "x", 3).step == 1
    assert d.inbox.staleness_summary() == (2.0, {"2": 1})
    assert d.delivered_bytes == 2 * _nbytes(_env(sender=0))
    # Peer 2 sent nothing: at step 3 its round 1 is still awaited, peer 0's is not.
    assert d.missing(3, [0, 2]) == [2]


def test_async_delay_counts_from_the_receivers_step():
    d = _delivery(LinkSpec(delay_steps=2), sync=False)
    _arrive(d, _env(sender=0, step=0), T0, step=5)
    assert [p.release_step for p in d.pending[0]] == [7]
    d.release(6, T0)
    assert d.inbox.latest == {}
    d.release(7, T0)
    assert d.inbox.latest[(0, "x")].step == 0


def test_needed_round_follows_publish_every():
    d = _delivery(LinkSpec(delay_steps=1), publish_every=3)
    # Rounds are published at steps 0, 3, 6, ...; a step needs the newest one, delayed.
    assert [d.needed_round(0, s) for s in range(9)] == [-1, 0, 0, 0, 3, 3, 3, 6, 6]


def test_drop_resolves_the_round():
    d = _delivery(LinkSpec(drop=0.5))
    for step in range(200):
        assert _arrive(d, _env(sender=0, step=step), T0, step=step) is None
    queued = sum(p.nbytes for p in d.pending[0])
    d.release(199, T0)
    # Dropped or delivered, every round is resolved: a sync barrier never waits for a loss.
    assert d.resolved[0] == 199
    assert d.missing(199, [0]) == []
    assert d.dropped + d.links[0].admitted == 200
    assert 60 < d.dropped < 140
    assert d.dropped == d.links[0].dropped
    assert d.admitted == d.links[0].admitted  # summed over every link
    assert d.delivered_bytes == queued and not d.pending[0]


def test_a_lost_round_is_resolved_at_once_when_nothing_is_ahead_of_it():
    d = _delivery(LinkSpec(drop=0.5))
    # Find a round that the link drops (the drop RNG is seeded per edge: deterministic).
    for step in range(50):
        d.release(step, T0)  # everything earlier is out of the queue
        before = d.dropped
        _arrive(d, _env(sender=0, step=step), T0, step=step)
        if d.dropped > before:
            break
    else:
        pytest.fail("no drop in 50 messages at drop=0.5")
    # Nothing ahead of it: the lost round is settled by the next release, at once.
    assert d.release(step, T0) is None
    assert not d.pending[0] and d.resolved[0] == step
    assert d.missing(step, [0]) == []


def test_a_lost_last_message_waits_for_the_messages_ahead_of_it():
    """FIFO: a dropped ``last`` must not complete a round whose earlier message is in flight."""
    d = _delivery(LinkSpec(drop=0.5, latency_ms=100.0), in_peers=(0,),
                  subscribed={0: ["x", "mu"]})
    now = T0
    for step in range(200):
        x = _env(sender=0, step=step, space="x", last=False)
        mu = _env(sender=0, step=step, space="mu", kind="params", last=True)
        kept = d.links[0].admitted
        _arrive(d, x, now, step=step)
        x_admitted = d.links[0].admitted > kept
        dropped = d.dropped
        _arrive(d, mu, now, step=step)
        if x_admitted and d.dropped > dropped:
            break
        now += 1.0  # let this round out before the next
        d.release(step, now)
    else:
        pytest.fail("no round with x admitted and mu dropped")
    assert d.resolved[0] == step - 1  # x of this round is still on the wire
    assert d.missing(step, [0]) == [0]
    assert d.release(step, now) == pytest.approx(now + 0.1)
    assert d.missing(step, [0]) == [0]
    d.release(step, now + 0.1)
    assert d.resolved[0] == step and d.missing(step, [0]) == []
    assert d.inbox.latest[(0, "x")].step == step
    assert (0, "mu") not in d.inbox.latest or d.inbox.latest[(0, "mu")].step < step


# --------------------------------------------------------------------------- time release


def test_barrier_waits_for_time_release():
    # Two in-neighbours on links of different latency; the barrier's loop, on a fake clock.
    d = _delivery({0: LinkSpec(latency_ms=150.0), 2: LinkSpec(latency_ms=50.0)})
    _arrive(d, _env(sender=0, step=0), T0)
    _arrive(d, _env(sender=2, step=0), T0)
    now, waits = T0, []
    while True:
        next_time = d.release(0, now)
        missing = d.missing(0, [0, 2])
        if not missing:
            break
        assert next_time is not None and next_time > now, "missing, yet nothing to wait for"
        waits.append((round(next_time - T0, 9), missing))
        now = next_time
    assert waits == [(0.05, [0, 2]), (0.15, [0])]
    assert d.resolved == {0: 0, 2: 0}
    assert now == pytest.approx(T0 + 0.15)


def test_release_returns_the_next_release_time_and_missing_until_then():
    d = _delivery(LinkSpec(latency_ms=200.0), in_peers=(0,))
    _arrive(d, _env(sender=0, step=0), T0)
    due = d.release(0, T0)
    assert due == pytest.approx(T0 + 0.2)
    assert d.missing(0, [0]) == [0] and d.inbox.latest == {}
    # Just before the release time: still held, same answer.
    assert d.release(0, due - 1e-6) == due
    assert d.missing(0, [0]) == [0] and d.inbox.latest == {}
    # At the release time: released, nothing more to wait for.
    assert d.release(0, due) is None
    assert d.missing(0, [0]) == []
    assert d.inbox.latest[(0, "x")].step == 0


def test_release_waits_for_both_step_and_time():
    d = _delivery(LinkSpec(delay_steps=1, latency_ms=100.0), in_peers=(0,))
    _arrive(d, _env(sender=0, step=0), T0)
    # Not due by step yet: no time is reported (the step, not the clock, holds it).
    assert d.release(0, T0 + 10.0) is None and d.inbox.latest == {}
    later = _delivery(LinkSpec(delay_steps=1, latency_ms=100.0), in_peers=(0,))
    _arrive(later, _env(sender=0, step=0), T0)
    assert later.release(1, T0) == pytest.approx(T0 + 0.1)
    assert later.release(1, T0 + 0.1) is None
    assert later.inbox.latest[(0, "x")].step == 0


# --------------------------------------------------------------------------- round resolution


def test_subscriber_of_some_spaces_resolves_without_the_last_message():
    # Publisher 0 puts out x then mu every round (only mu carries last); we take x only.
    d = _delivery(in_peers=(0,), subscribed={0: ["x"]})
    for r in range(3):
        assert _arrive(d, _env(sender=0, step=r, space="x", last=False), T0, step=r) is None
        assert d.missing(r, [0]) == [0]  # arrived, not yet released
        d.release(r, T0)
        assert d.resolved[0] == r
        assert d.missing(r, [0]) == []
    # mu would be refused (and never reaches us through the subscription anyway).
    assert _arrive(d, _env(sender=0, step=3, space="mu", kind="params"), T0) == "space"


def test_subscriber_of_every_space_waits_for_the_last_message():
    d = _delivery(in_peers=(0,), subscribed={0: ["x", "mu"]})
    _arrive(d, _env(sender=0, step=0, space="x", last=False), T0)
    d.release(0, T0)
    assert d.resolved[0] == -1 and d.missing(0, [0]) == [0]  # x alone does not complete it
    _arrive(d, _env(sender=0, step=0, space="mu", kind="params", last=True), T0)
    d.release(0, T0)
    assert d.resolved[0] == 0 and d.missing(0, [0]) == []


def test_partial_round_with_last_is_complete():
    # Diffusion GAN: a round may carry only D, only G, or both; the last one is flagged.
    d = _delivery(in_peers=(0,), subscribed={0: ["D", "G"]})
    # Round 0: only G.
    _arrive(d, _env(sender=0, step=0, space="G", kind="params", last=True), T0)
    d.release(0, T0)
    assert d.resolved[0] == 0 and d.missing(0, [0]) == []
    # Round 1: D (not last) then G (last): complete only with G.
    _arrive(d, _env(sender=0, step=1, space="D", kind="params", last=False), T0, step=1)
    d.release(1, T0)
    assert d.resolved[0] == 0 and d.missing(1, [0]) == [0]
    _arrive(d, _env(sender=0, step=1, space="G", kind="params", last=True), T0, step=1)
    d.release(1, T0)
    assert d.resolved[0] == 1
    # Round 2: only D.
    _arrive(d, _env(sender=0, step=2, space="D", kind="params", last=True), T0, step=2)
    d.release(2, T0)
    assert d.resolved[0] == 2


def test_every_subscribed_space_completes_a_round_without_last():
    # Every space we take arrived (none flagged last: the publisher's last one is not ours).
    d = _delivery(in_peers=(0,), subscribed={0: ["D", "G"]})
    for space in ("G", "D"):
        assert d.resolved[0] == -1
        _arrive(d, _env(sender=0, step=4, space=space, kind="params", last=False), T0, step=4)
        d.release(4, T0)
    assert d.resolved[0] == 4


def test_resolved_never_goes_back():
    d = _delivery(in_peers=(0,))
    _arrive(d, _env(sender=0, step=5), T0, step=5)
    d.release(5, T0)
    assert d.resolved[0] == 5
    _arrive(d, _env(sender=0, step=3), T0, step=5)  # a late, older round
    d.release(5, T0)
    assert d.resolved[0] == 5
    assert d.inbox.latest[(0, "x")].step == 5  # the inbox keeps the freshest


def test_neighbour_we_take_nothing_from_is_never_missing():
    d = _delivery(in_peers=(0, 2), subscribed={0: ["x"]})  # nothing from 2
    assert d.subscribed[2] == frozenset()
    for step in range(3):
        assert 2 not in d.missing(step, [0, 2])
    assert d.missing(0, [0, 2]) == [0]
    # Anything it sends is refused, and resolves nothing.
    assert _arrive(d, _env(sender=2, step=0), T0) == "space"
    assert d.resolved[2] == -1 and not d.pending[2]
    # Only active in-neighbours count; a peer that is not an in-neighbour is ignored.
    assert d.missing(0, [2, 3]) == []


# --------------------------------------------------------------------------- routing


def test_accept_routes_and_checks():
    d = _delivery()
    traffic = Traffic(ME)
    checked: list[str] = []

    def check(env: Envelope) -> str | None:
        checked.append(str(env.topic))
        return _schema_check(env)

    reasons: Counter[str] = Counter()

    def arrive(env: Envelope) -> None:
        reason = _arrive(d, env, T0, check=check, traffic=traffic)
        if reason:
            reasons[reason] += 1

    good = _env(sender=2, step=0)
    arrive(good)
    assert not reasons
    assert len(d.pending[2]) == 1 and d.links[2].admitted == 1
    row = traffic.received.rows()[0]
    assert (row["sender"], row["receiver"], row["topic"]) == (2, ME, "samples/2/x")
    assert (row["header_bytes"], row["payload_bytes"]) == frame_sizes(_frames(good))
    # Wrong sender in the topic, a sender we do not listen to, a wrong space, a wrong schema.
    arrive(_env(sender=0, topic_peer=2))
    arrive(_env(sender=3))
    arrive(_env(sender=0, space="y"))
    arrive(_env(sender=0, x=np.zeros((8, 4), np.float32)))
    arrive(_env(sender=0, x=np.zeros((8, 5), bool)))
    assert dict(reasons) == {"sender": 2, "space": 1, "schema": 2}
    assert d.links[0].admitted == 0 and not d.pending[0]
    # The learner's check sees only messages that passed routing.
    assert checked == ["samples/2/x", "samples/0/x", "samples/0/x"]
    # Refused messages resolve nothing and deliver nothing.
    d.release(0, T0)
    assert d.resolved == {0: -1, 2: 0}
    assert d.delivered_bytes == _nbytes(good)
    assert d.admitted == 1


# --------------------------------------------------------------------------- codec rejections


def test_codec_rejections_are_counted_and_good_messages_pass():
    d = _delivery()
    traffic = Traffic(ME, max_message_bytes=4096)
    good = _frames(_env(sender=0, step=0))
    header = msgpack.unpackb(good[1])
    bad_header = [good[0], b"\xc1 not msgpack", good[2]]
    truncated = [good[0], good[1], good[2][:-1]]
    wrong_version = [good[0], msgpack.packb({**header, "v": 99}), good[2]]
    oversized = _frames(_env(sender=0, x=np.zeros((10000, 4), bool)))  # 5000 B packed > 4096
    bad_topic = [b"samples/x/x", msgpack.packb({**header, "topic": "samples/x/x"}), good[2]]
    one_frame = [good[0]]
    sequence = [bad_header, good, truncated, wrong_version, oversized, bad_topic, one_frame,
                _frames(_env(sender=0, step=1))]
    for frames in sequence:
        got = traffic.decode(frames)
        if got is not None:
            assert d.accept(*got, T0, 0) is None
    assert dict(traffic.rejected) == {"malformed": 2, "truncated": 1, "version": 1,
                                      "oversized": 1, "topic": 1}
    assert d.links[0].admitted == 2 and len(d.pending[0]) == 2
    # Refused messages are not counted as received traffic.
    assert traffic.received.totals()["messages"] == 2


@pytest.mark.parametrize("bad_time", ["noon", None, True, [1.0]])
def test_message_with_malformed_time_is_refused_and_the_peer_goes_on(bad_time):
    d = _delivery()
    traffic = Traffic(ME)
    good = _frames(_env(sender=0))
    header = msgpack.unpackb(good[1])
    assert traffic.decode([good[0], msgpack.packb({**header, "time": bad_time}), good[2]]) is None
    assert dict(traffic.rejected) == {"malformed": 1}
    got = traffic.decode(good)  # the next message is still taken
    assert got is not None and d.accept(*got, T0, 0) is None
    assert d.links[0].admitted == 1


def test_handshakes_are_not_counted_as_traffic():
    traffic = Traffic(ME)
    got = traffic.decode(_frames(Envelope(0, Topic.handshake(0), 0, {})))
    assert got is not None and got[0].topic.is_handshake
    assert traffic.received.totals()["messages"] == 0 and not traffic.rejected


def test_replayed_and_out_of_run_steps_are_refused():
    """On one connection a sender's steps only go up, and lie in the run: a replay, or a
    step no honest peer publishes (which would complete every round of a sync barrier at
    once), is refused and counted, and changes nothing."""
    d = _delivery()
    for step in range(3):
        assert _arrive(d, _env(sender=0, step=step), T0, step=step) is None
    assert _arrive(d, _env(sender=0, step=1), T0) == "replayed"
    assert _arrive(d, _env(sender=0, step=2), T0) == "replayed"
    assert _arrive(d, _env(sender=0, step=2**62), T0) == "step-range"
    assert _arrive(d, _env(sender=0, step=1000), T0) == "step-range"  # the run has 1000
    assert _arrive(d, _env(sender=0, step=3), T0, step=3) is None  # the stream goes on
    assert d.rejected[0] == 4 and d.links[0].arrived == 4
    d.release(3, T0)
    assert d.resolved[0] == 3  # the refused round 2**62 did not complete anything


@pytest.mark.parametrize("gap", [1, 64, 65, 10_000])
def test_a_gap_in_a_senders_steps_is_never_refused(gap):
    """A receiver that fell behind loses whole messages at the publisher's high-water mark
    (a peer stopped for a few seconds, or a loaded machine): the next message's step lies
    far beyond the last one taken.  It is legitimate, and so is every later one (a
    window that moved only on accepted messages used to lock such a sender out)."""
    d = _delivery(sync=False, steps=None)
    assert _arrive(d, _env(sender=0, step=0), T0) is None
    for k in range(5):
        assert _arrive(d, _env(sender=0, step=gap * (k + 1)), T0) is None, k
    assert d.rejected[0] == 0 and d.links[0].arrived == 6


def test_a_message_claiming_another_sender_on_a_connection_is_spoofed():
    traffic = Traffic(ME)
    frames = _frames(_env(sender=0, step=0))
    assert traffic.decode(frames, via=2) is None  # came on peer 2's connection
    assert traffic.rejected == {"spoofed": 1} and traffic.received.totals()["messages"] == 0
    assert traffic.decode(frames, via=0) is not None


def test_too_many_samples_in_one_message_are_refused_without_unpacking():
    """comm.max_samples_per_message: a valid header announcing more samples is refused
    (read from the schema: the bit-packed payload is never unpacked for it)."""
    d = _delivery()
    d.max_samples = 8
    assert _arrive(d, _env(step=0, x=np.zeros((8, 4), bool)), T0) is None
    big = _env(step=1, x=np.ones((9, 4), bool))
    got = Traffic(ME).decode(_frames(big))
    assert got is not None
    env, nbytes = got
    assert d.accept(env, nbytes, T0, 0) == "samples"
    if hasattr(env.tensors, "packed"):  # lazy tensors: nothing was unpacked
        assert env.tensors.packed == ("x",)
    assert d.rejected[0] == 1


def test_a_resync_gives_up_the_rounds_lost_while_the_connection_was_down():
    """Sync: peer 0's rounds 1 and 2 were sent while its connection to us was cut; its
    resync marker (newest round sent in full: 2) makes the barrier give them up, once
    what we did take of them is released (here nothing), and counts the cut."""
    d = _delivery(in_peers=(0,))
    assert _arrive(d, _env(sender=0, step=0), T0) is None
    d.release(0, T0)
    assert d.missing(1, [0]) == [0]  # round 1 never came
    d.resync(0, newest=2)
    assert d.missing(1, [0]) == [] and d.missing(2, [0]) == []
    assert d.missing(3, [0]) == [0]  # later rounds are waited for as before
    assert d.rejected[0] == 1 and d.cuts[0] == 1
    assert _arrive(d, _env(sender=0, step=2), T0) == "replayed"  # j sends none of them again
    assert _arrive(d, _env(sender=0, step=3), T0, step=3) is None


def test_a_resync_gives_up_a_lost_round_below_one_that_came_on_the_new_connection():
    """Sync: round 1 was lost while the connection was cut; on the new connection round 2
    came before the marker (newest 2).  Round 2 waits on its link until step 2, but the
    barrier of step 1 must not wait for it: round 1 is given up at the marker (before,
    the barrier waited for round 1 until it timed out, seen under load)."""
    d = _delivery(in_peers=(0,))
    assert _arrive(d, _env(sender=0, step=0), T0) is None
    d.release(0, T0)
    assert _arrive(d, _env(sender=0, step=2), T0, step=1) is None
    d.resync(0, newest=2)
    d.release(1, T0)
    assert d.missing(1, [0]) == []
    assert d.missing(2, [0]) == [0]  # round 2 is complete once it is released, not before
    d.release(2, T0)
    assert d.missing(2, [0]) == [] and d.missing(3, [0]) == [0]
    assert d.inbox.use(0, "x", 2).step == 2  # and it was delivered, not dropped


def test_a_resync_waits_for_what_is_still_on_the_link():
    """A round whose message we took but the link still holds (latency) completes when
    that message is released, not at the marker: it was not lost."""
    d = _delivery(LinkSpec(latency_ms=100.0), in_peers=(0,))
    assert _arrive(d, _env(sender=0, step=0), T0) is None
    d.resync(0, newest=0, cut=False)
    assert d.missing(0, [0]) == [0] and d.rejected[0] == 0
    d.release(0, T0 + 0.2)
    assert d.missing(0, [0]) == []


def test_needed_round_starts_at_publish_from_and_once_is_one_round():
    """Rounds from ``publish_from`` (steps before it need none: peers learn alone), and
    with ``publish_every = 0`` a single round at ``publish_from``."""
    from p2pgame.config import is_round

    d = Delivery(ME, {0: Link(0, ME, LinkSpec(), 0)}, {0: ["x"]}, True, 3, publish_from=4)
    assert [d.needed_round(0, s) for s in range(10)] == [-1] * 4 + [4, 4, 4, 7, 7, 7]
    assert [s for s in range(10) if is_round(s, 3, 4)] == [4, 7]
    once = Delivery(ME, {0: Link(0, ME, LinkSpec(), 0)}, {0: ["x"]}, True, 0, publish_from=2)
    assert [once.needed_round(0, s) for s in range(6)] == [-1, -1, 2, 2, 2, 2]
    assert [s for s in range(10) if is_round(s, 0, 2)] == [2]
