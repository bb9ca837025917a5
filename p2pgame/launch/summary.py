"""The parts of a run's ``summary.json`` that are arithmetic on what the peers reported,
and the exit status: no I/O here but reading the interrupted run's summary."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from p2pgame.topology import TOL

# A peer's counters of what it sent and received: after --resume, the summary gives the
# whole run's (the interrupted part's added), and each part's apart.
TRAFFIC_KEYS = ("bytes_sent", "bytes_received", "header_bytes_sent", "payload_bytes_sent",
                "bytes_delivered", "messages_sent", "messages_received", "messages_delivered",
                "messages_dropped", "messages_rejected")


def add_before_resume(summary: dict[str, Any], before: Path) -> None:
    """A resumed run's traffic counters cover the whole run: the interrupted run's (from its
    summary, kept as ``summary-before-resume.json``) plus the resumed part's.  Steps redone
    from the last resume state were sent twice, and count twice: what was on the wire."""
    try:
        prior = json.loads(before.read_text())["peers"]
    except (OSError, ValueError, KeyError, TypeError):
        prior = {}
    for i, peer in summary["peers"].items():
        old = prior.get(i, {}) if isinstance(prior, dict) else {}
        peer["traffic_parts"] = {
            "before_resume": {k: old.get(k, 0) for k in TRAFFIC_KEYS},
            "resumed": {k: peer.get(k, 0) for k in TRAFFIC_KEYS}}
        for k in TRAFFIC_KEYS:
            if isinstance(old.get(k), int) and isinstance(peer.get(k), int):
                peer[k] += old[k]
    summary["traffic_covers"] = ("the whole run: the interrupted part and the resumed one "
                                 "(each apart in a peer's traffic_parts)")


def process_memory(peers: dict[str, dict]) -> list[dict[str, Any]]:
    """The processes peers lived in (one per peer, or one per worker), with their peak
    memory as last reported and the share of it per hosted peer."""
    procs: dict[int, dict[str, Any]] = {}
    for i, s in peers.items():
        if "pid" not in s:
            continue
        p = procs.setdefault(s["pid"], {"pid": s["pid"], "peers": [], "peak_rss_mb": 0.0})
        p["peers"].append(int(i))
        p["peak_rss_mb"] = max(p["peak_rss_mb"], s.get("process_peak_rss_mb", 0.0))
    for p in procs.values():
        p["peers"].sort()
        p["peak_rss_mb_per_peer"] = round(p["peak_rss_mb"] / len(p["peers"]), 1)
    return sorted(procs.values(), key=lambda p: p["peers"][0])


def unbalanced_edges(links: list[dict[str, Any]]) -> list[str]:
    """Edges (``src->dst``) whose two ends disagree: the receiver counted more than its
    sender sent (a restarted end's counts cover its last incarnation only: not those)."""
    return [f"{r['src']}->{r['dst']}" for r in links
            if r["in_transport"] < 0 and not r["restarted"]]


def refusal(edge: dict[str, Any], reasons: dict[str, int]) -> str:
    """Why a receiver is named for a refused edge (``refused_edges`` row), in words."""
    return (f"refused {edge['rejected']} of the {edge['offered']} messages that arrived from "
            f"peer {edge['src']} ({100 * edge['share']:.1f} %; its reasons: "
            + (", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "none") + ")")


def exit_code(interrupted: bool, failed: bool, write_error: str | None,
              start_error: str | None) -> int:
    """The run's exit status: 130 interrupted (whatever else happened), else 1 when a peer
    failed, a file could not be written or the peers could not be started, else 0."""
    if interrupted:
        return 130
    if failed or write_error or start_error:
        return 1
    return 0


# A peer that trained on few of an in-neighbour's messages learnt little from it: fewer
# than FEW_USED_SHARE of those it could have used, or fewer than FEW_USED_MIN (or than
# all of them, when it could have used fewer).  A warning: its results stand.
FEW_USED_SHARE = 0.10
FEW_USED_MIN = 3


def linked_steps(schedule: Any, src: int, dst: int, first: int, last: int) -> int:
    """How many of ``dst``'s steps ``first .. last - 1`` had ``src`` as an in-neighbour
    with a weight above zero in ``dst``'s row (a step that could use its message)."""
    starts = list(schedule.starts) + [None]
    n = 0
    for k, top in enumerate(schedule.topologies):
        lo = max(first, starts[k])
        hi = last if starts[k + 1] is None else min(last, starts[k + 1])
        # (a weight above TOL only where the topology has the edge: Topology.row)
        if hi > lo and src != dst and float(top.weights[dst, src]) > TOL:
            n += hi - lo
    return n


def few_used(peers: dict[str, dict[str, Any]], schedule: Any, first_step: dict[int, int],
             restarted: frozenset[int] = frozenset()) -> dict[int, list[str]]:
    """Receivers that finished having used few of an in-neighbour's messages, each with a
    line per such in-neighbour (peers: summary.json's ``peers``, those that reported).

    What it could have used of ``src``'s: the messages ``src`` sent it, but no more than
    one per topic for each of its steps in which ``src`` was a weighted in-neighbour
    (from ``first_step``, where it started: after --resume, the step it resumed from).
    Edges with a restarted end (counts of one incarnation) and senders that did not
    report are left out."""
    sent: Counter[tuple[int, int]] = Counter()
    topics: Counter[tuple[int, int]] = Counter()
    for s in peers.values():
        for r in s.get("traffic_out", []):
            key = (int(r["sender"]), int(r["receiver"]))
            sent[key] += int(r["messages"])
            topics[key] += 1
    out: dict[int, list[str]] = {}
    for i, s in sorted(peers.items(), key=lambda kv: int(kv[0])):
        dst = int(i)
        for e in s.get("links_in", []):
            src = int(e["src"])
            if src in restarted or dst in restarted or str(src) not in peers:
                continue
            key = (src, dst)
            steps = linked_steps(schedule, src, dst, first_step.get(dst, 0),
                                 int(s.get("steps", 0)))
            could = min(sent[key], steps * max(topics[key], 1))
            used = int(e.get("used", 0))
            if could and (used < min(FEW_USED_MIN, could) or used < FEW_USED_SHARE * could):
                out.setdefault(dst, []).append(
                    f"trained on {used} of peer {src}'s messages, of the {could} it could have "
                    f"used ({100 * used / could:.0f} %; {sent[key]} sent to it, {steps} steps "
                    f"linked): it learnt little from peer {src} (lost, late or refused "
                    "messages: see links.csv)")
    return out
