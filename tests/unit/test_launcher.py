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
