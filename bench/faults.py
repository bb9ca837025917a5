"""Live faults: what a run survives, measured.

Each case does the fault for real and checks the outcome the README promises:

* ``crash``: SIGKILL of peer 1 mid-run: it is named, the others stop and report;
* ``freeze``: SIGSTOP of peer 2 in async mode: named within ``runtime.peer_timeout_s``;
* ``intruder``: a process on the launcher's control socket claiming to be peer 1, plus
  junk: results identical to the clean run, frames counted in ``control_rejected``;
* ``killed-launcher``: SIGKILL of ``p2pgame run``: no peer process left after 10 s;
* ``spoof``: a neighbour publishing under another peer's name: refused as ``spoofed``;
* ``oversized``: a 512 MiB frame sent to a receiver: its peak RSS against the same
  receiver given small messages (ZeroMQ's MAXMSGSIZE from ``comm.max_message_bytes``),
  and against one without the limit;
* ``stalled-subscriber``: an outside SUB that connects and never reads while a peer's
  PUB sends 4000 messages of 28 kB (a game tuple batch): the publisher's peak RSS with
  ``comm.send_hwm = 64`` and with 0 (no cap, the old behaviour);
* ``restart``: ``runtime.restart = 1``, async, SIGKILL of peer 1 a third of the way in:
  the run completes, the restart is named, and every peer's equilibrium error is within
  0.05 of a clean run's.

Usage: ``.venv/bin/python bench/faults.py [--smoke]``. Prints a table; the last stdout
line is a JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchenv

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCENARIO = ROOT / "tests" / "scenarios" / "expfam-ring4.toml"
MiB = 2**20


def vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _hooked(hook):
    """A ControlServer class calling ``hook(peer, msg, pids)`` on every message."""
    from p2pgame.bus.transport import ControlServer
    from p2pgame.peer import control

    pids: dict[int, int] = {}

    class Hooked(ControlServer):
        async def recv(self, timeout_s=None):
            got = await super().recv(timeout_s)
            if got is not None:
                msg = control.decode(got[1])
                if isinstance(msg, control.Hello):
                    pids[got[0]] = msg.pid
                hook(got[0], msg, pids)
            return got

    return Hooked


def _run(out: Path, overrides: list[str], server=None):
    from p2pgame import launch

    saved = launch.ControlServer
    if server is not None:
        launch.ControlServer = server
    try:
        return launch.run(SCENARIO, overrides, out=out, progress=False)
    finally:
        launch.ControlServer = saved


def case_crash(tmp: Path) -> dict:
    from p2pgame.peer import control

    done: list[int] = []

    def hook(peer, msg, pids):
        if isinstance(msg, control.Progress) and peer == 1 and not done:
            os.kill(pids[1], signal.SIGKILL)
            done.append(1)

    res = _run(tmp / "crash", ["steps=1000000"], _hooked(hook))
    ok = res.summary["failed_peers"] == [1] and sorted(res.summary["peers"]) == ["0", "2", "3"]
    return {"survived": ok, "detail": f"failed {res.summary['failed_peers']}: "
            f"{res.summary['failures'].get('1', '')}; reported {sorted(res.summary['peers'])}"}


def case_freeze(tmp: Path, timeout_s: float = 3.0) -> dict:
    from p2pgame.peer import control

    frozen: list[float] = []

    def hook(peer, msg, pids):
        if isinstance(msg, control.Progress) and peer == 2 and not frozen:
            os.kill(pids[2], signal.SIGSTOP)
            frozen.append(time.monotonic())

    res = _run(tmp / "freeze", ['comm.mode="async"', "steps=100000000",
                                f"runtime.peer_timeout_s={timeout_s}"], _hooked(hook))
    took = time.monotonic() - frozen[0]
    ok = res.summary["failed_peers"] == [2] and "silent" in res.summary["failures"]["2"]
    return {"survived": ok, "detail": f"named after the peer timeout ({timeout_s:g} s); "
            f"run over {took:.1f} s after the freeze: {res.summary['failures'].get('2', '')}"}


def case_intruder(tmp: Path) -> dict:
    import zmq

    from p2pgame.bus.transport import ControlServer
    from p2pgame.peer import control

    class Intruded(ControlServer):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.intruder = zmq.Context.instance().socket(zmq.DEALER)
            self.intruder.setsockopt(zmq.LINGER, 0)
            self.intruder.setsockopt(zmq.IDENTITY, b"peer-1")
            self.intruder.connect(self.endpoint)
            fake = control.encode(control.Hello("ipc:///nowhere.sock", 1))
            for _ in range(100):
                self.intruder.send_multipart([b"1:" + b"f" * 64, fake])
                self.intruder.send(b"\xff\xfe junk")

        def close(self):
            self.intruder.close(linger=0)
            super().close()

    clean = _run(tmp / "clean", [])
    attacked = _run(tmp / "intruder", [], Intruded)
    same = all(clean.summary["peers"][p]["mu"] == attacked.summary["peers"][p]["mu"]
               for p in clean.summary["peers"])
    ok = same and attacked.exit_code == 0
    return {"survived": ok, "detail": f"{attacked.summary['control_rejected']} frames "
            f"rejected; final means identical to the clean run: {same}"}


def case_killed_launcher(tmp: Path) -> dict:
    out = tmp / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pgame.cli", "run", str(SCENARIO), "--out", str(out),
         "--quiet", "--set", "steps=100000000"], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(out.glob("*/endpoints.json")):
        if time.monotonic() > deadline:
            proc.kill()
            return {"survived": False, "detail": "the run never started"}
        time.sleep(0.2)
    time.sleep(0.5)
    eps = json.loads(next(out.glob("*/endpoints.json")).read_text())
    pids = [e["pid"] for e in eps.values()]
    proc.kill()
    proc.wait()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10:
        alive = [p for p in pids if os.path.exists(f"/proc/{p}") and
                 open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
        if not alive:
            return {"survived": True,
                    "detail": f"all {len(pids)} peers gone {time.monotonic() - t0:.1f} s after"}
        time.sleep(0.1)
    for p in alive:
        os.kill(p, signal.SIGKILL)
    return {"survived": False, "detail": f"peers {alive} still alive after 10 s"}


async def _spoof(tmp: Path) -> dict:
    import numpy as np

    from p2pgame.bus.codec import Envelope, encode
    from p2pgame.bus.endpoint import PeerBus
    from p2pgame.bus.topics import Topic
    from p2pgame.bus.traffic import Traffic
    from p2pgame.bus.transport import Transport

    liar, me = Transport(2), Transport(1)
    try:
        liar.bind("ipc", "", tmp)
        me.connect({2: liar.endpoint}, {2: [Topic("samples", 2, "x")]})
        bus = PeerBus(me, Traffic(1), {})
        x = {"x": np.ones((2, 3), bool)}
        deadline = time.monotonic() + 10
        while not bus.traffic.rejected and time.monotonic() < deadline:
            # Peer 2's own topic, a header claiming peer 0.
            await liar.send(encode(Envelope(0, Topic("samples", 2, "x"), 5, x)))
            try:
                got = await asyncio.wait_for(bus.receive(), 0.05)
            except TimeoutError:
                continue
            if got:
                return {"survived": False, "detail": "a spoofed message was accepted"}
        return {"survived": bus.traffic.rejected.get("spoofed", 0) > 0,
                "detail": f"rejected: {dict(bus.traffic.rejected)}"}
    finally:
        liar.close()
        me.close()


def case_spoof(tmp: Path) -> dict:
    return asyncio.run(_spoof(tmp))


def _receiver(endpoint: str, limit: int, seconds: float, q) -> None:
    """A peer's transport listening to ``endpoint`` for ``seconds``; reports its peak RSS."""
    async def main():
        from p2pgame.bus.topics import Topic
        from p2pgame.bus.transport import Transport

        t = Transport(1, max_message_bytes=limit)
        t.connect({0: endpoint}, {0: [Topic("samples", 0, "x")]})
        got = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                got += len(await asyncio.wait_for(t.recv_from(), 0.1))
            except TimeoutError:
                pass
        t.close()
        return got

    got = asyncio.run(main())
    q.put((vm_hwm_mb(), got))


