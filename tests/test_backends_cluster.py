"""Multi-node: a two-node Ray cluster on one machine (``ray.cluster_utils.Cluster``); the ray backend joins it
by address, its two workers (one CPU each) land on different nodes, and the rollout is still sync's."""

import numpy as np
import pytest

from agents.backends import ShardedVecEnv
from envs.vector import VecEnv


@pytest.fixture
def two_node_cluster():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'flowpolicy[ray]')")
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_ray_backend_joins_a_two_node_cluster_and_spreads_its_workers(two_node_cluster):
    import ray

    with VecEnv("Hopper-v5", 4, act_steps=4) as ref, \
            ShardedVecEnv("Hopper-v5", 4, 4, num_workers=2, transport="ray", ray_address=two_node_cluster.address,
                          worker_cpus=1) as sharded:
        assert sharded.started_ray and len(ray.nodes()) == 2
        nodes = {info["node_id"] for info in sharded.worker_info()}
        assert len(nodes) == 2  # one CPU per node and one per worker: the workers must be on both nodes
        rng = np.random.default_rng(0)
        np.testing.assert_array_equal(ref.reset(5), sharded.reset(5))
        for _ in range(30):
            actions = rng.uniform(-1, 1, (4, 4, 3))
            a, b = ref.step(actions), sharded.step(actions)
            np.testing.assert_array_equal(a.obs, b.obs)
            np.testing.assert_array_equal(a.reward, b.reward)
    assert not ray.is_initialized()  # the backend shuts down the connection it opened


def test_policy_holding_workers_on_two_nodes_sample_what_sync_samples(two_node_cluster):
    """runner.inference: workers across nodes: the actor travels through the object store to both nodes, and
    the merged iteration equals the sync backend's sampling in the same two shards."""
    import torch

    from agents.rollout import ChainActor, Rollout
    from flowpolicy.checkpoint import load_policy

    policy = load_policy("data/policies/hopper-flow-bc")[0]
    actor = ChainActor(policy, policy.make_sampler("flow_sde", K=4, a=0.5), 4)
    with VecEnv("Hopper-v5", 4, act_steps=4) as ref, \
            ShardedVecEnv("Hopper-v5", 4, 4, num_workers=2, transport="ray", ray_address=two_node_cluster.address,
                          worker_cpus=1) as sharded:
        ref.inference, ref.inference_shards, sharded.inference = "workers", sharded.bounds, "workers"
        assert len({info["node_id"] for info in sharded.worker_info()}) == 2
        runs = [list(Rollout(policy, envs).decisions(9, actor, 20)) for envs in (ref, sharded)]
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a.record["chain_xs"], b.record["chain_xs"], rtol=0, atol=0)
        np.testing.assert_array_equal(a.out.reward, b.out.reward)
