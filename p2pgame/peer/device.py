"""A peer's torch device, its own CUDA stream, and where an algorithm call runs.

A heavy algorithm's calls (``publish``, ``train_step``, ``probe``, ``finish``,
``checkpoint_state``) run in a worker thread (:func:`asyncio.to_thread`, the loop's
default executor: a worker process that hosts several peers gives them a shared pool),
so that the receiving task goes on meanwhile; a light one's run inline on the event
loop.  On CUDA every call runs on the peer's own stream, synchronised before its results
leave (numpy arrays, floats), so peers that share a GPU do not serialise on the default
stream.

Torch's intra-op thread count is process-wide (``torch.set_num_threads``, set once by
the peer's process, :mod:`p2pgame.peer`), so it applies in the worker thread too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


class Device:
    """``want``: the launch's device (``cpu``, ``cuda``, ``cuda:N``); ``torch``: whether
    the algorithm uses torch at all (if not, torch is never imported)."""

    def __init__(self, want: str, torch: bool, gpu_memory_fraction: float = 0.0) -> None:
        self.device: Any = "cpu"
        self.stream: Any = None
        self.in_flight = 0  # algorithm calls running in a worker thread now
        self.last_s = 0.0  # how long the last threaded call ran in its thread
        self.last_cpu_s = 0.0  # and the CPU time of that thread meanwhile
        if not torch:
            return
        import torch as _torch

        self.device = _torch.device(want)
        if self.device.type != "cuda":
            return
        if gpu_memory_fraction:  # per process: the peers of a worker share the cap
            _torch.cuda.set_per_process_memory_fraction(gpu_memory_fraction, self.device)
        self.stream = _torch.cuda.Stream(device=self.device)

    def on_stream(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on this peer's stream, complete when it returns (no stream: as is)."""
        if self.stream is None:
            return fn(*args)
        import torch

        with torch.cuda.stream(self.stream):
            out = fn(*args)
        self.stream.synchronize()  # results leave the stream (numpy, floats) complete
        return out

    async def call(self, heavy: bool, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``: in a worker thread if ``heavy``, else inline on the loop."""
        if not heavy:
            return self.on_stream(fn, *args)
        self.in_flight += 1
        try:
            return await asyncio.to_thread(self._timed, fn, *args)
        finally:
            self.in_flight -= 1

    def _timed(self, fn: Callable[..., Any], *args: Any) -> Any:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return self.on_stream(fn, *args)
        finally:
            # What the call took in its thread (the rest of its await is the hand-off),
            # and the CPU time that thread used meanwhile (less: it waited for a core, the
            # GIL or the GPU).
            self.last_s = time.perf_counter() - t0
            self.last_cpu_s = time.thread_time() - c0

    def busy(self) -> bool:
        """Whether an algorithm call is running in a worker thread."""
        return self.in_flight > 0
