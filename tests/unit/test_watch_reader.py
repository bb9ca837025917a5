"""p2pgame.watch's run folder reader and its server, on synthetic run folders (no peers,
no browser): incremental reads of growing metrics files, a line being written held back,
the folder's files as the page gets them, and bad RUN_DIRs refused in one line."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from p2pgame.cli import main
from p2pgame.config import ScenarioError
from p2pgame.watch import REFRESH_S, JsonlTail, RunWatch, check_run_folder, new_run_folder, serve

RING3 = [[0, 1], [0, 2], [1, 0], [1, 2], [2, 0], [2, 1]]


def write_run(root: Path, n: int = 3, steps: int = 100) -> Path:
    """The files a launcher writes as a run starts (scenario.json, topology.json)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "resolved.json").write_text(json.dumps({"source": "s.toml", "overrides": [],
                                                    "raw": {}}))
    (root / "scenario.json").write_text(json.dumps({
        "name": "synthetic", "steps": steps, "seed": 0,
        "topology": {"n": n, "graphs": [{"graph": "complete", "at": 0}]},
        "comm": {"mode": "sync"}, "exchange": {"kind": "samples"},
        "learner": {"kind": "expfam-bernoulli"},
        "players": [{"peer": i, "learner": {"kind": "expfam-bernoulli"}} for i in range(n)],
    }))
    (root / "topology.json").write_text(json.dumps({"epochs": [
        {"start_step": 0, "edges": RING3, "weights": [], "second_eigenvalue_modulus": 0.5}]}))
    (root / "metrics").mkdir(exist_ok=True)
    return root


def append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


