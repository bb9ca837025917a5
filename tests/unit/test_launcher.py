"""The launcher's shutdown, with a fake backend: who is failed, who only warned about."""

from __future__ import annotations

from p2pgame.config import RuntimeSpec
from p2pgame.launch.launcher import Launcher
from p2pgame.scenario import resolve


class SlowToExit:
    """Peers that ignore the request to stop until terminated (exit code -15)."""

    def __init__(self, n: int) -> None:
        self.codes: dict[int, int | None] = dict.fromkeys(range(n))
        self.terminated: list[int] = []

    def alive(self, peer: int) -> bool:
        return self.codes[peer] is None

    def exit_code(self, peer: int) -> int | None:
        return self.codes[peer]

    def join(self, peer: int, timeout: float) -> None:
        pass

    def terminate(self, peer: int) -> None:
        self.terminated.append(peer)
        self.codes[peer] = -15

    def kill(self, peer: int) -> None:
        self.codes[peer] = -9


def test_a_late_exit_after_reporting_is_a_warning_not_a_failure(tiny_raw):
    tiny_raw["runtime"] = {"stop_timeout_s": 0.01}
    scenario = resolve(tiny_raw, "x.toml")
    assert scenario.runtime.stop_timeout_s == 0.01 != RuntimeSpec().stop_timeout_s
    backend = SlowToExit(scenario.n)
    launcher = Launcher(scenario, None, None, backend, progress=False)
    launcher.summaries[0] = {"steps": 5}  # peer 0 reported; the others never did
    launcher.stop_processes()
    assert backend.terminated == list(range(scenario.n))
    assert 0 not in launcher.failures and "stop_timeout_s" in launcher.warnings[0]
    assert sorted(launcher.failures) == list(range(1, scenario.n))
    assert all("-15" in launcher.failures[i] for i in range(1, scenario.n))


def test_devices_go_round_robin_over_gpus_by_process(monkeypatch, tiny_raw):
    """device = "auto" with two GPUs: one peer per process takes GPUs in turn; in workers,
    a worker's peers share its GPU (each on its own stream), workers take GPUs in turn;
    with no worker count given there is one worker per GPU."""
    import torch

    from p2pgame.exchange import method
    from p2pgame.launch import n_workers, resolve_devices
    from p2pgame.scenario import resolve

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    raw = dict(tiny_raw)
    raw["topology"] = {**raw["topology"], "n": 6}
    raw["runtime"] = {"device": "auto", "placement": "process"}
    info_torch = type("Info", (), {"uses_torch": True})()  # expfam itself needs no torch
    sc = resolve(raw, "s.toml")
    info = method(sc)
    assert not info.uses_torch
    assert resolve_devices(sc, info) == ["cpu"] * 6  # no torch, no GPU
    assert resolve_devices(sc, info_torch) == ["cuda:0", "cuda:1"] * 3
    raw["runtime"] = {"device": "auto", "placement": "workers", "workers": 3}
    sc = resolve(raw, "s.toml")
    assert resolve_devices(sc, info_torch) == ["cuda:0", "cuda:0", "cuda:1", "cuda:1",
                                               "cuda:0", "cuda:0"]
    raw["runtime"] = {"device": "auto", "placement": "workers"}
    assert n_workers(resolve(raw, "s.toml")) == 2
    raw["runtime"] = {"device": "cpu", "placement": "workers"}
    assert resolve_devices(resolve(raw, "s.toml"), info_torch) == ["cpu"] * 6


class _Queue:
    """A control server with scripted messages, each ``(seconds it takes the launcher,
    peer, message, whether more wait behind it)``, on a clock the test owns."""

    def __init__(self, clock: list[float], script) -> None:
        self.clock, self.script = clock, list(script)
        self.more = False

    async def recv(self, timeout_s=None):
        from p2pgame.peer import control as ctl

        if not self.script:
            self.more = False
            return None
        took, peer, msg, self.more = self.script.pop(0)
        self.clock[0] += took
        return peer, ctl.encode(msg)

    def queued(self) -> bool:
        return self.more


class _Alive(SlowToExit):
    def alive(self, peer: int) -> bool:
        return True


async def test_a_launcher_behind_on_its_queue_calls_no_peer_silent(monkeypatch, tiny_raw):
    """runtime.peer_timeout_s counts up to the launcher's last caught-up moment: while it
    reads a backlog (thousands of peers on two cores), a peer whose messages wait behind
    others' is not silent; once it has caught up, a peer that really sent nothing is."""
    import p2pgame.launch.launcher as launcher_module
    from p2pgame.peer import control as ctl

    clock = [0.0]
    monkeypatch.setattr(launcher_module.time, "monotonic", lambda: clock[0])
    tiny_raw["topology"]["n"] = 2
    scenario = resolve(tiny_raw, "x.toml")
    launcher = Launcher(scenario, None, None, _Alive(scenario.n), progress=False)
    launcher.caught_up = 0.0
    launcher.last_heard = dict.fromkeys(launcher.peers, 0.0)
    # Ten seconds of peer 0's reports with more behind them, then peer 1's, long sent.
    backlog = [(1.0, 0, ctl.Progress(k), True) for k in range(10)]
    server = _Queue(clock, [*backlog, (1.0, 1, ctl.Progress(3), False)])
    for _ in range(10):
        await launcher._recv(server)
        launcher.fail_silent(5.0)
    assert clock[0] == 10.0 and launcher.caught_up == 0.0 and not launcher.failures
    await launcher._recv(server)  # peer 1's, and the queue is empty: caught up at 11 s
    launcher.fail_silent(5.0)
    assert launcher.caught_up == 11.0 and not launcher.failures
    # Caught up, and peer 1 says nothing for 6 s while peer 0 goes on: peer 1 is silent.
    server.script = [(1.0, 0, ctl.Progress(20 + k), False) for k in range(6)]
    for _ in range(6):
        await launcher._recv(server)
    launcher.fail_silent(5.0)
    assert sorted(launcher.failures) == [1] and "silent for 6 s" in launcher.failures[1]
