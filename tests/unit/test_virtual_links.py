"""The virtual clock's pure parts: a link that decides each message's fate when it is
offered (the token bucket's closed form, the same fates whatever the order of releases),
the promises a receiver waits for, and the scenario checks (lookahead, what this clock
does not run yet)."""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pgame.bus.codec import Envelope
from p2pgame.bus.links import Link, VirtualLink
from p2pgame.bus.traffic import Traffic
from p2pgame.config import LinkSpec, ScenarioError
from p2pgame.peer.delivery import Delivery
from p2pgame.peer.receiving import PeerFailure, Receiver
from p2pgame.scenario import resolve


def _env(step: int, t: float, sender: int = 1) -> Envelope:
    return Envelope(sender=sender, topic=f"samples/{sender}/x", step=step, tensors={}, time=t)


def test_a_capped_link_gives_the_closed_form_token_bucket_schedule():
    """Burst = one message: message k leaves at d_k = max(s_k, d_{k-1} + n_k / R), so
    d_k = max over j <= k of (s_j + the bytes of messages j+1..k over R); it arrives
    latency later."""
    rate, latency = 1000.0, 0.004
    sends = [0.0, 0.1, 0.15, 0.2, 0.9, 0.95, 0.951, 2.0]
    sizes = [200, 300, 50, 400, 100, 100, 700, 10]
    link = VirtualLink(1, 0, LinkSpec(bandwidth=rate, latency_ms=latency * 1000,
                                      buffer_bytes=1e9), seed=0)
    for k, (s, n) in enumerate(zip(sends, sizes, strict=True)):
        assert link.offer(_env(k, s), n, s, 0, False) == "delivered"
    closed = [max(sends[j] + sum(sizes[j + 1:k + 1]) / rate for j in range(k + 1))
              for k in range(len(sends))]
    got = [p.release_time for p in link.flight]
    assert got == pytest.approx([d + latency for d in closed], abs=1e-12)


def test_a_full_buffer_drops_at_the_tail_by_the_queue_at_the_send_time():
    """Ten messages at once onto a link whose buffer holds two behind the one on the wire:
    three go through, seven are dropped, whenever the receiver looks."""
    link = VirtualLink(1, 0, LinkSpec(bandwidth=100.0, buffer_messages=2), seed=0)
    fates = [link.offer(_env(k, 0.0), 100, 0.0, 0, False) for k in range(10)]
    assert fates == ["delivered"] * 3 + ["buffer"] * 7
    # One second later the first has left and the second is on the wire: room for one.
    assert link.offer(_env(10, 1.0), 100, 1.0, 0, False) == "delivered"
    assert link.offer(_env(11, 1.0), 100, 1.0, 0, False) == "buffer"


SPECS = st.builds(LinkSpec, drop=st.sampled_from([0.0, 0.3]),
                  latency_ms=st.sampled_from([1.0, 20.0]),
                  jitter_ms=st.sampled_from([0.0, 15.0]),
                  bandwidth=st.sampled_from([0.0, 5000.0]),
                  buffer_messages=st.sampled_from([0, 3]),
                  reorder=st.booleans(), delay_steps=st.sampled_from([0, 2]))


@settings(max_examples=60, deadline=None)
@given(spec=SPECS, looks=st.lists(st.floats(0.0, 1.0), min_size=0, max_size=30))
def test_the_fates_do_not_depend_on_when_the_receiver_releases(spec, looks):
    """One link releases at the end only; the other also at arbitrary moments between
    offers (as a host's scheduling would have it), never earlier than the conservative
    rule allows (before the next send time plus the least latency).  Every message gets
    the same fate and arrival time on both."""
    sends = [0.01 * k for k in range(60)]
    steps = [0.02 * s for s in range(80)]  # the receiver's step start times
    a = VirtualLink(1, 0, spec, seed=3)
    b = VirtualLink(1, 0, spec, seed=3)
    got_b = []
    looks = sorted(looks)
    for k, s in enumerate(sends):
        for lk in [x for x in looks if x < s + spec.latency_ms / 1000.0]:
            step = max([i for i, t in enumerate(steps) if t <= lk], default=0)
            got_b += b.due_virtual(step, steps[step], lambda t: _first(steps, t))
            looks.remove(lk)
        a.offer(_env(k, s), 400, s, 0, False)
        b.offer(_env(k, s), 400, s, 0, False)
    last = len(steps) - 1
    got_a = a.due_virtual(last, steps[last], lambda t: _first(steps, t))
    got_b += b.due_virtual(last, steps[last], lambda t: _first(steps, t))
    key = [(p.env.step, p.fate, p.release_time) for p in got_a]
    assert sorted(key) == sorted((p.env.step, p.fate, p.release_time) for p in got_b)
    assert a.counts() == b.counts()


