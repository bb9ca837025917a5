"""The README's wire-format decoder, copied out of README.md, decodes a live peer's messages.

It uses only pyzmq, msgpack and numpy: what a client in another language would
do.  The run is a CLI process (so it can be stopped with Ctrl-C like a user
would); the decoder runs in its own interpreter with peer 0's endpoint, which the
test checks against the run folder's ``endpoints.json``.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

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
    # A short run folder keeps the ipc sockets in it (run/sock/peer-<i>.sock), so peer 0's
    # endpoint is known before the run starts: the decoder connects first and ZeroMQ links
    # it up when the peer binds.  Its recv waits for the first message; nothing polls.
    run_dir = Path(tempfile.mkdtemp(prefix="p2pg-rd-", dir="/tmp"))
    endpoint = f"ipc://{run_dir}/sock/peer-0.sock"
    code = f"endpoint = {endpoint!r}\n" + readme_decoder()
    decoder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=run_dir)
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pgame.cli", "run", str(SCENARIO), "--quiet",
         "--run-dir", str(run_dir), "--set", "steps=100000000", "--set", "topology.n=2",
         "--set", 'topology.graph="complete"', "--set", "runtime.stop_timeout_s=5.0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = decoder.communicate(timeout=90)
        assert decoder.returncode == 0, err
        # The test scenario's peers publish 64 samples of 8 bits on samples/0/x.
        assert "samples/0/x" in out and "x (64, 8)" in out, out
        # What the README tells a reader to use: endpoints.json names the same endpoint.
        endpoints = json.loads((run_dir / "endpoints.json").read_text())
        assert endpoints["0"]["endpoint"] == endpoint
    finally:
        if decoder.returncode is None:
            decoder.kill()
            decoder.communicate()
        proc.send_signal(signal.SIGINT)  # as a user would: Ctrl-C
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        shutil.rmtree(run_dir, ignore_errors=True)
    assert proc.returncode == 130