def case_oversized(tmp: Path, frame_mb: int = 512) -> dict:
    import zmq

    ctx = mp.get_context("spawn")
    results = {}
    for name, size, limit in (("small", 1024, 64 * MiB), ("huge", frame_mb * MiB, 64 * MiB),
                              ("huge, no limit", frame_mb * MiB, -1)):
        pub = zmq.Context.instance().socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        endpoint = f"ipc://{tmp}/oversized.sock"
        pub.bind(endpoint)
        q = ctx.Queue()
        p = ctx.Process(target=_receiver, args=(endpoint, limit, 6.0, q))
        p.start()
        time.sleep(2.0)  # connected and subscribed
        payload = b"\0" * size
        for _ in range(3):
            pub.send_multipart([b"samples/0/x", b"{}", payload], copy=False)
            time.sleep(0.3)
        rss, got = q.get(timeout=60)
        p.join()
        pub.close(linger=0)
        results[name] = (rss, got)
    delta = results["huge"][0] - results["small"][0]
    return {"survived": delta < 50, "detail": (
        f"receiver peak RSS {results['small'][0]:.0f} MB with small messages, "
        f"{results['huge'][0]:.0f} MB with {frame_mb} MiB frames (limit 64 MiB; "
        f"{results['huge'][1]} received), {results['huge, no limit'][0]:.0f} MB without "
        f"the limit; delta {delta:+.0f} MB")}


