"""The run folder: its layout, named in one place, and its writes, by the launcher alone
from what the peers report.

:class:`RunLayout` names every path of a run folder (README, "The run folder");
:class:`RunFolder` writes reported files into it, whole or not at all, and keeps the
first write that failed.  Metrics lines go through the metric sinks
(:mod:`p2pgame.launch.sinks`), the JSONL one into :meth:`RunLayout.metrics`.
"""

from __future__ import annotations

import csv
import errno
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

from p2pgame.topology import Schedule


@dataclass(frozen=True)
class RunLayout:
    """Where each file of a run folder lives: every name in one place.

    Peers name the files they report by their path relative to the folder (e.g.
    ``samples/peer-0.png``, ``resume/peer-0.json``): :meth:`artifact` takes those, and
    refuses one that would leave the folder."""

    root: Path

    # The run as given and as resolved; the topology.
    SCENARIO_TOML = "scenario.toml"
    RESOLVED = "resolved.json"
    SCENARIO_JSON = "scenario.json"
    TOPOLOGY = "topology.json"
    EDGES = "edges.csv"
    WEIGHTS = "weights.csv"
    # Written while and after the run.
    ENDPOINTS = "endpoints.json"
    LINKS = "links.csv"
    SUMMARY = "summary.json"
    EVALUATION = "evaluation.json"
    # Folders of per-peer files.
    METRICS = "metrics"
    SAMPLES = "samples"
    CHECKPOINTS = "checkpoints"
    RESUME = "resume"
    LOGS = "logs"
    KEYS = "keys"
    REPORT = "report"
    TENSORBOARD = "tensorboard"  # event files: one TensorBoard run per peer, and edges/
    # What ``--resume`` writes anew: the interrupted run's are kept beside, renamed.
    REWRITTEN_ON_RESUME = (SUMMARY, LINKS, ENDPOINTS)
    BEFORE_RESUME = "-before-resume"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # -- files of the run ----------------------------------------------------------------
    @property
    def scenario_toml(self) -> Path:
        """The scenario file as given."""
        return self.root / self.SCENARIO_TOML

    @property
    def resolved(self) -> Path:
        """The file plus ``--set`` overrides (re-loadable)."""
        return self.root / self.RESOLVED

    @property
    def scenario_json(self) -> Path:
        """Every key resolved, nested as the code holds it."""
        return self.root / self.SCENARIO_JSON

    @property
    def topology(self) -> Path:
        return self.root / self.TOPOLOGY

    @property
    def edges(self) -> Path:
        return self.root / self.EDGES

    @property
    def weights(self) -> Path:
        return self.root / self.WEIGHTS

    @property
    def endpoints(self) -> Path:
        return self.root / self.ENDPOINTS

    @property
    def links(self) -> Path:
        return self.root / self.LINKS

    @property
    def summary(self) -> Path:
        return self.root / self.SUMMARY

    @property
    def evaluation(self) -> Path:
        return self.root / self.EVALUATION

    def before_resume(self, name: str) -> Path:
        """Where ``--resume`` keeps the interrupted run's ``name`` (``summary.json`` ->
        ``summary-before-resume.json``)."""
        stem, dot, suffix = name.partition(".")
        return self.root / f"{stem}{self.BEFORE_RESUME}{dot}{suffix}"

    # -- folders and per-peer files ------------------------------------------------------
    @property
    def metrics_dir(self) -> Path:
        return self.root / self.METRICS

    @property
    def samples_dir(self) -> Path:
        return self.root / self.SAMPLES

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / self.CHECKPOINTS

    @property
    def resume_dir(self) -> Path:
        return self.root / self.RESUME

    @property
    def logs_dir(self) -> Path:
        return self.root / self.LOGS

    @property
    def keys_dir(self) -> Path:
        return self.root / self.KEYS

    @property
    def report_dir(self) -> Path:
        """``p2pgame report``'s folder for this one run (its default ``--out``)."""
        return self.root / self.REPORT

    @property
    def tensorboard_dir(self) -> Path:
        return self.root / self.TENSORBOARD

    def tensorboard(self, peer: int | None) -> Path:
        """``tensorboard/peer-<i>/`` (None: ``tensorboard/edges/``): one TensorBoard run's
        event files."""
        return self.tensorboard_dir / ("edges" if peer is None else f"peer-{peer}")

    def metrics(self, peer: int) -> Path:
        """``metrics/peer-<i>.jsonl``: the peer's metrics lines."""
        return self.metrics_dir / f"peer-{peer}.jsonl"

    def metrics_files(self) -> dict[str, Path]:
        """Every peer's metrics file there is, by peer id (as text), in name order."""
        return {f.stem.split("-", 1)[1]: f for f in sorted(self.metrics_dir.glob("peer-*.jsonl"))}

    def samples(self, peer: int) -> Path:
        """``samples/peer-<i>.png``: the peer's sample grid."""
        return self.samples_dir / f"peer-{peer}.png"

    def checkpoint(self, peer: int) -> Path:
        """``checkpoints/peer-<i>.pt``: the peer's weights (written by the peer itself)."""
        return self.checkpoints_dir / f"peer-{peer}.pt"

    def resume_state(self, peer: int) -> Path:
        """``resume/peer-<i>.json``: the peer's latest resume state."""
        return self.resume_dir / f"peer-{peer}.json"

    def log(self, peer: int) -> Path:
        """``logs/peer-<i>.log``: the traceback of a failed peer."""
        return self.logs_dir / f"peer-{peer}.log"

    def public_key(self, peer: int | None) -> Path:
        """``keys/peer-<i>.public`` (None: ``keys/launcher.public``)."""
        return self.keys_dir / ("launcher.public" if peer is None else f"peer-{peer}.public")

    def artifact(self, name: str) -> Path | None:
        """Where a file a peer reported as ``name`` (relative, e.g. ``samples/peer-0.png``)
        goes; None for a name that would leave the run folder."""
        rel = PurePosixPath(name)
        if rel.is_absolute() or not rel.parts or any(p in ("..", "") for p in rel.parts):
            return None
        return self.root.joinpath(*rel.parts)


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


