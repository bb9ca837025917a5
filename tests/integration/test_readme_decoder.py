"""The README's wire-format decoder, copied out of README.md, decodes a live peer's messages.

It uses only pyzmq, msgpack and numpy: what a client in another language would
do.  The run is a CLI process (so it can be stopped with Ctrl-C like a user
would); the decoder runs in its own interpreter with peer 0's endpoint, which the
test checks against the run folder's ``endpoints.json``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers import wait_for_progress

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "tests" / "scenarios" / "expfam-ring4.toml"


def readme_decoder() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Wire format"):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the wire-format section has one Python decoder"
    return blocks[0]


@pytest.mark.timeout(120)
def test_readme_decoder_reads_a_live_peer() -> None:
    # As the README says: read peer 0's endpoint from the run folder's endpoints.json
    # (written before the measured phase: once progress shows, it is there), then connect;
    # the run goes on for long, so the decoder's first message comes whenever it joins.
    run_dir = Path(tempfile.mkdtemp(prefix="p2pg-rd-", dir="/tmp")) / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pgame.cli", "run", str(SCENARIO),
         "--run-dir", str(run_dir), "--set", "steps=100000000", "--set", "topology.n=2",
         "--set", 'topology.graph="complete"', "--set", "runtime.stop_timeout_s=5.0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, P2PGAME_PROGRESS_EVERY_S="0.5"))  # (a progress line soon)
    decoder = None
    try:
        wait_for_progress(proc, at_least=1)  # (endpoints.json is written before Go)
        endpoint = json.loads((run_dir / "endpoints.json").read_text())["0"]["endpoint"]
        assert endpoint.startswith("ipc://") and "/sock-" in endpoint, endpoint
        code = f"endpoint = {endpoint!r}\n" + readme_decoder()
        decoder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, cwd=run_dir.parent)
        out, err = decoder.communicate(timeout=90)
        assert decoder.returncode == 0, err
        # The test scenario's peers publish 64 samples of 8 bits on samples/0/x.
        assert "samples/0/x" in out and "x (64, 8)" in out, out
    finally:
        if decoder is not None and decoder.returncode is None:
            decoder.kill()
            decoder.communicate()
        proc.send_signal(signal.SIGINT)  # as a user would: Ctrl-C
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        shutil.rmtree(run_dir.parent, ignore_errors=True)
    assert proc.returncode == 130
