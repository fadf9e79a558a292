"""The embedded local Ray must not outlive its driver. `ray.init()` starts the GCS, the raylet and their agents
as the driver's children; a driver that exits cleanly stops them, but one killed outright (SIGKILL, the OOM
killer) leaves some running: the dashboard and runtime-env agents, reparented to init, stayed for minutes here.

`watch(pid)` starts this module as a process of its own session (so a signal to the driver's group does not
reach it), which every second notes the driver's descendants (pid and start time, from /proc) and, once the
driver is gone, stops the ones still there: SIGTERM, then SIGKILL. The start time guards against a pid reused
by an unrelated process. Linux only (elsewhere it does nothing).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

INTERVAL_S = 1.0


def watch(driver_pid: int | None = None) -> subprocess.Popen | None:
    """Start the watchdog of `driver_pid` (default: this process), before the processes it is to stop. None
    where /proc is not there. It runs this file alone (standard library only, no site packages), so it watches
    within milliseconds, not after the seconds an import of the package takes: a driver killed meanwhile is
    still seen to have died (its start time travels on the command line)."""
    pid = driver_pid or os.getpid()
    st = _stat(pid)
    if st is None:
        return None
    return subprocess.Popen([sys.executable, "-S", "-I", os.path.abspath(__file__), str(pid), str(st[1])],
                            start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, close_fds=True)


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[1]), int(fields[19])  # after the name: state, ppid, ... starttime is the 22nd field
    except (OSError, IndexError, ValueError):
        return None


def descendants(root: int) -> dict[int, int]:
    """pid -> start time of every live process below `root`."""
    children: dict[int, list[int]] = {}
    started: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                children.setdefault(st[0], []).append(int(name))
                started[int(name)] = st[1]
    out, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid in started and pid not in out:
            out[pid] = started[pid]
            todo += children.get(pid, [])
    return out


def stop(seen: dict[int, int], grace_s: float = 2.0) -> list[int]:
    """SIGTERM the processes of `seen` that are still the same processes, SIGKILL what is left after
    `grace_s`. -> the pids signalled."""
    alive = lambda: [p for p, t in seen.items() if (_stat(p) or (0, None))[1] == t]  # noqa: E731
    hit = alive()
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 0.0)):
        for pid in alive():
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + wait
        while alive() and time.time() < deadline:
            time.sleep(0.1)
    return hit


def main(driver: int, started: int) -> None:
    seen: dict[int, int] = {}
    while (_stat(driver) or (0, None))[1] == started:
        seen.update(descendants(driver))
        seen.pop(os.getpid(), None)  # the watchdog is the driver's child too
        seen = {p: t for p, t in seen.items() if (_stat(p) or (0, None))[1] == t}  # forget the finished
        time.sleep(INTERVAL_S)
    stop(seen)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
