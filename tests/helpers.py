"""Helpers shared by the tests (importable as ``tests.helpers``)."""

from __future__ import annotations

import hashlib
import os
import select
import time
from pathlib import Path

import numpy as np

from p2pgame.data import write_idx
from p2pgame.data.datasets import write_manifest


def write_tiny_mnist(root: Path, n_train: int = 300, n_test: int = 100, seed: int = 0) -> Path:
    """Ten noisy binary templates as 'digits', laid out like `p2pgame data fetch mnist`."""
    rng = np.random.default_rng(seed)
    templates = rng.random((10, 28, 28)) < 0.3
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        imgs = templates[labels] ^ (rng.random((n, 28, 28)) < 0.05)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", (imgs * 255).astype(np.uint8))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    # What `p2pgame data fetch` leaves beside the files: the hashes they were verified with.
    write_manifest(raw, {f.name: hashlib.sha256(f.read_bytes()).hexdigest()
                         for f in raw.iterdir() if f.name.endswith("ubyte")})
    return Path(root)


# Where a peer lived and how much memory its process took: placement's own business.
PLACEMENT_KEYS = {"pid", "process_peak_rss_mb", "delay_mean_s", "active_s"}


def placement_results(run_dir: Path) -> dict:
    """Every peer's summary entry and metrics lines, without timings and placement facts:
    what must not change when only the placement (processes, workers, Ray) changes."""
    import json

    from tests.fixtures.record_same_results import strip_timings

    def strip(obj):
        obj = strip_timings(obj)
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in PLACEMENT_KEYS}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    summary = json.loads((run_dir / "summary.json").read_text())
    out = {"peers": strip(summary["peers"]), "metrics": {}}
    for path in sorted((run_dir / "metrics").glob("peer-*.jsonl")):
        out["metrics"][path.stem] = strip([json.loads(x) for x in path.read_text().splitlines()])
    return out


class FakeBus:
    """A bus that keeps what is published (no sockets), for a publisher's unit tests."""

    def __init__(self) -> None:
        self.sent = []

    async def publish(self, env) -> None:
        self.sent.append(env)


def hooked_control_server(hook):
    """The launcher's ControlServer, calling ``hook(peer, msg, pids)`` on every message it
    hands the launcher (``msg`` decoded; ``pids``: peer -> pid of its first Hello), so a
    test can act at a chosen moment of a run: kill, freeze, listen."""
    from p2pgame.bus.transport import ControlServer
    from p2pgame.peer import control

    pids: dict[int, int] = {}

    class Hooked(ControlServer):
        async def recv(self, timeout_s=None):
            got = await super().recv(timeout_s)
            if got is not None:
                msg = control.decode(got[1])
                if isinstance(msg, control.Hello):
                    pids.setdefault(got[0], msg.pid)
                hook(got[0], msg, pids)
            return got

    return Hooked


def wait_for_output(proc, found, timeout: float = 60.0, what: str = "the output"):
    """Block on a subprocess's stderr (``stderr=PIPE``) until ``found(tail)`` (the last 8 kB
    read) returns something true; that value.  Reads wait on the pipe (select), never
    sleep.  Drain the rest (``communicate``) if the process is to go on."""
    fd = proc.stderr.fileno()
    tail = b""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {what} within {timeout:g} s: {tail[-2000:]!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 16)
        assert chunk, f"the process ended first: {tail[-2000:].decode(errors='replace')}"
        tail = (tail + chunk)[-8192:]
        got = found(tail)
        if got:
            return got


def wait_for_progress(proc, at_least: int, timeout: float = 60.0) -> int:
    """Block on a ``p2pgame run`` subprocess's stderr (no ``--quiet``) until its progress
    progress counts ``at_least`` steps (a plain line every few seconds when stderr is not a
    terminal: the slowest peer's step); the count seen (:func:`wait_for_output`)."""
    import re

    def counted(tail: bytes) -> int:
        counts = re.findall(rb"step (\d+)/\d+ per peer", tail)
        return int(counts[-1]) if counts and int(counts[-1]) >= at_least else 0

    return wait_for_output(proc, counted, timeout, f"progress to {at_least} steps")


def wait_for_exit(pids, timeout: float) -> None:
    """Block until every pid has exited (its pidfd turns readable) or ``timeout`` passes."""
    fds = []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except OSError:  # already gone
            pass
    try:
        deadline = time.monotonic() + timeout
        pending = list(fds)
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            ready, _, _ = select.select(pending, [], [], remaining)
            pending = [fd for fd in pending if fd not in ready]
    finally:
        for fd in fds:
            os.close(fd)


def publishing_one_oversized_frame(honest_publish, sent: list[int], peer: int = 0,
                                   at_step: int = 20):
    """``PeerRuntime.publish`` that also sends, once, a 1 MiB frame on ``peer``'s own ``x``
    topic, below the bus's checks (as a buggy neighbour or a squatter would); each step it
    did so goes to ``sent``."""

    async def publish(self, bus, step):
        await honest_publish(self, bus, step)
        if self.id == peer and step == at_step:
            topic = self.my_topics["x"].wire
            await bus.transport.send([topic, b"\x00" * 64, b"\x00" * (1 << 20)])
            sent.append(step)

    return publish


# Run as ``python -c CONTROL_SENDER ENDPOINT BIG_AUTH TOKEN MIB``: one frame of MIB MiB
# under the auth frame BIG_AUTH, then peer 0's authentic Progress(1), on one connection
# (FIFO: once the Progress has come, the big frame was dealt with, received or refused).
# Another process, so that its bytes are not counted in the receiver's memory.
CONTROL_SENDER = """
import sys, zmq
endpoint, big_auth, token, mib = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
from p2pgame.peer import control as ctl
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
s.setsockopt(zmq.LINGER, -1)
s.connect(endpoint)
s.send_multipart([big_auth.encode(), bytes(mib << 20)])
s.send_multipart([b"0:" + token.encode(), ctl.encode(ctl.Progress(1))])
s.close()
ctx.term()
"""


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def reset_peak_memory() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # (Linux >= 4.0) VmHWM := VmRSS
