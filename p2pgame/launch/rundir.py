"""The run folder: written by the launcher alone, from what the peers report."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from p2pgame.topology import Schedule


def make_run_dir(out: Path, name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(out) / f"{name}-{stamp}"
    run_dir, k = base, 1
    while run_dir.exists():
        k += 1
        run_dir = Path(f"{base}-{k}")
    run_dir.mkdir(parents=True)
    return run_dir


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


class RunFolder:
    """Appends what peers report: metrics lines, artifacts, failure logs."""

    def __init__(self, path: Path, append: bool = False) -> None:
        self.path = Path(path)
        self.append = append  # a resumed run adds to the metrics files it continues
        self._metrics: dict[int, Any] = {}

    def metrics(self, peer: int, lines: list[dict[str, Any]]) -> None:
        f = self._metrics.get(peer)
        if f is None:
            folder = self.path / "metrics"
            folder.mkdir(exist_ok=True)
            f = self._metrics[peer] = (folder / f"peer-{peer}.jsonl").open(
                "a" if self.append else "w")
        for line in lines:
            f.write(json.dumps(line) + "\n")
        f.flush()  # readable while the run goes on

    def artifact_path(self, name: str) -> Path | None:
        """Where a reported file goes; None for a name that would leave the run folder."""
        rel = PurePosixPath(name)
        if rel.is_absolute() or not rel.parts or any(p in ("..", "") for p in rel.parts):
            return None
        return self.path.joinpath(*rel.parts)

    def artifact(self, name: str, data: bytes) -> bool:
        path = self.artifact_path(name)
        if path is None:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return True

    def log(self, peer: int, text: str) -> None:
        folder = self.path / "logs"
        folder.mkdir(exist_ok=True)
        with (folder / f"peer-{peer}.log").open("a") as f:
            f.write(text.rstrip() + "\n")

    def close(self) -> None:
        for f in self._metrics.values():
            f.close()
        self._metrics.clear()
