"""Runs that end badly still end well: a full disk, Ctrl-C twice, Ctrl-C with a frozen
peer, a launcher killed under its private folder.  Each through the real command, as a
user meets it: the exit status, one line of error, no traceback, the run folder."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p2pgame.launch import hold
from tests.helpers import wait_for_output, wait_for_progress

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "tests" / "scenarios" / "expfam-ring4.toml"


def _run(out: Path, *overrides: str, **kw) -> subprocess.Popen:
    args = [sys.executable, "-m", "p2pgame.cli", "run", str(SCENARIO), "--out", str(out)]
    for o in overrides:
        args += ["--set", o]
    # A plain progress line every half second (stderr is a pipe): wait_for_progress sees
    # the measured phase at once.
    env = dict(os.environ, P2PGAME_PROGRESS_EVERY_S="0.5")
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, **kw)


@contextlib.contextmanager
def _running(out: Path, *overrides: str):
    """A ``p2pgame run`` in its measured phase (40 peer steps in), killed if the test
    leaves it running."""
    proc = _run(out, *overrides)
    try:
        wait_for_progress(proc, at_least=40)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MiB tmpfs (root can mount one; elsewhere the test is skipped and the unit
    test of the run folder's writes, which injects the fault, stands for it)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_stops_the_run_with_one_line_and_keeps_what_was_written(tiny_disk):
    proc = _run(tiny_disk, "runtime.metrics_every=1", "steps=1000000", 'comm.mode="async"')
    out, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 1, err
    assert "Traceback" not in err, err
    # (The file the disk refused first: a metrics file or a TensorBoard event file, whose
    # writes are the launcher's own too.)
    assert re.search(r"cannot write \S+/(metrics|tensorboard)/peer-\d+\S*: the disk is full",
                     err), err
    (run_dir,) = tiny_disk.iterdir()
    lines = 0
    for path in (run_dir / "metrics").glob("peer-*.jsonl"):
        text = path.read_text()
        assert text == "" or text.endswith("\n"), f"{path.name}: a cut line"
        for line in text.splitlines():
            json.loads(line)  # every line kept is whole
            lines += 1
    assert lines > 1000  # (the disk held thousands before it filled)


@pytest.mark.parametrize("second", ["at-once", "once-the-first-is-handled"])
def test_ctrl_c_twice_still_writes_the_summary(tmp_path, second):
    """The second Ctrl-C comes with the first, or once the launcher has said it is
    stopping the peers (when one used to land between two writes of the summary)."""
    with _running(tmp_path, "steps=10000000") as proc:
        proc.send_signal(signal.SIGINT)
        if second != "at-once":
            wait_for_output(proc, lambda tail: b"stopping: asking peers to stop" in tail,
                            what="the launcher's stopping line")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    (run_dir,) = tmp_path.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["interrupted"] is True
    assert (run_dir / "links.csv").read_text().startswith("src,dst,")


def test_ctrl_c_with_a_frozen_peer_waits_once_and_exits_130(tmp_path):
    """Peer 2 is SIGSTOPped; Ctrl-C asks everyone to stop, waits runtime.stop_timeout_s
    (once, not twice) for the frozen one, ends it, and says it did so: a warning, not a
    failure of the peer's own."""
    stop_s = 5.0
    with _running(tmp_path, "steps=10000000", 'comm.mode="async"',
                  f"runtime.stop_timeout_s={stop_s}") as proc:
        (run_dir,) = tmp_path.iterdir()
        endpoints = json.loads((run_dir / "endpoints.json").read_text())
        os.kill(endpoints["2"]["pid"], signal.SIGSTOP)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - t0
    err = err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["failed_peers"] == []
    assert "ended by the launcher" in summary["warnings"]["2"]
    # Once: stop_s, then 2 s from SIGTERM to SIGKILL (a stopped process cannot take the
    # SIGTERM), then the summary; twice would be past 2 * stop_s + 2.
    assert took < 2 * stop_s, took


def test_a_killed_launchers_private_folder_is_removed_at_the_next_start(tmp_path):
    """The fork server's socket and the run's ipc sockets live in the launcher's private
    folder; a SIGKILLed launcher leaves it, and the next start removes it."""
    out = tmp_path / "runs"
    with _running(out, "steps=10000000") as proc:
        mine = [p for p in Path(hold.tempfile.gettempdir()).glob(f"{hold.PREFIX}{proc.pid}-*")]
        assert len(mine) == 1, mine
        socks = {p.name for p in mine[0].rglob("*.sock")}
        assert "peer-0.sock" in socks and "control.sock" in socks, socks
        assert not list(out.rglob("*.sock")), "sockets in the run folder"
        proc.kill()
        proc.communicate()
    assert mine[0].exists()
    removed = hold.sweep()
    assert mine[0] in removed and not mine[0].exists()
