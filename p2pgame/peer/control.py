"""The control protocol between the launcher and its peers, as typed messages.

Launcher -> peer: :class:`Connect`, :class:`Rewire`, :class:`Go`, :class:`Stop`,
:class:`Shutdown`.
Peer -> launcher: :class:`Hello`, :class:`Linked`, :class:`Progress`,
:class:`Metrics`, :class:`Artifact`, :class:`Done`, :class:`Error`.

A peer's life: ``Hello`` (its endpoint) -> ``Connect`` (its in-neighbours'
endpoints) -> handshake -> ``Linked`` -> ``Go`` -> measured phase, with
``Progress``, ``Metrics`` lines and ``Artifact`` files on the way -> ``Done``
(its summary, and the names of large files it wrote itself) -> ``Shutdown``.
``Stop`` ends the measured phase early (the peer still reports ``Done``).
Everything that lands in the run folder travels here, so the launcher needs
no file system shared with its peers.

On the wire a message is a msgpack map ``{"type": <name>, <field>: ...}``;
anything else is a :class:`ControlError`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import msgpack


class ControlError(ValueError):
    """Bytes on the control channel that are not a known, well-formed message."""


@dataclass(frozen=True)
class Hello:
    endpoint: str  # where the peer's PUB socket listens
    pid: int


@dataclass(frozen=True)
class Connect:
    endpoints: dict[int, str]  # in-neighbour -> endpoint


@dataclass(frozen=True)
class Rewire:
    """In-neighbour ``peer`` was restarted: it now publishes at ``endpoint``, resuming at
    step ``from_step`` (its steps start again from there)."""

    peer: int
    endpoint: str
    from_step: int


@dataclass(frozen=True)
class Linked:
    pass


@dataclass(frozen=True)
class Go:
    pass


@dataclass(frozen=True)
class Progress:
    step: int  # steps done


@dataclass(frozen=True)
class Metrics:
    lines: list[dict[str, Any]]  # lines for metrics/peer-<i>.jsonl, in order


@dataclass(frozen=True)
class Artifact:
    name: str  # path relative to the run folder, e.g. samples/peer-3.png
    data: bytes


@dataclass(frozen=True)
class Done:
    summary: dict[str, Any]
    files: list[str] = field(default_factory=list)  # written by the peer itself (checkpoints)


@dataclass(frozen=True)
class Error:
    error: str  # one line
    traceback: str = ""


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Shutdown:
    pass


MESSAGES: dict[str, type] = {
    cls.__name__.lower(): cls
    for cls in (Hello, Connect, Rewire, Linked, Go, Progress, Metrics, Artifact, Done, Error,
                Stop, Shutdown)
}


def encode(msg: Any) -> bytes:
    name = type(msg).__name__.lower()
    if MESSAGES.get(name) is not type(msg):
        raise ControlError(f"{type(msg).__name__} is not a control message")
    body = {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}
    return msgpack.packb({"type": name, **body})


def decode(data: bytes) -> Any:
    try:
        table = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several exception types
        raise ControlError(f"not msgpack ({type(e).__name__})") from None
    if not isinstance(table, dict) or table.get("type") not in MESSAGES:
        raise ControlError("not a control message (no known 'type')")
    cls = MESSAGES[table.pop("type")]
    names = {f.name for f in dataclasses.fields(cls)}
    if set(table) - names:
        raise ControlError(f"{cls.__name__}: unknown fields {sorted(set(table) - names)}")
    try:
        msg = cls(**table)
    except TypeError as e:
        raise ControlError(f"{cls.__name__}: {e}") from None
    for f in dataclasses.fields(cls):  # light type checks of the top-level fields
        v = getattr(msg, f.name)
        want = {"str": str, "int": int, "bytes": bytes}.get(str(f.type))
        if want is not None and (not isinstance(v, want) or isinstance(v, bool)):
            raise ControlError(f"{cls.__name__}.{f.name}: expected {f.type}, got {type(v).__name__}")
    return msg
