"""What a peer tells the launcher: metrics lines and files (buffered, sent by the heartbeat
task), the heartbeat itself, the summary's accounts, checkpoints, and failures."""

from __future__ import annotations

import asyncio
import io
import os
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import p2pgame.peer.control as ctl
from p2pgame.bus.traffic import Traffic
from p2pgame.peer.delivery import Delivery

PROGRESS_EVERY_S = 0.5


class Reporter:
    """The metrics lines and files not sent yet.  Files may be added from the step thread
    (an algorithm's sample grid): appending to and popping from a list are atomic."""

    def __init__(self) -> None:
        self.metrics_buffer: list[dict[str, Any]] = []
        self.artifacts: list[ctl.Artifact] = []

    def artifact(self, name: str, data: bytes) -> None:
        self.artifacts.append(ctl.Artifact(name, data))

    async def report(self, control: Any, *extra: Any) -> None:
        """Send buffered metrics lines and artifacts, then ``extra`` messages."""
        if self.metrics_buffer:
            lines, self.metrics_buffer = self.metrics_buffer, []
            await control.send(ctl.encode(ctl.Metrics(lines)))
        while self.artifacts:
            await control.send(ctl.encode(self.artifacts.pop(0)))
        for msg in extra:
            await control.send(ctl.encode(msg))

    async def heartbeat_loop(self, control: Any, steps_done: Callable[[], int]) -> None:
        """Every PROGRESS_EVERY_S: the metrics lines and files so far, and ``Progress``,
        which is also the heartbeat: a launcher that hears nothing from a peer for
        ``runtime.peer_timeout_s`` declares it failed (frozen, or cut off).  Its own task,
        so a peer waiting at a barrier or in a long step still beats."""
        while True:
            await self.report(control, ctl.Progress(steps_done()))
            await asyncio.sleep(PROGRESS_EVERY_S)


def accounts(steps: int, wall: float, traffic: Traffic, delivery: Delivery,
             timers: Counter[str]) -> dict[str, Any]:
    """The runtime's part of a peer's summary: steps, rates, bytes and messages.  Read on
    the event loop: the receive task writes these counters (receiving.py, rule 5)."""
    sent, recv = traffic.sent.totals(), traffic.received.totals()
    ages = delivery.inbox.age_accounts()
    edges = delivery.edge_accounts()
    return {
        "steps": steps,
        "steps_per_s": steps / wall if wall > 0 else 0.0,
        "bytes_sent": sent["bytes"],
        "bytes_received": recv["bytes"],
        "header_bytes_sent": sent["header_bytes"],
        "payload_bytes_sent": sent["payload_bytes"],
        "bytes_delivered": delivery.delivered_bytes,
        "messages_sent": sent["messages"],
        "messages_received": delivery.arrived,
        "messages_delivered": sum(e["delivered"] for e in edges),
        "messages_dropped": delivery.dropped,
        "messages_dropped_loss": sum(e["dropped_loss"] for e in edges),
        "messages_dropped_buffer": sum(e["dropped_buffer"] for e in edges),
        "messages_held": sum(e["held"] for e in edges),
        "messages_rejected": sum(traffic.rejected.values()),
        "rejected_reasons": dict(traffic.rejected),
        # How old the messages trained on were (exchange/inbox.py, age_of_use): the
        # mean and largest age (>= 0), the uses whose sender was ahead, the step gaps.
        **ages,
        "time_split_s": {k: round(v, 4) for k, v in timers.items()},
        "traffic_out": traffic.sent.rows(),
        "traffic_in": traffic.received.rows(),
        "links_in": edges,
    }


def save_checkpoint(state: Any, peer: int, artifact_dir: str,
                    artifact: Callable[[str, bytes], None]) -> list[str]:
    """Write a checkpoint (large: on the peer's own disk, named in Done); without a shared
    disk (``artifact_dir`` empty) it goes to the launcher as a file.  None: no checkpoint."""
    if state is None:
        return []
    import torch

    name = f"checkpoints/peer-{peer}.pt"
    if not artifact_dir:  # no shared disk: the launcher writes it
        buf = io.BytesIO()
        torch.save(state, buf)
        artifact(name, buf.getvalue())
        return []
    path = Path(artifact_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return [name]


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux: VmHWM, which counts from the
    process's own start, or from its size when it was forked, unlike ``ru_maxrss``, which a
    child inherits from its parent)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:  # pragma: no cover - not Linux
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def process_facts() -> dict[str, Any]:
    """The process this peer lives in (a worker hosts several): the launcher joins them."""
    return {"pid": os.getpid(), "process_peak_rss_mb": round(peak_rss_mb(), 1)}


def failure_line(e: BaseException) -> str:
    """One line naming what failed: the exceptions inside a (nested) group, not the group
    ("ExceptionGroup: unhandled errors in a TaskGroup" names no cause)."""
    leaves: list[BaseException] = []

    def walk(x: BaseException) -> None:
        if isinstance(x, BaseExceptionGroup):
            for sub in x.exceptions:
                walk(sub)
        else:
            leaves.append(x)

    walk(e)
    return "; ".join(" ".join("".join(traceback.format_exception_only(x)).split())
                     for x in leaves)


def error_message(e: BaseException) -> ctl.Error:
    """One line naming the failure (every sub-exception of a group), and the traceback."""
    return ctl.Error(failure_line(e), "".join(traceback.format_exception(e)))
