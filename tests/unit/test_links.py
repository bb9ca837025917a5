"""Link emulation without sockets: step delays, drops, latency/jitter, bandwidth, FIFO."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pgame.bus.codec import Envelope
from p2pgame.bus.links import Link, Pending, TokenBucket
from p2pgame.bus.topics import Topic
from p2pgame.config import CommSpec, EdgeLinkSpec, LinkSpec
from p2pgame.scenario import resolve


def _env(step: int, sender: int = 1) -> Envelope:
    return Envelope(sender=sender, topic=f"samples/{sender}/x", step=step, tensors={})


def _flush(link: Link) -> dict[int, Pending]:
    """Everything the link still holds, released: by the sender step of its message."""
    out, _ = link.due(10**12, math.inf)
    return {p.env.step: p for p in out}


def _through(link: Link, arrivals, sync: bool = True) -> list[Pending | None]:
    """Offer ``(sender step, nbytes, now, recv_step)`` arrivals, then release everything:
    per arrival, its released Pending, or None when the link dropped it."""
    for s, n, t, r in arrivals:
        link.offer(_env(s), n, t, recv_step=r, sync=sync)
    released = _flush(link)  # placeholders of dropped messages included, in their turn
    return [None if released[s].lost else released[s] for s, *_ in arrivals]


def _admit_many(link: Link, k: int, now: float = 0.0, nbytes: int = 100, sync: bool = True,
                spacing: float = 0.0):
    return _through(link, [(s, nbytes, now + s * spacing, s) for s in range(k)], sync)


def _admit_one(link: Link, step: int, nbytes: int, now: float, recv_step: int, sync: bool):
    return _through(link, [(step, nbytes, now, recv_step)], sync)[0]


# --------------------------------------------------------------------------- ideal & delay


def test_ideal_link_passes_everything_at_once():
    link = Link(1, 0, LinkSpec(), seed=0)
    out = _admit_many(link, 50, now=10.0)
    assert all(p is not None for p in out)
    assert [p.release_step for p in out] == list(range(50))
    assert all(p.release_time == 10.0 for p in out)
    assert link.admitted == 50 and link.dropped == 0 and link.bucket is None
    assert out[7].env.step == 7 and out[7].nbytes == 100
    assert out[7].env.topic == Topic("samples", 1, "x")  # the envelope passes untouched


@pytest.mark.parametrize("d", [0, 1, 5])
def test_sync_delay_counts_from_sender_step(d):
    link = Link(1, 0, LinkSpec(delay_steps=d), seed=0)
    # The receiver's step at arrival does not matter in sync mode.
    for sender_step, recv_step in [(0, 0), (3, 0), (7, 20), (9, 9)]:
        p = _admit_one(link, sender_step, 10, now=0.0, recv_step=recv_step, sync=True)
        assert p.release_step == sender_step + d


@pytest.mark.parametrize("d", [0, 2, 5])
def test_async_delay_counts_from_receiver_step(d):
    link = Link(1, 0, LinkSpec(delay_steps=d), seed=0)
    for sender_step, recv_step in [(0, 0), (3, 1), (2, 20)]:
        p = _admit_one(link, sender_step, 10, now=0.0, recv_step=recv_step, sync=False)
        assert p.release_step == recv_step + d


# --------------------------------------------------------------------------- drops


def _drop_pattern(p: float, seed: int, src: int = 1, dst: int = 0, k: int = 4000):
    link = Link(src, dst, LinkSpec(drop=p), seed=seed)
    out = _admit_many(link, k)
    return np.array([x is None for x in out]), link


@pytest.mark.parametrize("p", [0.1, 0.3, 0.7])
def test_drop_rate(p):
    k = 4000
    dropped, link = _drop_pattern(p, seed=42, k=k)
    sigma = (p * (1 - p) / k) ** 0.5
    assert abs(dropped.mean() - p) < 5 * sigma
    assert link.dropped == dropped.sum() and link.admitted == k - dropped.sum()


def test_drop_reproducible_and_per_edge():
    a, _ = _drop_pattern(0.3, seed=7)
    b, _ = _drop_pattern(0.3, seed=7)
    assert (a == b).all()
    c, _ = _drop_pattern(0.3, seed=8)
    d, _ = _drop_pattern(0.3, seed=7, src=2)
    e, _ = _drop_pattern(0.3, seed=7, src=0, dst=1)  # the reverse edge has its own stream
    for other in (c, d, e):
        assert (a != other).any()


def test_no_drop_draws_when_drop_is_zero():
    dropped, link = _drop_pattern(0.0, seed=1, k=1000)
    assert not dropped.any() and link.admitted == 1000


def test_changing_drop_does_not_shift_jitter_draws():
    """Each fault has its own stream: the i-th admitted message gets the i-th jitter draw."""
    base = Link(1, 0, LinkSpec(jitter_ms=100.0), seed=3)
    lossy = Link(1, 0, LinkSpec(jitter_ms=100.0, drop=0.4), seed=3)
    t_base = [p.release_time - s for s, p in enumerate(_admit_many(base, 200, spacing=1.0))]
    t_lossy = [p.release_time - s for s, p in enumerate(_admit_many(lossy, 200, spacing=1.0))
               if p is not None]
    assert 0 < len(t_lossy) < 200
    np.testing.assert_allclose(t_lossy, t_base[: len(t_lossy)])


# --------------------------------------------------------------------------- time


def test_latency_and_jitter():
    spec = LinkSpec(latency_ms=50.0, jitter_ms=20.0)
    link = Link(1, 0, spec, seed=9)
    # Arrivals 1 s apart: FIFO never binds, so each delay is latency + U[0, jitter).
    out = _admit_many(link, 300, now=100.0, spacing=1.0)
    delays = np.array([p.release_time - (100.0 + s) for s, p in enumerate(out)])
    assert (delays >= 0.050 - 1e-12).all() and (delays < 0.070).all()
    assert delays.std() > 0.003  # jitter really varies
    assert abs(delays.mean() - 0.060) < 0.002
    again = _admit_many(Link(1, 0, spec, seed=9), 300, now=100.0, spacing=1.0)
    assert [p.release_time for p in out] == [p.release_time for p in again]


def test_latency_only_is_constant():
    link = Link(1, 0, LinkSpec(latency_ms=25.0), seed=0)
    out = _admit_many(link, 10, now=5.0, spacing=0.5)
    for s, p in enumerate(out):
        assert p.release_time == pytest.approx(5.0 + 0.5 * s + 0.025)


def test_fifo_with_jitter_and_simultaneous_arrivals():
    link = Link(1, 0, LinkSpec(jitter_ms=200.0, delay_steps=1), seed=2)
    # Arrivals 1 ms apart with up to 200 ms jitter would overtake each other without FIFO.
    out = _admit_many(link, 200, now=0.0, spacing=0.001, sync=False)
    times = [p.release_time for p in out]
    steps = [p.release_step for p in out]
    assert times == sorted(times)
    assert steps == sorted(steps)
    assert [p.env.step for p in out] == list(range(200))
    # Each release is at least its own arrival + jitter draw (never earlier than asked).
    assert all(t >= s * 0.001 for s, t in enumerate(times))


# --------------------------------------------------------------------------- bandwidth


def test_token_bucket_spacing_is_bytes_over_bandwidth():
    rate = 1000.0  # bytes/s
    link = Link(1, 0, LinkSpec(bandwidth=rate), seed=0)
    out = _admit_many(link, 10, now=0.0, nbytes=100)  # all arrive at t = 0
    times = np.array([p.release_time for p in out])
    np.testing.assert_allclose(times, 0.1 * np.arange(10))  # first at once, then 100 B / 1 kB/s
    np.testing.assert_allclose(np.diff(times), 100 / rate)


def test_token_bucket_variable_sizes():
    b = TokenBucket(rate=1000.0, burst=0.0)
    assert b.release_time(100, 0.0) == pytest.approx(0.0)
    assert b.release_time(300, 0.0) == pytest.approx(0.3)  # 300 B after the first left
    assert b.release_time(50, 0.0) == pytest.approx(0.35)
    # After a long idle period the bucket is full again (capped at one message).
    assert b.release_time(200, 10.0) == pytest.approx(10.0)
    assert b.release_time(200, 10.0) == pytest.approx(10.2)


def test_token_bucket_slow_arrivals_are_not_delayed():
    b = TokenBucket(rate=1000.0, burst=0.0)
    for k in range(10):
        t = 0.5 * k  # 100 B every 0.5 s is well under 1 kB/s
        assert b.release_time(100, t) == pytest.approx(t)


def test_token_bucket_burst():
    link = Link(1, 0, LinkSpec(bandwidth=1000.0, burst=500.0), seed=0)
    out = _admit_many(link, 10, now=0.0, nbytes=100)
    times = np.array([p.release_time for p in out])
    np.testing.assert_allclose(times[:5], 0.0)  # the burst leaves at once
    np.testing.assert_allclose(times[5:], 0.1 * np.arange(1, 6))


def test_long_run_rate_respects_cap():
    rate = 5000.0
    link = Link(1, 0, LinkSpec(bandwidth=rate, latency_ms=2.0, jitter_ms=1.0), seed=4)
    rng = np.random.default_rng(0)
    sizes = rng.integers(50, 500, 400)
    t_arr = np.cumsum(rng.exponential(0.01, 400))  # offered ~27 kB/s, 5x the cap
    out = _through(link, [(s, int(n), float(t), s)
                          for s, (n, t) in enumerate(zip(sizes, t_arr, strict=True))])
    kept = [(p.release_time, p.nbytes) for p in out if p is not None]
    times = [t for t, _ in kept]
    assert times == sorted(times)
    assert link.dropped_buffer > 0  # 5x the cap into a one-second buffer: it overflows
    # Bytes released after the first message can never beat the cap (the latency's random
    # part, at most 1 ms, is the only slack).
    elapsed = times[-1] - times[0] + 0.001
    sent = sum(n for _, n in kept[1:])
    assert sent / elapsed <= rate * (1 + 1e-9)
    assert sent / elapsed > 0.95 * rate  # saturated: close to the cap


def test_dropped_messages_use_no_bandwidth():
    link = Link(1, 0, LinkSpec(bandwidth=1000.0, drop=0.5), seed=5)
    out = [p for p in _admit_many(link, 40, now=0.0, nbytes=100) if p is not None]
    times = np.array([p.release_time for p in out])
    np.testing.assert_allclose(times, 0.1 * np.arange(len(out)))


# --------------------------------------------------------------------------- per-edge links


def test_link_of_gives_the_edge_override_else_the_default():
    default = LinkSpec(latency_ms=5.0)
    slow = LinkSpec(delay_steps=2, bandwidth=100.0)
    comm = CommSpec(link=default, edges=(EdgeLinkSpec(1, 0, slow),))
    assert comm.link_of(1, 0) == slow
    assert comm.link_of(0, 1) == default  # the override is for one direction only
    assert comm.link_of(2, 0) == default
    assert CommSpec().link_of(0, 1).is_ideal


def test_resolved_edge_override_drives_only_its_link(tiny_raw):
    """Flat [comm] keys are the default link; an edges entry overrides one directed edge."""
    tiny_raw["comm"].update(latency_ms=10.0,
                            edges=[{"src": 1, "dst": 0, "drop": 0.5, "delay_steps": 3}])
    sc = resolve(tiny_raw, "x.toml")
    assert sc.comm.link == LinkSpec(latency_ms=10.0)
    over = sc.comm.link_of(1, 0)
    assert over == LinkSpec(latency_ms=10.0, drop=0.5, delay_steps=3)  # default keys inherited
    lossy = Link(1, 0, over, seed=sc.seed)
    plain = Link(0, 1, sc.comm.link_of(0, 1), seed=sc.seed)  # the reverse edge: default
    got = _admit_many(lossy, 200)
    kept = [p for p in got if p is not None]
    assert 0 < len(kept) < 200 and lossy.dropped == 200 - len(kept)
    assert all(p.release_step == p.env.step + 3 for p in kept)
    assert all(p.release_time == pytest.approx(0.010) for p in kept)
    out = _admit_many(plain, 50)
    assert all(p is not None and p.release_step == p.env.step for p in out)
    assert all(p.release_time == pytest.approx(0.010) for p in out)
    assert plain.dropped == 0


# --------------------------------------------------------------------------- finite buffers


def _burst_at_zero(spec: LinkSpec, k: int = 10, nbytes: int = 100):
    """k messages of nbytes all arriving at t = 0 on a fresh link."""
    link = Link(1, 0, spec, seed=0)
    return _admit_many(link, k, nbytes=nbytes), link


def test_tail_drop_keeps_the_head_and_what_fits_behind_it():
    # 1 kB/s, 100 B messages.  The first leaves at once (the bucket starts full), the
    # second is on the wire until 0.1 s, and 300 B (three messages) may wait behind it.
    out, link = _burst_at_zero(LinkSpec(bandwidth=1000.0, buffer_bytes=300.0))
    assert [p is not None for p in out] == [True] * 5 + [False] * 5
    np.testing.assert_allclose([p.release_time for p in out[:5]], [0.0, 0.1, 0.2, 0.3, 0.4])
    assert link.dropped_buffer == 5 and link.dropped_loss == 0 and link.delivered == 5


def test_drop_oldest_keeps_the_freshest():
    out, link = _burst_at_zero(LinkSpec(bandwidth=1000.0, buffer_bytes=300.0,
                                        buffer_policy="oldest"))
    # Two had left or were on the wire; the three freshest pushed out everything older.
    assert [p is not None for p in out] == [True] * 2 + [False] * 5 + [True] * 3
    np.testing.assert_allclose([p.release_time for p in out if p is not None],
                               [0.0, 0.1, 0.2, 0.3, 0.4])
    assert link.dropped_buffer == 5


def test_buffer_messages_limits_the_count():
    out, link = _burst_at_zero(LinkSpec(bandwidth=1000.0, buffer_bytes=1e9, buffer_messages=2))
    assert sum(p is not None for p in out) == 4 and link.dropped_buffer == 6


def test_default_buffer_is_one_second_of_the_cap():
    assert LinkSpec(bandwidth=1000.0).buffer_limit_bytes == 1000.0
    assert LinkSpec(bandwidth=1000.0, buffer_bytes=50.0).buffer_limit_bytes == 50.0
    assert LinkSpec().buffer_limit_bytes == math.inf  # no cap: nothing ever waits
    out, _ = _burst_at_zero(LinkSpec(bandwidth=1000.0), k=30)
    assert sum(p is not None for p in out) == 12  # gone, on the wire, 1000 B waiting


def test_a_message_larger_than_the_buffer_passes_an_empty_queue():
    out, _ = _burst_at_zero(LinkSpec(bandwidth=1000.0, buffer_bytes=10.0), k=4, nbytes=500)
    # Gone at once, on the wire, one waiting (an empty wait always admits one), dropped.
    assert [p is not None for p in out] == [True, True, True, False]


def test_a_saturated_link_drops_instead_of_ageing():
    """Offered 5x the cap for 60 s: what gets through is the cap, and no message waits
    longer than the buffer allows (buffer / rate, plus the one on the wire)."""
    rate, size, buffer = 10_000.0, 1000, 4000.0
    link = Link(1, 0, LinkSpec(bandwidth=rate, buffer_bytes=buffer), seed=0)
    arrivals = [(s, size, s * 0.02, s) for s in range(3000)]  # 50 kB/s offered
    out = _through(link, arrivals)
    kept = [(t, p) for (_, _, t, _), p in zip(arrivals, out, strict=True) if p is not None]
    waits = np.array([p.release_time - t for t, p in kept])
    assert waits.max() <= buffer / rate + size / rate + 1e-9
    horizon = arrivals[-1][2]
    delivered = sum(p.nbytes for t, p in kept if p.release_time <= horizon)
    assert abs(delivered / (rate * horizon) - 1) < 0.02
    assert link.dropped_buffer == 3000 - len(kept) > 2000


# --------------------------------------------------------------------------- latency laws


@pytest.mark.parametrize("dist", ["exponential", "lognormal"])
def test_latency_distributions(dist):
    spec = LinkSpec(latency_ms=10.0, jitter_ms=40.0, jitter_dist=dist, jitter_sigma=0.5)
    link = Link(1, 0, spec, seed=5)
    out = _admit_many(link, 4000, spacing=10.0)  # far apart: FIFO never binds
    extra = np.array([p.release_time - 10.0 * s for s, p in enumerate(out)]) * 1000 - 10.0
    assert (extra >= 0).all()
    if dist == "exponential":
        assert abs(extra.mean() - 40.0) < 3.0  # mean jitter_ms
        assert extra.std() > 30.0  # exponential: std = mean
    else:
        assert abs(np.median(extra) - 40.0) < 2.0  # median jitter_ms
        assert abs(np.log(extra).std() - 0.5) < 0.03  # shape jitter_sigma
    again = _admit_many(Link(1, 0, spec, seed=5), 4000, spacing=10.0)
    assert [p.release_time for p in out] == [p.release_time for p in again]


def test_reorder_lets_messages_overtake_and_fifo_does_not():
    spec = LinkSpec(jitter_ms=50.0, jitter_dist="exponential")
    fifo = _admit_many(Link(1, 0, spec, seed=1), 300, spacing=0.005)
    assert [p.release_time for p in fifo] == sorted(p.release_time for p in fifo)
    link = Link(1, 0, LinkSpec(jitter_ms=50.0, jitter_dist="exponential", reorder=True), seed=1)
    for s in range(300):
        link.offer(_env(s), 10, s * 0.005, recv_step=s, sync=True)
    order = [p.env.step for p in link.due(10**9, math.inf)[0]]
    assert sorted(order) == list(range(300)) and order != list(range(300))
    assert link.pending == [] and link.held == 0  # everything was released


def test_reorder_releases_only_what_is_due():
    link = Link(1, 0, LinkSpec(latency_ms=100.0, jitter_ms=100.0, reorder=True), seed=2)
    for s in range(20):
        link.offer(_env(s), 10, 0.0, recv_step=s, sync=True)
    early, t_next = link.due(10**9, 0.15)
    assert all(p.release_time <= 0.15 for p in early)
    assert t_next is not None and t_next > 0.15 and link.held == 20 - len(early)


# --------------------------------------------------------------------------- the accounts

_SPECS = st.builds(
    LinkSpec,
    delay_steps=st.integers(0, 3),
    latency_ms=st.sampled_from([0.0, 5.0]),
    jitter_ms=st.sampled_from([0.0, 20.0]),
    drop=st.sampled_from([0.0, 0.3]),
    bandwidth=st.sampled_from([0.0, 2000.0]),
    buffer_bytes=st.sampled_from([0.0, 150.0]),
    buffer_messages=st.integers(0, 3),
    buffer_policy=st.sampled_from(["tail", "oldest"]),
    jitter_dist=st.sampled_from(["uniform", "exponential", "lognormal"]),
    reorder=st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(spec=_SPECS, sync=st.booleans(), seed=st.integers(0, 2**16),
       events=st.lists(st.tuples(st.integers(10, 300), st.floats(0.0, 0.2),
                                 st.booleans()), min_size=1, max_size=60))
def test_every_message_is_in_exactly_one_account(spec, sync, seed, events):
    """``arrived = delivered + dropped_loss + dropped_buffer + held`` at every moment,
    released placeholders and messages are exactly the arrivals, and nothing is lost
    at the end (with every fault on, in sync and async mode)."""
    link = Link(1, 0, spec, seed)
    now, step, seen = 0.0, 0, []
    for k, (nbytes, gap, release) in enumerate(events):
        now += gap
        link.offer(_env(k), nbytes, now, recv_step=step, sync=sync)
        if release:
            step += 1
            out, t_next = link.due(step, now)
            seen += out
            assert t_next is None or t_next > now or link.pending[0].release_step > step
        c = link.counts()
        assert c["arrived"] == (c["delivered"] + c["dropped_loss"] + c["dropped_buffer"]
                                + c["held"])
    out, _ = link.due(10**9, math.inf)
    seen += out
    c = link.counts()
    assert c["held"] == 0 and c["arrived"] == len(events) == len(seen)
    assert sorted(p.env.step for p in seen) == list(range(len(events)))
    assert sum(not p.lost for p in seen) == c["delivered"]
    assert sum(p.nbytes for p in seen) == c["delivered_bytes"]
    assert sum(p.fate == "buffer" for p in seen) == c["dropped_buffer"]
