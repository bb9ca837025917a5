"""Reliability under load and faults (issue 22): the probe's cases, re-run on this code.

Each case does the fault for real and reports what it measured; "held?" is computed from
what was observed, never written in:

* ``stopped-peer``: ``topologies/expfam-ring8-async.toml``, 10 000 steps; peer 3 SIGSTOPped
  for 3 s mid-run: exit status, peer 3's refusals, links 2->3 and 4->3;
* ``two-runs``: two such runs at once (no fault): every peer's refusals in each;
* ``oversized-frame``: a sync run (peers in threads of this process) where peer 0 sends one
  frame above ``comm.max_message_bytes``: exit code, steps, peers 1 and 3's refusals;
* ``bad-numbers``: ``p2pgame run`` with nan / inf / out-of-range numbers and a 1 MiB string
  in ``--set``: exit status, stderr lines, the longest, "Traceback", a run folder made;
* ``bad-commands``: unwritable ``--out`` for run / sweep / report, ``eval --samples -5``,
  ``runtime.device = "cuda"`` without CUDA, an unknown family, ``--version``, and the
  README's Ray command on this machine;
* ``disk-full``: a run writing its metrics on a 2 MiB tmpfs: exit status, the error line,
  whether every metrics line kept is whole JSON;
* ``ctrl-c-twice``: two SIGINTs to ``p2pgame run``, gaps 0 to 1 s: exit code, summary.json
  and links.csv with ``interrupted: true``;
* ``ctrl-c-frozen``: peer 2 SIGSTOPped, then one SIGINT: time to exit, code, failures and
  warnings;
* ``killed-launcher-leftovers``: SIGKILL of ``p2pgame run`` mid-run: sockets, fork-server
  and private folders left, and after the next start;
* ``control-frame``: one 256 MiB frame to the launcher's control socket: this process's
  memory, and whether a legitimate message still arrives;
* ``decoy-package``: ``p2pgame run`` from a folder holding another ``p2pgame`` package;
* ``data-verify``: an MNIST file corrupted keeping its size and modification time.

After every case, no process started by it may be left (found through an environment
variable that every process it starts inherits); any found is killed and reported.

Usage: ``.venv/bin/python bench/probe.py [--cases a,b,c] [--out DIR]``. Prints a Markdown
table; the last stdout line is a JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import benchenv

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RING4 = ROOT / "tests" / "scenarios" / "expfam-ring4.toml"
RING8_ASYNC = ROOT / "topologies" / "expfam-ring8-async.toml"
RING8 = ROOT / "topologies" / "expfam-ring8.toml"
_BIN = Path(sys.executable).parent / "p2pgame"
P2PGAME = [str(_BIN)] if _BIN.exists() else [sys.executable, "-m", "p2pgame.cli"]
TAG_VAR = "P2PG_PROBE_TAG"
MiB = 2**20

_base = Path(tempfile.gettempdir()) / "probe-base-unset"  # main() sets it


# --------------------------------------------------------------------------- helpers


def show(args) -> str:
    """A command as it would be typed (paths relative to the checkout, temporary ones
    as DIR/...)."""
    out = []
    for a in args:
        a = str(a)
        if a == str(_BIN) or a.endswith("/p2pgame") and a.startswith(str(ROOT)):
            a = "p2pgame"
        a = a.replace(str(ROOT) + "/", "")
        a = scrub(a)
        if len(a) > 120:
            a = a[:40] + f"...<{len(a)} chars>"
        out.append(shlex.quote(a) if a != "p2pgame" else a)
    return " ".join(out)


def scrub(text: str) -> str:
    """``text`` with the probe's own folder written DIR."""
    return str(text).replace(str(_base), "DIR")


def _env(tag: str, **extra) -> dict:
    return {**os.environ, TAG_VAR: tag, **extra}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def tagged(tag: str) -> list[int]:
    """Live processes whose environment holds this case's tag (it and what it started)."""
    want = f"{TAG_VAR}={tag}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if want in env and _alive(int(name)):
            found.append(int(name))
    return found


def sweep_leftovers(tag: str, wait_s: float = 10.0) -> list[int]:
    """Wait up to ``wait_s`` for the case's processes to be gone; kill and return those
    that were not."""
    deadline = time.monotonic() + wait_s
    while (left := tagged(tag)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
    return left


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGCONT)
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(10)


def spawn(args, folder: Path, tag: str, name: str, cwd=ROOT, **env) -> tuple:
    """Start ``args`` in a session of its own, stdout and stderr to files in ``folder``."""
    out = open(folder / f"{name}.out", "wb")
    err = open(folder / f"{name}.err", "wb")
    proc = subprocess.Popen([str(a) for a in args], cwd=cwd, stdout=out, stderr=err,
                            stdin=subprocess.DEVNULL, env=_env(tag, **env),
                            start_new_session=True)
    out.close()
    err.close()
    return proc, folder / f"{name}.out", folder / f"{name}.err"


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int | None, bool]:
    """Wait for ``proc``; on timeout kill its process group.  (code, timed out)."""
    try:
        return proc.wait(timeout), False
    except subprocess.TimeoutExpired:
        kill_group(proc)
        return proc.returncode, True


