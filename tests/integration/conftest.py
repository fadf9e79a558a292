"""One local Ray per test session, shared by every integration test (a start costs ~10 s)."""
import contextlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.data.formats.synthetic import write_dataset
from tests import faults

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv's commands (mlflow, tensorboard)


def pytest_collection_modifyitems(items):
    """Tests marked `own_cluster` start and stop a Ray cluster of their own: they run first, before the shared
    one below starts, because two Ray instances must not run on one machine at once."""
    items.sort(key=lambda item: item.get_closest_marker("own_cluster") is None)


@dataclass(frozen=True)
class RayHead:
    address: str  # the GCS, host:port: what --address and ray.init take
    dashboard: str  # http://host:port: what `ray job submit` and the state API take


@pytest.fixture(scope="session")
def ray_head():
    """One local Ray for the session, started as a user starts a cluster's head (`ray start --head` on
    127.0.0.1, with its dashboard); this process joins it as a driver. Its processes, and the `python` of a job
    submitted to it, come from this virtualenv, as on a node whose image has the project installed."""
    import ray

    from pipeline.cluster import local_cpus

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    port, dashboard = free_port(), free_port()

    def ray_cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "ray"), *args], env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=120)

    started = ray_cli("start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                      "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                      f"--num-cpus={local_cpus()}", "--disable-usage-stats")
    session = None
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        session = ray.init(address=f"127.0.0.1:{port}", log_to_driver=False).address_info["session_dir"]
        yield RayHead(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}")
    finally:
        ray.shutdown()
        if session:
            kill_session(session, port)
        ray_cli("stop", "--force")  # with nothing left alive, at once: it only resets the cluster's address


def kill_session(session_dir: str, port: int) -> None:
    """SIGKILL every process of one local Ray: those whose command line names its session folder (the GCS, the
    raylet, the dashboard, the monitors) or, as Ray's client server does, its GCS port, and all below them
    (workers, agents, the dashboard's modules). `ray stop --force` kills the same and then waits on each of
    its three groups of processes in turn: about 6 s at the end of every test run."""
    import signal

    import psutil

    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if session_dir in " ".join(cmd) or ("ray.util.client.server" in cmd and any(
                a.startswith("--address=") and a.endswith(f":{port}") for a in cmd)):
            with contextlib.suppress(psutil.Error):
                found.update({c.pid: c for c in [p, *p.children(recursive=True)]})
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def ray_cluster(ray_head) -> str:
    """The session's Ray (`ray_head`): its address, for --address."""
    return ray_head.address


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory):
    """Tiny synthetic train/val splits, plus a shard with one sample per known fault and a truncated shard."""
    out = tmp_path_factory.mktemp("smoke_data")
    write_dataset(out, 256, 64, seed=1)
    members, _, _ = faults.fault_members()
    faults.write_tar(out / "train" / "faults.tar", members)
    good = [(f"t{i:03d}.{ext}", data) for i in range(12)
            for ext, data in (("jpg", faults.encode(faults.good_image(i))), ("txt", b"a blue square"))]
    faults.truncate(faults.write_tar(out / "train" / "truncated.tar", good), 0.5)
    return out


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 endpoint: moto's server on 127.0.0.1, credentials from tests/conftest.py's environment."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def service(args: list[str], url: str, log: Path, timeout: float = 60, env: dict | None = None):
    """A server process (MLflow's, TensorBoard's) on 127.0.0.1, up once `url` answers; stopped after. `env`:
    variables set for it on top of this process's."""
    import time
    import urllib.request

    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
    try:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"{args[0]} never answered on {url}:\n{log.read_text()[-2000:]}")
                time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on 127.0.0.1 (SQLite behind it, artifacts served through it). -> its URI.
    Without MLflow's job runner (huey consumers polling a queue the tests never use: about 30 core-s of a test
    session, docs/benchmarks.md)."""
    folder = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    with service([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                  "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                  "--artifacts-destination", str(folder / "artifacts")],
                 f"{uri}/health", folder / "server.log", env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}):
        yield uri


# Lines of Ray's own (its loggers, raylets, workers), FAISS's loader, warnings and tracebacks: none may reach the
# console of a driver the project started (they go to its log file).
RAY_CHATTER = re.compile(r"\b(INFO|WARNING)\b.*\.py:\d+ --|\((raylet|RayTrainWorker|TrainController|MapWorker|"
                         r"SplitCoordinator|DatasetManager)\b|core_worker\.cc|Traceback|swigfaiss|"
                         r"Reporting training result|DeprecationWarning|UserWarning")


def smoke_args(data: Path, storage: Path, name: str, *extra: str) -> list[str]:
    return ["--config", str(ROOT / "configs" / "smoke.yaml"), "--set", f"data.train={data}/train",
            "--set", f"data.val={data}/val", "--set", f"run.storage_path={storage}", "--set", f"run.name={name}",
            "--set", "data.synth.enabled=false", *extra]
