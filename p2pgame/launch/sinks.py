"""Metric sinks: where the metrics lines that peers report go.

Every line a peer reports (``ctl.Metrics``: step, time, losses, bytes, staleness,
evaluations, with their keys as the peer wrote them) reaches each of the launcher's
sinks, in order, peer by peer.  A sink says what it needs through three calls:

- ``open(peer)`` before the peer's first lines (again, harmlessly, after a restart);
- ``write(peer, lines)``: the lines in the order the peer produced them;
- ``close()`` once the run has ended (every peer's).

The sinks are :class:`JsonlSink`, ``metrics/peer-<i>.jsonl`` in the run folder, and
(``runtime.tensorboard``) :class:`p2pgame.launch.tensorboard.TensorBoardSink`,
``tensorboard/peer-<i>/``; a sink never raises for its storage refusing a write: one that
writes into the run folder records it as the folder's write error
(:attr:`RunFolder.error`), on which the launcher stops the run.
"""

from __future__ import annotations

import json
import os
from typing import Any, Protocol

from p2pgame.launch.rundir import RunFolder


class MetricSink(Protocol):
    """Takes the metrics lines of every peer of a run (see the module)."""

    def open(self, peer: int) -> None:
        """Be ready for ``peer``'s lines (idempotent)."""

    def write(self, peer: int, lines: list[dict[str, Any]]) -> None:
        """Take ``lines`` of ``peer``, in order."""

    def close(self) -> None:
        """The run has ended: release what the sink holds."""


class JsonlSink:
    """``metrics/peer-<i>.jsonl``: one JSON object a line, readable while the run goes on.

    Each file is opened once (``append``: a resumed run continues the files of the run it
    resumes; else a new file) and written unbuffered, whole lines at once; a write the
    disk cannot take is cut back to the last complete line, and recorded as the folder's
    error, after which nothing more is written."""

    def __init__(self, folder: RunFolder, append: bool | None = None) -> None:
        self.folder = folder
        self.append = folder.append if append is None else append
        self._fds: dict[int, int] = {}  # peer -> descriptor of its metrics file
        self._os_write = os.write  # (a seam: tests make the disk fill up)

    def open(self, peer: int) -> None:
        if peer in self._fds or self.folder.error is not None:
            return
        path = self.folder.layout.metrics(peer)
        try:
            path.parent.mkdir(exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if self.append else os.O_TRUNC)
            self._fds[peer] = os.open(path, flags, 0o644)
        except OSError as e:
            self.folder.failed(path, e)

    def write(self, peer: int, lines: list[dict[str, Any]]) -> None:
        if self.folder.error is not None:
            return  # the run is stopping: nothing more is written
        self.open(peer)
        fd = self._fds.get(peer)
        if fd is None:  # (its open failed: the folder's error says so)
            return
        data = memoryview("".join(json.dumps(line) + "\n" for line in lines).encode())
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            while data:
                data = data[self._os_write(fd, data):]
        except OSError as e:
            self.folder.failed(self.folder.layout.metrics(peer), e)
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class TargetSink:
    """Time to quality (``runtime.target = "KEY<=X"``): per peer, the first metrics line
    whose ``KEY`` met the target, as ``{"step", "t", "virtual_s"}`` (``virtual_s`` on the
    virtual clock; ``t`` the host's seconds).  ``KEY`` may leave out its namespace
    (``ne_max_abs`` matches ``eval/ne_max_abs``).  Its resolution is the metrics lines'
    (``runtime.metrics_every``).  On ``--resume`` (``folder.append``) the lines already in
    a peer's metrics file count first."""

    def __init__(self, target: str, folder: RunFolder | None = None) -> None:
        from p2pgame.config import parse_target

        self.target = target
        self.key, self.op, self.threshold = parse_target(target)
        self.folder = folder
        self.reached: dict[int, dict[str, Any]] = {}
        self.seen: set[int] = set()  # peers with a line that has the key
        self._opened: set[int] = set()

    def _value(self, line: dict[str, Any]) -> float | None:
        v = line.get(self.key)
        if v is None and "/" not in self.key:
            v = next((x for k, x in line.items() if k.endswith("/" + self.key)), None)
        return v if isinstance(v, int | float) and not isinstance(v, bool) else None

    def open(self, peer: int) -> None:
        if peer in self._opened:
            return
        self._opened.add(peer)
        if self.folder is not None and self.folder.append:
            try:
                text = self.folder.layout.metrics(peer).read_text()
            except OSError:
                return
            lines = []
            for raw in text.splitlines():
                try:
                    lines.append(json.loads(raw))
                except ValueError:
                    continue
            self.write(peer, [x for x in lines if isinstance(x, dict)])

    def write(self, peer: int, lines: list[dict[str, Any]]) -> None:
        from p2pgame.config import target_met

        if peer in self.reached:
            return
        for line in lines:
            v = self._value(line)
            if v is None:
                continue
            self.seen.add(peer)
            if target_met(self.op, v, self.threshold):
                got = {"step": line.get("step"), "t": line.get("t")}
                if "time/virtual_s" in line:
                    got["virtual_s"] = line["time/virtual_s"]
                self.reached[peer] = got
                return

    def close(self) -> None:
        pass

    def summary(self, peers: list[int]) -> dict[str, Any]:
        """Per peer: where it met the target, or None (``never``: no line had the key)."""
        return {str(i): self.reached.get(i) for i in peers}