def run_cmd(args, folder: Path, tag: str, name: str, timeout: float = 60.0,
            cwd=ROOT, **env) -> dict:
    t0 = time.monotonic()
    proc, out, err = spawn(args, folder, tag, name, cwd=cwd, **env)
    code, timed_out = finish(proc, timeout)
    return {"rc": code, "timed_out": timed_out, "wall_s": time.monotonic() - t0,
            "stdout": out.read_text(errors="replace"),
            "stderr": err.read_text(errors="replace")}


def progress(errfile: Path) -> int:
    """The progress bar's latest count of peer steps in a run's stderr."""
    try:
        with open(errfile, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 8192))
            tail = f.read()
    except OSError:
        return 0
    counts = re.findall(rb"(\d+)/\d+ \[", tail)
    return int(counts[-1]) if counts else 0


def wait_started(proc, out: Path, errfile: Path, at_least: int = 0,
                 timeout: float = 90.0) -> Path | None:
    """The run folder once endpoints.json exists in it and the progress bar has counted
    ``at_least`` peer steps; None if the run ended or the time ran out first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(out.glob("*/endpoints.json"))
        if found and progress(errfile) >= at_least:
            return found[0].parent
        time.sleep(0.05)
    return None


def pids_of(run_dir: Path) -> dict[int, int]:
    eps = json.loads((run_dir / "endpoints.json").read_text())
    return {int(k): v["pid"] for k, v in eps.items()}


def summary_of(out: Path) -> tuple[Path | None, dict | None]:
    dirs = sorted(p for p in out.iterdir() if p.is_dir()) if out.is_dir() else []
    if not dirs:
        return None, None
    path = dirs[-1] / "summary.json"
    try:
        return dirs[-1], json.loads(path.read_text())
    except (OSError, ValueError):
        return dirs[-1], None


def links(run_dir: Path) -> dict[tuple[int, int], dict]:
    with open(run_dir / "links.csv") as f:
        return {(int(r["src"]), int(r["dst"])): r for r in csv.DictReader(f)}


def err_lines(text: str) -> list[str]:
    return [ln for ln in re.split(r"[\r\n]+", text) if ln.strip()]


def error_lines(text: str) -> list[str]:
    """Every "error: ..." the command printed, also one glued to a progress bar."""
    return re.findall(r"(?:internal error \(|error: )[^\r\n]*", text)


def row(what: str, outcome: str, held: bool, **data) -> dict:
    return {"what": what, "outcome": outcome, "held": bool(held), **data}


# --------------------------------------------------------------------------- 1, 2


def case_stopped_peer(tmp: Path, tag: str) -> list[dict]:
    out = tmp / "runs"
    args = [*P2PGAME, "run", RING8_ASYNC, "--set", "steps=10000", "--out", out]
    proc, _, err = spawn(args, tmp, tag, "run")
    run_dir = wait_started(proc, out, err, at_least=16000)  # 20 % of 8 x 10 000 peer steps
    stopped_at = None
    back_while_running = False
    if run_dir is not None:
        pid = pids_of(run_dir)[3]
        stopped_at = progress(err)
        os.kill(pid, signal.SIGSTOP)
        time.sleep(3.0)
        os.kill(pid, signal.SIGCONT)
        back_while_running = proc.poll() is None
    code, timed_out = finish(proc, 300)
    run_dir, s = summary_of(out)
    if s is None:
        return [row(show(args), f"exit {code}{' (timed out)' if timed_out else ''}; "
                f"no summary", False)]
    p3 = s["peers"]["3"]
    lk = links(run_dir)
    edges = {e: {k: int(lk[e][k]) for k in ("sent", "arrived", "rejected", "in_transport")}
             for e in ((2, 3), (4, 3))}
    held = (code == 0 and p3["messages_rejected"] == 0 and not s["refused_edges"]
            and all(e["arrived"] > 0.5 * e["sent"] for e in edges.values())
            and back_while_running)
    edge_txt = "; ".join(f"{a}->{b}: sent {e['sent']}, arrived {e['arrived']} "
                         f"({e['arrived'] / max(1, e['sent']):.0%}), rejected {e['rejected']}, "
                         f"in transport {e['in_transport']}" for (a, b), e in edges.items())
    return [row(f"`{show(args)}`; peer 3 SIGSTOPped for 3 s at {stopped_at} of 80000 peer "
                f"steps, then SIGCONT", (
                    f"exit {code}; peer 3 refused {p3['messages_rejected']} "
                    f"{json.dumps(p3['rejected_reasons'])}; {edge_txt}; refused_edges "
                    f"{s['refused_edges']}; warnings {json.dumps(s['warnings'])}; "
                    f"wall {s['wall_s']:.1f} s"), held,
                exit=code, rejected=p3["messages_rejected"], edges={
                    f"{a}->{b}": e for (a, b), e in edges.items()})]


def case_two_runs(tmp: Path, tag: str) -> list[dict]:
    procs = []
    for k in (1, 2):
        args = [*P2PGAME, "run", RING8_ASYNC, "--set", "steps=10000", "--out", tmp / f"run{k}"]
        procs.append((args, *spawn(args, tmp, tag, f"run{k}")))
    results = []
    for _args, proc, _, _ in procs:
        results.append(finish(proc, 400))
    parts, totals, ok = [], [], True
    for k, (code, timed_out) in enumerate(results, 1):
        _, s = summary_of(tmp / f"run{k}")
        if s is None:
            parts.append(f"run {k}: exit {code}{' (timed out)' if timed_out else ''}, "
                         "no summary")
            ok = False
            continue
        total = sum(p["messages_rejected"] for p in s["peers"].values())
        reasons: dict[str, int] = {}
        for p in s["peers"].values():
            for r, n in p["rejected_reasons"].items():
                reasons[r] = reasons.get(r, 0) + n
        totals.append(total)
        parts.append(f"run {k}: exit {code}, {total} rejected {json.dumps(reasons)}, "
                     f"refused_edges {s['refused_edges']}, wall {s['wall_s']:.1f} s")
        ok = ok and code == 0 and total == 0 and not s["refused_edges"]
    return [row(f"`{show(procs[0][0])}` twice at the same time (run1, run2)",
                "; ".join(parts), ok, rejected=totals)]


# --------------------------------------------------------------------------- 3


def case_oversized_frame(tmp: Path, tag: str) -> list[dict]:
    from p2pgame import launch
    from p2pgame.peer.runtime import PeerRuntime
    from tests.helpers import publishing_one_oversized_frame
    from tests.integration.test_faults import _ThreadWorkers

    honest_publish = PeerRuntime.publish
    saved_backend = launch.make_backend
    sent: list[int] = []
    oversized_publish = publishing_one_oversized_frame(honest_publish, sent)

    overrides = ["comm.max_message_bytes=65536", "comm.sync_timeout_s=15"]
    PeerRuntime.publish = oversized_publish
    launch.make_backend = lambda *a, **k: _ThreadWorkers()
    t0 = time.monotonic()
    try:
        res = launch.run(RING4, overrides, out=tmp / "runs", progress=False)
    finally:
        PeerRuntime.publish = honest_publish
        launch.make_backend = saved_backend
    took = time.monotonic() - t0
    s = res.summary
    steps = {i: p["steps"] for i, p in s["peers"].items()}
    # (A peer that failed has no summary entry: its failure is in the row.)
    reasons = {i: s["peers"].get(str(i), {}).get("rejected_reasons") for i in (1, 3)}
    held = (bool(sent) and res.exit_code == 0 and all(v == 200 for v in steps.values())
            and all(r == {"connection-cut": 1} for r in reasons.values()))
    return [row(f"in-process `launch.run({show([RING4])}, {overrides})`, peers in threads "
                f"(`_ThreadWorkers`); peer 0 also sends one 1 MiB frame at step 20 "
                f"(limit 64 KiB)", (
                    f"exit {res.exit_code}; frame sent: {bool(sent)}; steps {steps}; "
                    f"rejected_reasons peer 1 {json.dumps(reasons[1])}, peer 3 "
                    f"{json.dumps(reasons[3])}; failures {json.dumps(s['failures'])}; "
                    f"warnings {json.dumps(s['warnings'])}; "
                    f"{took:.1f} s"), held, exit=res.exit_code)]


# --------------------------------------------------------------------------- 4, 5

# The p2pgame command's own entry point, with "@1MiB@" in an argument replaced by a
# 1 MiB string: exec refuses a single argument above 128 KiB (MAX_ARG_STRLEN, E2BIG).
_BIG_ARG = """
import sys
big = "x" * (1 << 20)
sys.argv = ["p2pgame"] + [a.replace("@1MiB@", big) for a in sys.argv[1:]]
from p2pgame.cli import entry
entry()
"""


def _one_line_refusal(what: str, r: dict, made: bool | None, want_rc: int = 2,
                      extra_ok: bool = True, note: str = "") -> dict:
    lines = err_lines(r["stderr"])
    longest = max((len(ln) for ln in lines), default=0)
    tb = "Traceback" in r["stderr"] + r["stdout"]
    first = lines[0] if lines else ""
    if len(first) > 200:
        first = first[:200] + f"...<{len(first)} chars>"
    held = (r["rc"] == want_rc and len(lines) == 1 and longest < 400 and not tb
            and not made and extra_ok)
    outcome = (f"exit {r['rc']}{' (timed out)' if r['timed_out'] else ''}; {len(lines)} "
               f"stderr line(s), longest {longest}; Traceback: {'yes' if tb else 'no'}; "
               f"run folder: {'n/a' if made is None else ('yes' if made else 'no')}; "
               f"\"{first}\"{note}")
    return row(f"`{what}`", outcome, held, exit=r["rc"], lines=len(lines), longest=longest,
               traceback=tb)


def case_bad_numbers(tmp: Path, tag: str) -> list[dict]:
    rows = []
    values = ["runtime.peer_timeout_s=nan", "runtime.start_timeout_s=inf",
              "comm.sync_timeout_s=nan", "runtime.stop_timeout_s=inf", "comm.jitter_ms=inf",
              "runtime.step_delay_ms=inf", "comm.send_hwm=9223372036854775808"]
    for k, v in enumerate(values):
        out = tmp / f"out{k}"
        args = [*P2PGAME, "run", RING4, "--set", v, "--out", out]
        r = run_cmd(args, tmp, tag, f"n{k}", timeout=60)
        rows.append(_one_line_refusal(show(args), r, out.exists()))
    # The misplaced key the issue named: sync_timeout_s is comm's, not runtime's.
    out = tmp / "out-misplaced"
    args = [*P2PGAME, "run", RING4, "--set", "runtime.sync_timeout_s=nan", "--out", out]
    rows.append(_one_line_refusal(show(args), run_cmd(args, tmp, tag, "nmis"), out.exists()))
    for k, v in enumerate(['name="@1MiB@"', 'comm.mode="@1MiB@"']):
        out = tmp / f"big{k}"
        args = [sys.executable, "-c", _BIG_ARG, "run", RING4, "--set", v, "--out", out]
        r = run_cmd(args, tmp, tag, f"big{k}", timeout=60)
        shown = show([*P2PGAME, "run", RING4, "--set", v.replace("@1MiB@", "<1 MiB of x>"),
                      "--out", out])
        rows.append(_one_line_refusal(shown, r, out.exists(), note=(
            " (run through the command's entry point, `p2pgame.cli.entry`: exec takes no "
            "single argument over 128 KiB)")))
    out = tmp / "big-exec"
    v = 'comm.mode="' + "x" * (128 * 1024 - 20) + '"'
    args = [*P2PGAME, "run", RING4, "--set", v, "--out", out]
    r = run_cmd(args, tmp, tag, "bigexec", timeout=60)
    rows.append(_one_line_refusal(show(args).replace(
        show([v]), "'comm.mode=\"<128 KiB - 20 of x>\"'"), r, out.exists()))
    return rows


# The README's Ray command (section "Across machines") as it is now; the probe ran it
# with --set runtime.placement="workers" --set runtime.workers=4 as well.
RAY_README = ["--set", 'runtime.backend="ray"', "--set", 'runtime.ray_address="auto"',
              "--set", 'comm.transport="tcp"', "--set", 'comm.host="node"']


def _ray_row(what: str, r: dict, out: Path, need_run: bool) -> dict:
    tb = "Traceback" in r["stderr"] + r["stdout"]
    errs = error_lines(r["stderr"])
    run_dir, s = summary_of(out)
    if s is not None:
        steps = sorted({p["steps"] for p in s["peers"].values()})
        said = (f"summary: {len(s['peers'])} peers, steps {steps}, {s['workers']} workers "
                f"({[w['peers'] for w in s['nodes']]}) on {len({w['node'] for w in s['nodes']})}"
                f" node(s), failed {s['failed_peers']}, start_error {s['start_error']!r}, "
                f"wall {s['wall_s']:.1f} s")
        complete = (r["rc"] == 0 and len(s["peers"]) == s["n_peers"]
                    and steps == [s["steps"]] and not s["failed_peers"])
    else:
        said = f"run folder: {'yes, no summary' if run_dir else 'none'}"
        complete = False
    refusal = r["rc"] == 2 and len(errs) == 1 and not tb
    held = (complete if need_run else (complete or refusal)) and not r["timed_out"]
    outs = r["stdout"].splitlines()
    for path in re.findall(r"full traceback: (/\S+\.txt)", r["stderr"]):
        with contextlib.suppress(OSError):
            os.remove(path)  # the launcher's traceback file: read the message, leave no junk
    msg = errs[-1] if errs else (outs[-1] if outs else "")
    return row(f"`{what}`", f"exit {r['rc']}{' (timed out at 240 s)' if r['timed_out'] else ''}"
               f", {r['wall_s']:.0f} s; Traceback on stderr: {'yes' if tb else 'no'}; {said}; "
               f"\"{msg[:400]}\"", held, exit=r["rc"], wall_s=round(r["wall_s"], 1))


def case_bad_commands(tmp: Path, tag: str) -> list[dict]:
    rows = []
    ok_run = run_cmd([*P2PGAME, "run", RING4, "--set", "steps=20", "--out", tmp / "done",
                      "--quiet"], tmp, tag, "done", timeout=60)
    finished, _ = summary_of(tmp / "done")
    if ok_run["rc"] != 0 or finished is None:
        rows.append(row("a 20-step run for report/eval", f"exit {ok_run['rc']}: "
                        f"{ok_run['stderr'][-300:]}", False))
    sweep = sorted((ROOT / "topologies").glob("*sweep*.toml"))[0]
    cmds = [
        ("nope-run", [*P2PGAME, "run", RING4, "--out", "/proc/nope"], 2, None),
        ("nope-sweep", [*P2PGAME, "sweep", sweep, "--out", "/proc/nope"], 2, None),
        ("nope-report", [*P2PGAME, "report", finished, "--out", "/proc/nope"], 2, None),
        ("eval", [*P2PGAME, "eval", finished, "--samples", "-5"], 2, None),
        ("cuda", [*P2PGAME, "run", RING4, "--set", 'runtime.device="cuda"',
                  "--out", tmp / "cuda"], 2, tmp / "cuda"),
        ("cuda-torch", [*P2PGAME, "run", ROOT / "topologies" / "mnist-2peers.toml",
                        "--set", 'runtime.device="cuda"', "--data", tmp / "nodata",
                        "--out", tmp / "cuda-torch"], 2, tmp / "cuda-torch"),
        ("family", [*P2PGAME, "run", RING4, "--set", 'algorithm.family="nope"',
                    "--out", tmp / "family"], 2, tmp / "family"),
    ]
    for name, args, want, made in cmds:
        r = run_cmd(args, tmp, tag, name, timeout=120)
        extra, note = True, ""
        if name == "family":
            extra = "algorithm: algorithm.family" not in r["stderr"]
            note = f"; doubled prefix: {'yes' if not extra else 'no'}"
        if name == "cuda":
            import torch

            note = f"; torch.cuda.is_available() = {torch.cuda.is_available()}"
            if made is not None and made.exists():
                _, s = summary_of(made)
                if s is not None:
                    note += (f"; the run went ahead: {len(s['peers'])} peers, "
                             f"warnings {json.dumps(s['warnings'])}")
        rows.append(_one_line_refusal(show(args), r, made.exists() if made else None,
                                      want, extra, note))
    r = run_cmd([*P2PGAME, "--version"], tmp, tag, "version", timeout=60)
    out_lines = r["stdout"].splitlines()
    tb = "Traceback" in r["stderr"] + r["stdout"]
    rows.append(row("`p2pgame --version`", f"exit {r['rc']}; stdout {len(out_lines)} line(s) "
                    f"\"{r['stdout'].strip()[:100]}\"; stderr {len(err_lines(r['stderr']))} "
                    f"line(s); Traceback: {'yes' if tb else 'no'}",
                    r["rc"] == 0 and len(out_lines) == 1 and not tb, exit=r["rc"]))
    # The README's Ray command, verbatim (no cluster runs here: refused in one line); then
    # without ray_address (a local Ray that the driver starts, the worker count fitted to
    # it: the run must complete); then with the probe's explicit 4 workers of 1 CPU on
    # this 2-core machine (they can never be placed: refused in one line, or run).
    local = _drop(RAY_README, "runtime.ray_address")
    variants = [
        ("ray-readme", RAY_README, False),
        ("ray-local-fit", local, True),
        ("ray-local-4-workers", [*local, "--set", 'runtime.placement="workers"',
                                 "--set", "runtime.workers=4"], False),
    ]
    for name, sets, need_run in variants:
        out = tmp / name
        args = [*P2PGAME, "run", RING8, *sets, "--out", out]
        r = run_cmd(args, tmp, tag, name, timeout=240)
        rows.append(_ray_row(show(args), r, out, need_run))
        left = sweep_leftovers(tag, 15)
        if left:
            rows[-1]["outcome"] += f"; processes left after it, killed: {left}"
            rows[-1]["held"] = False
    return rows


def _drop(sets: list[str], key: str) -> list[str]:
    out = []
    for k in range(0, len(sets), 2):
        if not sets[k + 1].startswith(key + "="):
            out += sets[k:k + 2]
    return out


# --------------------------------------------------------------------------- 6, 7, 8, 9


def case_disk_full(tmp: Path, tag: str) -> list[dict]:
    disk = tmp / "disk"
    disk.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        return [row("mount a 2 MiB tmpfs", f"cannot mount: {made.stderr.strip()}", False)]
    try:
        args = [*P2PGAME, "run", RING4, "--out", disk, "--set", "runtime.metrics_every=1",
                "--set", "steps=1000000", "--set", 'comm.mode="async"']
        r = run_cmd(args, tmp, tag, "run", timeout=180)
        errs = error_lines(r["stderr"])
        tb = "Traceback" in r["stderr"]
        kept, cut, bad, files = 0, 0, 0, 0
        run_dir, s = summary_of(disk)
        for path in sorted((run_dir / "metrics").glob("peer-*.jsonl")) if run_dir else []:
            files += 1
            text = path.read_text(errors="replace")
            if text and not text.endswith("\n"):
                cut += 1
            for ln in text.splitlines():
                try:
                    json.loads(ln)
                    kept += 1
                except ValueError:
                    bad += 1
        has_summary = s is not None
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False, capture_output=True)
    msg = errs[-1] if errs else ""
    held = (r["rc"] == 1 and not tb and len(errs) == 1 and "the disk is full" in msg
            and "metrics/peer-" in msg and cut == 0 and bad == 0 and kept > 0)
    said = " / ".join(f'"{e[:300]}"' for e in errs)
    return [row(f"2 MiB tmpfs at DIR; `{show(args)}`", (
        f"exit {r['rc']}{' (timed out)' if r['timed_out'] else ''}; {len(errs)} error "
        f"line(s): {said}; Traceback: {'yes' if tb else 'no'}; {files} metrics "
        f"files, {kept} lines kept, all whole JSON: {'yes' if not (cut or bad) else 'no'} "
        f"({cut} files end in a cut line, {bad} lines not JSON); summary.json: "
        f"{'yes' if has_summary else 'no'}; {r['wall_s']:.1f} s"), held, exit=r["rc"],
        lines_kept=kept)]


def case_ctrl_c_twice(tmp: Path, tag: str) -> list[dict]:
    tries = []
    args = None
    for k, gap in enumerate((0.0, 0.01, 0.05, 0.1, 0.3, 1.0)):
        out = tmp / f"try{k}"
        args = [*P2PGAME, "run", RING4, "--set", "steps=10000000", "--out", out]
        proc, _, err = spawn(args, tmp, tag, f"try{k}")
        run_dir = wait_started(proc, out, err)
        if run_dir is None:
            kill_group(proc)
            tries.append((gap, proc.returncode, False, False, "never started"))
            continue
        time.sleep(1.0)  # into the measured phase
        proc.send_signal(signal.SIGINT)
        time.sleep(gap)
        proc.send_signal(signal.SIGINT)
        code, timed_out = finish(proc, 90)
        s = None
        with contextlib.suppress(OSError, ValueError):
            s = json.loads((run_dir / "summary.json").read_text())
        lk = (run_dir / "links.csv").exists() and \
            (run_dir / "links.csv").read_text().startswith("src,dst,")
        tb = "Traceback" in err.read_text(errors="replace")
        tries.append((gap, code, s is not None and s.get("interrupted") is True, lk,
                      "traceback" if tb else ("timed out" if timed_out else "")))
        sweep_leftovers(tag, 10)
    good = sum(1 for _, c, s, lk, note in tries if c == 130 and s and lk and not note)
    detail = "; ".join(f"gap {g:g} s: exit {c}, summary {'yes' if s else 'NO'}, links.csv "
                       f"{'yes' if lk else 'NO'}{', ' + n if n else ''}"
                       for g, c, s, lk, n in tries)
    return [row(f"`{show(args).replace('try5', 'tryK')}`; 1 s after endpoints.json, SIGINT, "
                f"a gap, SIGINT (to the launcher), 6 tries",
                f"{good} of {len(tries)} with exit 130 and summary.json (`interrupted: true`) "
                f"+ links.csv: {detail}", good == 6, good=good)]


def case_ctrl_c_frozen(tmp: Path, tag: str) -> list[dict]:
    stop_s = 5.0
    out = tmp / "runs"
    args = [*P2PGAME, "run", RING4, "--set", "steps=10000000", "--set", 'comm.mode="async"',
            "--set", f"runtime.stop_timeout_s={stop_s:g}", "--out", out]
    proc, _, err = spawn(args, tmp, tag, "run")
    run_dir = wait_started(proc, out, err)
    if run_dir is None:
        kill_group(proc)
        return [row(f"`{show(args)}`", "the run never started", False)]
    time.sleep(1.0)
    os.kill(pids_of(run_dir)[2], signal.SIGSTOP)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    code, timed_out = finish(proc, 120)
    took = time.monotonic() - t0
    s = None
    with contextlib.suppress(OSError, ValueError):
        s = json.loads((run_dir / "summary.json").read_text())
    if s is None:
        return [row(f"`{show(args)}`", f"exit {code}, {took:.1f} s; no summary", False)]
    limit = stop_s + 3.0  # the 2 s between SIGTERM and SIGKILL, and 1 s to write up
    held = (code == 130 and took <= limit and s["failed_peers"] == []
            and "ended by the launcher" in s["warnings"].get("2", "")
            and s["interrupted"] is True)
    return [row(f"`{show(args)}`; 1 s after endpoints.json, SIGSTOP peer 2, then one SIGINT",
                f"exit {code}; {took:.1f} s from SIGINT to exit (stop_timeout_s {stop_s:g}; "
                f"held if <= {limit:g}); failed_peers {s['failed_peers']}; failures "
                f"{json.dumps(s['failures'])}; warnings {json.dumps(s['warnings'])}", held,
                exit=code, seconds_to_exit=round(took, 2))]


def case_killed_launcher_leftovers(tmp: Path, tag: str) -> list[dict]:
    # A private TMPDIR (short: it holds ipc sockets), so that only this case's folders are
    # counted and not those of other runs on the machine; the launcher's private folder and
    # multiprocessing's pymp-* folders both go under TMPDIR (tempfile).
    tmpdir = Path(tempfile.mkdtemp(prefix="pp9-", dir="/tmp"))
    try:
        before_tmp = {p.name for p in Path("/tmp").glob("pymp-*")}
        out = tmp / "runs"
        args = [*P2PGAME, "run", RING4, "--set", "steps=10000000", "--out", out]
        proc, _, err = spawn(args, tmp, tag, "run", TMPDIR=str(tmpdir))
        run_dir = wait_started(proc, out, err)
        if run_dir is None:
            kill_group(proc)
            return [row(f"`{show(args)}`", "the run never started", False)]
        time.sleep(1.0)
        peers = list(pids_of(run_dir).values())
        mine = list(tmpdir.glob(f"p2pg-{proc.pid}-*"))
        socks_live = sorted(p.name for f in mine for p in f.rglob("*.sock"))
        proc.kill()
        proc.wait()
        t0 = time.monotonic()
        while any(_alive(p) for p in peers) and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        peers_left = [p for p in peers if _alive(p)]
        gone_s = time.monotonic() - t0
        time.sleep(0.5)
        left = sweep_leftovers(tag, 5)
        after_kill = {
            "run_socks": sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*.sock")),
            "pymp": sorted(p.name for p in tmpdir.glob("pymp-*")),
            "p2pg": sorted(p.name for p in tmpdir.glob("p2pg-*")),
        }
        second = [*P2PGAME, "run", RING4, "--set", "steps=20", "--out", tmp / "second",
                  "--quiet"]
        r = run_cmd(second, tmp, tag, "second", timeout=90, TMPDIR=str(tmpdir))
        left2 = sweep_leftovers(tag, 10)
        after_next = {
            "pymp": sorted(p.name for p in tmpdir.glob("pymp-*")),
            "p2pg": sorted(p.name for p in tmpdir.glob("p2pg-*")),
        }
        new_tmp_pymp = sorted({p.name for p in Path("/tmp").glob("pymp-*")} - before_tmp)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    killed_folder = f"p2pg-{proc.pid}-"
    held = (not after_kill["run_socks"] and not after_kill["pymp"] and not after_next["pymp"]
            and not any(n.startswith(killed_folder) for n in after_next["p2pg"])
            and not peers_left and not left and not left2 and r["rc"] == 0)
    return [row(f"`{show(args)}` (TMPDIR a private folder T), SIGKILL of the launcher 1 s "
                f"after endpoints.json; then `{show(second)}` (same TMPDIR)", (
                    f"while running: T/{killed_folder}*/ held {socks_live}; after the kill: "
                    f"peers gone in {gone_s:.1f} s (left: {peers_left}), other processes "
                    f"left: {left}; *.sock in the run folder {after_kill['run_socks']}; "
                    f"T/pymp-* {after_kill['pymp']}; T/p2pg-* {after_kill['p2pg']}. After "
                    f"the next run (exit {r['rc']}): T/p2pg-* {after_next['p2pg']}, T/pymp-* "
                    f"{after_next['pymp']}, processes left {left2}. (/tmp/pymp-* new "
                    f"meanwhile, from anything on the machine: {len(new_tmp_pymp)})"),
                held)]


# --------------------------------------------------------------------------- 10


async def _control_frame(tmp: Path, tag: str, frame_mib: int = 256) -> dict:
    import zmq.asyncio

    from p2pgame.bus.transport import CONTROL_FRAME_BYTES, ControlClient, ControlServer
    from p2pgame.peer import control as ctl
    from tests.helpers import CONTROL_SENDER, reset_peak_memory, status_kib

    server = ControlServer("ipc", "127.0.0.1", tmp, tokens={0: "t"})
    ctx = zmq.asyncio.Context()
    peer = ControlClient(0, server.endpoint, ctx, "t")
    try:
        await peer.send(ctl.encode(ctl.Progress(0)))
        warm = await server.recv(20)
        reset_peak_memory()
        rss0, hwm0 = status_kib("VmRSS"), status_kib("VmHWM")
        # The big frame under the peer's own auth frame (a peer gone mad, not a stranger).
        sender = subprocess.Popen([sys.executable, "-c", CONTROL_SENDER, server.endpoint,
                                   "0:t", "t", str(frame_mib)], cwd=ROOT, env=_env(tag),
                                  start_new_session=True)
        got = []
        t0 = time.monotonic()
        try:
            # Until the sender is done, then 2 s more.
            end = None
            while end is None or time.monotonic() < end:
                msg = await server.recv(0.2)
                if msg is not None:
                    got.append((msg[0], len(msg[1]), ctl.decode(msg[1])))
                if end is None and (sender.poll() is not None or time.monotonic() - t0 > 60):
                    end = time.monotonic() + 2.0
        finally:
            code, _ = finish(sender, 30)
        rss1, hwm1 = status_kib("VmRSS"), status_kib("VmHWM")
        await peer.send(ctl.encode(ctl.Progress(2)))
        after = await server.recv(10)
        legit = after is not None and ctl.decode(after[1]) == ctl.Progress(2)
    finally:
        peer.close()
        ctx.term()
        server.close()
    big_arrived = any(n > CONTROL_FRAME_BYTES for _, n, _ in got)
    return {"warm": warm is not None, "rss0": rss0 / 1024, "rss1": rss1 / 1024,
            "peak_growth": (hwm1 - hwm0) / 1024, "got": [repr(m) for _, _, m in got],
            "big_arrived": big_arrived, "legit": legit, "sender_exit": code,
            "frame_mib": frame_mib, "cap_mib": CONTROL_FRAME_BYTES / MiB}


def case_control_frame(tmp: Path, tag: str) -> list[dict]:
    r = asyncio.run(_control_frame(tmp, tag))
    held = (r["warm"] and r["peak_growth"] < r["frame_mib"] / 8 and not r["big_arrived"]
            and r["legit"] and r["sender_exit"] == 0)
    return [row(f"in-process `ControlServer(\"ipc\", \"127.0.0.1\", DIR, tokens={{0: \"t\"}})`;"
                f" another process's DEALER sends `[b\"0:t\", {r['frame_mib']} MiB of zeros]`, "
                f"then `[b\"0:t\", Progress(1)]`; receive until it is done + 2 s; then a "
                f"ControlClient sends Progress(2)", (
                    f"this process's VmRSS {r['rss0']:.0f} -> {r['rss1']:.0f} MB, peak "
                    f"(VmHWM) grew {r['peak_growth']:.1f} MB (frame cap "
                    f"{r['cap_mib']:.0f} MiB); received meanwhile: {r['got']}; the big "
                    f"frame arrived: {'yes' if r['big_arrived'] else 'no'}; the legitimate "
                    f"message after it arrived: {'yes' if r['legit'] else 'NO'}"), held,
                rss_before_mb=round(r["rss0"], 1), rss_after_mb=round(r["rss1"], 1),
                peak_growth_mb=round(r["peak_growth"], 1))]


# --------------------------------------------------------------------------- 11, 12


def case_decoy_package(tmp: Path, tag: str) -> list[dict]:
    from tests.integration.test_same_code import make_decoy

    here = tmp / "elsewhere"
    here.mkdir()
    marker = make_decoy(here)  # a working copy of the package that leaves a marker
    args = [str(_BIN), "run", RING4, "--set", "steps=20", "--out", tmp / "out"]
    r = run_cmd(args, tmp, tag, "run", timeout=120, cwd=here)
    _, s = summary_of(tmp / "out")
    steps = sorted({p["steps"] for p in s["peers"].values()}) if s else None
    imported = marker.read_text().split() if marker.exists() else []
    held = r["rc"] == 0 and not marker.exists() and steps == [20]
    return [row(f"cwd a folder holding `p2pgame/` (a copy whose `__init__.py` appends its pid "
                f"to a marker file); `{show(args)}`",
                f"exit {r['rc']}; peers' steps {steps}; marker: "
                f"{'yes, pids ' + ','.join(imported) if imported else 'no'}", held,
                exit=r["rc"])]


def case_data_verify(tmp: Path, tag: str) -> list[dict]:
    from p2pgame.data import load_images
    from tests.unit.test_data_fetch import _corrupt_keeping_size_and_mtime, _laid_out

    root, raw = _laid_out(tmp)
    load_images("mnist", root, "train")  # verified and remembered by size and mtime
    labels = raw / "train-labels-idx1-ubyte"
    _corrupt_keeping_size_and_mtime(labels)
    args = [*P2PGAME, "data", "verify", "mnist", "--root", root]
    r = run_cmd(args, tmp, tag, "verify", timeout=120)
    lines = err_lines(r["stderr"])
    tb = "Traceback" in r["stderr"] + r["stdout"]
    named = any(str(labels) in ln for ln in lines)
    held = r["rc"] == 1 and named and not tb
    return [row(f"a 4-file MNIST root (tests/unit/test_data_fetch.py's `_laid_out`), loaded "
                f"once, then one byte of train-labels-idx1-ubyte flipped, size and mtime kept; "
                f"`{show(args)}`",
                f"exit {r['rc']}; {len(lines)} stderr line(s), names the file: "
                f"{'yes' if named else 'no'}; Traceback: {'yes' if tb else 'no'}; "
                f"\"{(lines[0] if lines else '').replace(str(tmp), 'DIR')[:300]}\"", held,
                exit=r["rc"])]


CASES = {
    "stopped-peer": case_stopped_peer,
    "two-runs": case_two_runs,
    "oversized-frame": case_oversized_frame,
    "bad-numbers": case_bad_numbers,
    "bad-commands": case_bad_commands,
    "disk-full": case_disk_full,
    "ctrl-c-twice": case_ctrl_c_twice,
    "ctrl-c-frozen": case_ctrl_c_frozen,
    "killed-launcher-leftovers": case_killed_launcher_leftovers,
    "control-frame": case_control_frame,
    "decoy-package": case_decoy_package,
    "data-verify": case_data_verify,
}


def _cell(text: str) -> str:
    return scrub(text).replace("|", "\\|").replace("\n", " ")


def main(argv=None) -> dict:
    env = benchenv.environment()
    global _base
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default=",".join(CASES),
                    help="comma-separated subset of: " + ", ".join(CASES))
    ap.add_argument("--out", default=None,
                    help="keep the run folders here (default: a temporary folder, removed)")
    args = ap.parse_args(argv)
    names = [c for c in args.cases.split(",") if c]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    t_all = time.monotonic()
    load0 = os.getloadavg()[0]
    results: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        if args.out:
            base = Path(args.out).resolve()
            base.mkdir(parents=True, exist_ok=True)
        else:
            base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="probe22-")))
        _base = base
        for name in names:
            tag = f"{name}-{uuid.uuid4().hex[:8]}"
            folder = base / name
            folder.mkdir(parents=True, exist_ok=True)
            t = time.monotonic()
            saved = os.environ.get(TAG_VAR)
            os.environ[TAG_VAR] = tag  # in-process cases: what they start carries it too
            try:
                rows = CASES[name](folder, tag)
            except Exception as e:  # a case that breaks is reported, the rest still run
                rows = [row(name, f"the case itself failed: {type(e).__name__}: {e}", False)]
            finally:
                if saved is None:
                    os.environ.pop(TAG_VAR, None)
                else:
                    os.environ[TAG_VAR] = saved
            left = sweep_leftovers(tag)
            if left:
                rows[-1]["outcome"] += f"; processes left behind, killed: {left}"
                rows[-1]["held"] = False
            results[name] = {"rows": rows, "held": all(r["held"] for r in rows),
                             "seconds": round(time.monotonic() - t, 1)}
            print(f"  {name}: {'held' if results[name]['held'] else 'NOT HELD'} "
                  f"({results[name]['seconds']} s)", file=sys.stderr, flush=True)
    total = time.monotonic() - t_all
    print(f"probe ({os.cpu_count()} cpus, load {load0:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end, {total:.0f} s)")
    print()
    print("| case | command / what was done | outcome | held? |")
    print("|---|---|---|---|")
    for name, res in results.items():
        for r in res["rows"]:
            print(f"| {name} | {_cell(r['what'])} | {_cell(r['outcome'])} | "
                  f"{'yes' if r['held'] else '**NO**'} |")
    print()
    summary = {"cases": results, "held": all(r["held"] for r in results.values()),
               "not_held": [n for n, r in results.items() if not r["held"]],
               "seconds": round(total, 1), "load_start": load0,
               "cpus": os.cpu_count(), "env": benchenv.finished(env)}
    print(scrub(json.dumps(summary, default=lambda o: o if not isinstance(o, float) or
                     math.isfinite(o) else str(o))))
    return summary


if __name__ == "__main__":
    main()
