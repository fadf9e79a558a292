"""Whether training workers can ever be placed on a cluster: checked before fit(), which would otherwise wait
for them forever; and Ray Train's controller settings on a one-node cluster."""
import os

import pytest

from pipeline.cluster import fits


@pytest.mark.parametrize("nodes, n, cpus, gpus, ok", [
    ([{"CPU": 8}], 2, 1, 0, True),
    ([{"CPU": 8}], 2, 4, 0, True),
    ([{"CPU": 8}], 2, 5, 0, False),  # 10 CPUs asked of 8
    ([{"CPU": 4}, {"CPU": 4}], 2, 4, 0, True),  # one worker per node
    ([{"CPU": 4}, {"CPU": 4}], 1, 6, 0, False),  # 8 in all, but no node holds 6
    ([{"CPU": 8}], 1, 1, 1, False),  # a GPU asked of a CPU-only cluster
    ([{"CPU": 16, "GPU": 8}, {"CPU": 2}], 8, 1, 1, True),
    ([{"CPU": 16, "GPU": 4}, {"CPU": 16, "GPU": 4}], 8, 2, 1, True),
    ([{"CPU": 16, "GPU": 4}, {"CPU": 16, "GPU": 4}], 9, 1, 1, False),
])
def test_fits(nodes, n, cpus, gpus, ok):
    assert fits(nodes, n, cpus, gpus) is ok


def test_one_node_clusters_poll_train_workers_quickly_and_larger_ones_keep_rays_defaults(monkeypatch):
    from pipeline.cluster import ONE_NODE_TRAIN_ENV, settle_one_node_train_env

    for key in ONE_NODE_TRAIN_ENV:
        monkeypatch.delenv(key, raising=False)
    settle_one_node_train_env(nodes=3)
    assert not any(key in os.environ for key in ONE_NODE_TRAIN_ENV)
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "3")  # the user's own value wins
    settle_one_node_train_env(nodes=1)
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "3"
    assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
