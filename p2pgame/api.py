"""The Python API: run a scenario, or read a finished run, from a script or a notebook.

``p2pgame.run`` is ``p2pgame run`` as a function (README, "Python API"): the scenario a
file, a TOML string or a dict, ``--set`` overrides as a list or a dict, and the run's
results back as a :class:`RunResult` read from its run folder (``summary.json``, the
per-edge accounts, every peer's metrics lines).  ``p2pgame.load`` builds the same object
for a run folder already there.

It works wherever the calling code comes from: a script (with or without ``if __name__
== "__main__":``), ``python -c``, ``python -`` reading standard input, a Jupyter kernel.
Peers never re-import the caller's ``__main__`` (:func:`p2pgame.launch.backends.main_hidden`),
and a run called while an event loop runs in this thread (a notebook cell) runs its own
loop as a script's would (:func:`_outside_running_loop`).

Importing this module is cheap (the standard library only); the launcher is imported
when a run starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RunResult", "run", "load", "toml_literal", "toml_document"]

STRING_SOURCE = "<string>"  # what an error names for a scenario given as TOML text
DICT_SOURCE = "<dict>"  # ... and for one given as a dict


# -- the result ------------------------------------------------------------------------

@dataclass
class RunResult:
    """A run's results, read from its run folder (README, "The run folder").

    Peer ids are ints.  ``summary`` is ``summary.json`` as written (its own keys are
    strings, as JSON's); ``peers`` its per-peer part, ``failures`` its failed peers with
    why, ``edges`` its per-edge accounts (``links``, as ``links.csv``), ``metrics`` every
    peer's metrics lines (``metrics/peer-<i>.jsonl``, one dict a line)."""

    run_dir: Path
    exit_code: int  # 0 done, 1 a peer failed (or a write error, a failed start), 130 interrupted
    summary: dict[str, Any] = field(repr=False)
    peers: dict[int, dict[str, Any]] = field(repr=False)
    metrics: dict[int, list[dict[str, Any]]] = field(repr=False)
    edges: list[dict[str, Any]] = field(repr=False)
    failures: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the run finished cleanly (exit status 0)."""
        return self.exit_code == 0

    def metrics_frame(self) -> Any:
        """Every metrics line as a row of a pandas DataFrame: columns ``peer``, ``step``,
        ``t``, then the namespaced keys (``train/...``, ``comm/...``, ``eval/...``; a key a
        line lacks is NaN).  Needs pandas (not a dependency of p2pgame)."""
        pd = _pandas("metrics_frame")
        rows = [{"peer": peer, **line} for peer in sorted(self.metrics)
                for line in self.metrics[peer]]
        frame = pd.DataFrame.from_records(rows)
        if frame.empty:
            return pd.DataFrame(columns=["peer", "step", "t"])
        first = [c for c in ("peer", "step", "t") if c in frame.columns]
        return frame[first + [c for c in frame.columns if c not in first]]

    def edges_frame(self) -> Any:
        """The per-edge accounts as a pandas DataFrame, one row per directed edge
        (``src``, ``dst``, ``sent``, ``delivered``, ... as ``links.csv``).  Needs pandas."""
        pd = _pandas("edges_frame")
        return pd.DataFrame.from_records(self.edges)


def _pandas(what: str) -> Any:
    try:
        import pandas
    except ImportError:
        raise ImportError(f"RunResult.{what}() needs pandas, which p2pgame does not install: "
                          "pip install pandas") from None
    return pandas


# -- load ------------------------------------------------------------------------------

def load(run_dir: str | Path) -> RunResult:
    """The results of a finished run from its folder (``runs/NAME-DATE-TIME``): the same
    :class:`RunResult` that :func:`run` returned for it.

    FileNotFoundError when ``run_dir`` is no folder or holds no ``summary.json`` (not a
    run folder, or a run that has not finished); ValueError when a file is not what the
    launcher writes."""
    from p2pgame.launch.summary import exit_code

    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (a run folder is runs/NAME-DATE-TIME)")
    summary = _read_summary(root)
    code = exit_code(bool(summary.get("interrupted")), bool(summary.get("failed_peers")),
                     summary.get("write_error"), summary.get("start_error"))
    return _result(root, summary, code)


def _read_summary(root: Path) -> dict[str, Any]:
    from p2pgame.launch.rundir import RunLayout

    layout = RunLayout(root)
    path = layout.summary
    if not path.is_file():
        if layout.resolved.is_file():
            raise FileNotFoundError(f"{root}: no {layout.SUMMARY}: the run has not finished "
                                    "(still running, or killed before its summary)")
        raise FileNotFoundError(f"{root}: not a run folder (no {layout.SUMMARY}, no "
                                f"{layout.RESOLVED})")
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable summary ({e})") from None
    if not isinstance(summary, dict):
        raise ValueError(f"{path}: not a summary (a JSON object)")
    return summary


def _result(root: Path, summary: dict[str, Any], code: int) -> RunResult:
    return RunResult(
        run_dir=root,
        exit_code=code,
        summary=summary,
        peers={int(k): v for k, v in (summary.get("peers") or {}).items()},
        metrics=_read_metrics(root),
        edges=_edges(root, summary),
        failures={int(k): v for k, v in (summary.get("failures") or {}).items()},
    )


def _read_metrics(root: Path) -> dict[int, list[dict[str, Any]]]:
    """Every peer's metrics lines, by peer.  A last line cut short (a run stopped by a full
    disk keeps every complete line) is left out; any other bad line is a ValueError."""
    from p2pgame.launch.rundir import RunLayout

    out: dict[int, list[dict[str, Any]]] = {}
    files = RunLayout(root).metrics_files()
    for peer, path in sorted(files.items(), key=lambda kv: int(kv[0])):
        text = path.read_text()
        lines = text.split("\n")
        rows = []
        for k, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError:
                if k == len(lines) - 1:  # no newline after it: a partial write
                    break
                raise ValueError(f"{path}:{k + 1}: not a JSON line") from None
        out[int(peer)] = rows
    return out


def _edges(root: Path, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-edge accounts: the summary's ``links``, else the run folder's ``links.csv``."""
    from p2pgame.launch.rundir import RunLayout

    if isinstance(summary.get("links"), list):
        return summary["links"]
    path = RunLayout(root).links
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# -- run -------------------------------------------------------------------------------

