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


def wait_for_progress(proc, at_least: int, timeout: float = 60.0) -> int:
    """Block on a ``p2pgame run`` subprocess's stderr (``stderr=PIPE``, no ``--quiet``) until
    its progress bar counts ``at_least`` peer steps; the count seen.  Reads wait on the pipe
    (select), never sleep.  Drain the rest (``communicate``) if the process is to go on."""
    import re

    fd = proc.stderr.fileno()
    tail = b""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no progress to {at_least} steps within {timeout:g} s"
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 16)
        assert chunk, f"the run ended first: {tail[-2000:].decode(errors='replace')}"
        tail = (tail + chunk)[-8192:]
        counts = re.findall(rb"(\d+)/\d+ \[", tail)
        if counts and int(counts[-1]) >= at_least:
            return int(counts[-1])


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
