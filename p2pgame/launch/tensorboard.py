"""TensorBoard event files of a run: ``tensorboard/`` in the run folder (``runtime.tensorboard``).

Each peer is a TensorBoard run of its own, ``tensorboard/peer-<i>/``, so that TensorBoard
draws the peers over each other; every numeric key of a peer's metrics lines is a scalar
at the line's ``step`` (``train/...``, ``comm/...``, ``eval/...`` as the peer wrote them,
and ``t`` as ``time/t``; lists, tables, text and true/false are not scalars and are left
out).  At the end of the run (:meth:`TensorBoardSink.finish`) each peer's sample grid
(``samples/peer-<i>.png``, made after its last step) is an image ``samples`` at its last
step, and one more run, ``tensorboard/edges/``, holds the per-edge accounts (``links.csv``)
as scalars ``edges/<src>-><dst>/<column>`` at the run's last step, and the resolved
scenario (``scenario.json``) as the text ``scenario/text_summary`` (``add_text``'s
name for ``scenario``; written when the run starts).

A step is written once per peer: a restarted peer's steps again (from its resume state)
and, on ``--resume``, the steps already in the peer's metrics file are left out.

Writing needs the ``tensorboard`` package (its protos and record writer, not TensorFlow),
imported only when a run asks for TensorBoard; the event files are written by
:class:`EventFile`, from the launcher's own thread; where it cannot be imported, one warning and the run goes
on without (:func:`tensorboard_sink`).  As every sink, this one never raises for the disk
refusing a write: it is the folder's write error (:meth:`RunFolder.failed`), on which the
launcher stops the run.  Anything else going wrong in TensorBoard's writer is one warning,
and the run goes on without TensorBoard.

Each line is one event (all its scalars in one summary: a third of the cost of an event
per scalar), which TensorBoard's reader takes as it takes any; its writer checksums every
event in Python (tensorboard's own code, without TensorFlow): about 0.15 ms of the
launcher's CPU per line of ten keys, six times the JSONL sink's, 15 s for 1024 peers' 100
lines each (``bench/sink_cost.py``).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import struct
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from p2pgame.launch.rundir import RunFolder, RunLayout

log = logging.getLogger(__name__)

FLUSH_SECS = 10  # a running run shows in TensorBoard within this many seconds
_unavailable: str | None = None  # why TensorBoard's protos could not be imported (warned once)
_files = itertools.count()  # (event file names are unique within the launcher's process)


class EventFile:
    """One TensorBoard run's event file (``events.out.tfevents.*`` in ``logdir``), written
    from the caller's thread, flushed every :data:`FLUSH_SECS` and when closed.

    Why not torch's ``SummaryWriter``: it writes from a thread of its own, so a disk that
    refuses a write kills that thread with a traceback on stderr, and the caller hears of
    it only at a later call.  Here every write's ``OSError`` is raised where the launcher
    made it, and becomes the run folder's write error like any other file's.  The records
    are TensorBoard's own (its ``RecordWriter``: length, CRCs, the serialised ``Event``),
    the file starts with the ``file_version`` event its reader expects."""

    def __init__(self, logdir: str | Path) -> None:
        from tensorboard.summary.writer.record_writer import RecordWriter

        logdir = Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
                f"{os.getpid()}.{next(_files)}")
        self._file = open(logdir / name, "wb")  # noqa: SIM115 (closed by close())
        self._records = RecordWriter(self._file)
        self._flushed = time.monotonic()
        self._event(file_version="brain.Event:2")

    def add_summary(self, summary: Any, step: int) -> None:
        self._event(step=int(step), summary=summary)

    def add_text(self, tag: str, text: str, step: int) -> None:
        """``text`` as TensorBoard's text plugin shows it, under ``<tag>/text_summary``
        (the tag torch's ``add_text`` gives it)."""
        from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
        from tensorboard.compat.proto.tensor_pb2 import TensorProto
        from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
        from tensorboard.plugins.text.plugin_data_pb2 import TextPluginData

        meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
            plugin_name="text", content=TextPluginData(version=0).SerializeToString()))
        tensor = TensorProto(dtype="DT_STRING", string_val=[text.encode()],
                             tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]))
        self.add_summary(Summary(value=[Summary.Value(
            tag=f"{tag}/text_summary", metadata=meta, tensor=tensor)]), step)

    def add_png(self, tag: str, png: bytes, step: int) -> None:
        """A PNG file's bytes as the image ``tag`` (its size read from its header)."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
            raise ValueError("not a PNG file")
        width, height = struct.unpack(">II", png[16:24])
        colour = {0: 1, 2: 3, 4: 2, 6: 4}.get(png[25], 3)  # grey, RGB, grey+alpha, RGBA
        image = Summary.Image(height=height, width=width, colorspace=colour,
                              encoded_image_string=png)
        self.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def flush(self) -> None:
        self._file.flush()
        self._flushed = time.monotonic()

    def close(self) -> None:
        self._file.close()  # (flushes; a refused flush raises, and the file is closed)

    def _event(self, **fields: Any) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        self._records.write(Event(wall_time=time.time(), **fields).SerializeToString())
        if time.monotonic() - self._flushed >= FLUSH_SECS:
            self.flush()


def event_writer() -> type[EventFile] | None:
    """:class:`EventFile`, once TensorBoard's protos and record writer are imported; None,
    after one warning per process, when they cannot be (no ``tensorboard`` package)."""
    global _unavailable
    try:
        import tensorboard.compat.proto.event_pb2  # noqa: F401
        import tensorboard.plugins.text.plugin_data_pb2  # noqa: F401
        import tensorboard.summary.writer.record_writer  # noqa: F401
    except Exception as e:  # ImportError (no tensorboard), or a broken install
        if _unavailable is None:
            _unavailable = f"{type(e).__name__}: {e}"
            log.warning(f"TensorBoard cannot be written ({_unavailable}): runs go on without "
                        "their tensorboard/ folder (pip install tensorboard, or set "
                        "runtime.tensorboard = false)")
        return None
    return EventFile


def tensorboard_sink(folder: RunFolder) -> TensorBoardSink | None:
    """The run's TensorBoard sink, its scenario text written; None when TensorBoard cannot
    be written (:func:`event_writer`)."""
    writer_class = event_writer()
    if writer_class is None:
        return None
    sink = TensorBoardSink(folder, writer_class)
    sink.write_scenario()
    return sink


def scalars(line: dict[str, Any]) -> list[tuple[str, float]]:
    """A metrics line's scalars: its numeric keys but ``step`` (``t`` as ``time/t``)."""
    out = []
    for key, value in line.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        out.append(("time/t" if key == "t" else key, float(value)))
    return out


