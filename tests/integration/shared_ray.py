"""The session's one local Ray, shared by the pytest processes that `make test` runs side by side: the first to
need it starts it (`ray start --head`, as a user starts a cluster's head), the others join it, and the last to
leave stops it. They meet in a folder named by $PIPELINE_TEST_RAY_DIR (a folder of this process's own when it is
unset: one pytest process, one cluster), under a lock, with a count of the processes using the cluster."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class RayHead:
    address: str  # the GCS, host:port: what --address and ray.init take
    dashboard: str  # http://host:port: what `ray job submit` and the state API take
    session_dir: str  # Ray's session folder: every process of this cluster names it or descends from one that does


@contextlib.contextmanager
def _locked(folder: Path):
    with open(folder / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _users(folder: Path, change: int) -> int:
    path = folder / "users"
    n = int(path.read_text()) if path.exists() else 0
    path.write_text(str(n + change))
    return n + change


def join(folder: Path, start) -> RayHead:
    """The shared cluster, started with `start()` (-> RayHead) if no process runs one; counts this process in."""
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder):
        state = folder / "head.json"
        head = RayHead(**json.loads(state.read_text())) if state.exists() else None
        if head is None:
            head = start()
            state.write_text(json.dumps(asdict(head)))
        _users(folder, +1)
        return head


def leave(folder: Path, head: RayHead, stop) -> None:
    """Counts this process out; the last one out stops the cluster with `stop(head)`."""
    with _locked(folder):
        if _users(folder, -1) == 0:
            (folder / "head.json").unlink(missing_ok=True)
            stop(head)


def kill_session(head: RayHead) -> int:
    """SIGKILL every process of one Ray session: those whose command line names its folder (the GCS, the raylet,
    the dashboard, the monitors) or, as Ray's client server does, its GCS address, and everything below them
    (workers, agents, the dashboard's modules). -> how many. `ray stop` kills the same, but then polls each group
    of them in turn, about 6 s on this machine (run after this, it finds none alive and resets the address)."""
    import psutil

    port = head.address.rsplit(":", 1)[1]
    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if head.session_dir in " ".join(cmd) or ("ray.util.client.server" in cmd and any(
                a.startswith("--address=") and a.endswith(f":{port}") for a in cmd)):
            with contextlib.suppress(psutil.Error):
                found.update({c.pid: c for c in [p, *p.children(recursive=True)]})
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(found)


def ray_cli(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`ray ARGS` from the venv, with the venv's commands first on PATH (the cluster's `python` is the venv's)."""
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([str(bin_dir / "ray"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120)
