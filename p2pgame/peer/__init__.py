"""A peer: delivery (pure), the control protocol (typed), and the runtime that runs them.

Two entry points, one per placement: :func:`peer_main` runs one peer in its own
process; :func:`worker_main` hosts a block of peers as asyncio tasks of one
worker process, sharing one decoded scenario, one zmq context (one I/O thread)
and read-only data (:mod:`p2pgame.shared`).  Hosted peers keep their own
sockets, seeded RNG streams, links and counters, so placement changes where
peers live, never what they exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import select
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _setup_process(threads: int, scenario: dict, torch_threads: int) -> None:
    """``scenario``: a launch's, as plain data."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    if _main_thread():  # (a Ray actor runs us in one of its threads: Ray owns signals)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher owns Ctrl-C, asks us to stop
    from p2pgame.peer.method import plain_uses_torch

    if plain_uses_torch(scenario):
        import torch

        torch.set_num_threads(torch_threads)


_watched: set[int] = set()  # launchers this process already watches


def exit_with_launcher(launcher: int, log: Callable[[str], None]) -> None:
    """End this process as soon as the launcher (pid ``launcher``) is gone: a killed
    launcher must not leave its peers running, waiting for a Shutdown that never comes.

    The launcher is not our parent (we are forked from its fork server), so we hold a pidfd
    of it, which becomes readable when it exits: no polling, and no confusion with a later
    process given the same pid.  A daemon thread waits on it, not the event loop, so a peer
    still building its model and data (its loop not running yet), or one whose loop a long
    call holds, ends as promptly as an idle one.  Once per process and launcher (a worker
    hosts many peers).  ``launcher`` 0: none on this machine (a Ray actor; Ray ends its
    actors with their driver)."""
    if not launcher or launcher in _watched:
        return
    _watched.add(launcher)
    try:
        fd: int | None = os.pidfd_open(launcher)
    except ProcessLookupError:  # gone already
        fd = None

    def wait() -> None:
        if fd is not None:
            select.select([fd], [], [])
        log(f"the launcher (pid {launcher}) is gone: exiting")
        os._exit(3)

    threading.Thread(target=wait, name="p2pgame-launcher-watch", daemon=True).start()


def _failure_line(e: BaseException) -> str:
    from p2pgame.peer.runtime import failure_line

    return failure_line(e)


def _peer_log(pid: int) -> Callable[[str], None]:
    def log(msg: str) -> None:
        print(f"[peer {pid}] {msg}", file=sys.stderr, flush=True)

    return log


def peer_main(launch: dict) -> None:
    """Entry point of a peer process (forked from the launcher's fork server, or spawned);
    ``launch`` is a PeerLaunch as data."""
    from p2pgame.peer.runtime import PeerLaunch

    spec = PeerLaunch(**launch)
    log = _peer_log(spec.peer_id)
    exit_with_launcher(spec.launcher_pid, log)
    code = 1
    try:
        _setup_process(spec.threads, spec.scenario, spec.threads)
        code = asyncio.run(_single(spec, log))
    except BaseException as e:  # report any failure, then exit non-zero
        log(f"failed: {_failure_line(e)}")
        code = 1
    sys.exit(code)


async def _build(spec, log, **shared):
    """The peer's runtime; a failure to build (bad data, a model error) is reported to the
    launcher before it is raised."""
    from p2pgame.bus.transport import ControlClient, Transport
    from p2pgame.peer import control as ctl
    from p2pgame.peer.runtime import PeerRuntime, error_message

    try:
        return PeerRuntime(spec, log, **shared)
    except BaseException as e:
        context = shared.get("context")
        # (A worker's shared context has its ZAP handler already.)
        transport = Transport(spec.peer_id, context, curve=spec.curve())
        client: ControlClient = transport.control(spec.control_endpoint, spec.token,
                                                  spec.curve_launcher)
        with contextlib.suppress(Exception):
            await client.send(ctl.encode(error_message(e)))
        client.close()
        transport.close()
        log("".join(traceback.format_exception(e)).rstrip())
        raise


def _on_sigterm(loop: asyncio.AbstractEventLoop, runtimes: list) -> None:
    # The first SIGTERM asks every peer here to stop (finish the step, report); the next
    # one ends the process (the default action).
    if not _main_thread():
        return

    def handler() -> None:
        for rt in runtimes:
            rt.request_stop()
        loop.remove_signal_handler(signal.SIGTERM)

    loop.add_signal_handler(signal.SIGTERM, handler)


async def _single(spec, log) -> int:
    runtime = await _build(spec, log)
    _on_sigterm(asyncio.get_running_loop(), [runtime])
    return await runtime.run()


def worker_main(launches: list[dict], worker: int) -> None:
    """Entry point of a worker process hosting the peers of ``launches`` (PeerLaunch data).

    ``threads`` of the launches is the worker's share of the cores.  A worker with several
    peers runs their heavy steps concurrently in that many threads, each torch call on one
    thread (peers, not intra-op threads, use the cores); a worker with one peer gives it
    all of them, as a peer process would have.
    """
    sys.exit(run_worker(launches, worker))