def _is_step(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def logged_steps(layout: RunLayout) -> dict[int, int]:
    """The last step of each peer's metrics file there is (what a resumed run continues:
    its TensorBoard runs hold those steps already)."""
    out: dict[int, int] = {}
    for name, path in layout.metrics_files().items():
        try:
            peer, text = int(name), path.read_text()
        except (ValueError, OSError):
            continue
        steps = []
        for raw in text.splitlines():
            try:
                step = json.loads(raw).get("step")
            except (ValueError, AttributeError):
                continue
            if _is_step(step):
                steps.append(step)
        if steps:
            out[peer] = max(steps)
    return out


def add_scalars(writer: Any, values: list[tuple[str, float]], step: int) -> None:
    """``values`` as one event at ``step``: one summary of several scalars, through the
    writer's own file writer, as its ``add_scalar`` writes one event per scalar."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    summary = Summary(value=[Summary.Value(tag=tag, simple_value=v) for tag, v in values])
    writer.add_summary(summary, step)


class TensorBoardSink:
    """``tensorboard/peer-<i>/``: a TensorBoard run per peer (see the module).

    ``writer_class``: :class:`EventFile` (:func:`event_writer`).  A step at or
    below the last one written for a peer is left out (a restarted peer's steps again);
    on a resumed run (``folder.append``) the last one written is its metrics file's."""

    def __init__(self, folder: RunFolder, writer_class: Any) -> None:
        self.folder = folder
        self.writer_class = writer_class
        self._writers: dict[int, Any] = {}  # peer -> its run's writer
        self.last_step: dict[int, int] = logged_steps(folder.layout) if folder.append else {}
        self.off = False  # TensorBoard's writer failed other than for the disk: not written
        self._add_scalars = add_scalars  # (a seam: tests make the disk fill up)

    # -- the metric sink -------------------------------------------------------------------
    def open(self, peer: int) -> None:
        if peer in self._writers or self.folder.error is not None or self.off:
            return
        writer = self._writer(self.folder.layout.tensorboard(peer))
        if writer is not None:
            self._writers[peer] = writer

    def write(self, peer: int, lines: list[dict[str, Any]]) -> None:
        if self.folder.error is not None or self.off:
            return  # the run is stopping (or TensorBoard is not written)
        self.open(peer)
        writer = self._writers.get(peer)
        if writer is None:  # (its open failed: the folder's error, or a warning, says so)
            return
        last = self.last_step.get(peer, -1)
        with self._guard(self.folder.layout.tensorboard(peer)):
            for line in lines:
                step = line.get("step")
                if not _is_step(step) or step <= last:
                    continue  # written already (a restarted or resumed peer's step again)
                values = scalars(line)
                if values:
                    self._add_scalars(writer, values, step)
                last = self.last_step[peer] = step

    def close(self) -> None:
        writers, self._writers = self._writers, {}
        for peer, writer in sorted(writers.items()):
            self._close(writer, self.folder.layout.tensorboard(peer))

    # -- the run's own run, and the end of the run -----------------------------------------
    def write_scenario(self) -> None:
        """The resolved scenario (``scenario.json``) as the text ``scenario`` of
        ``tensorboard/edges/``, at step 0 (indented: TensorBoard shows it as it is)."""
        try:
            text = self.folder.layout.scenario_json.read_text()
        except OSError:
            return  # (no scenario written: nothing to show)
        with self._session(None) as writer:
            if writer is not None:
                writer.add_text("scenario", "".join(
                    "    " + line for line in text.splitlines(keepends=True)), 0)

    def finish(self, summary: dict[str, Any]) -> None:
        """The end of a run (``summary``: summary.json's keys): each reporting peer's sample
        grid as the image ``samples`` at its last step, and the per-edge accounts (the
        summary's ``links``) as ``edges/<src>-><dst>/<column>`` of ``tensorboard/edges/`` at
        the run's last step.  The metric writers are closed already (:meth:`close`)."""
        self.close()
        default = max(0, int(summary.get("steps") or 1) - 1)
        run_last = max(self.last_step.values(), default=default)
        for name in sorted(summary.get("peers", {}), key=int):
            self._grid(int(name), self.last_step.get(int(name), default))
        values = [(f"edges/{row['src']}->{row['dst']}/{key}", float(v))
                  for row in summary.get("links", ()) for key, v in row.items()
                  if key not in ("src", "dst") and not isinstance(v, bool)
                  and isinstance(v, int | float)]
        if values:
            with self._session(None) as writer:
                if writer is not None:
                    self._add_scalars(writer, values, run_last)

    def _grid(self, peer: int, step: int) -> None:
        path = self.folder.layout.samples(peer)
        try:
            png = path.read_bytes()
        except OSError:
            return  # (no grid: a learner that draws none, or a peer that made none)
        if png[:8] != b"\x89PNG\r\n\x1a\n":
            log.warning(f"TensorBoard: {path} not shown (not a PNG file)")
            return
        with self._session(peer) as writer:
            if writer is not None:
                writer.add_png("samples", png, step)

    # -- the writers, and what may go wrong with them --------------------------------------
    def _writer(self, path: Path) -> Any | None:
        if self.folder.error is not None or self.off:
            return None
        with self._guard(path):
            return self.writer_class(path)
        return None

    def _close(self, writer: Any, path: Path) -> None:
        with self._guard(path):
            writer.close()

    @contextmanager
    def _session(self, peer: int | None):
        """A writer for one run (``peer``; None: ``edges``) for a few writes, closed after;
        None when it cannot be had."""
        path = self.folder.layout.tensorboard(peer)
        writer = self._writer(path)
        if writer is None:
            yield None
            return
        try:
            with self._guard(path):  # (what the caller writes through it, too)
                yield writer
        finally:
            self._close(writer, path)

    @contextmanager
    def _guard(self, path: Path):
        """The disk refusing a write is the folder's error; anything else one warning, and
        TensorBoard is not written any more (the run goes on)."""
        try:
            yield
        except OSError as e:
            self.folder.failed(path, e)
        except Exception as e:
            if not self.off:
                self.off = True
                log.warning(f"TensorBoard: writing {path} failed ({type(e).__name__}: {e}); "
                            "the run goes on without TensorBoard")
