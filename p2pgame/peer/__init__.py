"""A peer: delivery (pure), the control protocol (typed), and the runtime that runs them.

:func:`peer_main` is the entry point of a peer process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import traceback


def peer_main(launch: dict) -> None:
    """Entry point of a peer process (spawn start method); ``launch`` is a PeerLaunch as data."""
    from p2pgame.peer.runtime import PeerLaunch

    spec = PeerLaunch(**launch)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(spec.threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher owns Ctrl-C and asks us to stop
    pid = spec.peer_id

    def log(msg: str) -> None:
        print(f"[peer {pid}] {msg}", file=sys.stderr, flush=True)

    code = 1
    try:
        from p2pgame.algorithms import get_algorithm

        if get_algorithm(spec.scenario["algorithm_name"]).uses_torch:
            import torch

            torch.set_num_threads(spec.threads)
        code = asyncio.run(_main(spec, log))
    except BaseException as e:  # report any failure, then exit non-zero
        log(f"failed: {type(e).__name__}: {e}")
        code = 1
    sys.exit(code)


async def _main(spec, log) -> int:
    from p2pgame.bus.transport import ControlClient, Transport
    from p2pgame.peer import control as ctl
    from p2pgame.peer.runtime import PeerRuntime, error_message

    try:
        runtime = PeerRuntime(spec, log)
    except BaseException as e:
        # Building failed (bad data, a model error): tell the launcher before exiting.
        transport = Transport(spec.peer_id)
        client: ControlClient = transport.control(spec.control_endpoint)
        with contextlib.suppress(Exception):
            await client.send(ctl.encode(error_message(e)))
        client.close()
        transport.close()
        log("".join(traceback.format_exception(e)).rstrip())
        raise
    loop = asyncio.get_running_loop()

    def on_sigterm() -> None:
        # The first SIGTERM asks us to stop (finish the step, report); the next one ends us.
        runtime.request_stop()
        loop.remove_signal_handler(signal.SIGTERM)

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    return await runtime.run()
