"""The embedded Ray must not outlive a driver killed outright: the watchdog notes the driver's descendants while
it lives (children and grandchildren, as the raylet's agents are) and stops them once it is gone; it does not
stop itself first, nor a process that merely reuses a pid. A stand-in process tree, no Ray."""
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline import ray_watchdog

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="the watchdog reads /proc")

DRIVER = """
import subprocess, sys, time
from pipeline.ray_watchdog import watch
watch()
# a child that starts a grandchild of its own and keeps running: the raylet and its agents
child = subprocess.Popen([sys.executable, "-c",
    "import subprocess, sys, time; g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']);"
    " print(g.pid, flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
grandchild = int(child.stdout.readline())
print(child.pid, grandchild, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    st = ray_watchdog._stat(pid)
    if st is None:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_killed_drivers_children_and_grandchildren_are_stopped():
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True)
    child, grandchild = map(int, driver.stdout.readline().split())
    time.sleep(1.5)  # the watchdog has seen them
    watchdogs = [p for p in ray_watchdog.descendants(driver.pid) if p not in (child, grandchild)]
    assert watchdogs and all(_alive(p) for p in (child, grandchild))
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in (child, grandchild)):
        time.sleep(0.2)
    assert not _alive(child) and not _alive(grandchild)
    deadline = time.time() + 5
    while time.time() < deadline and any(_alive(p) for p in watchdogs):
        time.sleep(0.2)
    assert not any(_alive(p) for p in watchdogs), [open(f"/proc/{p}/cmdline").read() for p in watchdogs]


def test_a_pid_taken_by_another_process_is_left_alone():
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = ray_watchdog._stat(other.pid)[1]
        assert ray_watchdog.stop({other.pid: started + 1}) == []  # same pid, another start: not ours
        assert _alive(other.pid)
        assert ray_watchdog.stop({other.pid: started}, grace_s=0.5) == [other.pid]
        other.wait(5)
    finally:
        other.kill()
