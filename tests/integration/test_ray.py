"""The Ray backend on a local two-node cluster (Ray's own test-cluster utility).

Both "nodes" are this machine, so the peers' sockets stay on 127.0.0.1 (tcp);
the workers are Ray actors placed one per node by a ``spread`` placement group.
"""

from __future__ import annotations

import pytest
import ray  # in the test extra: this test must run in `make test`, never skip

from p2pgame import launch
from p2pgame.config import ScenarioError
from tests.fixtures.record_same_results import TINY_GAME
from tests.helpers import placement_results

pytestmark = pytest.mark.integration

SCENARIO = "tests/scenarios/expfam-ring4.toml"
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
