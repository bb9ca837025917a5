"""`p2pgame sweep` (grid, baselines, failed points, bad specs) and `p2pgame report`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from p2pgame import cli
from p2pgame.config import ScenarioError
from p2pgame.sweep import load_sweep

pytestmark = pytest.mark.integration


@pytest.fixture
def base(write_scenario, tiny_raw) -> Path:
    tiny_raw["steps"] = 30
    tiny_raw["topology"]["n"] = 2
    return write_scenario(tiny_raw, "base.toml")


def _sweep(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text(body)
    return path


def test_sweep_runs_grid_records_failure_and_plots(tmp_path, base, capsys) -> None:
    spec = _sweep(tmp_path, """
name = "tiny-sweep"
scenario = "base.toml"
metrics = ["ne_max_abs", "bytes_sent"]
[grid]
"topology.self_weight" = [0.5, 1.0]
"comm.samples_per_message" = [8, 32]
[[baseline]]
label = "broken"
scenario = "base.toml"
set = ["runtime.start_timeout_s=0.001"]
[plot]
x = "topology.self_weight"
panels = [["ne_max_abs"]]
""")
    code = cli.main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 1  # one point failed; the others ran
    sweep_dir = Path(out.strip().splitlines()[-1].split("results: ")[1])
    rows = list(csv.DictReader((sweep_dir / "sweep.csv").open()))
    assert [r["status"] for r in rows] == ["ok"] * 4 + ["failed"]
    assert rows[-1]["error"]  # the failure is recorded with its reason
    by = {(r["topology.self_weight"], r["comm.samples_per_message"]): r for r in rows[:4]}
    # More samples per message means more bytes; the grid really varied the scenario.
    assert float(by[("0.5", "32")]["bytes_sent"]) > float(by[("0.5", "8")]["bytes_sent"])
    assert (sweep_dir / "sweep.png").is_file()
    points = json.loads((sweep_dir / "sweep.json").read_text())["points"]
    assert len(points) == 5 and all(Path(p["run_dir"]).is_dir() for p in points if "run_dir" in p)


def test_sweep_over_scenario_files_plots_one_panel_per_peer(tmp_path, base, capsys) -> None:
    other = tmp_path / "other.toml"
    other.write_text(base.read_text().replace("steps = 30", "steps = 20"))
    spec = _sweep(tmp_path, """
name = "files"
metrics = ["ne_max_abs", "steps"]
[grid]
scenario = ["base.toml", "other.toml"]
"comm.samples_per_message" = [8, 32]
[plot]
x = "comm.samples_per_message"
series = "scenario"
per_peer = "ne_max_abs"
""")
    assert cli.main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    sweep_dir = Path(capsys.readouterr().out.strip().splitlines()[-1].split("results: ")[1])
    rows = list(csv.DictReader((sweep_dir / "sweep.csv").open()))
    # Each file ran with its own settings; the scenario is a column of the table.
    assert [(r["scenario"], float(r["steps"])) for r in rows] == [
        ("base.toml", 30.0), ("base.toml", 30.0), ("other.toml", 20.0), ("other.toml", 20.0)]
    assert (sweep_dir / "sweep.png").is_file()


@pytest.mark.parametrize("body, match", [
    ('[grid]\nscenario = ["missing.toml"]', "missing.toml not found"),
    ('[grid]\n"steps" = [1]', "'scenario'"),
    ('scenario = "base.toml"\n[grid]\n"steps" = [5]\n[plot]\nx = "steps"\nseries = "z"',
     "plot.series"),
    ('scenario = "base.toml"\nbogus = 1\n[grid]\n"steps" = [1]', "unknown key 'bogus'"),
    ('scenario = "base.toml"\n[grid]\n"steps" = []', "empty range"),
    ('scenario = "base.toml"\n[grid]\n"comm.nope" = [1]', "nope"),
    ('scenario = "base.toml"\n[grid]\n"steps" = [5]\n[plot]\nx = "y"', "plot.x"),
])
def test_bad_sweep_refused_before_anything_runs(tmp_path, base, body, match) -> None:
    with pytest.raises(ScenarioError, match=match):
        load_sweep(_sweep(tmp_path, body))
    assert not (tmp_path / "out").exists()


def test_report_of_one_and_two_runs(tmp_path, base, capsys) -> None:
    dirs = []
    for k in range(2):
        assert cli.main(["run", str(base), "--out", str(tmp_path / "runs"), "--quiet",
                         "--set", f"comm.delay_steps={k}"]) == 0
        dirs.append(capsys.readouterr().out.strip().splitlines()[-1].split("results: ")[1])
    assert cli.main(["report", dirs[0]]) == 0
    one = Path(dirs[0]) / "report" / "report.md"
    text = one.read_text()
    assert "ne_max_abs" in text and "![" in text
    for name in ("loss.png", "bytes.png", "staleness.png"):
        assert (one.parent / name).is_file()
    assert cli.main(["report", *dirs, "--out", str(tmp_path / "cmp")]) == 0
    assert "Comparison" in (tmp_path / "cmp" / "report.md").read_text()
    assert cli.main(["report", *dirs]) == 2  # several runs need --out
