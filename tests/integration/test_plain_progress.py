"""What ``p2pgame run`` shows on a stderr that is not a terminal (a pipe here): a few
plain progress lines, in steps per peer, never a carriage return."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "tests" / "scenarios" / "expfam-ring4.toml"


def test_a_run_on_a_pipe_prints_few_plain_progress_lines(tmp_path) -> None:
    # The default cadence (10 s), whatever the test session set for its other runs.
    env = dict(os.environ, P2PGAME_PROGRESS_EVERY_S="10")
    done = subprocess.run(
        [sys.executable, "-m", "p2pgame.cli", "run", str(SCENARIO), "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    err = done.stderr
    assert "\r" not in err
    progress = [line for line in err.splitlines() if line.startswith("expfam-ring4: ")]
    # The start, a line every 10 s of a run of a few seconds, and the end.
    assert 2 <= len(progress) <= 4, err
    assert progress[0].startswith("expfam-ring4: 4 peer(s) running, 200 steps each")
    assert progress[-1].startswith("expfam-ring4: step 200/200 per peer (100 %)")
    assert "steps/s per peer; done after" in progress[-1]
