"""Per-peer spaces over real processes: a peer receives only the topics it learns from.

``topologies/expfam-spaces.toml``: every peer publishes samples (``x``) and mean
parameters (``mu``); peer 0 learns both, peer 1 only ``x``, peers 2 and 3 only
``mu``.  Subscriptions are by exact topic, so the publisher's PUB socket never
sends a peer a space it does not learn: the traffic rows show zero bytes of it,
on both ends, and nothing is rejected.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pgame.launch import run

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "topologies" / "expfam-spaces.toml"
LEARNS = {"0": {"x", "mu"}, "1": {"x"}, "2": {"mu"}, "3": {"mu"}}


@pytest.fixture(scope="module")
def spaces_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("spaces")
    res = run(SCENARIO, ["steps=300", "runtime.threads_per_peer=1"], out=out, progress=False)
    assert res.exit_code == 0, res.failures
    return res.summary


def _space(topic: str) -> str:
    return topic.rsplit("/", 1)[1]


def test_a_peer_receives_zero_bytes_of_spaces_it_does_not_learn(spaces_run) -> None:
    for pid, peer in spaces_run["peers"].items():
        got = {_space(r["topic"]) for r in peer["traffic_in"]}
        assert got == LEARNS[pid], pid
        assert peer["messages_rejected"] == 0, pid
    # Peer 1 learns only x next to publishers of x and mu: no byte of mu reached it.
    mu_in = [r for r in spaces_run["peers"]["1"]["traffic_in"] if _space(r["topic"]) == "mu"]
    assert mu_in == []


def test_publishers_send_each_space_only_to_its_learners(spaces_run) -> None:
    peers = spaces_run["peers"]
    for pid, peer in peers.items():
        for row in peer["traffic_out"]:
            assert _space(row["topic"]) in LEARNS[str(row["receiver"])], (pid, row)
        # What one peer counts as sent to another is what the other counts as received.
        for row in peer["traffic_out"]:
            back = [r for r in peers[str(row["receiver"])]["traffic_in"]
                    if r["topic"] == row["topic"] and r["sender"] == int(pid)]
            assert len(back) == 1 and back[0]["messages"] == row["messages"]
            assert back[0]["payload_bytes"] == row["payload_bytes"]


def test_learning_from_parameters_or_samples_reaches_the_same_equilibrium(spaces_run) -> None:
    for pid, peer in spaces_run["peers"].items():
        assert peer["steps"] == 300
        assert peer["ne_max_abs"] < 0.03, pid
