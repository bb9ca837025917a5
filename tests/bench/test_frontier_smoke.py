"""bench/frontier.py at tiny size: every point of both settings runs, the files exist, the
JSON parses, and the bytes follow each exchange's knobs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_frontier_smoke(tiny_mnist_root, tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "frontier.py"), "--preset", "smoke",
         "--data", str(tiny_mnist_root), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=540,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    runs = result["runs"]
    assert all(r["status"] == "ok" for r in runs), [r["error"] for r in runs]
    assert {r["method"] for r in runs} == {"none", "samples", "params", "compress", "model",
                                           "centralized"}
    assert {r["setting"] for r in runs} == {"demo2", "ring8", "*"}
    assert {"commit", "packages", "cpu", "load_before", "load_after"} <= set(result["env"])
    assert result["env"]["packages"]["torch"]
    for setting in ("demo2", "ring8"):
        mb = {(r["method"], r["point"]): r["mb_per_peer"] for r in runs
              if r["setting"] == setting}
        # every run evaluated both quality measures
        assert all(r["fid_all"] is not None and r["tstr_accuracy"] is not None
                   for r in runs if r["setting"] == setting)
        assert mb[("none", "none")] == 0
        assert mb[("samples", "spm=8")] < mb[("samples", "spm=32")]
        assert mb[("params", "f16")] == pytest.approx(mb[("params", "f32")] / 2, rel=0.05)
        # int8 is about a quarter of float32 (a scale per bucket and headers on top)
        assert 0.24 < mb[("compress", "int8")] / mb[("params", "f32")] < 0.3
        # a model every step costs more than the model once
        assert mb[("model", "once")] < mb[("model", "every=1")]
    d = Path(result["dir"])
    for name in ("runs.csv", "frontier.csv", "to-target.csv", "frontier.json",
                 "frontier-demo2.png", "frontier-ring8.png", "frontier.md"):
        assert (d / name).is_file(), name
    # the Markdown tables (what README quotes): a table per setting, a row per point
    md = (d / "frontier.md").read_text()
    assert "**demo2**" in md and "**ring8**" in md
    for r in runs:
        if r["method"] != "centralized":
            assert f"| {r['method']} | {r['point']} |" in md, (r["method"], r["point"])
    with (d / "runs.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(runs)
    # the reference line is there, and the target derived from it
    assert result["target_fid_all"] == pytest.approx(
        1.5 * next(r["fid_all"] for r in runs if r["method"] == "centralized"))
    # the to-target table: per setting, each target (1.5x, 2x, 3x centralized; none's
    # end) for each cooperative method, reached or not, and a Markdown row per target
    central = next(r["fid_all"] for r in runs if r["method"] == "centralized")
    reach = result["to_target"]
    for setting in ("demo2", "ring8"):
        alone = next(r["fid_all"] for r in runs if r["setting"] == setting
                     and r["method"] == "none")
        got = {(r["target"], r["method"]): r for r in reach if r["setting"] == setting}
        assert set(got) == {(t, m) for t in ("1.5x centralized", "2x centralized",
                                             "3x centralized", "none's end")
                            for m in ("samples", "params", "compress", "model")}
        assert got[("2x centralized", "model")]["target_fid_all"] == pytest.approx(2 * central)
        assert got[("none's end", "samples")]["target_fid_all"] == pytest.approx(alone)
        for r in got.values():  # a point that reached it is at or below it
            assert r["fid_all"] is None or r["fid_all"] <= r["target_fid_all"]
    assert md.count("| none's end |") == 2 and md.count("| 3x centralized |") == 2
