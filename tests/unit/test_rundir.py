"""The run folder's writes when the disk refuses them: nothing raises, the first failure is
kept as one line naming the file, and what was written stays whole."""

from __future__ import annotations

import errno
import json

from p2pgame.launch.rundir import RunFolder
from p2pgame.launch.sinks import JsonlSink


def _filling_disk(room: int):
    """os.write that takes ``room`` bytes in all, part of a write included, then ENOSPC."""
    import os

    left = [room]

    def write(fd, data):
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = os.write(fd, bytes(data[: left[0]]))
        left[0] -= n
        return n

    return write


def test_a_full_disk_keeps_every_complete_line_and_names_the_file(tmp_path):
    folder = RunFolder(tmp_path)
    sink = JsonlSink(folder)
    sink._os_write = _filling_disk(1000)
    lines = [{"step": k, "loss": 0.5} for k in range(10)]  # about 30 bytes each
    for k in range(0, 100, 10):
        sink.write(3, [{**x, "step": x["step"] + k} for x in lines])
    sink.close()
    assert folder.error == f"cannot write {tmp_path}/metrics/peer-3.jsonl: the disk is full"
    text = (tmp_path / "metrics" / "peer-3.jsonl").read_text()
    assert text.endswith("\n") and len(text) <= 1000
    steps = [json.loads(x)["step"] for x in text.splitlines()]
    assert steps == list(range(len(steps))) and steps  # whole lines, in order, none cut


def test_after_a_failure_nothing_more_is_written_and_artifacts_are_whole(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.artifact("resume/peer-0.json", b"old")
    sink = JsonlSink(folder)
    sink._os_write = _filling_disk(0)
    sink.write(0, [{"step": 0}])
    assert folder.error is not None and "peer-0.jsonl" in folder.error
    assert folder.artifact("resume/peer-0.json", b"new")  # accepted, not written
    assert (tmp_path / "resume" / "peer-0.json").read_bytes() == b"old"
    assert not list(tmp_path.rglob("*.part"))
    sink.close()


def test_an_artifact_the_disk_refuses_leaves_the_old_version(tmp_path, monkeypatch):
    from pathlib import Path

    folder = RunFolder(tmp_path)
    assert folder.artifact("samples/peer-1.png", b"v1")

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    assert folder.artifact("samples/peer-1.png", b"v2")
    monkeypatch.undo()
    assert folder.error == (f"cannot write {tmp_path}/samples/peer-1.png: the disk is full")
    assert (tmp_path / "samples" / "peer-1.png").read_bytes() == b"v1"
