"""The run folder: written by the launcher alone, from what the peers report."""

from __future__ import annotations

import csv
import errno
import json
import os
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from p2pgame.topology import Schedule


def make_run_dir(out: Path, name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(out) / f"{name}-{stamp}"
    run_dir, k = base, 1
    Path(out).mkdir(parents=True, exist_ok=True)
    while True:  # (two runs started in the same second each get a folder of their own)
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            k += 1
            run_dir = Path(f"{base}-{k}")


def write_topology(run_dir: Path, schedule: Schedule) -> None:
    epochs = [
        {
            "start_step": start,
            "edges": [list(e) for e in top.edges],
            "weights": top.weights.round(12).tolist(),
            "second_eigenvalue_modulus": top.second_eigenvalue_modulus(),
        }
        for start, top in zip(schedule.starts, schedule.topologies, strict=True)
    ]
    (run_dir / "topology.json").write_text(json.dumps({"epochs": epochs}, indent=1))
    first = schedule.topologies[0]
    with (run_dir / "edges.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["src", "dst", "weight"])
        for s, d in first.edges:
            w.writerow([s, d, float(first.weights[d, s])])
    with (run_dir / "weights.csv").open("w", newline="") as f:
        csv.writer(f).writerows(first.weights.tolist())


def write_error(path: Path, e: OSError) -> str:
    """One line saying which file could not be written, and why (a full disk named)."""
    why = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (
        e.strerror or type(e).__name__)
    return f"cannot write {path}: {why}"


class RunFolder:
    """Appends what peers report: metrics lines, artifacts, failure logs.

    A write that fails (a full disk) never raises: the first failure is kept in
    :attr:`error` (one line naming the file), for the launcher to stop the run on, and
    what was already written stays whole: a metrics file keeps every complete line."""

    def __init__(self, path: Path, append: bool = False) -> None:
        self.path = Path(path)
        self.append = append  # a resumed run adds to the metrics files it continues
        self._metrics: dict[int, int] = {}  # peer -> descriptor of its metrics file
        self.error: str | None = None
        self._os_write = os.write  # (a seam: tests make the disk fill up)

    def _failed(self, path: Path, e: OSError) -> None:
        if self.error is None:
            self.error = write_error(path, e)

    def metrics(self, peer: int, lines: list[dict[str, Any]]) -> None:
        path = self.path / "metrics" / f"peer-{peer}.jsonl"
        if self.error is not None:
            return  # the run is stopping: nothing more is written
        try:
            fd = self._metrics.get(peer)
            if fd is None:
                path.parent.mkdir(exist_ok=True)
                flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if self.append else os.O_TRUNC)
                fd = self._metrics[peer] = os.open(path, flags, 0o644)
        except OSError as e:
            self._failed(path, e)
            return
        # Unbuffered, whole lines at once: readable while the run goes on, and a write the
        # disk cannot take is cut back to the last complete line.
        data = memoryview("".join(json.dumps(line) + "\n" for line in lines).encode())
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            while data:
                data = data[self._os_write(fd, data):]
        except OSError as e:
            self._failed(path, e)
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass

    def artifact_path(self, name: str) -> Path | None:
        """Where a reported file goes; None for a name that would leave the run folder."""
        rel = PurePosixPath(name)
        if rel.is_absolute() or not rel.parts or any(p in ("..", "") for p in rel.parts):
            return None
        return self.path.joinpath(*rel.parts)

    def artifact(self, name: str, data: bytes) -> bool:
        """Write a reported file (whole, or not at all: a partial one is removed); False
        for a name that would leave the run folder."""
        path = self.artifact_path(name)
        if path is None:
            return False
        if self.error is None:
            self.write(path, data)
        return True

    def write(self, path: Path, data: bytes | str) -> bool:
        """Write ``path`` whole through a temporary file (an old version stays until the
        new one is complete); False, and :attr:`error` set, when the disk refuses."""
        tmp = path.with_name(path.name + ".part")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, str):
                data = data.encode()
            tmp.write_bytes(data)
            tmp.replace(path)
            return True
        except OSError as e:
            self._failed(path, e)
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            return False

    def log(self, peer: int, text: str) -> None:
        path = self.path / "logs" / f"peer-{peer}.log"
        try:
            path.parent.mkdir(exist_ok=True)
            with path.open("a") as f:
                f.write(text.rstrip() + "\n")
        except OSError as e:
            self._failed(path, e)

    def close(self) -> None:
        for fd in self._metrics.values():
            os.close(fd)
        self._metrics.clear()
