"""`ray job submit` onto a running cluster: `ray start --head` on 127.0.0.1, the smoke training job submitted
with a working dir and a runtime_env as the README shows, SUCCEEDED, its run directory complete, and its
training workers on that cluster (the driver connected to it rather than starting a Ray of its own).

This test starts and stops its own Ray, so it runs before the session's shared cluster exists
(`own_cluster`, ordered first by conftest.py): two Ray instances must not run on one machine at once.
"""
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from pipeline import checkpoint
from pipeline.cluster import local_cpus

from .conftest import ROOT, smoke_args

pytestmark = pytest.mark.own_cluster
RAY = str(Path(sys.executable).parent / "ray")
RUNTIME_ENV = {"excludes": [".venv", "runs", "data", ".git", ".pytest_cache", "**/__pycache__"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _wait_for_job(client, job_id: str, timeout: float = 420) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.get_job_status(job_id)
        if status.is_terminal():
            return str(status.value)
        time.sleep(1)
    return "TIMEOUT"


def test_train_job_submitted_to_a_running_cluster(smoke_data, tmp_path):
    import ray

    if ray.is_initialized():
        pytest.fail("the shared Ray cluster is already up; this test must run before it (conftest ordering)")
    # The cluster's processes, and so the job's `python`, come from this virtualenv, as on a node whose image
    # has the project installed.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    dashboard = _free_port()
    address = f"http://127.0.0.1:{dashboard}"
    started = _ray("start", "--head", "--node-ip-address=127.0.0.1", f"--port={_free_port()}",
                   "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                   f"--num-cpus={local_cpus()}", "--disable-usage-stats", env=env)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        job_id = f"smoke-{uuid.uuid4().hex[:8]}"
        args = smoke_args(smoke_data, tmp_path, "submitted")
        args[1] = "configs/smoke.yaml"  # relative to the uploaded working dir, as a user would write it
        submit = _ray("job", "submit", "--address", address, "--submission-id", job_id, "--no-wait",
                      "--working-dir", ".", "--runtime-env-json", json.dumps(RUNTIME_ENV),
                      "--", "python", "jobs/train.py", *args, env=env)
        assert submit.returncode == 0, submit.stdout + submit.stderr
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(address)
        status = _wait_for_job(client, job_id)
        logs = client.get_job_logs(job_id)
        assert status == "SUCCEEDED", logs[-4000:]

        run_dir = tmp_path / "submitted"
        assert f"run directory: {run_dir}" in logs and "checkpoint:" in logs
        assert json.loads((run_dir / "config.json").read_text())["run"]["name"] == "submitted"
        final = checkpoint.find_latest(run_dir, verify=True)
        assert final is not None and Path(final).name == "epoch_0002"
        assert [h["epoch"] for h in checkpoint.read_state(final)["history"]] == [0, 1, 2]
        assert (run_dir / "metrics.jsonl").read_text().strip()
        assert len((run_dir / "attempts.jsonl").read_text().splitlines()) == 1

        from ray.util.state import list_actors

        workers = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker")])
        assert len(workers) == 2  # the job's training workers ran on this cluster, not on a Ray of its own
    finally:
        _ray("stop", "--force", env=env)
