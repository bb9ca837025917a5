"""Every peer runs the launcher's own p2pgame, whatever the working directory holds.

A folder holding another copy of the package (here a working copy whose import leaves a
marker file) must not reach the peers: multiprocessing's fork server used to start with
the working directory first on its path, so the installed ``p2pgame`` launched peers that
silently ran the copy.  (The same for Ray workers: tests/integration/test_ray.py.)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from p2pgame.launch.backends import package_file

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "tests" / "scenarios" / "expfam-ring4.toml"
P2PGAME = Path(sys.executable).parent / "p2pgame"  # the installed command


def make_decoy(folder: Path) -> Path:
    """A copy of the package in ``folder`` that works as the real one but appends its
    process id to the returned marker file whenever it is imported."""
    shutil.copytree(Path(package_file()).parent, folder / "p2pgame",
                    ignore=shutil.ignore_patterns("__pycache__"))
    marker = folder / "DECOY-IMPORTED"
    init = folder / "p2pgame" / "__init__.py"
    init.write_text(f"import os\nwith open({str(marker)!r}, 'a') as _f:\n"
                    "    _f.write(f'{os.getpid()}\\n')\n" + init.read_text())
    return marker


@pytest.mark.parametrize("placement", ["process", "workers"])
def test_peers_never_import_a_copy_of_the_package_in_the_working_directory(tmp_path,
                                                                          placement):
    here = tmp_path / "elsewhere"
    here.mkdir()
    marker = make_decoy(here)
    out = tmp_path / "runs"
    proc = subprocess.run(
        [str(P2PGAME), "run", str(SCENARIO), "--quiet", "--out", str(out),
         "--data", str(tmp_path / "data"), "--set", "steps=20",
         "--set", f'runtime.placement="{placement}"'],
        capture_output=True, text=True, timeout=100, cwd=here)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists(), f"the copy in the working directory ran in pids {marker.read_text()}"
    (run_dir,) = out.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert sorted(summary["peers"]) == ["0", "1", "2", "3"]
    assert all(p["steps"] == 20 for p in summary["peers"].values())


# A launcher whose fork server was started before p2pgame's backend could set its path, as
# multiprocessing starts it (`python -c`: the working directory first), so its peers get
# the copy there: they must refuse to run, saying so, instead of mixing two versions.
_OLD_FORK_SERVER = """
import json, sys
sys.path.pop(0)  # this launcher itself imports the installed p2pgame, not the copy here
import multiprocessing as mp
from multiprocessing import forkserver
mp.get_context("forkserver").set_forkserver_preload(["p2pgame.peer.runtime"])
forkserver.ensure_running()
from p2pgame import launch
res = launch.run(sys.argv[1], ["steps=20"], out=sys.argv[2], progress=False)
print(json.dumps({"exit": res.exit_code, "failures": res.failures}))
"""


def test_a_peer_that_got_another_copy_of_the_package_refuses_to_run(tmp_path):
    here = tmp_path / "elsewhere"
    here.mkdir()
    marker = make_decoy(here)
    proc = subprocess.run([sys.executable, "-c", _OLD_FORK_SERVER, str(SCENARIO),
                           str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=100, cwd=here)
    assert proc.returncode == 0, proc.stderr
    assert marker.exists()  # the copy was imported (by the fork server) ...
    res = json.loads(proc.stdout.splitlines()[-1])
    assert res["exit"] == 1  # ... and no peer ran it
    why = [w for w in res["failures"].values() if "runs p2pgame from" in w]
    assert why and f"{here / 'p2pgame'}" in why[0] and str(Path(package_file()).parent) in why[0]
    assert "[peer 0] failed: this process runs p2pgame from" in proc.stderr
