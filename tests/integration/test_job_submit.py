"""`ray job submit` onto a running cluster (the session's, `ray start --head` on 127.0.0.1: conftest.py's
`ray_head`): the smoke training job submitted with a working dir and a runtime_env as the README shows,
SUCCEEDED, its run directory complete, and its training workers on that cluster (the driver connected to it
rather than starting a Ray of its own)."""
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

from pipeline import checkpoint

from .conftest import BIN, ROOT, smoke_args

RUNTIME_ENV = {"excludes": [".venv", "runs", "data", ".git", ".pytest_cache", "**/__pycache__"]}


def _wait_for_job(client, job_id: str, timeout: float = 420) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.get_job_status(job_id)
        if status.is_terminal():
            return str(status.value)
        time.sleep(1)
    return "TIMEOUT"


def test_train_job_submitted_to_a_running_cluster(ray_head, smoke_data, tmp_path):
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_actors

    job_id = f"smoke-{uuid.uuid4().hex[:8]}"
    args = smoke_args(smoke_data, tmp_path, "submitted")
    args[1] = "configs/smoke.yaml"  # relative to the uploaded working dir, as a user would write it
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    submit = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", ray_head.dashboard,
                             "--submission-id", job_id, "--no-wait", "--working-dir", ".",
                             "--runtime-env-json", json.dumps(RUNTIME_ENV), "--", "python", "jobs/train.py", *args],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    client = JobSubmissionClient(ray_head.dashboard)
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
    # The job's training workers ran on this cluster, not on a Ray of its own: two, under the job's driver.
    driver = client.get_job_info(job_id).driver_info
    assert driver is not None, "the job never connected a driver to the cluster"
    workers = list_actors(address=ray_head.dashboard,
                          filters=[("class_name", "=", "RayTrainWorker"), ("job_id", "=", driver.id)])
    assert len(workers) == 2, workers