def run(scenario: str | Path | Mapping[str, Any] | None = None,
        set: list[str] | tuple[str, ...] | Mapping[str, Any] | str | None = None,
        *, out: str | Path = "runs", data: str | Path = "data", progress: bool = False,
        resume: str | Path | None = None) -> RunResult:
    """Run a scenario, as ``p2pgame run``, and return its results.

    ``scenario``: a scenario file (a path, str or Path); TOML text (a str that contains a
    newline or ``=`` and is not an existing path); or a dict, the scenario as a parsed
    TOML file would be.  Text or a dict is written into the run folder as its
    ``scenario.toml``; without a ``name`` key the run is named ``scenario``.

    ``set``: overrides as ``--set`` takes them, a list of ``"key=value"`` (a TOML value:
    ``'topology.graph="ring"'``), or a dict ``{"comm.drop": 0.1, "topology.graph": "ring"}``
    (values written as TOML: strings quoted, booleans, lists, dicts as inline tables).

    ``out``: the folder the run's folder is made in; ``data``: the data sets' root;
    ``progress``: the progress line on stderr; ``resume``: the folder of an interrupted
    run to continue in place (then no ``scenario`` and no ``set``: the run's own).

    A bad scenario raises :class:`p2pgame.config.ScenarioError` before any process
    starts, naming the file (``<string>``, ``<dict>``) or the override, and the key.  A
    run that fails is no exception: see ``exit_code`` and ``failures`` of the result.
    """
    from p2pgame.config import ScenarioError

    overrides = overrides_list(set)
    if resume is not None:
        if scenario is not None or overrides:
            raise ScenarioError("resume: continues the run's own scenario; give no scenario "
                                "and no set")
        return _launch(None, [], out, data, progress, resume)
    if scenario is None:
        raise ScenarioError("scenario: give a scenario file, TOML text or a dict (or resume=)")
    if isinstance(scenario, Mapping):
        return _run_source(toml_document(scenario, DICT_SOURCE), DICT_SOURCE, overrides, out,
                           data, progress)
    if isinstance(scenario, str) and _is_toml_text(scenario):
        return _run_source(scenario, STRING_SOURCE, overrides, out, data, progress)
    if isinstance(scenario, str | Path):
        return _launch(Path(scenario), overrides, out, data, progress, None)
    raise ScenarioError(f"scenario: expected a file, TOML text or a dict, got a "
                        f"{type(scenario).__name__}")


def overrides_list(overrides: Any) -> list[str]:
    """``set`` as the ``--set`` strings the launcher takes (see :func:`run`)."""
    from p2pgame.config import ScenarioError, short

    if overrides is None:
        return []
    if isinstance(overrides, str):
        return [overrides]
    if isinstance(overrides, Mapping):
        out = []
        for key, value in overrides.items():
            if not isinstance(key, str) or not key:
                raise ScenarioError(f"set: a key must be a non-empty string, got {short(key)}")
            out.append(f"{key}={toml_literal(value, f'set[{key!r}]')}")
        return out
    if isinstance(overrides, list | tuple):
        for item in overrides:
            if not isinstance(item, str):
                raise ScenarioError(f"set: expected 'key=value' strings, got {short(item)}")
        return list(overrides)
    raise ScenarioError(f"set: expected a list of 'key=value' or a dict, got "
                        f"{type(overrides).__name__}")