def write_topology(layout: RunLayout, schedule: Schedule) -> None:
    """``topology.json`` (every epoch), ``edges.csv`` and ``weights.csv`` (the first)."""
    epochs = [
        {
            "start_step": start,
            "edges": [list(e) for e in top.edges],
            "weights": top.weights.round(12).tolist(),
            "second_eigenvalue_modulus": top.second_eigenvalue_modulus(),
        }
        for start, top in zip(schedule.starts, schedule.topologies, strict=True)
    ]
    layout.topology.write_text(json.dumps({"epochs": epochs}, indent=1))
    first = schedule.topologies[0]
    with layout.edges.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["src", "dst", "weight"])
        for s, d in first.edges:
            w.writerow([s, d, float(first.weights[d, s])])
    with layout.weights.open("w", newline="") as f:
        csv.writer(f).writerows(first.weights.tolist())


def write_error(path: Path, e: OSError) -> str:
    """One line saying which file could not be written, and why (a full disk named)."""
    why = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (
        e.strerror or type(e).__name__)
    return f"cannot write {path}: {why}"


class RunFolder:
    """Writes what peers report into the run folder: artifacts, failure logs (metrics lines
    go through the sinks, :mod:`p2pgame.launch.sinks`, the JSONL one into this folder).

    A write that fails (a full disk) never raises: the first failure is kept in
    :attr:`error` (one line naming the file), for the launcher to stop the run on, and
    what was already written stays whole."""

    def __init__(self, path: Path | RunLayout, append: bool = False) -> None:
        self.layout = path if isinstance(path, RunLayout) else RunLayout(Path(path))
        self.path = self.layout.root
        self.append = append  # a resumed run adds to the files it continues (metrics)
        self.error: str | None = None

    def failed(self, path: Path, e: OSError) -> None:
        """Keep the first write that failed (one line naming ``path``)."""
        if self.error is None:
            self.error = write_error(path, e)

    def artifact_path(self, name: str) -> Path | None:
        """Where a reported file goes; None for a name that would leave the run folder."""
        return self.layout.artifact(name)

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
            self.failed(path, e)
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            return False

    def log(self, peer: int, text: str) -> None:
        """Append a failed peer's traceback to ``logs/peer-<i>.log``."""
        path = self.layout.log(peer)
        try:
            path.parent.mkdir(exist_ok=True)
            with path.open("a") as f:
                f.write(text.rstrip() + "\n")
        except OSError as e:
            self.failed(path, e)
