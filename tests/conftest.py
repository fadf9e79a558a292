import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
# A raylet starts one idle Python worker per logical CPU when its first driver connects; the tests give Ray more
# logical CPUs than the machine has cores, and most of those workers are never leased before they are killed
# as idle. Without them: 5 s and 5 core-s less per cluster start (docs/benchmarks.md, 2026-12-07).
os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
# A raylet keeps at most one idle worker per logical CPU and kills the rest; a run's next tasks then start new
# processes (about a core-second each on this machine). The tests' runs are short and many, so each would pay
# that again and again; a job's idle workers still end with the job. Measured on the Ray tests alone:
# docs/benchmarks.md, "The worker soft limit".
os.environ.setdefault("RAY_num_workers_soft_limit", "200")

# Tests only ever talk to the moto S3 server they start; fixed fake credentials keep real ones out of reach
# and give the "never logged or written" checks a string to look for.
os.environ["AWS_ACCESS_KEY_ID"] = "testing-access-key-id"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing-secret-access-key-never-logged"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ.pop("AWS_SESSION_TOKEN", None)
os.environ.pop("AWS_PROFILE", None)
# W&B never leaves the machine in tests: offline runs only, whatever login this machine has.
os.environ["WANDB_MODE"] = "offline"
os.environ.pop("WANDB_API_KEY", None)


def pytest_itemcollected(item):
    """Tests that use a Ray cluster (the session's shared one, `ray_head`, directly or through `ray_cluster`; or
    one of their own) are marked `ray`: `make test` runs them in one process (one Ray at a time on the machine)
    and every other test in a second process beside it, in the CPU time the Ray tests leave idle while Ray
    starts actors and passes reports."""
    if "ray_head" in item.fixturenames or item.get_closest_marker("own_cluster"):
        item.add_marker(pytest.mark.ray)
