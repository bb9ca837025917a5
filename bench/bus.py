"""Bus throughput: p2pgame's codec + transport against raw pyzmq PUB/SUB.

Two processes (multiprocessing, spawn): this process publishes, a child subscribes.
Per case (transport x payload x mode) the publisher binds, the subscriber connects,
a handshake on the ``hs/0/`` topic makes sure the subscription is live (no
slow-joiner loss), then the publisher sends data messages for ``--seconds``.

* ``p2pgame``: per message ``Envelope -> PeerBus.publish`` (encode, inline or in a
  worker thread as the peer does, ``Transport.send``: a zmq PUB,
  ``send_multipart(copy=False)``, and the sent-traffic count); the subscriber runs
  ``PeerBus.receive`` (``Transport.recv_from``, then ``Traffic.decode``: decode, every
  check, sender binding, the received-traffic count) on every message: the peer's
  receive path, up to the algorithm's own check (not run here).  Since issue 11
  decoding leaves bit-packed tensors packed: a peer unpacks one where it first
  reads it, meant to be its training step (a worker thread), and only for the
  message it trains on, so messages superseded by fresher ones are never
  unpacked.  So the subscriber reads no tensor.  Before issue 11 this bench ran
  ``frame_sizes`` + ``decode``, and ``decode`` unpacked every tensor at once.
  ``--read-tensors`` makes the subscriber read (so unpack) every tensor of every
  message on its receive loop: the old eager cost, and what a peer still pays
  while its schema check (``algorithms.base.check_schema``) reads
  ``env.tensors[name]`` for dtype and shape instead of ``env.tensors.spec(name)``.
* ``raw``: the same frames, encoded once, sent from a plain zmq PUB socket
  (``send_multipart(copy=False)``) and received by a plain SUB
  (``recv_multipart(copy=False)``), no decoding.

HWMs are unlimited (as in p2pgame) so PUB never drops; memory is bounded by a
credit window: the subscriber acknowledges every few messages over a PUSH/PULL
back channel and the publisher keeps at most ``window`` messages in flight
(the same window and the same ack cost for both modes). A message counts as
delivered when the subscriber has decoded (raw: received) it; any difference
between sent and delivered is reported as ``dropped``. Rate = delivered /
(subscriber's time of the last delivery - publisher's time of the first send);
both clocks are ``time.perf_counter`` (CLOCK_MONOTONIC, one clock per host).

Usage: ``.venv/bin/python bench/bus.py [--seconds 2.5] [--repeats 3] [--smoke]
[--read-tensors] [--profile ipc/binary200]``. The last stdout line is a JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import benchenv
import numpy as np
import zmq
import zmq.asyncio

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from p2pgame.bus.codec import Envelope, encode, frame_sizes, pack_bools  # noqa: E402
from p2pgame.bus.endpoint import PeerBus  # noqa: E402
from p2pgame.bus.topics import Topic  # noqa: E402
from p2pgame.bus.traffic import Traffic  # noqa: E402
from p2pgame.bus.transport import Transport  # noqa: E402

DATA_TOPIC = "samples/0/bench"
HS_TOPIC = str(Topic.handshake(0))
_DATA = Topic.parse(DATA_TOPIC)
WINDOW_BYTES = 96 * 2**20  # at most this much in flight (both modes)


def payloads(smoke: bool) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    n_params = 150_000 if smoke else 1_500_000
    bits = rng.random((200, 1, 28, 28)) < 0.2
    return {
        # What a peer hands its bus: bits packed by the producer (a game peer packs its
        # samples in its training thread, ``PeerRuntime._draw_messages``), as raw's are.
        "binary200": pack_bools({"x": bits}),
        # The bool array itself, packed by ``encode`` on the event loop for every message
        # (a peer before session 8, or a producer that does not pack).
        "binary200-bool": {"x": bits},
        "float200": {"x": rng.random((200, 1, 28, 28), dtype=np.float32)},
        "params1.5M": {"w": rng.standard_normal(n_params, dtype=np.float32)},
    }


def make_env(tensors: dict[str, np.ndarray], step: int) -> Envelope:
    # a Topic, as the peer runtime gives it (a string would be parsed in the envelope)
    return Envelope(sender=0, topic=_DATA, step=step, tensors=tensors, last=True)


def _cpu_s() -> float:
    """CPU seconds of this process so far, all its threads (ZeroMQ's I/O thread too)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def wire_bytes(frames) -> int:
    h, p = frame_sizes(frames)
    return h + p


# ------------------------------------------------------------------ subscriber (child)


def _raw_subscriber(endpoint: str, ack_ep: str, ack_every: int, timeout_s: float) -> dict:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    for opt in (zmq.LINGER, zmq.RCVHWM, zmq.SNDHWM):
        sub.setsockopt(opt, 0)
    sub.connect(endpoint)
    for prefix in (HS_TOPIC, "samples/0/"):
        sub.setsockopt(zmq.SUBSCRIBE, prefix.encode())
    ack = ctx.socket(zmq.PUSH)
    ack.setsockopt(zmq.LINGER, 1000)
    ack.connect(ack_ep)
    ready = False
    n = 0
    t_last = 0.0
    cpu0 = _cpu_s()
    hs = HS_TOPIC.encode()
    try:
        while True:
            if not sub.poll(int(timeout_s * 1000)):
                break
            frames = sub.recv_multipart(copy=False)
            if frames[0].bytes.startswith(hs):
                if not ready:
                    ready = True
                    cpu0 = _cpu_s()  # the data phase starts
                    ack.send_json({"ready": True})
                elif frames[1].bytes == b"end":
                    break
                continue
            n += 1
            t_last = time.perf_counter()
            if n % ack_every == 0:
                ack.send_json({"n": n})
    finally:
        cpu_s = _cpu_s() - cpu0
        ack.close()
        sub.close()
        ctx.term()
    return {"delivered": n, "t_last": t_last, "cpu_s": cpu_s}


async def _p2p_subscriber_async(endpoint: str, ack_ep: str, ack_every: int,
                                timeout_s: float, read_tensors: bool = False) -> dict:
    tr = Transport(1)
    tr.connect({0: endpoint}, {0: [Topic.parse(DATA_TOPIC)]})
    bus = PeerBus(tr, Traffic(1), {})
    ack = tr.ctx.socket(zmq.PUSH)
    ack.setsockopt(zmq.LINGER, 1000)
    ack.connect(ack_ep)
    ready = False
    n = 0
    t_last = 0.0
    cpu0 = _cpu_s()
    end = False
    loop = asyncio.get_running_loop()
    try:
        # Give up after timeout_s without a message: one timer, moved on after each batch
        # (a peer's receive loop has no timeout; wait_for would add a task per batch).
        async with asyncio.timeout(timeout_s) as idle:
            while not end:
                batch = deque(await bus.receive())
                idle.reschedule(loop.time() + timeout_s)
                while batch:  # each message is let go once handled (its arrays with it)
                    env, _nbytes = batch.popleft()
                    if read_tensors:  # unpack everything on the receive loop (as before issue 11)
                        list(env.tensors.values())
                    if env.topic.is_handshake:
                        if not ready:
                            ready = True
                            cpu0 = _cpu_s()  # the data phase starts
                            await ack.send_json({"ready": True})
                        elif env.meta.get("end"):
                            end = True
                        continue
                    n += 1
                    t_last = time.perf_counter()
                    if n % ack_every == 0:
                        await ack.send_json({"n": n})
    except TimeoutError:
        pass
    finally:
        cpu_s = _cpu_s() - cpu0
        ack.close(linger=1000)
        tr.close()
    return {"delivered": n, "t_last": t_last, "cpu_s": cpu_s}


def subscriber_main(conn) -> None:
    """Child process: run one subscriber per command until told to stop."""
    while True:
        cmd = conn.recv()
        if cmd is None:
            return
        prof = None
        if cmd.get("profile"):
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        if cmd["mode"] == "raw":
            res = _raw_subscriber(cmd["endpoint"], cmd["ack"], cmd["ack_every"], cmd["timeout"])
        else:
            res = asyncio.run(_p2p_subscriber_async(cmd["endpoint"], cmd["ack"],
                                                    cmd["ack_every"], cmd["timeout"],
                                                    cmd.get("read_tensors", False)))
        if prof is not None:
            prof.disable()
            prof.dump_stats(cmd["profile"])
        conn.send(res)


# ------------------------------------------------------------------ publisher (this process)


async def _publish(mode: str, transport: str, tensors, seconds: float, max_msgs: int,
                   window: int, conn, ipc_dir: Path, ack_every: int, timeout: float,
                   profile: str | None = None, read_tensors: bool = False) -> dict:
    actx = zmq.asyncio.Context()
    ack = actx.socket(zmq.PULL)
    ack.setsockopt(zmq.LINGER, 0)
    ack_ep = f"ipc://{ipc_dir}/ack.sock"
    ack.bind(ack_ep)
    raw_ctx = sock = tr = bus = None
    if mode == "p2pgame":
        tr = Transport(0, actx)
        endpoint = tr.bind(transport, "127.0.0.1", ipc_dir)
        bus = PeerBus(tr, Traffic(0), {Topic.parse(DATA_TOPIC): (1,)})
        hs_frames = encode(Envelope(0, HS_TOPIC, 0, {}))
        end_frames = encode(Envelope(0, HS_TOPIC, 0, {}, meta={"end": True}))
    else:
        raw_ctx = zmq.Context()
        sock = raw_ctx.socket(zmq.PUB)
        for opt in (zmq.LINGER, zmq.SNDHWM, zmq.RCVHWM):
            sock.setsockopt(opt, 0)
        if transport == "ipc":
            endpoint = f"ipc://{ipc_dir}/raw-pub.sock"
            sock.bind(endpoint)
        else:
            endpoint = f"tcp://127.0.0.1:{sock.bind_to_random_port('tcp://127.0.0.1')}"
        pre = [bytes(f) for f in encode(make_env(tensors, 0))]  # encoded once
        hs_frames = [HS_TOPIC.encode(), b"hs"]
        end_frames = [HS_TOPIC.encode(), b"end"]
    conn.send({"mode": mode, "endpoint": endpoint, "ack": ack_ep, "ack_every": ack_every,
               "timeout": timeout, "profile": profile, "read_tensors": read_tensors})

    async def send(frames):
        if tr is not None:
            await tr.send(frames)
        else:
            sock.send_multipart(frames, copy=False)

    # Handshake: publish until the subscriber has seen one (its subscription is live).
    deadline = time.monotonic() + 30
    while True:
        await send(hs_frames)
        if await ack.poll(20):
            msg = await ack.recv_json()
            if msg.get("ready"):
                break
        if time.monotonic() > deadline:
            raise RuntimeError("handshake failed")

    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    acked = 0
    sent = 0
    cpu0 = _cpu_s()
    t0 = time.perf_counter()
    t_stop = t0 + seconds
    while sent < max_msgs and (sent == 0 or time.perf_counter() < t_stop):
        if sent - acked >= window:  # window full: wait for credit, then take all acks
            while sent - acked >= window:
                acked = max(acked, (await ack.recv_json()).get("n", 0))
            while await ack.poll(0):
                acked = max(acked, (await ack.recv_json()).get("n", 0))
        if bus is not None:
            await bus.publish(make_env(tensors, sent))
        else:
            sock.send_multipart(pre, copy=False)
        sent += 1
    pub_cpu = _cpu_s() - cpu0
    if prof is not None:
        prof.disable()
        prof.dump_stats(profile + ".pub")
    await send(end_frames)
    res = await asyncio.to_thread(conn.recv)
    if tr is not None:
        tr.close()
    if sock is not None:
        sock.close(0)
        raw_ctx.term()
    ack.close(0)
    actx.term()
    nbytes = wire_bytes(encode(make_env(tensors, 0)))
    dt = res["t_last"] - t0
    delivered = res["delivered"]
    rate = delivered / dt if dt > 0 and delivered else 0.0
    return {"sent": sent, "delivered": delivered, "dropped": sent - delivered,
            "seconds": dt, "msgs_per_s": rate, "mb_per_s": rate * nbytes / 1e6,
            "msg_bytes": nbytes, "pub_cpu_us": pub_cpu / sent * 1e6,
            "sub_cpu_us": res["cpu_s"] / delivered * 1e6 if delivered else 0.0}


def run_case(mode, transport, tensors, seconds, conn, ipc_dir, profile=None,
             read_tensors=False) -> dict:
    nbytes = wire_bytes(encode(make_env(tensors, 0)))
    window = max(4, min(2000, WINDOW_BYTES // nbytes))
    ack_every = max(1, window // 4)
    max_msgs = 10**9
    return asyncio.run(_publish(mode, transport, tensors, seconds, max_msgs, window, conn,
                                ipc_dir, ack_every, timeout=max(10.0, 4 * seconds),
                                profile=profile, read_tensors=read_tensors))


def print_profile(path: str, title: str, n: int = 18) -> None:
    import io
    import pstats

    buf = io.StringIO()
    st = pstats.Stats(path, stream=buf)
    st.sort_stats("tottime").print_stats(n)
    print(f"\n=== cProfile {title} (sorted by own time) ===")
    print("\n".join(buf.getvalue().splitlines()[4:]))


def main(argv=None) -> dict:
    env = benchenv.environment()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=2.5, help="sending time per case")
    ap.add_argument("--repeats", type=int, default=3, help="runs per case (median reported)")
    ap.add_argument("--transports", default="ipc,tcp")
    ap.add_argument("--payloads", default="binary200,binary200-bool,float200,params1.5M")
    ap.add_argument("--smoke", action="store_true", help="tiny: 0.2 s per case, 1 repeat")
    ap.add_argument("--read-tensors", action="store_true", help="the subscriber reads (so "
                    "unpacks) every tensor of every message on its receive loop")
    ap.add_argument("--profile", default="", help="CASE (e.g. ipc/binary200): cProfile the "
                    "p2pgame mode of this case, both ends, and print the top functions")
    args = ap.parse_args(argv)
    if args.smoke:
        args.seconds, args.repeats = 0.2, 1
    pays = payloads(args.smoke)
    names = [p for p in args.payloads.split(",") if p]
    transports = [t for t in args.transports.split(",") if t]
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=subscriber_main, args=(child,), name="bench-bus-sub")
    proc.start()
    ipc_dir = Path(tempfile.mkdtemp(prefix="p2pg-bus-"))
    results: dict[str, dict[str, list[dict]]] = {}
    try:
        if args.profile:
            transport, name = args.profile.split("/")
            path = str(ipc_dir / "prof")
            r = run_case("p2pgame", transport, pays[name], args.seconds, parent, ipc_dir,
                         profile=path, read_tensors=args.read_tensors)
            print(f"profiled {args.profile}: {r['msgs_per_s']:.0f} msgs/s (under cProfile)")
            print_profile(path + ".pub", "publisher (p2pgame)")
            print_profile(path, "subscriber (p2pgame)")
        for transport in transports:
            for name in names:
                case = f"{transport}/{name}"
                results[case] = {"raw": [], "p2pgame": []}
                for rep in range(args.repeats):
                    order = ("raw", "p2pgame") if rep % 2 == 0 else ("p2pgame", "raw")
                    for mode in order:
                        results[case][mode].append(
                            run_case(mode, transport, pays[name], args.seconds, parent, ipc_dir,
                                     read_tensors=args.read_tensors))
    finally:
        parent.send(None)
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join()
        for f in ipc_dir.glob("*"):
            f.unlink()
        os.rmdir(ipc_dir)

    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    ratios, msgs, mbs, dropped, cpu = {}, {}, {}, {}, {}
    hdr = (f"{'case':<18}{'bytes/msg':>11}{'raw msg/s':>11}{'p2p msg/s':>11}"
           f"{'raw MB/s':>10}{'p2p MB/s':>10}{'ratio':>7}{'drops':>7}"
           f"{'raw cpu':>16}{'p2p cpu':>16}")
    print(f"bus throughput, median of {args.repeats} x {args.seconds:g} s per case "
          f"(load average {os.getloadavg()[0]:.2f})"
          + ("; the subscriber reads every tensor" if args.read_tensors else ""))
    print("cpu: CPU microseconds per message, publisher + subscriber process (all threads)")
    print(hdr)
    print("-" * len(hdr))
    for case, modes in results.items():
        raw_r, p2p_r = med(modes["raw"], "msgs_per_s"), med(modes["p2pgame"], "msgs_per_s")
        ratios[case] = p2p_r / raw_r if raw_r else 0.0
        msgs[case] = {"raw": raw_r, "p2pgame": p2p_r}
        mbs[case] = {"raw": med(modes["raw"], "mb_per_s"),
                     "p2pgame": med(modes["p2pgame"], "mb_per_s")}
        dropped[case] = sum(r["dropped"] for m in modes.values() for r in m)
        cpu[case] = {m: [round(med(modes[m], "pub_cpu_us"), 1), round(med(modes[m], "sub_cpu_us"), 1)]
                     for m in ("raw", "p2pgame")}
        cols = [f"{p:.0f}+{q:.0f}" for p, q in cpu[case].values()]
        print(f"{case:<18}{modes['raw'][0]['msg_bytes']:>11}{raw_r:>11.0f}{p2p_r:>11.0f}"
              f"{mbs[case]['raw']:>10.1f}{mbs[case]['p2pgame']:>10.1f}{ratios[case]:>7.2f}"
              f"{dropped[case]:>7}{cols[0]:>16}{cols[1]:>16}")
    out = {"ratios": {k: round(v, 4) for k, v in ratios.items()},
           "msgs_per_s": {k: {m: round(x, 1) for m, x in v.items()} for k, v in msgs.items()},
           "mb_per_s": {k: {m: round(x, 2) for m, x in v.items()} for k, v in mbs.items()},
           "dropped": dropped, "cpu_us_per_msg": cpu,  # [publisher, subscriber]
           "seconds": args.seconds, "repeats": args.repeats,
           "read_tensors": args.read_tensors,
           "loadavg": [round(x, 2) for x in os.getloadavg()],
           "env": benchenv.finished(env)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
