"""Staleness a reader can take at face value (exchange/inbox.py, age_of_use): ages >= 0,
the sender being ahead counted apart; and the warning for a peer that trained on few of
an in-neighbour's messages (launch/summary.py, few_used)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from p2pgame.exchange.inbox import Inbox, age_of_use
from p2pgame.launch.summary import few_used, linked_steps
from p2pgame.topology import Schedule, Topology


def test_ages_are_never_negative_and_the_sender_ahead_is_counted_apart() -> None:
    # The async scenario's kind of histogram: uses from senders far ahead and far behind.
    gaps = Counter({-205: 10, -5: 30, 0: 20, 4: 30, 219: 10})
    a = age_of_use(gaps)
    assert a["staleness_mean"] == pytest.approx((4 * 30 + 219 * 10) / 100)
    assert a["staleness_mean"] >= 0 and a["staleness_max"] == 219
    assert a["ahead_uses"] == 40
    assert a["ahead_mean"] == pytest.approx((205 * 10 + 5 * 30) / 40)
    assert a["staleness_hist"] == {"-205": 10, "-5": 30, "0": 20, "4": 30, "219": 10}
    # A peer always behind its senders: every use is fresh, none is old.
    behind = age_of_use(Counter({-3: 7}))
    assert behind["staleness_mean"] == 0.0 and behind["staleness_max"] == 0
    assert behind["ahead_uses"] == 7 and behind["ahead_mean"] == 3.0
    empty = age_of_use(Counter())
    assert (empty["staleness_mean"], empty["ahead_uses"], empty["ahead_mean"]) == (0.0, 0, 0.0)


class _Env:
    def __init__(self, sender: int, step: int) -> None:
        self.sender, self.step, self.space = sender, step, "x"


def test_the_inbox_reports_ages_from_its_uses() -> None:
    inbox = Inbox()
    inbox.put(_Env(0, 9))
    inbox.use(0, "x", 4)  # the sender is 5 steps ahead
    inbox.put(_Env(1, 1))
    inbox.use(1, "x", 4)  # 3 steps old
    acc = inbox.age_accounts()
    assert acc["staleness_mean"] == 1.5 and acc["ahead_uses"] == 1 and acc["ahead_mean"] == 5
    assert inbox.staleness_summary() == (1.5, {"-5": 1, "3": 1})


def _pair_schedule(starts=(0,), linked=(True,)) -> Schedule:
    tops = []
    for on in linked:
        w = np.array([[0.5, 0.5], [0.5, 0.5]]) if on else np.eye(2)
        edges = ((0, 1), (1, 0)) if on else ()
        tops.append(Topology(n=2, edges=edges, weights=w))
    return Schedule(tuple(starts), tuple(tops))


def _peers(used01: int, used10: int, steps: int = 100, sent: int = 100) -> dict:
    def peer(me: int, src: int, used: int) -> dict:
        return {"steps": steps,
                "traffic_out": [{"sender": me, "receiver": src, "topic": f"samples/{me}/x",
                                 "messages": sent, "header_bytes": 1, "payload_bytes": 1}],
                "links_in": [{"src": src, "dst": me, "used": used}]}
    return {"0": peer(0, 1, used10), "1": peer(1, 0, used01)}


def test_a_peer_that_used_few_of_a_neighbours_messages_is_named() -> None:
    sched = _pair_schedule()
    found = few_used(_peers(used01=9, used10=60), sched, {})
    assert list(found) == [1]  # peer 1 used 9 of peer 0's 100: under 10 %
    assert "trained on 9 of peer 0's messages, of the 100" in found[1][0]
    assert few_used(_peers(used01=10, used10=100), sched, {}) == {}
    # Few messages to use (a model sent once): fewer than 3 is fine when it used them all.
    assert few_used(_peers(used01=1, used10=1, sent=1), sched, {}) == {}
    assert list(few_used(_peers(used01=2, used10=3, sent=5), sched, {})) == [1]
    # A restarted end's counts cover one incarnation: not judged.
    assert few_used(_peers(used01=0, used10=0), sched, {}, frozenset({1})) == {}


def test_what_a_peer_could_have_used_follows_the_schedule_and_the_resume() -> None:
    # Linked for steps 0-49 only: 50 steps could use a message, not 100.
    sched = _pair_schedule(starts=(0, 50), linked=(True, False))
    assert linked_steps(sched, 0, 1, 0, 100) == 50
    assert linked_steps(sched, 0, 1, 40, 100) == 10  # resumed at step 40
    assert few_used(_peers(used01=6, used10=50), sched, {}) == {}  # 6 of 50 >= 10 %...
    assert list(few_used(_peers(used01=4, used10=50), sched, {})) == [1]  # ... 4 is not
    # After --resume at step 90, 10 steps could use 10 messages: 2 is too few.
    assert list(few_used(_peers(used01=2, used10=10), _pair_schedule(), {1: 90, 0: 90})) == [1]
