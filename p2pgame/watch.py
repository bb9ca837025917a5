"""``p2pgame watch``: a live web view of a run folder, served on 127.0.0.1.

It reads the run folder alone, so it works for a run started anywhere (another
terminal, a sweep, the Python API), while it goes and after it ended:

- ``scenario.json`` (name, steps, peers, their learners) and ``topology.json`` (every
  epoch's directed edges; ``edges.csv`` where it is missing), written as the run starts;
- ``metrics/peer-<i>.jsonl``, read incrementally: only the bytes added since the last
  read, and a line only once it is complete (a line still being written is held back);
- ``samples/peer-<i>*.png``, the peers' sample grids (the newest of each peer's);
- ``logs/peer-<i>.log``, which the launcher writes when a peer reports its failure;
- ``summary.json`` at the end: the run's final numbers and the per-edge accounts
  (``links``; ``links.csv`` when the summary has none).

Nothing of the launcher writes per-edge accounts while a run goes: those are summed
once, from the peers' final reports.  While a run goes the page estimates each edge's
delivered bytes per second from its receiver's ``comm/bytes_received`` (the bytes its
links released, over all its in-edges) split evenly over the receiver's in-edges;
drop rates and times on the links come with ``summary.json``.

The server is the standard library's :class:`ThreadingHTTPServer`: the page
(``watch_static/``, with its vendored JavaScript libraries) and two JSON endpoints,
``/api/state?epoch=E&since=N`` (what changed since the client's cursor) and
``/api/sample?peer=I`` (a peer's newest sample grid).  No torch, nothing of p2pgame but
its config's error type.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from p2pgame.config import ScenarioError

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("watch_static")
HOST = "127.0.0.1"  # never another interface: the page shows a run's files to whoever asks
MAX_READ = 8 << 20  # bytes read from one metrics file per refresh (a huge file: in steps)
MAX_LINES = 20_000  # metrics lines in one /api/state answer (the page asks again at once)
REFRESH_S = 0.25  # the folder is read again at most this often, whatever the clients ask
_SAMPLE = re.compile(r"peer-(\d+)(?:[-_.][^/]*)?\.png")
_METRICS = re.compile(r"peer-(\d+)\.jsonl")


class JsonlTail:
    """The complete lines of a JSONL file that grows while it is read.

    :meth:`read` returns the objects of the lines completed since the last call; a last
    line without its newline (being written) waits for it.  A line that is complete but
    not a JSON object is skipped and counted (:attr:`bad`).  A file that shrank below
    what was read was rewritten: it is read again from the start and :attr:`resets`
    counts it (the caller drops what it had); a shrink that only cut back the held,
    unfinished line (the launcher removes a line a full disk cut short) is no reset."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.offset = 0  # bytes of the file consumed, the held partial line included
        self.partial = b""
        self.bad = 0
        self.resets = 0
        self._ino: int | None = None

    def read(self) -> list[dict[str, Any]]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        if self._ino is not None and st.st_ino != self._ino:
            self._reset()
        self._ino = st.st_ino
        if st.st_size < self.offset:
            if st.st_size >= self.offset - len(self.partial):  # only the partial line went
                self.offset -= len(self.partial)
                self.partial = b""
            else:
                self._reset()
        if st.st_size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(MAX_READ)
        self.offset += len(data)
        *complete, self.partial = (self.partial + data).split(b"\n")
        out = []
        for raw in complete:
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                out.append(obj)
            else:
                self.bad += 1
        return out

    def _reset(self) -> None:
        self.offset, self.partial = 0, b""
        self.resets += 1


def check_run_folder(path: str | Path) -> Path:
    """``path`` as a run folder the view can read, or a ScenarioError saying why not."""
    p = Path(path)
    if not p.exists():
        raise ScenarioError(f"RUN_DIR {path}: no such folder")
    if not p.is_dir():
        raise ScenarioError(f"RUN_DIR {path}: not a folder")
    if not (p / "scenario.json").is_file():
        raise ScenarioError(f"RUN_DIR {path}: not a run folder (no scenario.json; a run "
                            "writes it as it starts)")
    if not os.access(p, os.R_OK | os.X_OK):
        raise ScenarioError(f"RUN_DIR {path}: cannot be read (permission denied)")
    return p


