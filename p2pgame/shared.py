"""Read-only values that the peers of one process share, built once per process.

With ``runtime.placement = "workers"`` many peers live in one worker process.
Each would otherwise hold its own copy of the data set, the evaluator and its
test features, and solve the same equilibrium again.  :func:`shared` builds a
value on first use and hands every later caller the same object; with one peer
per process nothing changes.  Callers must treat shared values as read-only
(index them, never write into them).

Keys say everything the value depends on (file stats for files), so a test
that rewrites a data set under the same path gets the new one.  Building is
serialised per key, not globally: peers' threads may load different values at
once, and two threads asking for one key build it once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")

_values: dict[Hashable, Any] = {}
_locks: dict[Hashable, threading.Lock] = {}
_guard = threading.Lock()


def shared(key: Hashable, build: Callable[[], T]) -> T:
    """The value of ``key`` in this process, built by ``build()`` the first time."""
    with _guard:
        if key in _values:
            return _values[key]
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        with _guard:
            if key in _values:
                return _values[key]
        value = build()  # outside the guard: other keys go on meanwhile
        with _guard:
            _values[key] = value
        return value


def shared_with(anchor: Any, name: str, build: Callable[[], T]) -> T:
    """The value ``name`` of object ``anchor`` (e.g. the scenario the peers of a worker
    share), built once.  The entry holds ``anchor`` itself, so its id cannot be reused by
    another object while the entry lives."""
    pinned, value = shared((name, id(anchor)), lambda: (anchor, build()))
    if pinned is not anchor:  # pragma: no cover - impossible while the entry pins it
        raise RuntimeError(f"shared value {name!r}: anchor changed")
    return value