def _first(times: list[float], t: float) -> int:
    return next((i for i, x in enumerate(times) if x >= t), len(times) - 1)


def test_the_same_streams_as_the_real_clocks_link():
    """Without a cap, the virtual link draws loss and latency from the real link's
    seeded streams, message by message: the same fates and the same delays."""
    spec = LinkSpec(drop=0.3, latency_ms=5.0, jitter_ms=10.0, jitter_dist="exponential")
    real, virtual = Link(2, 5, spec, seed=11), VirtualLink(2, 5, spec, seed=11)
    for k in range(200):
        t = 0.01 * k
        assert real.offer(_env(k, t, 2), 100, t, 0, False) == virtual.offer(
            _env(k, t, 2), 100, t, 0, False)
    assert [p.release_time for p in real.flight] == [p.release_time for p in virtual.flight]


def _delivery(latency_ms: float = 5.0) -> Delivery:
    links = {j: VirtualLink(j, 0, LinkSpec(latency_ms=latency_ms), seed=0) for j in (1, 2)}
    return Delivery(0, links, {1: ["x"], 2: ["x"]}, sync=False)


def test_a_step_waits_for_every_in_neighbours_promise_and_takes_what_arrived_by_then():
    d = _delivery(latency_ms=5.0)
    assert d.virtual and d.blocking(0.0) == [1, 2]
    assert d.accept(_env(0, 0.0, 1), 100, 123.0, 0) is None  # (the host's now: unused)
    assert d.promise(1, 0.01) is None
    assert d.blocking(0.0) == [2]
    assert d.promise(2, 0.0) is None  # 0 + 5 ms of least latency: past t = 0
    assert d.blocking(0.0) == []
    assert d.blocking(0.005) == [2]  # at 5 ms peer 2 could still be heard from
    d.release_virtual(0, 0.0)
    assert not d.inbox.latest  # peer 1's message arrives at 5 ms
    assert d.promise(2, 0.01) is None
    d.release_virtual(1, 0.005)  # arrives exactly then: taken
    assert list(d.inbox.latest) == [(1, "x")]


def test_a_promise_or_a_send_time_that_goes_back_is_refused():
    d = _delivery()
    assert d.promise(1, 0.5) is None
    assert d.promise(1, 0.4) == "clock"
    assert d.accept(_env(0, 0.3, 1), 100, 0.0, 0) == "clock"
    assert d.promise(1, math.nan) == "clock"
    assert d.promise(7, 1.0) == "sender"
    assert d.rejected[1] == 3
    assert d.accept(_env(0, 0.5, 1), 100, 0.0, 0) is None and d.promised[1] == 0.5


def _scenario(**comm) -> dict:
    raw = {"name": "v", "steps": 10, "topology": {"n": 3, "graph": "ring"},
           "exchange": {"kind": "samples"},
           "learner": {"kind": "expfam-bernoulli", "dim": 4, "n_data": 50, "batch": 10},
           "comm": {"mode": "async", **comm}, "runtime": {"clock": "virtual"}}
    return raw


