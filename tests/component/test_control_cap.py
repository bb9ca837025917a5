"""The launcher's control socket has a frame-size cap: an oversized frame never reaches its
memory, and a legitimate message of any size still arrives (sent as several frames).

The oversized frame comes from another process, so that its bytes are not counted in this
one's memory; this process's peak resident memory is measured from just before it
(/proc/self/clear_refs resets the peak, VmHWM)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
import zmq
import zmq.asyncio

from p2pgame.bus.transport import CONTROL_FRAME_BYTES, ControlClient, ControlServer, control_token
from p2pgame.peer import control as ctl
from tests.helpers import CONTROL_SENDER, reset_peak_memory, status_kib

DEADLINE_S = 20.0
MiB = 2**20

async def test_an_oversized_frame_never_reaches_the_launchers_memory(tmp_path):
    frame_mib = 8 * CONTROL_FRAME_BYTES // MiB
    tokens = {0: control_token(b"secret", 0)}
    server = ControlServer("ipc", "127.0.0.1", tmp_path, tokens)
    ctx = zmq.asyncio.Context()
    peer = ControlClient(0, server.endpoint, ctx, tokens[0])
    try:
        # The server's buffers and this test's imports are in place before the peak is reset.
        await peer.send(ctl.encode(ctl.Progress(0)))
        assert await server.recv(DEADLINE_S) == (0, ctl.encode(ctl.Progress(0)))
        reset_peak_memory()
        before = status_kib("VmHWM")
        sender = subprocess.Popen([sys.executable, "-c", CONTROL_SENDER, server.endpoint,
                                   "7:not-a-token", tokens[0], str(frame_mib)])
        try:
            got = await server.recv(DEADLINE_S)
            assert sender.wait(DEADLINE_S) == 0
        finally:
            if sender.poll() is None:
                sender.kill()
                sender.wait()
        grown_mib = (status_kib("VmHWM") - before) / 1024
        assert got == (0, ctl.encode(ctl.Progress(1))), got
        assert grown_mib < frame_mib / 8, (
            f"peak memory grew {grown_mib:.0f} MiB for a {frame_mib} MiB frame")
        # The channel still works: a legitimate message after it arrives.
        await peer.send(ctl.encode(ctl.Progress(2)))
        assert await server.recv(DEADLINE_S) == (0, ctl.encode(ctl.Progress(2)))
        assert await server.send(0, ctl.encode(ctl.Go()))
        assert ctl.decode(await asyncio.wait_for(peer.recv(), DEADLINE_S)) == ctl.Go()
    finally:
        peer.close()
        ctx.term()
        server.close()


@pytest.mark.parametrize("size", [CONTROL_FRAME_BYTES - 100, CONTROL_FRAME_BYTES,
                                  2 * CONTROL_FRAME_BYTES + 12345])
async def test_a_legitimate_message_larger_than_a_frame_arrives_whole(tmp_path, size):
    """An artifact larger than the cap (a checkpoint sent home from a Ray node) travels as
    several frames of one message and arrives intact, beside small ones."""
    tokens = {0: control_token(b"secret", 0)}
    server = ControlServer("ipc", "127.0.0.1", tmp_path, tokens)
    ctx = zmq.asyncio.Context()
    peer = ControlClient(0, server.endpoint, ctx, tokens[0])
    try:
        # The name is part of the message: the encoded Artifact is a little longer than size.
        big = ctl.Artifact("checkpoints/peer-0.pt", bytes(range(256)) * (size // 256))
        await peer.send(ctl.encode(ctl.Progress(3)))
        await peer.send(ctl.encode(big))
        await peer.send(ctl.encode(ctl.Progress(4)))
        got = [await server.recv(DEADLINE_S) for _ in range(3)]
        assert [p for p, _ in got] == [0, 0, 0]
        assert [ctl.decode(m) for _, m in got] == [ctl.Progress(3), big, ctl.Progress(4)]
        assert server.junk == 0
    finally:
        peer.close()
        ctx.term()
        server.close()
