"""Metric sinks: the JSONL sink's files (new or continued on --resume, whole lines on a
full disk), and the launcher's fan-out of every peer's lines to its sinks."""

from __future__ import annotations

import errno
import json
import os
from types import SimpleNamespace

from p2pgame.launch.launcher import Launcher
from p2pgame.launch.rundir import RunFolder
from p2pgame.launch.sinks import JsonlSink, MetricSink


def _lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_a_new_run_starts_its_metrics_files_afresh(tmp_path) -> None:
    folder = RunFolder(tmp_path)
    folder.layout.metrics_dir.mkdir()
    folder.layout.metrics(0).write_text('{"step": 99}\n')  # (not this run's)
    sink = JsonlSink(folder)
    sink.open(0)
    sink.open(0)  # idempotent
    sink.write(0, [{"step": 1}, {"step": 2}])
    sink.write(1, [{"step": 1}])  # opened on its first lines
    sink.close()
    assert _lines(folder.layout.metrics(0)) == [{"step": 1}, {"step": 2}]
    assert _lines(folder.layout.metrics(1)) == [{"step": 1}]
    assert folder.error is None


def test_a_resumed_run_appends_to_the_metrics_it_continues(tmp_path) -> None:
    first = JsonlSink(RunFolder(tmp_path))
    first.write(0, [{"step": 1}])
    first.close()
    folder = RunFolder(tmp_path, append=True)  # --resume
    sink = JsonlSink(folder)
    assert sink.append
    sink.write(0, [{"step": 2, "loss": 0.5}])
    sink.close()
    assert _lines(folder.layout.metrics(0)) == [{"step": 1}, {"step": 2, "loss": 0.5}]


def test_a_write_error_cuts_back_to_the_last_whole_line(tmp_path) -> None:
    folder = RunFolder(tmp_path)
    sink = JsonlSink(folder)
    sink.write(2, [{"step": 0}])
    room = [10]

    def partly(fd, data):  # takes 10 bytes of the next write, then the disk is full
        if room[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = os.write(fd, bytes(data[:room[0]]))
        room[0] -= n
        return n

    sink._os_write = partly
    sink.write(2, [{"step": 1, "loss": 0.25}, {"step": 2, "loss": 0.125}])
    assert folder.error == f"cannot write {tmp_path}/metrics/peer-2.jsonl: the disk is full"
    sink._os_write = os.write
    sink.write(2, [{"step": 3}])  # the run is stopping: nothing more is written
    sink.close()
    assert folder.layout.metrics(2).read_text() == '{"step": 0}\n'


def test_a_metrics_file_that_cannot_be_opened_is_the_folders_error(tmp_path) -> None:
    folder = RunFolder(tmp_path)
    folder.layout.metrics_dir.write_text("not a folder")
    sink = JsonlSink(folder)
    sink.write(0, [{"step": 1}])
    assert folder.error is not None and "metrics/peer-0.jsonl" in folder.error
    sink.close()


class _Recording:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def open(self, peer: int) -> None:
        self.calls.append(("open", peer))

    def write(self, peer: int, lines: list[dict]) -> None:
        self.calls.append(("write", peer, [x["step"] for x in lines]))

    def close(self) -> None:
        self.calls.append(("close",))


def test_the_launcher_gives_every_sink_every_line(tmp_path) -> None:
    scenario = SimpleNamespace(n=2, runtime=SimpleNamespace(restart=0))
    folder = RunFolder(tmp_path)
    sinks: list[MetricSink] = [_Recording(), JsonlSink(folder)]
    launcher = Launcher(scenario, None, folder, None, progress=False, sinks=sinks)
    launcher.metrics(1, [{"step": 1}])
    launcher.metrics(1, [{"step": 2}, {"step": 3}])
    launcher.metrics(0, [{"step": 1}])
    launcher.close()
    assert sinks[0].calls == [("open", 1), ("write", 1, [1]), ("write", 1, [2, 3]),
                              ("open", 0), ("write", 0, [1]), ("close",)]
    assert [x["step"] for x in _lines(folder.layout.metrics(1))] == [1, 2, 3]


def test_the_launchers_default_sink_is_jsonl_in_its_folder(tmp_path) -> None:
    scenario = SimpleNamespace(n=1, runtime=SimpleNamespace(restart=0))
    launcher = Launcher(scenario, None, RunFolder(tmp_path), None, progress=False)
    assert [type(s) for s in launcher.sinks] == [JsonlSink]
    assert Launcher(scenario, None, None, None, progress=False).sinks == []
