"""One peer: its training loop, its inbox, its publishing.  Runs in its own OS process.

Lifecycle (see README, "Peer lifecycle"):

1. build the algorithm (data, model), bind the PUB socket, report ``hello`` with
   the endpoint to the launcher;
2. on ``connect``, subscribe to the in-neighbours and publish handshake
   messages until every in-neighbour's handshake has arrived (so the
   subscriptions are live), then report ``linked``;
3. on ``go``, run the measured phase: train, publish and receive as tasks of
   one asyncio TaskGroup; in sync mode each step waits for the in-neighbours'
   messages of the round it needs (a barrier), in async mode it uses the
   freshest it holds;
4. report ``done`` with the peer's summary and wait for ``shutdown``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import traceback
from collections import Counter, deque
from pathlib import Path
from typing import Any

from p2pgame.algorithms import get_algorithm
from p2pgame.algorithms.base import Inbox, PeerContext
from p2pgame.bus.codec import CodecError, Envelope, TrafficCounter, decode, encode, frame_sizes
from p2pgame.bus.links import Link, Pending
from p2pgame.bus.transport import HANDSHAKE, Transport
from p2pgame.config import Scenario, scenario_from_dict
from p2pgame.topology import build_schedule

PROGRESS_EVERY_S = 0.5
HANDSHAKE_EVERY_S = 0.02


class PeerFailure(RuntimeError):
    pass


class Peer:
    def __init__(
        self,
        peer_id: int,
        scenario: Scenario,
        run_dir: Path,
        control_endpoint: str,
        ipc_dir: Path,
        data_root: Path,
        device: str = "cpu",
    ) -> None:
        self.id = peer_id
        self.scenario = scenario
        self.run_dir = Path(run_dir)
        self.control_endpoint = control_endpoint
        self.ipc_dir = Path(ipc_dir)
        self.schedule = build_schedule(scenario)
        comm = scenario.comm
        self.sync = comm.mode == "sync"
        self.in_peers = self.schedule.union_in(peer_id)
        self.out_peers = self.schedule.union_out(peer_id)
        edge_specs = comm.edge_links(scenario.n)
        default = comm.default_link()
        self.links = {
            j: Link(j, peer_id, edge_specs.get((j, peer_id), default), scenario.seed)
            for j in self.in_peers
        }
        cls = get_algorithm(scenario.algorithm["name"])
        self.ctx = PeerContext(
            peer_id=peer_id,
            scenario=scenario,
            schedule=self.schedule,
            run_dir=self.run_dir,
            data_root=Path(data_root),
            device=device,
            log=lambda m: print(f"[peer {peer_id}] {m}", file=sys.stderr, flush=True),
        )
        self.algorithm = cls(self.ctx, cls.make_config(scenario))
        self.inbox = Inbox()
        self.pending: dict[int, deque[Pending]] = {j: deque() for j in self.in_peers}
        # Highest round of each in-neighbour whose last message was released or dropped.
        self.resolved: dict[int, int] = {j: -1 for j in self.in_peers}
        self.sent = TrafficCounter()
        self.received = TrafficCounter()
        self.delivered_bytes = 0
        self.dropped = 0
        self.rejected: Counter[str] = Counter()
        self.step = 0
        self.heard: set[int] = set()
        self.measuring = False
        self.stop_requested = False
        self.wakeup = asyncio.Event()
        self.heard_all = asyncio.Event()
        self.timers: Counter[str] = Counter()

    # -- receiving -------------------------------------------------------------------
    def on_frames(self, frames: list[Any], now: float) -> None:
        header, payload = frame_sizes(frames)
        try:
            env = decode(frames, self.scenario.comm.max_message_bytes)
        except CodecError as e:
            self.rejected[e.reason] += 1
            return
        except (ValueError, TypeError):  # defence in depth: never let a message kill us
            self.rejected["malformed"] += 1
            return
        if env.topic.startswith(HANDSHAKE + "/"):
            self.heard.add(env.sender)
            if self.heard >= set(self.in_peers):
                self.heard_all.set()
            return
        # Data messages exist only after their sender's "go"; ours may not have come yet.
        self.received.add(env.sender, self.id, env.topic, header, payload)
        reason = None
        if env.sender not in self.links or env.topic.split("/")[1:2] != [str(env.sender)]:
            reason = "sender"
        else:
            reason = self.algorithm.check(env)
        if reason:
            self.rejected[reason] += 1
            return
        pend = self.links[env.sender].admit(env, header + payload, now, self.step, self.sync)
        if pend is None:
            self.dropped += 1
            if env.meta.get("last"):
                self.resolved[env.sender] = max(self.resolved[env.sender], env.step)
        else:
            self.pending[env.sender].append(pend)
        self.wakeup.set()

    async def receive_loop(self, transport: Transport) -> None:
        while True:
            batch = await transport.recv_ready()
            t0 = time.perf_counter()
            now = time.monotonic()
            for frames in batch:
                self.on_frames(frames, now)
            self.timers["receive_decode"] += time.perf_counter() - t0

    def release(self, step: int, now: float) -> float | None:
        """Move due messages to the inbox; return the next time-based release, if any."""
        next_time = None
        for j, queue in self.pending.items():
            while queue and queue[0].release_step <= step:
                if queue[0].release_time > now:
                    t = queue[0].release_time
                    next_time = t if next_time is None else min(next_time, t)
                    break
                pend = queue.popleft()
                self.inbox.put(pend.env)
                self.delivered_bytes += pend.nbytes
                if pend.env.meta.get("last"):
                    self.resolved[j] = max(self.resolved[j], pend.env.step)
        return next_time

    def needed_round(self, j: int, step: int) -> int:
        """The newest round of j that a sync step ``step`` must wait for (-1: none)."""
        q = step - self.links[j].spec.delay_steps
        if q < 0:
            return -1
        return q - q % self.scenario.comm.publish_every

    async def barrier(self, step: int) -> None:
        """Sync mode: wait until every active in-neighbour's needed round is resolved."""
        active = self.schedule.at(step).in_neighbours(self.id)
        deadline = time.monotonic() + self.scenario.comm.sync_timeout_s
        while True:
            now = time.monotonic()
            next_time = self.release(step, now)
            missing = [j for j in active if self.resolved[j] < self.needed_round(j, step)]
            if not missing or self.stop_requested:
                return
            if now > deadline:
                raise PeerFailure(
                    f"step {step}: no round {self.needed_round(missing[0], step)} from peer "
                    f"{missing[0]} after {self.scenario.comm.sync_timeout_s:g} s"
                )
            self.wakeup.clear()
            timeout = deadline - now if next_time is None else max(0.0, next_time - now)
            try:
                await asyncio.wait_for(self.wakeup.wait(), timeout=min(timeout, 1.0))
            except TimeoutError:
                pass

    # -- publishing ------------------------------------------------------------------
    async def publish(self, transport: Transport, step: int) -> None:
        t0 = time.perf_counter()
        messages = await self._call(self.algorithm.outgoing, step)
        t1 = time.perf_counter()
        self.timers["sample"] += t1 - t0
        items = list(messages.items())
        for k, (space, tensors) in enumerate(items):
            kind = self.algorithm.kinds[0] if "/" not in space else space.split("/")[0]
            space_name = space.split("/")[-1]
            env = Envelope(
                sender=self.id,
                topic=f"{kind}/{self.id}/{space_name}",
                step=step,
                tensors=tensors,
                meta={"last": k == len(items) - 1},
            )
            t2 = time.perf_counter()
            frames = encode(env, pack_bool=self.scenario.comm.pack_bool)
            t3 = time.perf_counter()
            await transport.send(frames)
            self.timers["encode"] += t3 - t2
            self.timers["send"] += time.perf_counter() - t3
            header, payload = frame_sizes(frames)
            for r in self.out_peers:  # PUB fans one copy out to each subscriber
                self.sent.add(self.id, r, env.topic, header, payload)

    async def _call(self, fn, *args):
        if self.algorithm.heavy:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    # -- the measured phase ---------------------------------------------------------
    async def train_loop(self, transport: Transport, control) -> None:
        steps = self.scenario.steps
        every = self.scenario.runtime.metrics_every or max(1, steps // 100)
        period = self.scenario.comm.publish_every
        metrics_path = self.run_dir / "metrics" / f"peer-{self.id}.jsonl"
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        t_start = time.monotonic()
        last_progress = 0.0
        with metrics_path.open("w") as mf:
            for step in range(steps):
                if self.stop_requested:
                    break
                self.step = step
                top = self.schedule.at(step)
                if step % period == 0 and self.out_peers:
                    await self.publish(transport, step)
                t0 = time.perf_counter()
                if self.sync:
                    await self.barrier(step)
                else:
                    await asyncio.sleep(0)  # let the receive task drain the socket
                    self.release(step, time.monotonic())
                self.timers["wait"] += time.perf_counter() - t0
                if self.stop_requested:
                    break
                t0 = time.perf_counter()
                out = await self._call(self.algorithm.train_step, step, self.inbox, top)
                self.timers["train"] += time.perf_counter() - t0
                self.steps_done = step + 1
                if step % every == 0 or step == steps - 1:
                    line = {"step": step, "t": round(time.monotonic() - t_start, 4), **out}
                    line.update(await self._call(self.algorithm.probe, step))
                    line["bytes_sent"] = self.sent.totals()["bytes"]
                    # Released bytes: deterministic in sync mode (arrivals are not).
                    line["bytes_received"] = self.delivered_bytes
                    line["staleness_mean"] = self.inbox.staleness_summary()[0]
                    mf.write(json.dumps(line) + "\n")
                    mf.flush()  # readable while the run goes on
                now = time.monotonic()
                if now - last_progress > PROGRESS_EVERY_S:
                    last_progress = now
                    await control.send({"type": "progress", "step": step + 1})
        self.wall = time.monotonic() - t_start

    async def control_loop(self, control) -> None:
        while True:
            msg = await control.recv()
            if msg.get("type") in ("stop", "shutdown"):
                self.stop_requested = True
                self.wakeup.set()
                if msg["type"] == "shutdown":
                    return

    def summary(self) -> dict[str, Any]:
        sent, recv = self.sent.totals(), self.received.totals()
        mean, hist = self.inbox.staleness_summary()
        steps = getattr(self, "steps_done", 0)
        wall = getattr(self, "wall", 0.0)
        out = {
            "steps": steps,
            "steps_per_s": steps / wall if wall > 0 else 0.0,
            "bytes_sent": sent["bytes"],
            "bytes_received": recv["bytes"],
            "header_bytes_sent": sent["header_bytes"],
            "payload_bytes_sent": sent["payload_bytes"],
            "bytes_delivered": self.delivered_bytes,
            "messages_sent": sent["messages"],
            "messages_received": sum(link.admitted for link in self.links.values()),
            "messages_dropped": self.dropped,
            "messages_rejected": sum(self.rejected.values()),
            "rejected_reasons": dict(self.rejected),
            "staleness_mean": mean,
            "staleness_hist": hist,
            "time_split_s": {k: round(v, 4) for k, v in self.timers.items()},
            "traffic_out": self.sent.rows(),
            "traffic_in": self.received.rows(),
        }
        out.update(self.algorithm.finish())
        return out

    async def run(self) -> int:
        transport = Transport(self.id)
        control = transport.control(self.control_endpoint)
        comm = self.scenario.comm
        try:
            endpoint = transport.bind(comm.transport, comm.host, self.ipc_dir)
            await control.send({"type": "hello", "endpoint": endpoint, "pid": os.getpid()})
            msg = await control.recv()
            if msg.get("type") != "connect":
                return 0  # stopped before start
            endpoints = {int(k): v for k, v in msg["endpoints"].items()}
            transport.connect(endpoints, self.algorithm.kinds)
            if not self.in_peers:
                self.heard_all.set()
            async with asyncio.TaskGroup() as tg:
                recv_task = tg.create_task(self.receive_loop(transport))
                hs = Envelope(self.id, f"{HANDSHAKE}/{self.id}/", 0, {})
                go_task = asyncio.ensure_future(control.recv())
                linked = False
                while not go_task.done():
                    if self.out_peers:
                        await transport.send(encode(hs))
                    if self.heard_all.is_set() and not linked:
                        linked = True
                        await control.send({"type": "linked"})
                    await asyncio.wait([go_task], timeout=HANDSHAKE_EVERY_S)
                if go_task.result().get("type") != "go":
                    recv_task.cancel()
                    return 0
                self.measuring = True
                ctl_task = tg.create_task(self.control_loop(control))
                await self.train_loop(transport, control)
                summary = await self._call(self.summary)  # heavy: final evaluation
                await control.send({"type": "done", "summary": summary})
                await ctl_task  # wait for shutdown: neighbours may still need our messages
                recv_task.cancel()
            return 0
        except BaseException as e:
            if not isinstance(e, asyncio.CancelledError):
                detail = "".join(traceback.format_exception_only(e)).strip()
                if isinstance(e, BaseExceptionGroup):
                    detail = "; ".join(
                        "".join(traceback.format_exception_only(x)).strip() for x in e.exceptions
                    )
                try:
                    await control.send({"type": "error", "error": detail})
                except Exception:
                    pass
            raise
        finally:
            # The control socket shares the transport's context: close it first, or the
            # context's term() would wait for it forever.
            control.close()
            transport.close()


def peer_main(
    peer_id: int,
    raw: dict,
    source: str,
    run_dir: str,
    control_endpoint: str,
    ipc_dir: str,
    data_root: str,
    threads: int,
    device: str,
) -> None:
    """Entry point of a peer process (spawn start method)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher owns Ctrl-C and asks us to stop
    code = 1
    log_path = Path(run_dir) / "logs" / f"peer-{peer_id}.log"
    try:
        if "torch" in sys.modules or raw.get("algorithm", {}).get("name") != "expfam":
            import torch

            torch.set_num_threads(threads)
        scenario = scenario_from_dict(raw, source)
        peer = Peer(peer_id, scenario, Path(run_dir), control_endpoint, Path(ipc_dir),
                    Path(data_root), device)

        async def main() -> int:
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, lambda: _request_stop(peer))
            return await peer.run()

        code = asyncio.run(main())
    except BaseException as e:  # report any failure, then exit non-zero
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("a") as f:
            f.write(traceback.format_exc())
        print(f"[peer {peer_id}] failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        code = 1
    sys.exit(code)


def _request_stop(peer: Peer) -> None:
    peer.stop_requested = True
    peer.wakeup.set()