def test_the_virtual_clock_runs_async_with_lookahead_and_refuses_the_rest():
    assert resolve(_scenario()).runtime.clock == "virtual"
    with pytest.raises(ScenarioError, match=r'needs comm.mode = "async"'):
        resolve(_scenario(mode="sync"))
    raw = _scenario()
    raw["runtime"]["compute_s"] = 0.0
    with pytest.raises(ScenarioError, match=r"edge 0 -> 1 has no lookahead.*runtime\.compute_s"
                                            r" > 0 .*, or a latency_ms > 0"):
        resolve(raw)
    raw["comm"]["latency_ms"] = 1.0  # lookahead from the links instead
    assert resolve(raw).runtime.compute_s == 0.0
    with pytest.raises(ScenarioError, match=r'edge 0 -> 1: buffer_policy = "oldest"'):
        resolve(_scenario(bandwidth=1000.0, buffer_policy="oldest"))
    raw = _scenario()
    raw["runtime"]["clock"] = "wall"
    with pytest.raises(ScenarioError, match=r"clock.*allowed: real, virtual"):
        resolve(raw)


def test_a_target_is_met_at_the_first_line_that_meets_it_namespace_optional(tmp_path):
    from p2pgame.config import parse_target
    from p2pgame.launch.rundir import RunFolder
    from p2pgame.launch.sinks import JsonlSink, TargetSink

    assert parse_target(" eval/fid_all < 40 ") == ("eval/fid_all", "<", 40.0)
    for bad in ("ne_max_abs=0.02", "<=0.02", "ne_max_abs<=", "ne_max_abs<=nan", "a b<=1"):
        with pytest.raises(ScenarioError, match="expected KEY<=X"):
            parse_target(bad)
    sink = TargetSink("ne_max_abs<=0.1")
    sink.open(0)
    sink.write(0, [{"step": 0, "t": 0.1, "eval/ne_max_abs": 0.5},
                   {"step": 10, "t": 0.2, "train/lr": 0.1}])
    assert sink.reached == {} and sink.seen == {0}
    sink.write(0, [{"step": 20, "t": 0.3, "eval/ne_max_abs": 0.1, "time/virtual_s": 0.21},
                   {"step": 30, "t": 0.4, "eval/ne_max_abs": 0.01}])
    assert sink.reached == {0: {"step": 20, "t": 0.3, "virtual_s": 0.21}}
    sink.write(1, [{"step": 0, "t": 0.1, "ne_max_abs_x": 0.0}])  # another key
    assert 1 not in sink.reached and sink.seen == {0}
    # --resume: the lines already in the metrics file count first.
    first = JsonlSink(RunFolder(tmp_path))
    first.write(2, [{"step": 5, "t": 1.0, "eval/ne_max_abs": 0.05}])
    first.close()
    resumed = TargetSink("ne_max_abs<0.06", RunFolder(tmp_path, append=True))
    resumed.open(2)
    resumed.write(2, [{"step": 6, "t": 0.1, "eval/ne_max_abs": 0.01}])
    assert resumed.reached == {2: {"step": 5, "t": 1.0}}


def test_the_inbox_ages_uses_in_virtual_seconds():
    d = _delivery(latency_ms=5.0)
    d.accept(_env(0, 0.0, 1), 100, 0.0, 0)
    d.promise(1, 0.02)
    d.promise(2, 0.02)
    d.release_virtual(0, 0.01)
    assert d.inbox.use(1, "x", 0).time == 0.0
    d.release_virtual(1, 0.02)
    d.inbox.use(1, "x", 1)
    (e1, e2) = d.edge_accounts()
    assert e1["staleness_mean_s"] == pytest.approx(0.015) and e2["staleness_mean_s"] == 0.0


ONE_PER_MS = "".join(f"{t}\n" for t in range(1, 1001))  # 1500 bytes a millisecond


@pytest.mark.parametrize("link_class", [Link, VirtualLink])
def test_a_trace_of_one_line_per_millisecond_carries_12_mbit_per_second(link_class):
    from p2pgame.config import parse_mahimahi

    spec = LinkSpec(trace="t.txt", trace_ms=parse_mahimahi(ONE_PER_MS, "t.txt"),
                    buffer_bytes=1e9)
    assert spec.rate * 8 == pytest.approx(12e6)
    link = link_class(1, 0, spec, seed=0)
    n, size = 2500, 6000  # 15 MB at once: 2.5 periods of the trace (it wraps around)
    for k in range(n):
        link.offer(_env(k, 0.0), size, 0.0, 0, False)
    out, _ = (link.due(0, 1e9) if link_class is Link else
              (link.due_virtual(0, 1e9, lambda t: 0), None))
    assert len(out) == n
    last = max(p.release_time for p in out)
    assert n * size * 8 / last == pytest.approx(12e6, rel=0.01)
    assert last == pytest.approx(10.0)  # the 10 000th opportunity: 10 s