def new_run_folder(out: str | Path, since: float, source: str | None = None,
                   overrides: list[str] | None = None) -> Callable[[], Path | None]:
    """A locator of the run folder a run started now will make under ``out``
    (``OUT/NAME-DATE-TIME``, named by the launcher): the newest folder there whose
    ``resolved.json`` was written at ``since`` or later and names ``source`` (the
    scenario file, as given) with these ``overrides``; None until there is one.  Once
    found it is kept."""
    out = Path(out)
    want = os.path.abspath(source) if source is not None else None
    found: list[Path] = []

    def locate() -> Path | None:
        if found:
            return found[0]
        best: tuple[float, Path] | None = None
        try:
            entries = list(os.scandir(out))
        except OSError:
            return None
        for entry in entries:
            resolved = Path(entry.path) / "resolved.json"
            try:
                mtime = resolved.stat().st_mtime
                if mtime < since - 1.0 or not entry.is_dir():
                    continue
                info = json.loads(resolved.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(info, dict):
                continue
            if want is not None and os.path.abspath(str(info.get("source"))) != want:
                continue
            if overrides is not None and list(info.get("overrides") or []) != list(overrides):
                continue
            if best is None or mtime > best[0]:
                best = (mtime, Path(entry.path))
        if best is not None and (best[1] / "scenario.json").is_file():
            found.append(best[1])
            return best[1]
        return None

    return locate


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _clean(line: dict[str, Any]) -> dict[str, Any]:
    """A metrics line as the page takes it: its numbers only (lists, text and true/false
    are left out, as TensorBoard leaves them out)."""
    return {k: v for k, v in line.items() if _number(v)}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass
class _Peer:
    tail: JsonlTail
    lines: int = 0
    step: int | None = None
    t: float | None = None


class RunWatch:
    """What the page shows of one run folder, read again (at most every
    :data:`REFRESH_S`) when a client asks.

    ``run_dir`` is the folder, or a locator returning it (None while a run being
    prepared has not made it yet: the state says ``waiting``).  Every metrics line read
    gets a sequence number; a client passes the number it has (``since``) and the epoch
    it holds: the epoch changes when what the client holds is no longer right (the
    folder appeared, its scenario was read, a metrics file was rewritten), and then the
    answer starts again from the beginning.  ``clock`` (monotonic seconds) paces the
    re-reads; tests hand it one they advance themselves."""

    def __init__(self, run_dir: str | Path | Callable[[], Path | None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        if callable(run_dir):
            self._locate: Callable[[], Path | None] = run_dir
        else:
            fixed = Path(run_dir)
            self._locate = lambda: fixed
        self.root: Path | None = None
        self.epoch = 0
        self.lock = threading.Lock()
        self.static: dict[str, Any] | None = None
        self.peers: dict[int, _Peer] = {}
        self.lines: list[tuple[int, dict[str, Any]]] = []  # (peer, numbers), in read order
        self.keys: set[str] = set()
        self.samples: dict[int, tuple[str, int]] = {}  # peer -> (file name, mtime_ns)
        self.failed: dict[int, str] = {}
        self.summary: dict[str, Any] | None = None
        self.links: list[dict[str, Any]] | None = None
        self.links_source: str | None = None
        self.changed = time.time()  # the last time a metrics line came
        self._read_at = -math.inf
        self._summary_mtime: int | None = None

    # -- reading the folder ------------------------------------------------------------
    def refresh(self, force: bool = False) -> None:
        """Read what the folder gained (call with :attr:`lock` held)."""
        now = self._clock()
        if not force and now - self._read_at < REFRESH_S:
            return
        self._read_at = now
        if self.root is None:
            root = self._locate()
            if root is None or not (Path(root) / "scenario.json").is_file():
                return
            self.root = Path(root)
            self.epoch += 1
        if self.static is None:
            self.static = self._read_static()
            if self.static is None:
                return
            self.epoch += 1
        self._read_metrics()
        self._read_samples()
        self._read_failures()
        self._read_summary()

    def _read_static(self) -> dict[str, Any] | None:
        assert self.root is not None
        sc = _read_json(self.root / "scenario.json")
        if not isinstance(sc, dict):
            return None  # (being written: the next refresh reads it)
        topo = sc.get("topology") or {}
        n = int(topo.get("n") or 0)
        players = sc.get("players") or []
        learners = {}
        for p in players:
            if isinstance(p, dict) and isinstance(p.get("learner"), dict):
                learners[str(p.get("peer"))] = p["learner"].get("kind")
        epochs, source = self._read_epochs(topo)
        comm = sc.get("comm") or {}
        return {
            "name": sc.get("name"),
            "steps": sc.get("steps"),
            "n": n,
            "mode": comm.get("mode"),
            "exchange": (sc.get("exchange") or {}).get("kind"),
            "learner": (sc.get("learner") or {}).get("kind"),
            "learners": learners,
            "graph": [g.get("graph") for g in topo.get("graphs") or [] if isinstance(g, dict)],
            "epochs": epochs,
            "edges_source": source,
        }

    def _read_epochs(self, topo: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
        """Each topology epoch's start step and directed edges ``[src, dst]``."""
        assert self.root is not None
        info = _read_json(self.root / "topology.json")
        if isinstance(info, dict) and isinstance(info.get("epochs"), list):
            return [{"start_step": int(e.get("start_step", 0)),
                     "edges": [[int(s), int(d)] for s, d in e.get("edges", [])]}
                    for e in info["epochs"]], "topology.json"
        try:
            rows = (self.root / "edges.csv").read_text().splitlines()[1:]
            edges = [[int(s), int(d)] for s, d, *_ in (r.split(",") for r in rows if r)]
            return [{"start_step": 0, "edges": edges}], "edges.csv"
        except (OSError, ValueError):
            pass
        graphs = topo.get("graphs") or []  # an explicit edge list needs no topology code
        if graphs and graphs[0].get("graph") == "edges":
            edges = [[int(s), int(d)] for s, d in graphs[0].get("edges", [])]
            if not graphs[0].get("directed"):
                edges += [[d, s] for s, d in edges if [d, s] not in edges]
            return [{"start_step": 0, "edges": edges}], "scenario.json"
        return [{"start_step": 0, "edges": []}], None

    def _read_metrics(self) -> None:
        assert self.root is not None
        try:
            names = os.listdir(self.root / "metrics")
        except OSError:
            names = []
        for name in names:
            m = _METRICS.fullmatch(name)
            if m and int(m.group(1)) not in self.peers:
                self.peers[int(m.group(1))] = _Peer(JsonlTail(self.root / "metrics" / name))
        for pid in sorted(self.peers):
            peer = self.peers[pid]
            resets = peer.tail.resets
            got = peer.tail.read()
            if peer.tail.resets != resets:  # rewritten: everything is read again
                self._drop_lines(pid)
            for line in got:
                clean = _clean(line)
                self.lines.append((pid, clean))
                self.keys.update(clean)
                peer.lines += 1
                if "step" in clean:
                    peer.step = int(clean["step"])
                if "t" in clean:
                    peer.t = float(clean["t"])
            if got:
                self.changed = time.time()

    def _drop_lines(self, pid: int) -> None:
        self.lines = [(p, line) for p, line in self.lines if p != pid]
        self.peers[pid] = _Peer(self.peers[pid].tail)
        self.epoch += 1

    def _read_samples(self) -> None:
        assert self.root is not None
        try:
            entries = list(os.scandir(self.root / "samples"))
        except OSError:
            return
        newest: dict[int, tuple[str, int]] = {}
        for e in entries:
            m = _SAMPLE.fullmatch(e.name)
            if not m:
                continue
            try:
                mtime = e.stat().st_mtime_ns
            except OSError:
                continue
            pid = int(m.group(1))
            if pid not in newest or mtime > newest[pid][1]:
                newest[pid] = (e.name, mtime)
        self.samples = newest

    def _read_failures(self) -> None:
        assert self.root is not None
        try:
            names = os.listdir(self.root / "logs")
        except OSError:
            return
        for name in names:
            m = re.fullmatch(r"peer-(\d+)\.log", name)
            if m and int(m.group(1)) not in self.failed:
                self.failed[int(m.group(1))] = f"failed (its traceback: logs/{name})"

    def _read_summary(self) -> None:
        assert self.root is not None
        path = self.root / "summary.json"
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:  # none yet, or no more (--resume keeps it as summary-before-resume)
            if self._summary_mtime is not None:
                self._summary_mtime = self.summary = self.links = self.links_source = None
            return
        if mtime == self._summary_mtime:
            return
        s = _read_json(path)
        if not isinstance(s, dict):
            return  # (written through a temporary file and renamed: whole, or not yet)
        self._summary_mtime = mtime
        self.summary = _summary_view(s)
        for pid, why in (s.get("failures") or {}).items():
            self.failed[int(pid)] = str(why)
        links = s.get("links")
        if isinstance(links, list):
            self.links, self.links_source = links, "summary.json"
        else:
            self.links, self.links_source = _links_csv(self.root / "links.csv"), "links.csv"

    # -- answering ---------------------------------------------------------------------
    def state(self, since: int = 0, epoch: int | None = None) -> dict[str, Any]:
        """The ``/api/state`` answer: everything the page shows, and the metrics lines
        from ``since`` on (all of them when ``epoch`` is not the current one)."""
        with self.lock:
            self.refresh()
            full = epoch != self.epoch
            start = 0 if full else max(0, min(since, len(self.lines)))
            chunk = self.lines[start:start + MAX_LINES]
            out: dict[str, Any] = {
                "epoch": self.epoch,
                "full": full,
                "next": start + len(chunk),
                "more": start + len(chunk) < len(self.lines),
                "lines": [[p, line] for p, line in chunk],
                "run_dir": None if self.root is None else str(self.root),
                "status": self._status(),
                "keys": sorted(k for k in self.keys if k != "step"),
                "peers": self._peers(),
                "idle_s": round(time.time() - self.changed, 1),
                "summary": self.summary,
                "links": self.links,
                "links_source": self.links_source,
            }
            if full:
                out["scenario"] = self.static
            return out

    def _status(self) -> str:
        if self.root is None or self.static is None:
            return "waiting"
        s = self.summary
        if s is None:
            return "running" if self.lines else "starting"
        if s.get("interrupted"):
            return "interrupted"
        if s.get("failed_peers") or s.get("start_error") or s.get("write_error"):
            return "failed"
        return "finished"

    def _peers(self) -> dict[str, Any]:
        n = (self.static or {}).get("n") or 0
        ids = sorted(set(range(n)) | set(self.peers) | set(self.failed))
        out = {}
        for pid in ids:
            p = self.peers.get(pid)
            sample = self.samples.get(pid)
            out[str(pid)] = {
                "step": None if p is None else p.step,
                "t": None if p is None else p.t,
                "lines": 0 if p is None else p.lines,
                "bad_lines": 0 if p is None else p.tail.bad,
                "failed": self.failed.get(pid),
                "sample": None if sample is None else
                f"/api/sample?peer={pid}&v={sample[1]}",
            }
        return out

    def sample_path(self, peer: int) -> Path | None:
        """The file of ``peer``'s newest sample grid, if it has one."""
        with self.lock:
            self.refresh()
            got = self.samples.get(peer)
            if got is None or self.root is None:
                return None
            return self.root / "samples" / got[0]


def _summary_view(s: dict[str, Any]) -> dict[str, Any]:
    """What the page shows of ``summary.json``: the run's scalars and lists of ids, and
    each peer's numbers (not its traffic tables)."""
    keep = ("wall_s", "mode", "n_peers", "steps", "failed_peers", "interrupted",
            "start_error", "write_error", "warnings", "table_columns")
    peers = {}
    for pid, p in (s.get("peers") or {}).items():
        if isinstance(p, dict):
            peers[str(pid)] = {k: v for k, v in p.items() if _number(v)}
    return {**{k: s.get(k) for k in keep}, "failures": s.get("failures") or {},
            "peers": peers}


def _links_csv(path: Path) -> list[dict[str, Any]] | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    rows = [r.split(",") for r in text.splitlines() if r]
    if not rows:
        return None
    head, out = rows[0], []
    for r in rows[1:]:
        row: dict[str, Any] = {}
        for k, v in zip(head, r, strict=False):
            try:
                row[k] = float(v) if "." in v or "e" in v else int(v)
            except ValueError:
                row[k] = v
        out.append(row)
    return out


# -- the server --------------------------------------------------------------------------

_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".png": "image/png", ".txt": "text/plain"}


class _Handler(BaseHTTPRequestHandler):
    server: WatchServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        try:
            if url.path in ("/", "/index.html"):
                self._file(STATIC / "index.html")
            elif url.path.startswith("/static/"):
                self._static(url.path[len("/static/"):])
            elif url.path == "/api/state":
                since = int(query.get("since", ["0"])[0])
                epoch = query.get("epoch", [None])[0]
                body = self.server.watch.state(since, None if epoch is None else int(epoch))
                self._send(HTTPStatus.OK, "application/json", json.dumps(body).encode())
            elif url.path == "/api/sample":
                path = self.server.watch.sample_path(int(query.get("peer", ["-1"])[0]))
                if path is None:
                    self._send(HTTPStatus.NOT_FOUND, "text/plain", b"no sample grid\n")
                else:
                    self._file(path)
            else:
                self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")
        except ValueError:
            self._send(HTTPStatus.BAD_REQUEST, "text/plain", b"bad query\n")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _static(self, rel: str) -> None:
        path = (STATIC / rel).resolve()
        if STATIC.resolve() not in path.parents or not path.is_file():
            self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")
            return
        self._file(path)

    def _file(self, path: Path) -> None:
        try:
            data = path.read_bytes()
        except OSError:
            self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")
            return
        self._send(HTTPStatus.OK, _TYPES.get(path.suffix, "application/octet-stream"), data)

    def _send(self, status: HTTPStatus, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (its signature)
        log.debug("watch %s: " + format, self.address_string(), *args)


class WatchServer(ThreadingHTTPServer):
    """The page and its JSON endpoints for one run, on 127.0.0.1 at a port the OS chose
    (``port=0``) or the one given."""

    daemon_threads = True

    def __init__(self, run_dir: str | Path | Callable[[], Path | None], port: int = 0) -> None:
        self.watch = RunWatch(run_dir)
        super().__init__((HOST, port), _Handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> WatchServer:
        """Serve from a background (daemon) thread; :meth:`close` stops it."""
        self._thread = threading.Thread(target=self.serve_forever, name="p2pgame-watch",
                                        daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server_close()


def serve(run_dir: str | Path | Callable[[], Path | None], port: int = 0,
          option: str = "--port") -> WatchServer:
    """A started :class:`WatchServer` (its address: ``.url``); a port that cannot be had
    is a ScenarioError (one line, naming ``option``)."""
    try:
        server = WatchServer(run_dir, port)
    except OSError as e:
        raise ScenarioError(f"{option} {port}: cannot listen on {HOST}:{port}: "
                            f"{e.strerror or e}") from None
    return server.start()
