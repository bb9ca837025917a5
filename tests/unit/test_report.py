"""``p2pgame report``'s figures: a panel per metric with its labels, lines told apart
by run (colour) and peer (style, shade), legends that say which, titled sample grids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from p2pgame import report


def _run(label: str, peers: int, keys=("train/p_loss", "eval/ne_max_abs")) -> dict:
    metrics = {str(p): [{"step": s, **{k: float(s + p) for k in keys}} for s in range(0, 50, 10)]
               for p in range(peers)}
    return {"label": label, "dir": Path("."), "metrics": metrics, "summary": {"peers": {}}}


def _close(fig) -> None:
    report._plt().close(fig)


def test_series_figure_has_a_panel_per_metric_with_labels_and_a_legend() -> None:
    runs = [_run("0:a", 2), _run("1:b", 2)]
    fig = report.series_figure(runs, ["train/p_loss", "train/q_loss", "eval/ne_max_abs"],
                               "losses over steps")
    try:
        axes = fig.axes
        # train/q_loss is in no run's lines: no panel for it.
        assert [ax.get_title() for ax in axes] == ["train/p_loss", "eval/ne_max_abs"]
        assert fig._suptitle.get_text() == "losses over steps"
        for ax in axes:
            assert ax.get_xlabel() == "step" and ax.get_ylabel()
            lines = ax.get_lines()
            assert len(lines) == 4  # two runs x two peers
            labels = [t.get_text() for t in ax.get_legend().get_texts()]
            assert labels == ["0:a / peer 0", "0:a / peer 1", "1:b / peer 0", "1:b / peer 1"]
            by = dict(zip(labels, lines, strict=True))
            # The run is the colour (peer 0 in full colour), the peer the line style.
            assert by["0:a / peer 0"].get_color() != by["1:b / peer 0"].get_color()
            assert by["0:a / peer 0"].get_linestyle() == by["1:b / peer 0"].get_linestyle()
            assert by["0:a / peer 0"].get_linestyle() != by["0:a / peer 1"].get_linestyle()
        assert axes[1].get_ylabel() == report.METRIC_LABELS["eval/ne_max_abs"]
    finally:
        _close(fig)


def test_series_figure_of_many_lines_names_the_runs() -> None:
    runs = [_run("0:a", 8, ("train/p_loss",)), _run("1:b", 8, ("train/p_loss",))]
    fig = report.series_figure(runs, ["train/p_loss"], "t")
    try:
        ax = fig.axes[0]
        assert len(ax.get_lines()) == 16
        legend = ax.get_legend()
        assert [t.get_text() for t in legend.get_texts()] == ["0:a", "1:b"]
        assert "peer" in legend.get_title().get_text()
        # Peers of one run: shades of its colour, lighter with the peer.
        mine = [np.array(line.get_color()) for line in ax.get_lines()[:8]]
        assert all((b >= a - 1e-9).all() for a, b in zip(mine, mine[1:], strict=False))
        assert (mine[-1] > mine[0]).any()
    finally:
        _close(fig)


def test_series_figure_of_nothing_is_none() -> None:
    assert report.series_figure([_run("0:a", 2)], ["eval/fid_all"], "t") is None


def test_sample_grids_are_titled_with_peer_classes_and_step(tmp_path) -> None:
    (tmp_path / "samples").mkdir()
    plt = report._plt()
    for p in (0, 1):
        plt.imsave(tmp_path / "samples" / f"peer-{p}.png", np.random.default_rng(p).random((8, 8)))
    run = {"label": "0:game", "dir": tmp_path, "metrics": {},
           "summary": {"peers": {"0": {"steps": 60, "own_classes": [0, 1]},
                                 "1": {"steps": 60, "own_classes": [2, 3]},
                                 "2": {"steps": 60}}}}  # peer 2: no grid
    fig = report.samples_figure(run)
    try:
        titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
        assert titles == ["peer 0: own classes [0, 1]\nstep 60 (its last)",
                          "peer 1: own classes [2, 3]\nstep 60 (its last)"]
        assert "samples" in fig._suptitle.get_text()
    finally:
        _close(fig)


def test_report_of_a_run_folder_draws_titled_figures(tmp_path) -> None:
    run = tmp_path / "run"
    (run / "metrics").mkdir(parents=True)
    (run / "samples").mkdir()
    peers = {str(p): {"steps": 20, "staleness_mean": 1.5, "ahead_uses": 2, "own_classes": [p],
                      "staleness_hist": {"-1": 2, "0": 3, "2": 5}} for p in range(2)}
    (run / "summary.json").write_text(json.dumps(
        {"scenario": "s", "mode": "async", "n_peers": 2, "steps": 20, "peers": peers}))
    for p in range(2):
        (run / "metrics" / f"peer-{p}.jsonl").write_text("".join(
            json.dumps({"step": s, "train/p_loss": 1.0 / (s + 1), "comm/bytes_sent": 10 * s})
            + "\n" for s in range(0, 20, 5)))
        report._plt().imsave(run / "samples" / f"peer-{p}.png", np.zeros((4, 4)))
    path = report.write_report([run])
    text = path.read_text()
    for name in ("loss.png", "bytes.png", "staleness.png", "samples-0.png"):
        assert (path.parent / name).is_file(), name
        assert f"({name})" in text
    assert "ahead_uses" in text and "staleness_mean" in text


def test_peers_in_number_order() -> None:
    assert report._peers({"10": [], "2": [], "0": []}) == ["0", "2", "10"]