def test_a_trace_bucket_waits_for_the_next_opportunity_and_wraps_around():
    from p2pgame.bus.links import TraceBucket

    b = TraceBucket((5, 5, 20))  # two opportunities at 5 ms, one at 20 ms; period 20 ms
    assert b.release_time(1500, 0.0) == pytest.approx(0.005)
    assert b.release_time(3000, 0.0) == pytest.approx(0.020)  # the second at 5, then 20
    assert b.release_time(100, 0.021) == pytest.approx(0.025)  # next period: 20 + 5
    assert b.peek(1500, 0.030) == pytest.approx(0.040)  # 20 + 20; peek changes nothing
    assert b.release_time(1500, 0.030) == pytest.approx(0.040)


def test_a_trace_file_is_read_relative_to_the_scenario_and_refused_when_bad(tmp_path):
    from p2pgame.config import parse_mahimahi

    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "ok.txt").write_text("1\n1\n3\n")
    scenario = tmp_path / "s.toml"
    scenario.write_text("")
    raw = _scenario(trace="traces/ok.txt")
    raw["comm"]["edges"] = [{"src": 0, "dst": 1, "bandwidth": 1000.0}]
    comm = resolve(raw, str(scenario)).comm
    assert comm.link.trace_ms == (1, 1, 3)
    assert comm.link_of(0, 1).trace_ms == () and comm.link_of(0, 1).bandwidth == 1000.0
    assert comm.link_of(1, 2).rate == pytest.approx(3 * 1500 / 0.003)
    with pytest.raises(ScenarioError, match=r"comm\.trace = 'nope\.txt': no such file"):
        resolve(_scenario(trace="nope.txt"), str(scenario))
    with pytest.raises(ScenarioError, match="a trace gives the link's bandwidth"):
        resolve(_scenario(trace="traces/ok.txt", bandwidth=5.0), str(scenario))
    for text, why in (("1\nx\n", "line 2: 'x' is not a time"), ("5\n3\n", "line 2: 3 ms comes"),
                      ("\n", "no delivery opportunity"), ("0\n0\n", "no delivery")):
        with pytest.raises(ScenarioError, match=f"^t: {why}"):
            parse_mahimahi(text, "t")


