"""The parts of a run's ``summary.json`` that are arithmetic on what the peers reported,
and the exit status: no I/O here but reading the interrupted run's summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
