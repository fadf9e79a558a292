"""`pipeline train` as a driver process of its own on a running cluster, and its Ray Train workers: what the
tests that kill a driver or a worker mid-run share."""
import subprocess
import sys
import time

from .conftest import ROOT


def train(args: list[str], address: str, log, verbose: bool = True, command: str = "train", cwd=ROOT
          ) -> subprocess.Popen:
    """`pipeline train` (or `command`) as its own driver process on the cluster at `address`, output to `log`.
    --verbose keeps Ray's '(RayTrainWorker pid=N)' prefixes; without it the console is what a user sees."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "pipeline", command, *args, "--address", address,
                                 *(["--verbose"] if verbose else [])],
                                cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def train_workers() -> dict[int, str]:
    """pid -> actor id of the live Ray Train workers, from Ray's state API."""
    from ray.util.state import list_actors

    actors = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return {a.pid: a.actor_id for a in actors}


def wait_for_workers(n: int, proc, log, timeout: float = 120) -> set[int]:
    """Wait until `n` Ray Train workers are alive (those of `proc`, the only run yet). -> their pids."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        pids = set(train_workers())
        if len(pids) >= n:
            return pids
        time.sleep(0.2)
    raise AssertionError(f"{n} training workers never started (driver exit code {proc.poll()}):\n"
                         f"{log.read_text()[-3000:]}")
