"""bench/frontier.py at tiny size: every point runs, the CSV/PNG exist, the JSON parses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(420)
def test_frontier_smoke(tiny_mnist_root, tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "frontier.py"), "--preset", "smoke",
         "--data", str(tiny_mnist_root), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    rows = result["points"]
    assert {r["method"] for r in rows} == {"game", "diffgan"}
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    by = {(r["method"], r["label"]): r for r in rows}
    # Bytes follow the knobs: fewer samples per message and sparser publishing send less,
    # bit-packing saves 8x on the image payload, float16 halves the parameters.
    game = {k[1]: v["mb_per_peer"] for k, v in by.items() if k[0] == "game"}
    assert game["spm=10"] < game["spm=250"]
    assert game["spm=250,every=5"] < game["spm=250"]
    assert game["spm=250,no-pack"] > 6 * game["spm=250"]
    gan = {k[1]: v["mb_per_peer"] for k, v in by.items() if k[0] == "diffgan"}
    assert gan["float16"] == pytest.approx(gan["float32"] / 2, rel=0.05)
    assert gan["non-cooperative"] == 0
    d = Path(result["dir"])
    assert (d / "frontier.csv").is_file() and (d / "frontier.png").is_file()
