"""Metric sinks: the JSONL sink's files (new or continued on --resume, whole lines on a
full disk), and the launcher's fan-out of every peer's lines to its sinks."""

from __future__ import annotations

import errno
import json
import os
from types import SimpleNamespace

import pytest

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


# -- the TensorBoard sink ------------------------------------------------------------------

def _board(run_dir) -> dict:
    """Every scalar of a TensorBoard run folder, by tag: [(step, value)], read with
    TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0,
                                                        "images": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture
def tb_warnings(monkeypatch):
    """The warnings of p2pgame.launch.tensorboard, caught by a handler on that logger itself
    (in the full suite, caplog's handler on the root logger missed them: something else
    in the worker process had reconfigured logging)."""
    import logging

    log = logging.getLogger("p2pgame.launch.tensorboard")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    monkeypatch.setattr(log, "disabled", False)
    monkeypatch.setattr(logging.root.manager, "disable", logging.NOTSET)
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.WARNING)
    yield records
    log.removeHandler(handler)
    log.setLevel(level)


def _tensorboard_sink(folder):
    from p2pgame.launch.tensorboard import TensorBoardSink, event_writer

    return TensorBoardSink(folder, event_writer())


def _line(step: int, loss: float) -> dict:
    return {"step": step, "t": 0.5 * step, "train/loss": loss, "comm/bytes_sent": 100 * step,
            "eval/class_mass": [0.5, 0.5], "eval/info": {"a": 1}, "train/kind": "x",
            "comm/stopped": True}


def test_tensorboard_writes_a_step_once_when_a_restarted_peer_repeats_it(tmp_path) -> None:
    """Numeric keys are scalars at the line's step (``t`` as ``time/t``; lists, tables,
    text and true/false are not); a restarted peer's lines at or below the last step
    written are left out: its first incarnation's values stand."""
    folder = RunFolder(tmp_path)
    sink = _tensorboard_sink(folder)
    sink.open(0)
    sink.write(0, [_line(0, 4.0), _line(5, 3.0)])
    sink.write(0, [_line(10, 2.0)])
    sink.write(0, [_line(5, 9.0), _line(10, 9.0), _line(15, 1.0)])  # restarted at step 5
    sink.write(1, [_line(5, 7.0)])  # another peer: its own run, its own steps
    sink.close()
    assert sink.last_step == {0: 15, 1: 5} and folder.error is None
    board = _board(folder.layout.tensorboard(0))
    assert sorted(board) == ["comm/bytes_sent", "time/t", "train/loss"]
    assert board["train/loss"] == [(0, 4.0), (5, 3.0), (10, 2.0), (15, 1.0)]
    assert board["comm/bytes_sent"] == [(0, 0.0), (5, 500.0), (10, 1000.0), (15, 1500.0)]
    assert board["time/t"] == [(0, 0.0), (5, 2.5), (10, 5.0), (15, 7.5)]
    assert _board(folder.layout.tensorboard(1))["train/loss"] == [(5, 7.0)]


def test_a_resumed_runs_tensorboard_continues_after_its_metrics_files(tmp_path) -> None:
    """--resume (folder.append): the steps already in a peer's metrics file are not
    written again (its peers redo the steps from their resume states)."""
    first = JsonlSink(RunFolder(tmp_path))
    first.write(0, [{"step": 0}, {"step": 10}, {"step": 20}, {"step": 10}])  # a restart
    first.close()
    folder = RunFolder(tmp_path, append=True)
    sink = _tensorboard_sink(folder)
    assert sink.last_step == {0: 20}
    sink.write(0, [_line(10, 9.0), _line(20, 9.0), _line(30, 1.0)])
    sink.close()
    assert _board(folder.layout.tensorboard(0))["train/loss"] == [(30, 1.0)]


def test_a_full_disk_under_tensorboard_is_the_folders_error_not_a_raise(tmp_path) -> None:
    folder = RunFolder(tmp_path)
    sink = _tensorboard_sink(folder)
    sink.write(2, [_line(0, 1.0)])
    written = []

    def full(writer, values, step):
        written.append(step)
        raise OSError(errno.ENOSPC, "No space left on device")

    sink._add_scalars = full
    sink.write(2, [_line(1, 1.0), _line(2, 1.0)])  # no raise
    assert folder.error == f"cannot write {tmp_path}/tensorboard/peer-2: the disk is full"
    sink.write(2, [_line(3, 1.0)])  # the run is stopping: nothing more is written
    sink.write(3, [_line(3, 1.0)])
    sink.finish({"steps": 4, "peers": {"2": {}}, "links": [{"src": 0, "dst": 2, "sent": 1}]})
    assert written == [1] and sink.last_step == {2: 0}
    assert not folder.layout.tensorboard(3).exists()
    assert not folder.layout.tensorboard(None).exists()


def test_a_tensorboard_folder_that_cannot_be_made_is_the_folders_error(tmp_path) -> None:
    folder = RunFolder(tmp_path)
    folder.layout.tensorboard_dir.write_text("not a folder")
    sink = _tensorboard_sink(folder)
    sink.write(0, [_line(0, 1.0)])
    assert folder.error is not None and "tensorboard/peer-0" in folder.error
    sink.close()


def test_another_failure_of_tensorboard_is_one_warning_and_the_run_goes_on(
        tmp_path, tb_warnings) -> None:
    folder = RunFolder(tmp_path)
    sink = _tensorboard_sink(folder)

    def broken(writer, values, step):
        raise ValueError("a tag TensorBoard refuses")

    sink._add_scalars = broken
    sink.write(0, [_line(0, 1.0)])
    sink.write(1, [_line(0, 1.0)])
    sink.close()
    assert folder.error is None and sink.off
    warned = [r.getMessage() for r in tb_warnings if r.levelname == "WARNING"]
    assert len(warned) == 1 and "goes on without TensorBoard" in warned[0], warned
    assert not folder.layout.tensorboard(1).exists()


def test_without_tensorboard_one_warning_and_no_sink(tmp_path, monkeypatch,
                                                     tb_warnings) -> None:
    import sys

    from p2pgame.launch import tensorboard

    monkeypatch.setitem(sys.modules, "tensorboard.summary.writer.record_writer", None)  # fails
    monkeypatch.setattr(tensorboard, "_unavailable", None)
    assert tensorboard.tensorboard_sink(RunFolder(tmp_path)) is None
    assert tensorboard.tensorboard_sink(RunFolder(tmp_path)) is None
    warned = [r.getMessage() for r in tb_warnings if r.levelname == "WARNING"]
    assert len(warned) == 1 and "runs go on without their tensorboard/ folder" in warned[0]
    assert not (tmp_path / "tensorboard").exists()
