"""The README's wire-format decoder, copied out of README.md, decodes a live peer's messages.

It uses only pyzmq, msgpack and numpy: what a client in another language would
do.  The run is a CLI process (so it can be stopped with Ctrl-C like a user
would); the decoder runs in its own interpreter with the endpoint from the run
folder's ``endpoints.json``.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
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
def test_readme_decoder_reads_a_live_peer(tmp_path) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pgame.cli", "run", str(SCENARIO), "--quiet",
         "--run-dir", str(run_dir), "--set", "steps=100000000", "--set", "topology.n=2",
         "--set", 'topology.graph="complete"', "--set", "runtime.stop_timeout_s=5.0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        endpoints = run_dir / "endpoints.json"
        deadline = time.monotonic() + 60
        # endpoints.json is written once every peer said hello.  The CLI process offers no
        # other signal a README reader could use, so poll the file, with a deadline.
        while not endpoints.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no endpoints.json within 60 s"
            time.sleep(0.05)
        endpoint = json.loads(endpoints.read_text())["0"]["endpoint"]
        code = f"endpoint = {endpoint!r}\n" + readme_decoder()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        # The test scenario's peers publish 64 samples of 8 bits on samples/0/x.
        assert "samples/0/x" in out.stdout and "x (64, 8)" in out.stdout, out.stdout
    finally:
        proc.send_signal(signal.SIGINT)  # as a user would: Ctrl-C
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130
