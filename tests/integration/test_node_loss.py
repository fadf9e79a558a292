"""A worker node lost mid-epoch on a multi-node cluster (several raylets on this machine): the workers restart
from the last checkpoint on a node that joins afterwards, nothing the loop needs went down with the node (the
decoded-image cache lives on the driver's node, is restarted when its process dies, and a restarted one is an
empty cache), and the run finishes with every epoch recorded once.

Starts and stops its own cluster, so it runs before the session's shared one (`own_cluster`)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from .conftest import ROOT, smoke_args

pytestmark = pytest.mark.own_cluster
EPOCHS = 3


def test_a_lost_worker_node_is_replaced_and_the_run_finishes(smoke_data, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        pytest.fail("the shared Ray cluster is already up; this test must run before it (conftest ordering)")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # The head holds no CPU: training workers and data tasks must go to the worker nodes; the driver, Train's
    # controller and the decoded-image cache stay on the head.
    # Ray's defaults take ~15 s to declare a silent node dead (5 missed health checks, 3 s apart); meanwhile the
    # restarted workers' object pulls try the dead node first and wait out a 10 s pull timeout. A faster check
    # gives the same recovery path in less time.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": {
        "health_check_period_ms": 500, "health_check_failure_threshold": 3, "health_check_timeout_ms": 1000}})
    first = cluster.add_node(num_cpus=6)
    try:
        cluster.wait_for_nodes()
        args = smoke_args(smoke_data, tmp_path, "nodes", "--set", f"train.epochs={EPOCHS}",
                          "--set", "train.batch_size=8", "--set", "run.max_failures=1",
                          "--set", f"run.keep_checkpoints={EPOCHS}")
        log = tmp_path / "driver.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "pipeline", "train", *args, "--address", cluster.address],
                                    cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        ckpt = tmp_path / "nodes" / "checkpoints" / "epoch_0001" / "state.json"
        deadline = time.time() + 300
        while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert ckpt.exists(), log.read_text()[-3000:]
        # The cache's process dies too (the run's one actor of its own; a skip counter that Ray never restarted
        # used to end runs so).
        caches = subprocess.run(["pgrep", "-f", "ray::DecodedCache"], capture_output=True, text=True).stdout.split()
        assert caches, "no decoded-image cache process found"
        for pid in caches:
            os.kill(int(pid), signal.SIGKILL)
        # The node with the workers goes at once (epochs take about a second here: a later kill could land after
        # the last one); the replacement joins afterwards, while the restart waits for room.
        cluster.remove_node(first, allow_graceful=False)
        cluster.add_node(num_cpus=6)
        assert proc.wait(timeout=420) == 0, log.read_text()[-3000:]
    finally:
        cluster.shutdown()
    run_dir = tmp_path / "nodes"
    attempts = [json.loads(line) for line in (run_dir / "attempts.jsonl").read_text().splitlines()]
    assert len(attempts) == 2 and attempts[1]["resumed_from"].endswith(("epoch_0001", "epoch_0002"))
    final = json.loads((run_dir / "checkpoints" / f"epoch_{EPOCHS:04d}" / "state.json").read_text())
    assert [h["epoch"] for h in final["history"]] == list(range(EPOCHS + 1))  # every epoch once
    assert "recovered from 1 worker failure" in log.read_text()