def _is_toml_text(text: str) -> bool:
    if "\n" not in text and "=" not in text:
        return False
    try:
        return not Path(text).exists()
    except (OSError, ValueError):  # a name too long for a path, a NUL: not a file
        return True


def _run_source(text: str, source: str, overrides: list[str], out: str | Path,
                data: str | Path, progress: bool) -> RunResult:
    """Run a scenario given as TOML text (``source`` names it in errors): the launcher
    reads the text itself and writes it as the run folder's ``scenario.toml``; nothing
    is staged beside the run folder."""
    from p2pgame.launch import ScenarioText, check_writable

    check_writable(Path(out), "out")  # (named as this function's argument, not --out)
    return _launch(ScenarioText(text, source), overrides, out, data, progress, None)


def _launch(scenario: Any, overrides: list[str], out: str | Path, data: str | Path,
            progress: bool, resume: str | Path | None) -> RunResult:
    """``p2pgame.launch.run``, and its run folder read back (:func:`load`'s reading)."""
    from p2pgame import launch

    with _outside_running_loop():
        ended = launch.run(scenario if scenario is not None else "", overrides, out=out,
                           data_root=data, progress=progress, resume=resume)
    root = Path(ended.run_dir)
    try:
        summary = _read_summary(root)
    except (OSError, ValueError):  # not written (a full disk): the launcher's own copy
        summary = json.loads(json.dumps(ended.summary, default=str))
    return _result(root, summary, ended.exit_code)


@contextlib.contextmanager
def _outside_running_loop() -> Iterator[None]:
    """Called while an event loop runs in this thread (a Jupyter cell runs inside the
    kernel's), the launcher's ``asyncio.run`` would refuse to start; that loop waits
    for the call anyway, so the run gets this thread as a script's would, and the loop
    is put back as it was when the run ends."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        yield
        return
    asyncio.events._set_running_loop(None)
    try:
        yield
    finally:
        asyncio.events._set_running_loop(loop)
        asyncio.set_event_loop(loop)  # (asyncio.run leaves the thread without one)


# -- TOML out --------------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def _key(key: Any, where: str) -> str:
    from p2pgame.config import ScenarioError, short

    if not isinstance(key, str):
        raise ScenarioError(f"{where}: a key must be a string, got {short(key)}")
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _join(where: str, key: Any) -> str:
    if not where or where.startswith("<"):
        return str(key)
    return f"{where}.{key}"


def toml_literal(value: Any, where: str = "value") -> str:
    """``value`` as a TOML literal: ``"text"`` (escaped), ``true``, ``3``, ``0.1``, ``inf``,
    ``[1, 2]``, ``{ a = 1 }``, dates and times.  ScenarioError naming ``where`` for a
    value TOML has none for (None, an object)."""
    from p2pgame.config import ScenarioError, short

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, datetime.date | datetime.time):  # (datetime is a date)
        return value.isoformat()
    if isinstance(value, Mapping):
        items = [f"{_key(k, where)} = {toml_literal(v, _join(where, k))}"
                 for k, v in value.items()]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_literal(v, f"{where}[{k}]")
                               for k, v in enumerate(value)) + "]"
    hint = " (leave the key out for its default)" if value is None else ""
    raise ScenarioError(f"{where}: {short(value)} is not a TOML value{hint}")


def _is_table_array(value: Any) -> bool:
    return (isinstance(value, list | tuple) and len(value) > 0
            and all(isinstance(v, Mapping) for v in value))


def toml_document(table: Mapping[str, Any], source: str = DICT_SOURCE) -> str:
    """A scenario dict as a TOML file: its plain keys first, then a ``[section]`` per
    table and a ``[[name]]`` per item of an array of tables (their own tables inline).
    An error names ``source`` and the key."""
    from p2pgame.config import ScenarioError

    lines: list[str] = []
    try:
        _dump(table, [], lines, source)
    except ScenarioError as e:
        raise ScenarioError(f"{source}: {e}") from None
    return "\n".join(lines) + "\n"


def _dump(table: Mapping[str, Any], path: list[str], lines: list[str], source: str) -> None:
    where = ".".join(path) or source
    plain = [(k, v) for k, v in table.items()
             if not isinstance(v, Mapping) and not _is_table_array(v)]
    for k, v in plain:
        lines.append(f"{_key(k, where)} = {toml_literal(v, _join('.'.join(path), k))}")
    for k, v in table.items():
        if isinstance(v, Mapping):
            header = ".".join(_key(p, where) for p in [*path, k])
            lines += ["", f"[{header}]"]
            _dump(v, [*path, k], lines, source)
    for k, v in table.items():
        if _is_table_array(v):
            header = ".".join(_key(p, where) for p in [*path, k])
            for i, item in enumerate(v):
                lines += ["", f"[[{header}]]"]
                name = f"{_join('.'.join(path), k)}[{i}]"
                for ik, iv in item.items():
                    lines.append(f"{_key(ik, name)} = {toml_literal(iv, _join(name, ik))}")
