"""What a launcher process holds while it runs: its private temporary folder, and the
signals that must not cut a run's summary short.

**The private folder.**  Unix socket paths are short (about 100 bytes), so a run's
ipc sockets cannot live in a deep run folder, and multiprocessing's fork server needs
a socket of its own.  Both go in one folder of this launcher process,
``<tmp>/p2pg-<pid>-<random>/``, created on first use (mode 0700), with a file naming
its owner (pid and the process's start time, so a later process with the same pid is
not mistaken for it).  It is removed when the process exits; a launcher killed with
SIGKILL cannot remove it, so every later start removes the folders whose owner is gone.

**Signals.**  SIGINT and SIGTERM, from the moment a run starts preparing until its
summary is written, are counted as the launcher's interrupts instead of raising
``KeyboardInterrupt`` wherever Python happens to be (a second Ctrl-C used to land
between two writes of the summary and lose it).
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

PREFIX = "p2pg-"
OWNER = "owner"

_private: Path | None = None


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/<pid>/stat field 22)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_alive(folder: Path) -> bool:
    try:
        pid_s, start = (folder / OWNER).read_text().split()
        pid = int(pid_s)
    except (OSError, ValueError):
        return True  # not ours to judge (being created, or not one of ours)
    return _start_time(pid) == start


def sweep(tmp: Path | None = None) -> list[Path]:
    """Remove the private folders of launchers that are gone; the folders removed."""
    tmp = Path(tmp or tempfile.gettempdir())
    removed = []
    with contextlib.suppress(OSError):
        for folder in tmp.glob(PREFIX + "*"):
            with contextlib.suppress(OSError):
                if (folder.is_dir() and not folder.is_symlink()
                        and folder.stat().st_uid == os.getuid() and not _owner_alive(folder)):
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder)
    return removed


def private_folder() -> Path:
    """This process's private temporary folder (made on first use; see the module)."""
    global _private
    if _private is not None and _private.is_dir():
        return _private
    sweep()
    pid = os.getpid()
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{pid}-"))
    (folder / OWNER).write_text(f"{pid} {_start_time(pid)}")
    atexit.register(shutil.rmtree, folder, True)
    # The fork server's socket goes here, not in a pymp-* folder of multiprocessing's own
    # (which outlives a killed launcher).  Read by multiprocessing.util.get_temp_dir.
    config = multiprocessing.current_process()._config
    if config.get("tempdir") is None:
        config["tempdir"] = str(folder)
    _private = folder
    return folder


class SignalHold:
    """Counts SIGINT/SIGTERM through ``on_signal`` while held (main thread only; elsewhere
    it does nothing).  :meth:`arm` again after an event loop that handled the signals
    itself has closed (asyncio restores the default handlers as it closes).  While
    :attr:`raise_now` is set, a signal raises ``KeyboardInterrupt`` after counting (a
    long evaluation that the user wants to cut short)."""

    def __init__(self, on_signal: Callable[[], None]) -> None:
        self.on_signal = on_signal
        self.raise_now = False
        self._old: dict[int, object] = {}
        self._main = threading.current_thread() is threading.main_thread()

    def _handler(self, signum, frame) -> None:
        self.on_signal()
        if self.raise_now:
            raise KeyboardInterrupt

    def arm(self) -> None:
        if not self._main:
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            old = signal.signal(sig, self._handler)
            self._old.setdefault(sig, old)

    def release(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


@contextlib.contextmanager
def signals_counted(on_signal: Callable[[], None]) -> Iterator[SignalHold]:
    hold = SignalHold(on_signal)
    hold.arm()
    try:
        yield hold
    finally:
        hold.release()
