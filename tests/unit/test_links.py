"""Link emulation without sockets: step delays, drops, latency/jitter, bandwidth, FIFO."""

from __future__ import annotations

import numpy as np
import pytest

from p2pgame.bus.codec import Envelope
from p2pgame.bus.links import Link, TokenBucket
from p2pgame.bus.topics import Topic
from p2pgame.config import CommSpec, EdgeLinkSpec, LinkSpec
from p2pgame.scenario import resolve


def _env(step: int, sender: int = 1) -> Envelope:
    return Envelope(sender=sender, topic=f"samples/{sender}/x", step=step, tensors={})


def _admit_many(link: Link, k: int, now: float = 0.0, nbytes: int = 100, sync: bool = True,
                spacing: float = 0.0):
    return [link.admit(_env(s), nbytes, now + s * spacing, recv_step=s, sync=sync)
            for s in range(k)]


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
        p = link.admit(_env(sender_step), 10, now=0.0, recv_step=recv_step, sync=True)
        assert p.release_step == sender_step + d


@pytest.mark.parametrize("d", [0, 2, 5])
def test_async_delay_counts_from_receiver_step(d):
    link = Link(1, 0, LinkSpec(delay_steps=d), seed=0)
    for sender_step, recv_step in [(0, 0), (3, 1), (2, 20)]:
        p = link.admit(_env(sender_step), 10, now=0.0, recv_step=recv_step, sync=False)
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
    t_base = [base.admit(_env(s), 10, now=float(s), recv_step=s, sync=True).release_time - s
              for s in range(200)]
    t_lossy = []
    for s in range(200):
        p = lossy.admit(_env(s), 10, now=float(s), recv_step=s, sync=True)
        if p is not None:
            t_lossy.append(p.release_time - s)
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
    times = [link.admit(_env(s), int(n), float(t), recv_step=s, sync=True).release_time
             for s, (n, t) in enumerate(zip(sizes, t_arr, strict=True))]
    assert times == sorted(times)
    # Bytes released after the first message can never beat the cap.
    elapsed = times[-1] - times[0]
    assert sizes[1:].sum() / elapsed <= rate * (1 + 1e-9)
    assert sizes[1:].sum() / elapsed > 0.95 * rate  # saturated: close to the cap


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
    got = [lossy.admit(_env(s), 10, now=0.0, recv_step=s, sync=True) for s in range(200)]
    kept = [p for p in got if p is not None]
    assert 0 < len(kept) < 200 and lossy.dropped == 200 - len(kept)
    assert all(p.release_step == p.env.step + 3 for p in kept)
    assert all(p.release_time == pytest.approx(0.010) for p in kept)
    out = [plain.admit(_env(s, sender=0), 10, now=0.0, recv_step=s, sync=True)
           for s in range(50)]
    assert all(p is not None and p.release_step == p.env.step for p in out)
    assert all(p.release_time == pytest.approx(0.010) for p in out)
    assert plain.dropped == 0
