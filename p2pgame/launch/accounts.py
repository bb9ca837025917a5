"""Per-edge accounts of a run, from both ends: what the sender sent, what the link did.

Each peer reports, per in-neighbour, what its emulated link did with every
message offered to it (``links_in`` in the peer's summary: arrived,
delivered, dropped by loss or by a full buffer, held on the link at the end,
rejected by a check, used by a training step).  The sender reports what it
sent to each subscriber (``traffic_out``).  Put together, every message sent
on the edge is in exactly one place::

    sent = delivered + dropped_loss + dropped_buffer + rejected + in_flight
    in_flight = held (on the emulated link) + in_transport (sent, never read:
                still in the transport, or sent after the receiver stopped)

``in_transport`` is the only derived figure; a negative one would mean the two
ends disagree, and is reported as such.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path
from typing import Any

COLUMNS = ("src", "dst", "sent", "sent_bytes", "arrived", "delivered", "delivered_bytes",
           "dropped_loss", "dropped_buffer", "rejected", "held", "in_transport", "in_flight",
           "used", "delay_mean_s", "active_s", "restarted")


def edge_accounts(peers: dict[str, dict[str, Any]],
                  restarted: frozenset[int] = frozenset()) -> list[dict[str, int]]:
    """One row per edge with a receiver that reported (peers: summary.json's ``peers``).

    ``restarted``: peers started again mid-run (runtime.restart).  Their counts cover
    their last incarnation only, so on their edges (``restarted = 1``) the identity of
    the accounts need not hold."""
    sent: Counter[tuple[int, int]] = Counter()
    sent_bytes: Counter[tuple[int, int]] = Counter()
    for s in peers.values():
        for r in s.get("traffic_out", []):
            key = (int(r["sender"]), int(r["receiver"]))
            sent[key] += int(r["messages"])
            sent_bytes[key] += int(r["header_bytes"]) + int(r["payload_bytes"])
    rows = []
    for s in peers.values():
        for e in s.get("links_in", []):
            key = (int(e["src"]), int(e["dst"]))
            if str(key[0]) not in peers:
                continue  # the sender did not report: its side of the account is unknown
            in_transport = sent[key] - e["arrived"] - e["rejected"]
            rows.append({**{k: e[k] for k in COLUMNS if k in e}, "sent": sent[key],
                         "sent_bytes": sent_bytes[key], "in_transport": in_transport,
                         "in_flight": e["held"] + in_transport,
                         "restarted": int(key[0] in restarted or key[1] in restarted)})
    rows.sort(key=lambda r: (r["src"], r["dst"]))
    return [{k: r[k] for k in COLUMNS} for r in rows]


# An honest run refuses nothing of an in-neighbour's; past this share of the messages that
# arrived on an edge, the run says so (a warning; a failure in sync mode, where every
# refused message is a round the receiver did without).
REFUSED_SHARE = 0.01


def refused_edges(rows: list[dict[str, int]]) -> list[dict[str, Any]]:
    """The edges whose receiver refused more than ``REFUSED_SHARE`` of what arrived."""
    out = []
    for r in rows:
        offered = r["arrived"] + r["rejected"]
        if r["rejected"] and r["rejected"] > REFUSED_SHARE * offered:
            out.append({"src": r["src"], "dst": r["dst"], "rejected": r["rejected"],
                        "offered": offered, "share": round(r["rejected"] / offered, 4)})
    return out


def accounts_csv(rows: list[dict[str, int]]) -> str:
    """links.csv's text."""
    out = io.StringIO(newline="")
    w = csv.DictWriter(out, fieldnames=COLUMNS)
    w.writeheader()
    w.writerows(rows)
    return out.getvalue()


def write_accounts(run_dir: Path, rows: list[dict[str, int]]) -> None:
    (Path(run_dir) / "links.csv").write_text(accounts_csv(rows), newline="")
