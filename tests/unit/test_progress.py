"""The launcher's progress (launch/launcher.py, RunProgress): steps per peer, plain lines
every few seconds when stderr is not a terminal (never a carriage return), a rate that
counts from the step a resumed run started at, stages said once; and the evaluator named
once per run (eval/images.py, prepare_evaluator)."""

from __future__ import annotations

import io

from p2pgame.launch.launcher import RunProgress, duration, is_terminal


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_plain_lines_every_few_seconds_and_no_carriage_return() -> None:
    out, clock = io.StringIO(), Clock()
    p = RunProgress("demo", 6000, 4, {}, stream=out, tty=False, every_s=10.0, clock=clock)
    # 1000 reports over 35 s: the four peers' steps, peer 3 a little behind.
    for k in range(1, 1001):
        clock.t = 100.0 + 0.035 * k
        step = 6 * k
        p.update({0: step, 1: step, 2: step, 3: step - 100}, [0, 1, 2, 3])
    p.stage("every peer at its last step (6000): evaluating, then the summary")
    p.stage("every peer at its last step (6000): evaluating, then the summary")
    p.close()
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0].startswith("demo: 4 peer(s) running, 6000 steps each")
    ticks = [line for line in lines if "per peer (" in line]
    assert len(ticks) == 3 + 1  # at 10, 20 and 30 s, and the last line
    # The slowest peer's step, per peer; the mean beside it; rate and eta per peer.
    first = ticks[0]
    assert first.startswith("demo: step 1616/6000 per peer (27 %; the slowest peer's, mean")
    assert "steps/s per peer, eta" in first
    assert sum("evaluating" in line for line in lines) == 1  # said once
    assert lines[-1].endswith("stopped after 35 s")


def test_rate_counts_from_the_step_the_run_resumed_at() -> None:
    out, clock = io.StringIO(), Clock()
    p = RunProgress("r", 1000, 2, {0: 600, 1: 600}, stream=out, tty=False, every_s=5.0,
                    clock=clock)
    assert "from step 600 on" in out.getvalue()
    clock.t += 10.0
    p.update({0: 700, 1: 700}, [0, 1])  # 100 steps in 10 s, not 700
    assert p.rate() == 10.0
    assert "10 steps/s per peer, eta 30 s" in out.getvalue().splitlines()[-1]
    clock.t += 30.0
    p.update({0: 1000, 1: 1000}, [0, 1])
    p.close()
    assert out.getvalue().splitlines()[-1] == (
        "r: step 1000/1000 per peer (100 %), 10 steps/s per peer; done after 40 s")


def test_a_failed_peer_no_longer_holds_the_progress_back() -> None:
    out, clock = io.StringIO(), Clock()
    p = RunProgress("f", 100, 3, {}, stream=out, tty=False, clock=clock)
    p.update({0: 50, 1: 50, 2: 3}, [0, 1])  # peer 2 failed
    assert p.slowest == 50 and p.mean == 50


def test_terminal_bar_counts_steps_per_peer_from_the_resumed_step() -> None:
    out, clock = io.StringIO(), Clock()
    p = RunProgress("t", 200, 2, {0: 100, 1: 100}, stream=out, tty=True, clock=clock)
    assert p.bar.total == 200 and p.bar.n == 100 and p.bar.initial == 100
    clock.t += 1.0
    p.update({0: 150, 1: 160}, [0, 1])
    p.close()
    text = out.getvalue()
    assert "\r" in text and "step 150/200 per peer" in text and "slowest peer; mean 155" in text


def test_a_stream_that_is_no_terminal_gets_plain_lines() -> None:
    assert not is_terminal(io.StringIO())
    assert RunProgress("x", 1, 1, {}, stream=io.StringIO()).bar is None
    assert [duration(s) for s in (5, 600, 7200)] == ["5 s", "10 min", "2.0 h"]


def test_the_evaluator_is_named_once_per_run(monkeypatch) -> None:
    import p2pgame.eval.images as images

    info = {"test_accuracy": 0.98, "path": "/data/evaluators/e.pt", "trained": False}

    def first(spec, root, epochs, log, device="cpu"):  # loaded from its cache file
        log("loaded evaluator /data/evaluators/e.pt (test accuracy 0.9800)")
        return None, info, None

    def again(spec, root, epochs, log, device="cpu"):  # already held by this process
        return None, info, None

    for fake in (first, again):
        said: list[str] = []
        monkeypatch.setattr(images, "evaluator_for", fake)
        images.prepare_evaluator(None, "data", 1, said.append)
        assert len(said) == 1 and "/data/evaluators/e.pt" in said[0] and "0.98" in said[0]


def test_the_last_step_is_said_once_while_the_peers_evaluate() -> None:
    """Every peer at its last step (evaluating, silent for a while): one plain line at
    that step, not one every few seconds, then the closing line."""
    out, clock = io.StringIO(), Clock()
    p = RunProgress("demo", 300, 2, {}, stream=out, tty=False, every_s=10.0, clock=clock)
    for k in range(1, 11):  # 100 s at the last step
        clock.t = 100.0 + 10.0 * k
        p.update({0: 300, 1: 300}, [0, 1])
    p.close()
    ticks = [line for line in out.getvalue().splitlines() if "per peer (" in line]
    assert len(ticks) == 2, ticks
    assert ticks[0].startswith("demo: step 300/300 per peer (100 %)")
    assert "done after" in ticks[1]