def _publisher(endpoint_dir: str, hwm: int, count: int, size: int, q) -> None:
    async def main():
        from p2pgame.bus.transport import Transport

        t = Transport(0, send_hwm=hwm)
        endpoint = t.bind("ipc", "", Path(endpoint_dir))
        q.put(endpoint)
        q.get()  # the stalled subscriber is connected
        base = vm_hwm_mb()
        for k in range(count):
            # A buffer of its own per message (as a peer's sampled batch is): queued
            # messages hold their buffers.
            await t.send([b"samples/0/x", b"{}", bytes([k % 251]) * size])
            await asyncio.sleep(0)
        await asyncio.sleep(1.0)  # let the I/O thread queue what it will
        peak = vm_hwm_mb()
        t.close()
        return base, peak

    base, peak = asyncio.run(main())
    q.put((base, peak))


def case_stalled_subscriber(tmp: Path, count: int = 4000, size: int = 28_000) -> dict:
    import zmq

    ctx = mp.get_context("spawn")
    grown = {}
    for hwm in (64, 0):
        q = ctx.Queue()
        p = ctx.Process(target=_publisher, args=(str(tmp), hwm, count, size, q))
        p.start()
        endpoint = q.get(timeout=60)
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 1)  # it never reads: let it hold as little as it can
        sub.setsockopt(zmq.RCVBUF, 4096)
        sub.connect(endpoint)
        sub.subscribe(b"")
        time.sleep(1.0)
        q.put("go")
        base, peak = q.get(timeout=300)
        p.join()
        sub.close(linger=0)
        grown[hwm] = peak - base
    return {"survived": grown[64] < 50, "detail": (
        f"publisher grew {grown[64]:.0f} MB with send_hwm 64, {grown[0]:.0f} MB with no cap "
        f"({count} messages of {size / 1000:.0f} kB, never read)")}


def case_restart(tmp: Path, steps: int = 3000) -> dict:
    from p2pgame.peer import control

    killed: list[int] = []

    def hook(peer, msg, pids):
        if (isinstance(msg, control.Progress) and peer == 1 and not killed
                and msg.step > steps // 3):
            os.kill(pids[1], signal.SIGKILL)
            killed.append(msg.step)

    overrides = ['comm.mode="async"', f"steps={steps}", "runtime.restart=1",
                 "runtime.checkpoint_every=100", "runtime.step_delay_ms=2"]
    clean = _run(tmp / "clean", overrides)
    res = _run(tmp / "restart", overrides, _hooked(hook))
    worst = max(abs(p["ne_max_abs"] - clean.summary["peers"][i]["ne_max_abs"])
                for i, p in res.summary["peers"].items())
    restarts = res.summary.get("restarts", {})
    ok = res.exit_code == 0 and "1" in restarts and worst < 0.05
    r = restarts.get("1", [{}])[0]
    return {"survived": ok, "detail": (
        f"peer 1 killed at step {killed[0] if killed else '-'}, restarted from step "
        f"{r.get('from_step')} ({r.get('lost_steps')} steps lost); run exit "
        f"{res.exit_code}; ne_max_abs within {worst:.3f} of the clean run (async)")}


CASES = {"crash": case_crash, "freeze": case_freeze, "intruder": case_intruder,
         "killed-launcher": case_killed_launcher, "spoof": case_spoof,
         "oversized": case_oversized, "stalled-subscriber": case_stalled_subscriber,
         "restart": case_restart}


def main(argv=None) -> dict:
    env = benchenv.environment()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--smoke", action="store_true", help="the quick cases only")
    args = ap.parse_args(argv)
    names = [c for c in args.cases.split(",") if c]
    if args.smoke:
        names = ["spoof", "intruder"]
    rows = {}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="p2pg-faults-") as tmp:
        for name in names:
            t = time.monotonic()
            folder = Path(tmp) / name
            folder.mkdir()
            rows[name] = {**CASES[name](folder), "seconds": round(time.monotonic() - t, 1)}
            print(f"  {name}: {rows[name]['survived']}", file=sys.stderr, flush=True)
    print(f"faults ({os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}, "
          f"{time.monotonic() - t0:.0f} s)")
    print(f"{'case':<20}{'survived':<10}detail")
    for name, r in rows.items():
        print(f"{name:<20}{'yes' if r['survived'] else 'NO':<10}{r['detail']}")
    result = {"cases": rows, "env": benchenv.finished(env)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
