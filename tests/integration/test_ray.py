"""The Ray backend on a local two-node cluster (Ray's own test-cluster utility).

Both "nodes" are this machine, so the peers' sockets stay on 127.0.0.1 (tcp);
the workers are Ray actors placed one per node by a ``spread`` placement group.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import ray  # in the test extra: this test must run in `make test`, never skip

from p2pgame import launch
from p2pgame.config import ScenarioError
from tests.fixtures.record_same_results import TINY_GAME
from tests.helpers import placement_results
from tests.integration.test_same_code import P2PGAME, make_decoy

pytestmark = pytest.mark.integration

SCENARIO = "tests/scenarios/expfam-ring4.toml"
SCENARIO_PATH = Path(__file__).resolve().parents[1] / "scenarios" / "expfam-ring4.toml"
ON_RAY = ['runtime.backend="ray"', 'comm.transport="tcp"', 'runtime.placement="workers"',
          "runtime.workers=2", 'runtime.ray_strategy="spread"']


@pytest.fixture(scope="module")
def two_nodes():
    """A head node and one more, 2 CPUs each, for this module's tests."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, log_to_driver=True)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_workers_on_two_nodes_give_the_results_of_processes(tmp_path, two_nodes):
    base = ['comm.transport="tcp"']
    local = launch.run(SCENARIO, base, out=tmp_path / "local", progress=False)
    remote = launch.run(SCENARIO, ON_RAY, out=tmp_path / "ray", progress=False)
    assert local.exit_code == 0 and remote.exit_code == 0, remote.failures
    s = remote.summary
    assert s["backend"] == "ray" and s["placement"] == "workers"
    # Spread: one worker per node, each hosting a contiguous block of peers.
    assert [n["peers"] for n in s["nodes"]] == [[0, 1], [2, 3]]
    assert len({n["node"] for n in s["nodes"]}) == 2
    assert placement_results(remote.run_dir) == placement_results(local.run_dir)
    # The run folder was written by the driver from what came over the control channel.
    assert sorted(p.name for p in (remote.run_dir / "metrics").iterdir()) == [
        f"peer-{i}.jsonl" for i in range(4)]


def test_the_virtual_clock_on_two_ray_nodes_gives_the_results_of_processes(tmp_path,
                                                                           two_nodes):
    """A faulty async ring on the virtual clock: the same results whether its peers are
    processes here or Ray actors on two nodes (the promises cross the nodes too)."""
    from tests.integration.test_virtual_clock import FAULTY_RING8

    faults = [f"{k}={v!r}".replace("'", '"') for k, v in FAULTY_RING8.items()]
    local = launch.run(SCENARIO, [*faults, 'comm.transport="tcp"',
                                  'runtime.placement="process"'],
                       out=tmp_path / "local", progress=False)
    remote = launch.run(SCENARIO, [*faults, *ON_RAY], out=tmp_path / "ray", progress=False)
    assert local.exit_code == 0 and remote.exit_code == 0, remote.failures
    assert remote.summary["backend"] == "ray"
    assert all(p["virtual_s"] == pytest.approx(2.0) for p in remote.summary["peers"].values())
    assert placement_results(remote.run_dir) == placement_results(local.run_dir)
    assert sum(p["messages_dropped_loss"] for p in local.summary["peers"].values()) > 0


# A hang guard, not a timing check: quiet, this takes about 30 s, but its Ray workers are
# fresh interpreters that import torch, and on two loaded cores that has taken over 120 s.
@pytest.mark.timeout(300)
def test_a_game_on_ray_sends_its_checkpoints_home(tmp_path, two_nodes, tiny_mnist_root):
    scenario = tmp_path / "game.toml"
    scenario.write_text(TINY_GAME.replace("checkpoint = false", "checkpoint = true"))
    res = launch.run(scenario, ON_RAY, out=tmp_path / "runs", data_root=tiny_mnist_root,
                     progress=False)
    assert res.exit_code == 0, res.failures
    # No shared disk is assumed: the peers sent their checkpoints over the control channel.
    for i in (0, 1):
        assert (res.run_dir / "checkpoints" / f"peer-{i}.pt").stat().st_size > 1000
        assert (res.run_dir / "samples" / f"peer-{i}.png").is_file()
    assert res.summary["peer_files"] == {}


def test_ray_over_ipc_is_refused_before_anything_starts(tmp_path):
    with pytest.raises(ScenarioError, match='comm.transport = "tcp"'):
        launch.run(SCENARIO, ['runtime.backend="ray"'], out=tmp_path, progress=False)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- fitting the cluster

def test_the_default_placement_fits_the_cluster(tmp_path, two_nodes):
    """No placement or worker count given: as many workers as the nodes have room for (here
    one of 2 CPUs on each node), not one per peer (four of 2 CPUs: never placeable)."""
    res = launch.run(SCENARIO, ['runtime.backend="ray"', 'comm.transport="tcp"',
                                "runtime.worker_cpus=2", "steps=20"],
                     out=tmp_path, progress=False)
    assert res.exit_code == 0, res.failures
    s = res.summary
    assert s["placement"] == "workers" and s["workers"] == 2
    assert [n["peers"] for n in s["nodes"]] == [[0, 1], [2, 3]]


@pytest.mark.parametrize("asked, says", [
    (["runtime.workers=3"], "runtime.workers = 3: the Ray cluster has room for 2 workers"),
    (['runtime.placement="process"'], 'runtime.placement = "process" puts each of the 4 '
                                      "peers in a Ray worker: the Ray cluster has room for 2"),
])
def test_more_workers_than_the_cluster_holds_are_refused_before_anything_starts(
        tmp_path, two_nodes, asked, says):
    with pytest.raises(ScenarioError, match=re.escape(says)):
        launch.run(SCENARIO, ['runtime.backend="ray"', 'comm.transport="tcp"',
                              "runtime.worker_cpus=2", *asked], out=tmp_path, progress=False)
    assert "\n" not in says


def test_a_ray_backend_whose_start_failed_ends_cleanly(two_nodes):
    """The start fails at once, in one line, with an exception the launcher catches; what
    the launcher then does (join, exit codes, stop, kill, nodes, close) works on workers
    that never started."""
    from p2pgame.launch.backends import BackendError, RayBackend

    backend = RayBackend(workers=8, cpus=1.0)  # the two nodes have 4 CPUs
    with pytest.raises(BackendError, match="room for 4"):
        backend.start({i: {} for i in range(8)})
    for i in range(8):
        backend.join(i, 0.1)
        assert not backend.alive(i) and backend.exit_code(i) is None
        backend.ask_stop(i)
        backend.terminate(i)
        backend.kill(i)
    assert backend.nodes() == []
    backend.close()
    assert ray.is_initialized()  # this module's Ray is not the backend's to end


# --------------------------------------------------------------------------- the same code

def test_ray_workers_never_import_a_copy_of_the_package_in_the_drivers_folder(tmp_path,
                                                                              two_nodes):
    """Ray puts the driver's working directory first on its workers' path: a copy of
    p2pgame there must not run in them (tests/integration/test_same_code.py, for Ray)."""
    here = tmp_path / "elsewhere"
    here.mkdir()
    marker = make_decoy(here)
    sets = [*ON_RAY, f'runtime.ray_address="{two_nodes.address}"', "steps=20"]
    proc = subprocess.run(
        [str(P2PGAME), "run", str(SCENARIO_PATH), "--quiet", "--out", str(tmp_path / "runs"),
         *[x for s in sets for x in ("--set", s)]],
        capture_output=True, text=True, timeout=100, cwd=here)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not marker.exists(), f"the copy in the working directory ran in pids {marker.read_text()}"
