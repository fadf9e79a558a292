"""CPU time of every process on the machine while a command runs, by what the process was doing: Ray's process
title (`ray::RayTrainWorker`, `ray::IDLE`, ...) or the program, and how many processes each title had. Where the
test suite's time goes is in `docs/benchmarks.md` ("The test suite under 12 minutes").

    .venv/bin/python bench/process_cpu.py -- .venv/bin/python -m pytest tests/integration -m ray -q

Every process is sampled from /proc every 0.25 s; each sample's CPU is charged to the title the process had
then, so a Ray worker's start (before it takes an actor or a task) counts as `ray-worker start` and `ray::IDLE`,
its actor's work under the actor's title. A process born and gone between two samples is missed (its CPU is in
the machine's total, printed beside the sum).
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import time

PROGRAMS = ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py", "runtime_env", "pytest",
            "-m pipeline", "jobs/train.py", "moto", "chromium", "img2dataset")


def title(cmd: str) -> str:
    if cmd.startswith("ray::"):
        return re.split(r"[ (]", cmd)[0]
    if "default_worker.py" in cmd:  # a Ray worker before it sets its title
        return "ray-worker start"
    return next((p for p in PROGRAMS if p in cmd), cmd[:50] or "?")


def busy_core_seconds() -> float:
    """Core-seconds the whole machine has spent busy since boot (/proc/stat: user, nice, system, irq, softirq),
    every process included."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


class Sampler:
    def __init__(self):
        self.last: dict[tuple[str, str], int] = {}  # (pid, start time) -> CPU ticks at the last sample
        self.cpu: collections.Counter = collections.Counter()
        self.procs: dict[str, set] = collections.defaultdict(set)
        self.first = True

    def sample(self) -> None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                cmd = open(f"/proc/{pid}/cmdline").read().replace("\0", " ").strip()
            except OSError:
                continue
            key, ticks = (pid, stat[19]), int(stat[11]) + int(stat[12])
            # processes alive before the command started count from the first sample on
            before = self.last.get(key, ticks if self.first else 0)
            name = title(cmd)
            self.cpu[name] += (ticks - before) / os.sysconf("SC_CLK_TCK")
            self.procs[name].add(key)
            self.last[key] = ticks
        self.first = False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the command to run after --")
    sampler, t0, m0 = Sampler(), time.time(), busy_core_seconds()
    sampler.sample()
    proc = subprocess.Popen(command)
    while proc.poll() is None:
        time.sleep(0.25)
        sampler.sample()
    sampler.sample()
    wall, machine = time.time() - t0, busy_core_seconds() - m0
    total = sum(sampler.cpu.values())
    print(f"\n{wall:.0f} s wall; {machine:.0f} core-s on the machine ({100 * machine / wall / os.cpu_count():.0f}% of "
          f"{os.cpu_count()} cores), {total:.0f} core-s seen in processes; command exit {proc.returncode}")
    print(f"{'core-s':>8} {'share':>6} {'procs':>6}  title")
    for name, cpu in sampler.cpu.most_common(args.top):
        print(f"{cpu:8.1f} {100 * cpu / max(total, 1e-9):5.1f}% {len(sampler.procs[name]):6d}  {name}")
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
