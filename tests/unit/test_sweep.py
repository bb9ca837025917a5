"""``p2pgame sweep``'s plot and table, from records (no run): one line per value of the
grid keys besides x, a table whose columns line up and that says what its values are,
and the sweep file's ``[plot]`` checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pgame.config import ScenarioError
from p2pgame.sweep import (
    BASELINE_KEYS,
    PLOT_KEYS,
    SWEEP_KEYS,
    SweepSpec,
    load_sweep,
    sweep_figure,
    sweep_lines,
    sweep_table,
)

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "expfam-ring4.toml"


def _records(xs, second=None, baseline=True) -> list[dict]:
    out = []
    for s in second or [None]:
        for x in xs:
            values = {"a": x} if s is None else {"a": x, "b": s}
            label = ",".join(f"{k}={v}" for k, v in values.items())
            out.append({"label": label, "baseline": False, "status": "ok", "values": values,
                        "row": {"m": x * 10 + (s or 0), "n": -x}, "peers": {}})
    # A failed point is not drawn.
    out.append({"label": "broken", "baseline": False, "status": "failed",
                "values": {"a": 99, **({"b": second[0]} if second else {})},
                "row": {"m": None, "n": None}, "peers": {}})
    if baseline:
        out.append({"label": "alone", "baseline": True, "status": "ok", "values": {},
                    "row": {"m": 5.0, "n": 1.0}, "peers": {}})
    return out


def _spec(plot: dict, metrics=("m", "n")) -> SweepSpec:
    return SweepSpec("s", Path("s.toml"), [], list(metrics), plot)


def test_two_key_grid_draws_one_line_per_value_of_the_second_key() -> None:
    # The grid's order: a varies slowest, yet lines follow b, each sorted by a.
    records = _records([3, 1, 2], second=[10, 20])
    panels = sweep_lines(_spec({"x": "a", "panels": [["m"]]}), records)
    lines = panels[0]["lines"]
    assert [line["group"] for line in lines] == [{"b": 10}, {"b": 20}]
    assert [line["x"] for line in lines] == [[1, 2, 3], [1, 2, 3]]
    assert lines[0]["y"] == [20, 30, 40] and lines[1]["y"] == [30, 40, 50]
    assert [line["label"] for line in lines] == ["b=10", "b=20"]
    assert lines[0]["color"] != lines[1]["color"]
    assert [b["label"] for b in panels[0]["baselines"]] == ["alone"]


def test_two_metrics_and_two_groups_are_four_lines_in_the_figure() -> None:
    spec = _spec({"x": "a", "panels": [["m", "n"]]})
    records = _records([1, 2, 3], second=[10, 20])
    panel = sweep_lines(spec, records)[0]
    assert [line["label"] for line in panel["lines"]] == [
        "m, b=10", "m, b=20", "n, b=10", "n, b=20"]
    # colour: the group; style: the metric
    by = {line["label"]: line for line in panel["lines"]}
    assert by["m, b=10"]["color"] == by["n, b=10"]["color"]
    assert by["m, b=10"]["style"] != by["n, b=10"]["style"]
    fig = sweep_figure(spec, records)
    try:
        ax = fig.axes[0]
        drawn = [line for line in ax.get_lines() if len(line.get_xdata()) == 3]
        assert len(drawn) == 4  # (+ the baselines' horizontal lines)
        assert all(list(line.get_xdata()) == [1, 2, 3] for line in drawn)
        assert ax.get_xlabel() == "a" and "mean over the peers" in ax.get_ylabel()
        assert "m, b=10" in [t.get_text() for t in ax.get_legend().get_texts()]
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_one_key_grid_is_one_line_per_metric() -> None:
    panels = sweep_lines(_spec({"x": "a", "panels": [["m", "n"]]}), _records([2, 1]))
    assert [(line["label"], line["x"]) for line in panels[0]["lines"]] == [
        ("m", [1, 2]), ("n", [1, 2])]


def test_sweep_table_columns_line_up_and_say_they_are_means_over_peers() -> None:
    records = _records([1, 20], second=[300])
    records[0]["row"]["m"] = 1234.56789
    text = sweep_table(["m", "n"], records)
    note, header, *rows = text.splitlines()
    assert "mean over the point's peers" in note
    assert header.split() == ["point", "status", "m", "n"]
    assert len(rows) == len(records)
    # Every value column ends where its header ends (right-aligned, as wide as its
    # longest cell), and every row starts its status where the header does.
    for name in ("m", "n"):
        end = header.index(f" {name}") + 1 + len(name)
        assert all(row[end - 1] != " " and (len(row) == end or row[end] == " ")
                   for row in rows), name
    status = header.index("status")
    assert all(row[status - 2:status] == "  " and row[status] != " " for row in rows)
    assert "1235" in text and "-" in rows[-2].split()  # the failed point's values


def _sweep(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text(f'scenario = "{SCENARIO}"\nmetrics = ["ne_max_abs", "bytes_sent"]\n'
                    + body)
    return path


def test_plot_x_defaults_to_the_first_grid_key(tmp_path) -> None:
    spec = load_sweep(_sweep(tmp_path, '[grid]\n"steps" = [5, 6]\n"topology.self_weight" = '
                                       '[0.5]\n[plot]\nlog_x = true\n'))
    assert spec.plot == {"x": "steps", "log_x": True}
    assert load_sweep(_sweep(tmp_path, '[grid]\n"steps" = [5]\n')).plot == {}


@pytest.mark.parametrize("plot, match", [
    ('panels = [["fid_all"]]', r"plot.panels\[0\]: 'fid_all' is not one of metrics"),
    ("panels = []", "plot.panels must be a list of non-empty lists"),
    ('panels = ["ne_max_abs"]', "plot.panels must be a list of non-empty lists"),
    ('log_x = "yes"', "plot.log_x must be true or false"),
    ('per_peer = "accuracy"', "plot.per_peer must be one of metrics"),
    ('series = "nope"', "plot.series must be one of the grid keys"),
])
def test_bad_plot_refused(tmp_path, plot, match) -> None:
    with pytest.raises(ScenarioError, match=match):
        load_sweep(_sweep(tmp_path, f'[grid]\n"steps" = [5]\n[plot]\n{plot}\n'))


def test_bad_name_and_empty_metrics_refused(tmp_path) -> None:
    with pytest.raises(ScenarioError, match="name must be a non-empty string"):
        load_sweep(_sweep(tmp_path, 'name = 3\n[grid]\n"steps" = [5]\n'))
    path = tmp_path / "m.toml"
    path.write_text(f'scenario = "{SCENARIO}"\nmetrics = []\n[grid]\n"steps" = [5]\n')
    with pytest.raises(ScenarioError, match="metrics is empty"):
        load_sweep(path)


def test_the_readme_documents_every_key_of_a_sweep_file() -> None:
    """README's sweep-file table has a row for each key the sweep loader allows (top
    level, ``[[baseline]]``'s named in its row, ``plot.*``), and no row for a key it
    refuses."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("**The sweep file.**", 1)[1].split("\n\n", 2)[1]
    rows = [line.split("|")[1:3] for line in table.splitlines() if line.startswith("| `")]
    documented = {key.strip().strip("`[]") for key, _ in rows}
    assert documented == set(SWEEP_KEYS) | {f"plot.{k}" for k in PLOT_KEYS}
    baseline = next(what for key, what in rows if "baseline" in key)
    assert all(f"`{k}`" in baseline for k in BASELINE_KEYS)
