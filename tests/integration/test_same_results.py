"""Same results after the architecture change: fixed-seed runs against recorded metrics.

``tests/fixtures/same_results.json`` holds every peer metric (timings aside) of
``topologies/expfam-ring8.toml`` and a tiny game, recorded with the code before
issue #8's change (``python -m tests.fixtures.record_same_results``).  The
exp-family run is numpy float64 and must match to the last bit's neighbourhood;
the game trains torch models, compared to a relative 1e-4.  A third entry, the async ring
on the virtual clock, was recorded before a step's promise rode in its data message
(session 21): how the clock's promises travel must change no result.
"""

from __future__ import annotations

import json
import math

import pytest

from p2pgame.launch import run
from tests.fixtures.record_same_results import FIXTURE, ROOT, TINY_GAME, VIRTUAL_RING8, collect
from tests.helpers import write_tiny_mnist

pytestmark = pytest.mark.integration


def _diff(want, got, path: str, rel: float, out: list[str]) -> None:
    if isinstance(want, dict) and isinstance(got, dict):
        # Keys added since the recording (new accounts, e.g. per-edge links) change no
        # result; a recorded key that is gone, or a value that moved, does.
        for k in sorted(want):
            if k not in got:
                out.append(f"{path}/{k}: only in recorded results")
            else:
                _diff(want[k], got[k], f"{path}/{k}", rel, out)
    elif isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            out.append(f"{path}: {len(want)} recorded items, {len(got)} now")
        for k, (a, b) in enumerate(zip(want, got, strict=False)):
            _diff(a, b, f"{path}[{k}]", rel, out)
    elif isinstance(want, float) or isinstance(got, float):
        if not math.isclose(want, got, rel_tol=rel, abs_tol=1e-12):
            out.append(f"{path}: recorded {want!r}, now {got!r}")
    elif want != got:
        out.append(f"{path}: recorded {want!r}, now {got!r}")


def _compare(name: str, run_dir, rel: float) -> None:
    want = json.loads(FIXTURE.read_text())[name]
    problems: list[str] = []
    _diff(want, collect(run_dir), name, rel, problems)
    assert not problems, "\n".join(problems[:20])


def test_expfam_ring8_matches_recorded_metrics(tmp_path) -> None:
    res = run(ROOT / "topologies" / "expfam-ring8.toml", [], out=tmp_path, progress=False)
    assert res.exit_code == 0, res.failures
    _compare("expfam-ring8", res.run_dir, rel=1e-12)


def test_the_async_ring_on_the_virtual_clock_matches_recorded_metrics(tmp_path) -> None:
    """Recorded before a step's promise rode in its data message: the virtual clock's
    results do not depend on how its promises travel (nor does the capped link's queue
    see the promise's bytes)."""
    res = run(ROOT / "topologies" / "expfam-ring8-async.toml", VIRTUAL_RING8, out=tmp_path,
              progress=False)
    assert res.exit_code == 0, res.failures
    _compare("expfam-ring8-virtual", res.run_dir, rel=1e-12)


def test_tiny_game_matches_recorded_metrics(tmp_path) -> None:
    data = write_tiny_mnist(tmp_path / "data")
    scenario = tmp_path / "game-tiny.toml"
    scenario.write_text(TINY_GAME)
    res = run(scenario, [], out=tmp_path / "runs", data_root=data, progress=False)
    assert res.exit_code == 0, res.failures
    _compare("game-tiny", res.run_dir, rel=1e-4)
