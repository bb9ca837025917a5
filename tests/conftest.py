"""Shared fixtures: tiny scenarios, a TOML writer, and the leftover-process guard.

Every process this test session starts (peer processes spawned in-process by the
launcher, CLI subprocesses and *their* peers) inherits ``P2PGAME_TEST_SESSION``.
The ``no_leftover_processes`` guard (automatic for ``@pytest.mark.integration``
tests) scans ``/proc`` for processes that carry this session's tag, so it also
catches peers orphaned by a CLI subprocess, which are no longer our descendants.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for_exit

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = Path(__file__).resolve().parent / "scenarios"

SESSION_VAR = "P2PGAME_TEST_SESSION"
SESSION_TAG = uuid.uuid4().hex
os.environ[SESSION_VAR] = SESSION_TAG  # set before any process is started
# Tests that wait on a run's progress read its plain lines (stderr is a pipe): often.
os.environ.setdefault("P2PGAME_PROGRESS_EVERY_S", "0.5")

# multiprocessing runs one resource tracker per launching process; it is not a peer
# and it lives as long as its launcher.
_IGNORED_CMDLINES = ("multiprocessing.resource_tracker",)
# So does the fork server that peers are forked from (p2pgame.launch.backends), when the
# launcher ran in this process: it is then our own child.  Peers forked from it carry the
# same command line but are its children, and a CLI subprocess's server ends with it.
_FORK_SERVER = "multiprocessing.forkserver"


# --------------------------------------------------------------------------- xdist

# `make test` runs two xdist workers, whole files each (--dist loadfile): the run ends when
# the busier worker does.  Files go out in the order collected (--no-loadscope-reorder, in
# the Makefile), so the longest are collected first and the short ones fill in at the end:
# longest first, as measured with --durations on 2 cores, except test_ray.py, which is slow
# to start its cluster and its game when starved of CPU (its game has timed out beside the
# multi-peer files), so it goes out after them, beside the unit tests.  A file not listed
# keeps its collected place after these.
LONGEST_FIRST = (
    "integration/test_game_run.py",
    "integration/test_exchanges.py",  # (253 s under load in a full suite, the second longest)
    "integration/test_faults.py",
    "integration/test_placement.py",
    "integration/test_joint_run.py",
    "bench/test_bench_smoke.py",
    "bench/test_frontier_smoke.py",
    "integration/test_diffgan_run.py",
    "integration/test_expfam_runs.py",
    "integration/test_sweep_report.py",
    "integration/test_same_results.py",
    "integration/test_polymnist_run.py",
    "integration/test_ray.py",
    "unit/test_joint.py",
    "integration/test_network.py",
    "unit/test_eval.py",
    "unit/test_codec_fuzz.py",
)


def pytest_configure(config):
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:
        # A worker's own torch work (unit tests, the launcher's evaluator) gets its share
        # of the cores: torch's default, one thread per core in every worker, oversubscribes
        # them, and its threads then wait on each other (a unit test 2-3x slower).
        import torch

        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # (a serial run keeps the collected order)
    here = Path(__file__).resolve().parent
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def key(item) -> int:
        try:
            rel = item.path.resolve().relative_to(here).as_posix()
        except ValueError:
            return len(rank)
        return rank.get(rel, len(rank))

    items.sort(key=key)  # stable: within a file, and among the others, the collected order


# --------------------------------------------------------------------------- processes


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state, parent pid, ...);
    empty when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _proc_state(pid: int) -> str | None:
    return (_stat(pid) or [None])[0]


def _parent(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if len(fields) > 1 else None


def session_processes() -> dict[int, str]:
    """Live processes (not zombies) started by this test session: {pid: cmdline}."""
    needle = f"{SESSION_VAR}={SESSION_TAG}".encode()
    me = os.getpid()
    out: dict[int, str] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        pid = int(name)
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if _proc_state(pid) in (None, "Z", "X"):
            continue
        if any(s in cmd for s in _IGNORED_CMDLINES):
            continue
        if _FORK_SERVER in cmd and _parent(pid) == me:
            continue
        out[pid] = cmd
    return out


@pytest.fixture
def no_leftover_processes():
    """Fail the test if a process it started is still alive afterwards."""
    before = set(session_processes())
    yield
    # The launcher joins its peers before returning, so nothing should be left;
    # allow a short grace period for processes that are in the middle of exiting.
    left = {p: c for p, c in session_processes().items() if p not in before}
    if left:
        wait_for_exit(left, 5.0)
        left = {p: c for p, c in session_processes().items() if p not in before}
    for pid in left:  # do not poison the next tests; these are ours
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    assert not left, f"processes left alive after the test: {left}"


@pytest.fixture(scope="session")
def list_session_processes():
    """The scanner itself, for module-scoped fixtures that start processes."""
    return session_processes


@pytest.fixture(autouse=True)
def _guard_integration(request):
    if request.node.get_closest_marker("integration") is not None:
        request.getfixturevalue("no_leftover_processes")
    yield


# --------------------------------------------------------------------------- scenarios


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError("no inf/nan in test scenarios")
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {v!r} as TOML")


def dump_toml(raw: dict) -> str:
    """A small TOML writer: scalars first, then one [section] per nested table.

    Lists of tables are written inline, which is enough for the scenario format.
    """
    lines: list[str] = []
    tables = {k: v for k, v in raw.items() if isinstance(v, dict)}
    for k, v in raw.items():
        if k not in tables:
            lines.append(f"{k} = {_toml_value(v)}")
    for k, v in tables.items():
        lines.append("")
        lines.append(f"[{k}]")
        for kk, vv in v.items():
            lines.append(f"{kk} = {_toml_value(vv)}")
    return "\n".join(lines) + "\n"


TINY_EXPFAM: dict[str, Any] = {
    "name": "tiny",
    "seed": 3,
    "steps": 50,
    "topology": {"n": 4, "graph": "ring", "weights": "self_weight", "self_weight": 0.5},
    "comm": {"mode": "sync", "transport": "ipc", "samples_per_message": 32},
    "runtime": {"threads_per_peer": 1},
    "algorithm": {"name": "expfam", "family": "bernoulli", "dim": 4, "n_data": 100,
                  "batch": 32},
}


@pytest.fixture
def tiny_raw() -> dict[str, Any]:
    """A small, valid expfam scenario as a raw dict (a fresh copy per test)."""
    return copy.deepcopy(TINY_EXPFAM)


@pytest.fixture
def write_scenario(tmp_path):
    """``write_scenario(raw_or_text, name="scenario.toml") -> Path`` in ``tmp_path``."""

    def _write(raw: dict | str, name: str = "scenario.toml") -> Path:
        path = tmp_path / name
        path.write_text(raw if isinstance(raw, str) else dump_toml(raw))
        return path

    return _write


# --------------------------------------------------------------------------- image data


@pytest.fixture(scope="session")
def tiny_mnist_root(tmp_path_factory) -> Path:
    """A data root with tiny fake MNIST (shared by the session; its evaluator is cached)."""
    from tests.helpers import write_tiny_mnist

    return write_tiny_mnist(tmp_path_factory.mktemp("tiny-data"))