class WorkerHandle:
    """What a host outside the worker (a Ray actor) may do while the worker runs: ask its
    peers to stop, from any thread."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.runtimes: list = []
        self.stop_asked = False

    def request_stop(self) -> None:
        self.stop_asked = True
        if self.loop is not None:
            self.loop.call_soon_threadsafe(lambda: [rt.request_stop() for rt in self.runtimes])


def run_worker(launches: list[dict], worker: int, handle: WorkerHandle | None = None) -> int:
    """Host the peers of ``launches`` until they are done; the worst exit code (0: all well)."""
    from p2pgame.peer.runtime import PeerLaunch

    specs = [PeerLaunch(**launch) for launch in launches]
    if specs:
        exit_with_launcher(specs[0].launcher_pid, lambda msg: print(
            f"[worker {worker}] {msg}", file=sys.stderr, flush=True))
    try:
        threads = specs[0].threads
        _setup_process(threads, specs[0].scenario, threads if len(specs) == 1 else 1)
        raise_open_files(len(specs))
        return asyncio.run(_worker(specs, threads, handle or WorkerHandle()))
    except BaseException as e:
        print(f"[worker {worker}] failed: {_failure_line(e)}", file=sys.stderr, flush=True)
        return 1


def raise_open_files(peers: int) -> None:
    """Each hosted peer holds a few sockets (descriptors): lift the soft limit toward the
    hard one when many peers share the process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 64 + 16 * peers
    if soft != resource.RLIM_INFINITY and soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def _worker(specs, threads: int, handle: WorkerHandle) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from p2pgame.bus.transport import shared_context, start_authenticator
    from p2pgame.peer.method import decode
    from p2pgame.topology import schedule_from_plain

    loop = asyncio.get_running_loop()
    # Heavy steps (and evaluations) of this worker's peers share ``threads`` threads.
    loop.set_default_executor(ThreadPoolExecutor(max_workers=max(1, threads),
                                                 thread_name_prefix="p2pgame-step"))
    scenario = decode(specs[0].scenario)  # once for every peer here
    schedule = schedule_from_plain(specs[0].schedule)
    # pub, control, a wake pair and, per in-neighbour, a sub and its monitor pair, per peer
    sockets = sum(5 + 3 * len(schedule.union_in(s.peer_id)) for s in specs) + 16
    context = shared_context(sockets)
    curve = specs[0].curve()
    # One ZAP handler for every peer of this worker (CURVE: admit the run's peers only).
    auth = start_authenticator(context, curve.allowed) if curve else None
    runtimes: list = handle.runtimes
    handle.loop = loop
    _on_sigterm(loop, runtimes)
    tasks: list[asyncio.Task] = []
    codes: list[int] = []
    try:
        for spec in specs:
            log = _peer_log(spec.peer_id)
            try:
                runtime = await _build(spec, log, scenario=scenario, schedule=schedule,
                                       context=context)
            except Exception as e:
                log(f"failed: {_failure_line(e)}")
                codes.append(1)
                continue
            runtimes.append(runtime)
            if handle.stop_asked:
                runtime.request_stop()
            tasks.append(asyncio.create_task(_hosted(runtime, log)))
            await asyncio.sleep(0)  # the peers already built say Hello meanwhile
        codes += await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        if auth is not None:
            auth.stop()
        context.destroy(linger=0)  # sockets of cancelled peers may still be open
        raise
    if auth is not None:
        auth.stop()
    context.term()  # every peer closed its sockets; the final reports drain first
    return max(codes, default=0)


async def _hosted(runtime, log) -> int:
    """Run one hosted peer; its failure is its own (reported, logged), not the worker's."""
    try:
        return await runtime.run()
    except Exception as e:
        log(f"failed: {_failure_line(e)}")
        return 1


def refuse_launches(launches: list[dict[str, Any]], why: str) -> None:
    """These peers do not start, for ``why``: a line each on stderr and, where the launcher
    can be reached, an ``Error`` on the control channel (the reason in ``failures``)."""
    import asyncio
    import contextlib

    from p2pgame.bus.transport import ControlClient, control_context
    from p2pgame.peer import control as ctl
    from p2pgame.peer.runtime import PeerLaunch

    for launch in launches:
        print(f"[peer {launch.get('peer_id')}] failed: {why}", file=sys.stderr, flush=True)

    async def report() -> None:
        ctx = control_context()
        try:
            for launch in launches:
                spec = PeerLaunch(**launch)
                client = ControlClient(spec.peer_id, spec.control_endpoint, ctx, spec.token,
                                       spec.curve() if spec.curve_launcher else None,
                                       spec.curve_launcher)
                await client.send(ctl.encode(ctl.Error(why)))
                client.close()
        finally:
            ctx.term()  # (each message lingers until delivered, at most 2 s)

    with contextlib.suppress(Exception):  # best effort: the stderr line is said already
        asyncio.run(report())