def test_the_shipped_traces_are_what_their_generator_makes():
    import importlib.util
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "topologies" / "traces"
    spec = importlib.util.spec_from_file_location("generate", folder / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    shipped = sorted(p.name for p in folder.glob("*.txt"))
    assert shipped == sorted(gen.TRACES)
    for name in shipped:
        assert (folder / name).read_text() == gen.text(name), name


def test_offline_windows_are_checked_and_need_the_virtual_clock():
    from p2pgame.config import PaceSpec

    pace = PaceSpec(offline=((1.0, 2.0), (2.0, 2.5)))
    assert [pace.is_away(t) for t in (0.99, 1.0, 2.0, 2.49, 2.5)] == [
        False, True, True, True, False]
    for bad in (((2.0, 1.0),), ((0.0, 2.0), (1.0, 3.0)), ((-1.0, 1.0),),
                ((0.0, math.inf),)):
        with pytest.raises(ScenarioError, match=r"offline\[\d\].*0 <= from < to"):
            PaceSpec(offline=bad)
    raw = _scenario()
    raw["peers"] = [{"ids": [1], "runtime": {"offline": [[0.5, 1.0]]}}]
    assert resolve(raw).player(1).pace.offline == ((0.5, 1.0),)
    raw["runtime"]["clock"] = "real"
    raw["comm"]["mode"] = "async"
    with pytest.raises(ScenarioError, match=r'peer 1: runtime offline windows need '
                                            r'runtime.clock = "virtual"'):
        resolve(raw)


def test_a_seeded_on_off_process_is_away_for_its_share_of_the_time():
    from p2pgame.config import PaceSpec
    from p2pgame.peer.stepping import Availability

    spec = PaceSpec(online_mean_s=2.0, offline_mean_s=1.0)
    times = [0.01 * k for k in range(200_000)]  # 2000 virtual seconds, in steps of 10 ms
    a, b = Availability(spec, 5, 3), Availability(spec, 5, 3)
    away = [a.is_away(t) for t in times]
    assert away == [b.is_away(t) for t in times]  # the same stream: the same windows
    assert sum(away) / len(away) == pytest.approx(1 / 3, abs=0.03)
    assert not away[0]  # it starts online
    other = Availability(spec, 5, 4)  # another peer: its own stream
    assert [other.is_away(t) for t in times] != away
    with pytest.raises(ScenarioError, match="the on/off process needs both > 0"):
        PaceSpec(online_mean_s=1.0)
    # Explicit windows hold as well.
    both = Availability(PaceSpec(offline=((0.0, 0.5),), online_mean_s=1e9,
                                 offline_mean_s=1.0), 0, 0)
    assert both.is_away(0.2) and not both.is_away(0.6)


def test_a_compute_trace_gives_each_step_its_time_per_peer(tmp_path):
    from p2pgame.config import parse_compute_trace
    from p2pgame.peer.stepping import Pacer, StepLoop, StepPlan

    (tmp_path / "gpu.txt").write_text("# seconds per step\n0.02\n0.01\n\n0.03\n")
    scenario = tmp_path / "s.toml"
    scenario.write_text("")
    raw = _scenario()
    raw["peers"] = [{"ids": [2], "runtime": {"compute_trace": "gpu.txt", "speed": 0.5}}]
    sc = resolve(raw, str(scenario))
    assert sc.player(2).pace.compute_trace_s == (0.02, 0.01, 0.03)
    assert sc.player(0).pace.compute_trace_s == ()
    plan = StepPlan.of(sc, False, peer=2)
    loop = StepLoop(2, plan, None, None, None, None, None, None, None, True, lambda: False)
    loop.pacer = Pacer(sc.player(2).pace, sc.seed, 2)
    assert [loop.step_cost(k) for k in range(4)] == pytest.approx([0.04, 0.02, 0.06, 0.04])
    with pytest.raises(ScenarioError, match=r"compute_trace = 'no\.txt': no such file"):
        raw["peers"][0]["runtime"]["compute_trace"] = "no.txt"
        resolve(raw, str(scenario))
    raw["peers"][0]["runtime"]["compute_trace"] = "gpu.txt"
    raw["runtime"]["clock"] = "real"
    with pytest.raises(ScenarioError, match=r"peer 2: runtime.compute_trace needs"):
        resolve(raw, str(scenario))
    for text, why in (("0.1\n-1\n", "line 2: '-1' is not a compute time"),
                      ("x\n", "line 1"), ("# only\n", "no compute time")):
        with pytest.raises(ScenarioError, match=f"^t: {why}"):
            parse_compute_trace(text, "t")


async def test_a_slow_neighbour_that_moves_on_is_waited_for_and_a_silent_one_fails():
    """The wait for promises is bounded by comm.sync_timeout_s without progress: a
    neighbour that takes longer than that in all (slow on the host) but promises a little
    more now and then is waited for; one that goes silent that long fails the peer."""
    d = _delivery(latency_ms=5.0)
    r = Receiver(0, d, Traffic(0), None, [1, 2], lambda env: None, sync_timeout_s=0.3)
    assert d.promise(2, 10.0) is None

    async def slow() -> None:
        for k in range(1, 9):  # 0.1 s of the host's time between promises: 0.8 s in all
            await asyncio.sleep(0.1)
            d.promise(1, 0.001 * k)
            r.wakeup.set()
        d.promise(1, 1.0)
        r.wakeup.set()

    started = time.monotonic()
    task = asyncio.create_task(slow())
    await r.advance(0, 0.5)
    assert time.monotonic() - started > 0.3 * 2  # (longer than the timeout in all)
    await task
    with pytest.raises(PeerFailure, match=r"peer 1 promised nothing past 1 s for 0.3 s"):
        await r.advance(1, 2.0)


def test_what_arrives_while_the_receiver_is_away_waits_in_the_links_buffer():
    """The receiver is away over [0.1, 0.3): of the messages that arrive meanwhile, the
    link holds buffer_messages (3) for its return and drops the rest (tail drop), the same
    way in every run; before and after the window nothing is held back."""
    from p2pgame.config import PaceSpec
    from p2pgame.peer.stepping import Availability

    spec = LinkSpec(latency_ms=5.0, buffer_messages=3)
    link = VirtualLink(1, 0, spec, seed=0)
    link.receiver_away = Availability(PaceSpec(offline=((0.1, 0.3),)), 0, 0).window_at
    fates = [link.offer(_env(k, 0.02 * k, 1), 100, 0.02 * k, 0, False) for k in range(25)]
    # Sent at 0.00, 0.02, ...: arrivals 5 ms later; those at 0.105 .. 0.285 (k = 5 .. 14)
    # arrive while it is away: the first 3 are held, the other 7 dropped.
    assert fates[:5] == ["delivered"] * 5 and fates[15:] == ["delivered"] * 10
    assert fates[5:8] == ["delivered"] * 3 and fates[8:15] == ["buffer"] * 7
    assert link.dropped_buffer == 7 and link.held_away == {0.1: [3, 300]}
    # The accounts still add up, and the drops keep their turn as placeholders.
    out = link.due_virtual(30, 1.0, lambda t: 30)
    assert len(out) == 25 and sum(not p.lost for p in out) == 18
    # Without buffer keys an uncapped link holds everything for the receiver.
    free = VirtualLink(1, 0, LinkSpec(latency_ms=5.0), seed=0)
    free.receiver_away = link.receiver_away
    assert {free.offer(_env(k, 0.02 * k, 1), 100, 0.02 * k, 0, False)
            for k in range(25)} == {"delivered"}


def test_the_on_off_process_windows_are_the_same_asked_in_any_order():
    from p2pgame.config import PaceSpec
    from p2pgame.peer.stepping import Availability

    spec = PaceSpec(online_mean_s=1.0, offline_mean_s=0.5)
    steps = Availability(spec, 3, 2)
    times = [0.01 * k for k in range(2000)]
    away = [t for t in times if steps.is_away(t)]
    links = Availability(spec, 3, 2)
    assert [t for t in reversed(times) if links.window_at(t) is not None][::-1] == away


async def test_a_neighbour_that_never_promised_is_given_the_start_timeout():
    """Another worker may take long to bring a neighbour to its first step: a neighbour
    with no promise yet is waited for up to first_timeout_s (the run's start timeout),
    and one that stays silent past it is named with the key that bounds the wait."""
    d = _delivery(latency_ms=5.0)
    r = Receiver(0, d, Traffic(0), None, [1, 2], lambda env: None, sync_timeout_s=0.2,
                 first_timeout_s=0.6)
    assert d.promise(2, 10.0) is None

    async def late() -> None:  # its first promise after 0.4 s: past sync_timeout_s
        await asyncio.sleep(0.4)
        d.promise(1, 1.0)
        r.wakeup.set()

    task = asyncio.create_task(late())
    await r.advance(0, 0.5)
    await task
    d2 = _delivery(latency_ms=5.0)
    r2 = Receiver(0, d2, Traffic(0), None, [1, 2], lambda env: None, sync_timeout_s=0.2,
                  first_timeout_s=0.6)
    d2.promise(2, 10.0)
    started = time.monotonic()
    with pytest.raises(PeerFailure, match=r"peer 1 promised nothing past -inf s for 0.6 s "
                                          r"\(runtime.start_timeout_s\)"):
        await r2.advance(0, 0.5)
    assert time.monotonic() - started >= 0.6


def test_the_measured_compute_mode_scales_the_previous_steps_host_time():
    """``runtime.compute = "measured"``: a step costs compute_scale x the host's wall
    time of the peer's previous training step (its first, compute_s: its promise goes
    out before it trains), the pace on top; refused on the real clock and beside a
    compute trace, and marked non-deterministic."""
    from p2pgame.peer.stepping import Pacer, StepLoop, StepPlan

    raw = _scenario()
    raw["runtime"].update(compute="measured", compute_scale=2.0, compute_s=0.01)
    raw["peers"] = [{"ids": [1], "runtime": {"speed": 0.5}}]
    sc = resolve(raw)
    assert not sc.deterministic and resolve(_scenario()).deterministic
    assert resolve(_scenario(mode="sync") | {"runtime": {}}).deterministic
    plan = StepPlan.of(sc, False, peer=1)
    assert plan.measured_scale == 2.0
    loop = StepLoop(1, plan, None, None, None, None, None, None, None, True, lambda: False)
    loop.pacer = Pacer(sc.player(1).pace, sc.seed, 1)
    assert loop.step_cost(0) == pytest.approx(0.02)  # compute_s, at half speed
    loop.measured_s = 0.125  # the previous step took 125 ms on the host
    assert loop.step_cost(1) == pytest.approx(2.0 * 0.125 / 0.5)
    # the modelled default ignores the host's times
    model = StepLoop(1, StepPlan.of(resolve(_scenario()), False, peer=1), None, None, None,
                     None, None, None, None, True, lambda: False)
    model.measured_s = 0.125
    assert model.step_cost(1) == pytest.approx(0.01)
    for key, value, why in (("compute", "host", r"compute = 'host'.*allowed: model, measured"),
                            ("compute_scale", 0.0, r"compute_scale = 0\.0 must be > 0"),
                            ("compute_scale", math.nan,
                             r"runtime\.compute_scale: expected a finite number, got nan")):
        bad = _scenario()
        bad["runtime"][key] = value
        with pytest.raises(ScenarioError, match=why):
            resolve(bad)
    real = _scenario()
    real["runtime"] = {"compute": "measured"}
    with pytest.raises(ScenarioError, match=r"runtime.compute = 'measured' needs "
                                            r'runtime.clock = "virtual"'):
        resolve(real)


class _Algorithm:
    heavy = False

    def __init__(self, order: list[str]) -> None:
        self.order = order

    def publish(self, step: int) -> dict:
        return {space: {"v": np.full(2, step, np.float32)} for space in self.order}


async def test_a_promise_rides_in_the_last_message_only_if_every_out_neighbour_takes_it():
    """The virtual clock: a step's promise goes in its last data message (no clock message
    then) when that message's topic reaches every out-neighbour; else, with no messages,
    or on the real clock, nothing is carried and the step loop sends a clock message.  The
    receiver takes a carried promise after the message, even from one it refused."""
    from p2pgame.bus.topics import Topic
    from p2pgame.peer.device import Device
    from p2pgame.peer.publishing import Publisher
    from tests.helpers import FakeBus

    x, y = Topic("samples", 1, "x"), Topic("samples", 1, "y")
    for order, until, carried in ((["y", "x"], 0.02, True), (["x", "y"], 0.02, False),
                                  ([], 0.02, False), (["y", "x"], None, False)):
        pub = Publisher(1, _Algorithm(order), {"x": x, "y": y}, Device("cpu", torch=False),
                        to_all={x})
        bus = FakeBus()
        assert await pub.publish(bus, 3, 0.01, until) is carried
        assert [e.until for e in bus.sent] == [None] * (len(order) - carried) + [until] * carried
        assert all(e.time == 0.01 for e in bus.sent)
        assert (pub.carried, pub.promised) == ((1, (3, 0.02)) if carried else (0, None))
    # The receiving side: the message's send time, then the carried promise.
    d = _delivery(latency_ms=5.0)
    r = Receiver(0, d, Traffic(0), None, [1, 2], lambda env: "refused by the check",
                 sync_timeout_s=1.0)
    env = _env(0, 0.01, 1)
    env.until = 0.02
    r.on_envelope(env, 100, 0.0)
    assert d.promised[1] == 0.02 and r.traffic.rejected["refused by the check"] == 1
    d.carried(1, 0.015)  # never back
    assert d.promised[1] == 0.02
    d.carried(7, 9.0)  # not an in-neighbour: nothing
    assert 7 not in d.promised