class Clock:
    """A monotonic clock the test advances: the reader re-reads the folder at most every
    REFRESH_S of it, so a test moves it on instead of sleeping."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += REFRESH_S


def line(step: int, **kv) -> str:
    return json.dumps({"step": step, "t": step / 10, **kv}) + "\n"


def test_tail_reads_only_what_was_added_and_holds_back_a_half_written_line(tmp_path):
    path = tmp_path / "peer-0.jsonl"
    tail = JsonlTail(path)
    assert tail.read() == []  # no file yet: nothing, no error
    append(path, line(0, loss=1.0) + line(1, loss=0.5))
    assert [x["step"] for x in tail.read()] == [0, 1]
    assert tail.read() == []  # nothing new
    full = line(2, loss=0.25)
    append(path, full[:10])  # the launcher is writing it
    assert tail.read() == []
    append(path, full[10:-1])
    assert tail.read() == []  # still no newline: not complete
    append(path, "\n" + line(3, loss=0.125))
    assert [(x["step"], x["loss"]) for x in tail.read()] == [(2, 0.25), (3, 0.125)]
    append(path, "not json\n[1, 2]\n" + line(4))
    assert [x["step"] for x in tail.read()] == [4]
    assert tail.bad == 2 and tail.resets == 0


def test_tail_survives_a_cut_back_partial_line_and_rereads_a_rewritten_file(tmp_path):
    path = tmp_path / "peer-0.jsonl"
    tail = JsonlTail(path)
    append(path, line(0) + line(1))
    assert len(tail.read()) == 2
    append(path, '{"step": 2, "t"')  # a write the disk refused ...
    assert tail.read() == []
    os.truncate(path, len(line(0) + line(1)))  # ... cut back to the last complete line
    append(path, line(2))
    assert [x["step"] for x in tail.read()] == [2] and tail.resets == 0
    path.write_text(line(7))  # a new file: what was read no longer holds
    assert [x["step"] for x in tail.read()] == [7] and tail.resets == 1


def test_run_watch_follows_a_growing_run_folder(tmp_path):
    root = write_run(tmp_path / "run")
    clock = Clock()
    watch = RunWatch(root, clock=clock)
    st = watch.state()
    assert st["full"] and st["status"] == "starting" and st["lines"] == []
    assert st["scenario"]["n"] == 3 and st["scenario"]["epochs"][0]["edges"] == RING3
    assert st["scenario"]["edges_source"] == "topology.json"
    assert set(st["peers"]) == {"0", "1", "2"}
    m0 = root / "metrics" / "peer-0.jsonl"
    append(m0, line(0, **{"train/loss": 2.0, "comm/bytes_received": 0, "note": "x"}))
    append(m0, line(10, **{"train/loss": 1.0, "comm/bytes_received": 500})[:-5])
    clock.tick()  # (the folder is read again at most every REFRESH_S)
    st = watch.state(st["next"], st["epoch"])
    assert not st["full"] and st["status"] == "running"
    assert st["lines"] == [[0, {"step": 0, "t": 0.0, "train/loss": 2.0,
                                "comm/bytes_received": 0}]]  # numbers only
    assert st["keys"] == ["comm/bytes_received", "t", "train/loss"]
    cursor = st["next"]
    append(m0, line(10, **{"train/loss": 1.0, "comm/bytes_received": 500})[-5:])
    append(root / "metrics" / "peer-2.jsonl", line(0, **{"eval/x": 3.0}))
    clock.tick()
    st = watch.state(cursor, st["epoch"])
    assert sorted((p, x["step"]) for p, x in st["lines"]) == [(0, 10), (2, 0)]
    assert st["peers"]["0"]["step"] == 10 and st["peers"]["1"]["step"] is None
    assert watch.state(0, None)["next"] == 3  # a new client gets everything
    # The end: summary.json with the per-edge accounts, a failed peer, a sample grid.
    (root / "samples").mkdir()
    (root / "samples" / "peer-1.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "summary.json").write_text(json.dumps({
        "wall_s": 1.5, "failed_peers": [1], "failures": {"1": "exited with status 9"},
        "interrupted": False, "peers": {"0": {"steps": 100, "traffic_out": [{"a": 1}]}},
        "links": [{"src": 0, "dst": 1, "sent": 4, "delivered": 3}]}))
    clock.tick()
    st = watch.state(st["next"], st["epoch"])
    assert st["status"] == "failed" and st["links_source"] == "summary.json"
    assert st["links"] == [{"src": 0, "dst": 1, "sent": 4, "delivered": 3}]
    assert st["summary"]["peers"] == {"0": {"steps": 100}}  # not its traffic tables
    assert st["peers"]["1"]["failed"] == "exited with status 9"
    assert st["peers"]["1"]["sample"].startswith("/api/sample?peer=1&v=")
    assert watch.sample_path(1) == root / "samples" / "peer-1.png"
    assert watch.sample_path(0) is None
    # --resume keeps the interrupted run's summary aside: the run goes on again.
    (root / "summary.json").rename(root / "summary-before-resume.json")
    clock.tick()
    st = watch.state(st["next"], st["epoch"])
    assert st["status"] == "running" and st["summary"] is None and st["links"] is None


def test_a_rewritten_metrics_file_starts_the_client_again(tmp_path):
    root = write_run(tmp_path / "run")
    m0 = root / "metrics" / "peer-0.jsonl"
    append(m0, line(0) + line(1) + line(2))
    clock = Clock()
    watch = RunWatch(root, clock=clock)
    st = watch.state()
    assert st["next"] == 3
    m0.write_text(line(0))
    clock.tick()
    again = watch.state(st["next"], st["epoch"])
    assert again["full"] and again["epoch"] != st["epoch"] and again["next"] == 1


def test_a_run_folder_not_made_yet_is_waited_for(tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    since = time.time()
    write_run(out / "old-run")  # another run's folder, written before
    old = time.time() - 3600
    os.utime(out / "old-run" / "resolved.json", (old, old))
    locate = new_run_folder(out, since, "s.toml", [])
    clock = Clock()
    watch = RunWatch(locate, clock=clock)
    assert watch.state()["status"] == "waiting"
    other = write_run(out / "other-run")  # a run of another scenario, at the same time
    (other / "resolved.json").write_text(json.dumps({"source": "t.toml", "overrides": []}))
    mine = write_run(out / "mine")
    clock.tick()
    st = watch.state()
    assert st["run_dir"] == str(mine) and st["status"] == "starting" and st["full"]
    assert locate() == mine


def test_bad_run_dirs_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(ScenarioError, match="no such folder"):
        check_run_folder(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ScenarioError, match="not a folder"):
        check_run_folder(tmp_path / "file")
    with pytest.raises(ScenarioError, match="not a run folder"):
        check_run_folder(tmp_path)
    assert main(["watch", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: RUN_DIR {tmp_path / 'missing'}: no such folder\n"
    assert main(["watch", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: RUN_DIR") and "not a run folder" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read(), r.headers["Content-Type"]
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers["Content-Type"]


def test_server_on_loopback_serves_the_page_state_and_files_of_the_run_only(tmp_path):
    root = write_run(tmp_path / "run")
    append(root / "metrics" / "peer-0.jsonl", line(0, loss=1.0))
    server = serve(root)
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1" and port > 0 and server.url == f"http://127.0.0.1:{port}/"
        status, body, ctype = _get(server.url)
        assert status == 200 and ctype.startswith("text/html") and b"app.js" in body
        for name in ("app.js", "style.css", "vendor/cytoscape.min.js",
                     "vendor/uPlot.iife.min.js", "vendor/LICENSE-cytoscape"):
            assert _get(server.url + "static/" + name)[0] == 200, name
        status, body, ctype = _get(server.url + "api/state?since=0")
        st = json.loads(body)
        assert ctype == "application/json" and st["lines"] == [[0, {"step": 0, "t": 0.0,
                                                                      "loss": 1.0}]]
        with pytest.raises(ScenarioError, match=f"--port {port}: cannot listen on "
                                                f"127.0.0.1:{port}"):
            serve(root, port=port)  # (taken: by this server)
        for bad in ("static/../watch.py", "static/%2e%2e/watch.py", "api/sample?peer=0",
                    "scenario.json", "api/state?since=x"):
            assert _get(server.url + bad)[0] in (400, 404), bad
    finally:
        server.close()
