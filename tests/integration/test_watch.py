"""``p2pgame watch`` in a real headless browser (Debian's chromium, driven by playwright
over the DevTools protocol; playwright never downloads a browser here), on the folder of
a real run; and ``p2pgame run --watch`` serving a run while it goes.

Without chromium or playwright it skips, saying so (and fails instead with
``P2PGAME_REQUIRE_BROWSER=1``, as ``.ci/run`` sets after installing chromium).
The screenshot goes to ``tmp_path``; with ``P2PGAME_SCREENSHOT=1`` it replaces
``docs/watch.png`` (the README's picture)."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from p2pgame.watch import new_run_folder, serve

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "tests" / "scenarios" / "expfam-ring4.toml"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
INSTALL = ("install Debian's chromium (apt-get install -y chromium) and the test extra "
           "(.venv/bin/pip install -e '.[test]': playwright, which drives it)")


def _browser():
    """playwright and chromium, or a skip that says how to get them; a failure instead
    with ``P2PGAME_REQUIRE_BROWSER=1`` (set by ``.ci/run``, which installs chromium, so
    that CI cannot pass with this test skipped)."""
    missing = pytest.fail if os.environ.get("P2PGAME_REQUIRE_BROWSER") == "1" else pytest.skip
    if CHROMIUM is None:
        missing(f"no headless browser: {INSTALL}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing(f"playwright is not installed: {INSTALL}")
    return sync_playwright, CHROMIUM


def _grid_png(path: Path) -> None:
    """A stand-in sample grid, as image learners write one (``samples/peer-<i>.png``:
    10 x 10 images of 28 x 28): the digits drawn in PIL's own font, thickened and noisy."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(0)
    grid = Image.new("L", (280, 280))
    for k in range(100):
        tile = Image.new("L", (10, 12))
        ImageDraw.Draw(tile).text((2, 0), str(k % 10), fill=255)
        tile = tile.resize((22, 26)).filter(ImageFilter.MaxFilter(3))
        grid.paste(tile, ((k % 10) * 28 + int(rng.integers(0, 6)),
                          (k // 10) * 28 + int(rng.integers(0, 3))))
    pixels = (np.asarray(grid) > 96) ^ (rng.random((280, 280)) < 0.03)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8) * 255).save(path)


def _shown(page, key: str) -> str | None:
    return page.evaluate(
        "k => { const r = [...document.querySelectorAll('#peer-latest tr')]"
        ".find(r => r.dataset.key === k); return r ? r.cells[1].textContent : null; }", key)


def test_page_draws_the_run_while_it_goes_and_follows_its_metrics(tmp_path):
    """An 8-peer async ring, watched from before its first metrics line to its end: the
    graph (the scenario's nodes, the topology's edges), curves that grow while it runs
    (the README's screenshot is taken then), the final per-edge accounts, a click on a
    peer, and a metrics line added to the folder afterwards."""
    sync_playwright, chromium = _browser()
    out = tmp_path / "runs"
    overrides = ['name="ring8-async"', "topology.n=8", 'comm.mode="async"', "comm.drop=0.2",
                 "runtime.step_delay_ms=40"]  # 200 steps: about 8 s of run
    key = "eval/ne_max_abs"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--headless=new"])
        # The view waits for the folder this run will make (as ``run --watch`` does).
        server = serve(new_run_folder(out, time.time(), str(SCENARIO), overrides))
        proc = subprocess.Popen(
            [sys.executable, "-m", "p2pgame.cli", "run", str(SCENARIO), "--out", str(out),
             "--quiet", "--data", str(tmp_path / "data"),
             *[arg for o in overrides for arg in ("--set", o)]],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url)
            page.wait_for_function("window.cy && window.watch.polls > 0 && "
                                   "window.watch.curvePoints && "
                                   "window.watch.status !== 'waiting'", timeout=60_000)
            run_dir = Path(_state(server.url)["run_dir"])
            assert run_dir.parent == out
            _grid_png(run_dir / "samples" / "peer-1.png")  # (expfam players draw none)
            # While it runs: the curves of the chosen metric grow, poll after poll.
            page.select_option("#curve-metric", key)
            page.select_option("#node-metric", key)
            page.wait_for_function("window.watch.status === 'running' && "
                                   "window.watch.curvePoints[1] >= 3", timeout=30_000)
            first = page.evaluate("window.watch.curvePoints[1]")
            page.wait_for_function(f"window.watch.curvePoints[1] > {first}", timeout=30_000)
            assert page.text_content("#status") == "running"
            # The README's picture: the run going, peer 1 selected (a real click).
            box = page.locator("#graph").bounding_box()
            pos = page.evaluate("window.cy.$('#p1').renderedPosition()")
            page.mouse.click(box["x"] + pos["x"], box["y"] + pos["y"])
            page.wait_for_function("window.watch.selected === 1")
            page.wait_for_function("document.querySelector('#peer-sample img') && "
                                   "document.querySelector('#peer-sample img').naturalWidth "
                                   "=== 280", timeout=10_000)
            shot = (ROOT / "docs" / "watch.png" if os.environ.get("P2PGAME_SCREENSHOT") == "1"
                    else tmp_path / "watch.png")
            page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

            # The end of the run: the page says so, with the summary's per-edge accounts.
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()
            page.wait_for_function("window.watch.status === 'finished'", timeout=20_000)
            edges = {tuple(e) for e in
                     json.loads((run_dir / "topology.json").read_text())["epochs"][0]["edges"]}
            assert len(edges) == 16  # a ring of 8, both directions
            metrics = run_dir / "metrics" / "peer-1.jsonl"
            n_lines = sum(key in json.loads(x) for x in metrics.read_text().splitlines())
            # The graph: the scenario's peers and the topology's directed edges.
            assert page.evaluate("window.cy.nodes().length") == 8
            shown = page.evaluate("window.cy.edges().map(e => [e.data('src'), e.data('dst')])")
            assert {tuple(e) for e in shown} == edges
            assert page.text_content("#status") == "finished"
            assert "summary.json" in page.text_content("#edge-note")
            # Edges coloured and sized from the final per-edge accounts: not all alike.
            widths = page.evaluate("window.cy.edges().map(e => e.data('width'))")
            assert len(set(widths)) > 1
            page.select_option("#edge-metric", "drop")
            assert "summary.json" in page.text_content("#edge-note")
            page.wait_for_function(f"window.watch.curvePoints[1] === {n_lines}")
            assert page.text_content("#peer-title").startswith("peer 1")
            assert _shown(page, "step") == "199"

            # The run folder grows: half a line first (held back), then the rest.
            new = json.dumps({"step": 260, "t": 9.0, key: 0.5}) + "\n"
            polls = page.evaluate("window.watch.polls")
            with metrics.open("a") as f:
                f.write(new[:20])
            page.wait_for_function(f"window.watch.polls >= {polls + 2}")
            assert page.evaluate("window.watch.curvePoints[1]") == n_lines
            assert _shown(page, "step") == "199"
            with metrics.open("a") as f:
                f.write(new[20:])
            page.wait_for_function(f"window.watch.curvePoints[1] === {n_lines + 1}",
                                   timeout=10_000)
            assert _shown(page, "step") == "260" and _shown(page, key) == "0.5000"
            # Node 1 now holds the largest value of the node metric: the top of the scale.
            assert page.evaluate("window.cy.$('#p1').data('color')") == "rgb(253,231,37)"

            assert errors == []
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
            server.close()
            browser.close()


def _lines(stream, out: queue.Queue) -> None:
    for raw in iter(stream.readline, ""):
        out.put(raw)


def _state(url: str) -> dict:
    with urllib.request.urlopen(url + "api/state?since=0", timeout=10) as r:
        return json.loads(r.read())


def _stuck(pid: int) -> str:
    """What a process that does not exit is doing: its threads' kernel waits and its
    children still alive (multiprocessing joins its children at exit)."""
    lines = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        try:
            name = (task / "comm").read_text().strip()
            wchan = (task / "wchan").read_text().strip()
        except OSError:
            continue
        lines.append(f"thread {task.name} {name}: {wchan}")
    kids = subprocess.run(["ps", "-o", "pid,stat,wchan:24,args", "--ppid", str(pid)],
                          capture_output=True, text=True).stdout
    return "\n".join(lines) + "\nchildren:\n" + kids


def test_run_watch_serves_the_run_while_it_goes_and_after(tmp_path):
    """``run --watch``: the address on stderr before the run; the page's state follows the
    run (running, with lines added, then finished with the per-edge accounts); the view
    stays up after the run until Ctrl-C, and the exit status is the run's."""
    out = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pgame.cli", "run", str(SCENARIO), "--out", str(out),
         "--quiet", "--watch", "--watch-keep", "120", "--data", str(tmp_path / "data"),
         "--set", "runtime.step_delay_ms=20"],  # 200 steps: about 4 s of run
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # Ctrl-C as in a user's terminal: in full suites the pytest worker has been seen
        # with SIGINT ignored (a disposition children inherit; who leaks it: not found yet).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    errs: queue.Queue = queue.Queue()
    outs: queue.Queue = queue.Queue()
    for stream, q in ((proc.stderr, errs), (proc.stdout, outs)):
        threading.Thread(target=_lines, args=(stream, q), daemon=True).start()
    try:
        url = None
        while url is None:
            got = errs.get(timeout=60)
            if got.startswith("watch: http://127.0.0.1:"):
                url = got.split()[1]
        seen: list[tuple[str, int]] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            st = _state(url)
            seen.append((st["status"], len(st["lines"])))
            if st["status"] == "finished":
                break
            time.sleep(0.3)  # (a poll, as the page's: the run's pace is its own)
        assert seen[-1][0] == "finished", seen
        running = [n for s, n in seen if s == "running"]
        assert running and min(running) < seen[-1][1], seen  # it was seen growing
        assert seen[-1][1] == 4 * 21  # (metrics every 10 steps, and the last)
        assert st["run_dir"] == str(next(out.iterdir()))
        assert st["links_source"] == "summary.json" and len(st["links"]) == 8
        # The run has ended (its table printed); the view is still up.
        stdout = ""
        while "results:" not in stdout:
            stdout += outs.get(timeout=30)
        assert _state(url)["status"] == "finished"
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        # (A hang guard, not a timing check.  In session 18 the exit after Ctrl-C hung in
        # two of three fresh-clone full suites, never alone: what it waits for is said.)
        try:
            code = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"p2pgame run --watch did not exit after Ctrl-C:\n{_stuck(proc.pid)}")
        assert code == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
