"""Where a training worker's time goes, per epoch: the phases `train` reports beside its metrics and prints at
each epoch's end, so a slow run says which phase holds it back.

  epoch_start       from the epoch's start to its first batch (a worker's Ray Data pipeline starting)
  data_wait         waiting for every later batch
  forward_backward  towers forward, loss, backward (with the all-gather's backward reduce-scatter, and DDP's
                    gradient all-reduce, which overlaps it)
  all_gather        the forward all-gather of both towers' embeddings
  optimizer         gradient clipping, the optimiser and scheduler steps
  validation        validating (rank 0; the other ranks wait for it in their next collective, shown as
                    `other`)
  checkpoint        gathering cursors and writing a checkpoint
  other             the rest: logging collectives, waiting for slower ranks

Plain Python and torch: no Ray. On a GPU the compute phases are timed on the steps that log (one in
`train.log_every`), after a synchronize, and scaled to the epoch's steps; elsewhere every step is timed.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager

PHASES = ("epoch_start", "data_wait", "forward_backward", "all_gather", "optimizer", "validation", "checkpoint",
          "other")
STEP_PHASES = ("forward_backward", "all_gather", "optimizer")
LABELS = {"epoch_start": "epoch start", "data_wait": "data wait", "forward_backward": "forward/backward",
          "all_gather": "all-gather", "optimizer": "optimiser", "validation": "validation",
          "checkpoint": "checkpoint", "other": "other"}


class PhaseClock:
    """Seconds per phase since `start()`; `sync()` (e.g. torch.cuda.synchronize) is called at phase edges;
    `marks`: the launch's start milestones (`mark_start`), which `milestone` adds to, or None."""

    def __init__(self, sync=None, marks: dict[str, float] | None = None):
        self.sync = sync or (lambda: None)
        self.marks = marks
        self.start()

    def milestone(self, name: str) -> None:
        if self.marks is not None:
            mark_start(name, self.marks)

    def start(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.t0 = time.perf_counter()
        self.steps = self.timed_steps = 0

    def count_step(self, timed: bool) -> None:
        self.steps += 1
        self.timed_steps += int(timed)

    @contextmanager
    def __call__(self, phase: str, timed: bool = True):
        if not timed:
            yield
            return
        self.sync()
        t = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.seconds[phase] += time.perf_counter() - t

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] += seconds

    def wall(self) -> float:
        return time.perf_counter() - self.t0

    def breakdown(self) -> dict[str, float]:
        """{phase: seconds} over the wall time since start(), `other` being what no phase took; the step's
        phases, where only some steps were timed, scaled up to all of them."""
        scale = self.steps / self.timed_steps if self.timed_steps else 1.0
        out = {p: s * (scale if p in STEP_PHASES else 1.0) for p, s in self.seconds.items() if p != "other"}
        out["forward_backward"] = max(0.0, out["forward_backward"] - out["all_gather"])  # timed inside it
        out["other"] = max(0.0, self.wall() - sum(out.values()))
        return out


def phase_metrics(seconds: dict[str, float]) -> dict[str, float]:
    """-> {'time/epoch_s': wall, 'time/<phase>_s': seconds, 'time/<phase>_share': fraction of the wall}."""
    wall = sum(seconds.values())
    out = {"time/epoch_s": wall}
    for p in PHASES:
        out[f"time/{p}_s"] = seconds.get(p, 0.0)
        out[f"time/{p}_share"] = seconds.get(p, 0.0) / wall if wall else 0.0
    return out


def describe_phases(metrics: dict) -> str:
    """'41.2 s: forward/backward 70%, data wait 12%, ...' (largest first, phases under 0.5% left out)."""
    parts = sorted(((metrics.get(f"time/{p}_share", 0.0), p) for p in PHASES), reverse=True)
    shown = [f"{LABELS[p]} {100 * share:.0f}%" for share, p in parts if share >= 0.005]
    start = metrics.get("time/epoch_start_s", 0.0)
    return f"{metrics.get('time/epoch_s', 0.0):.1f} s: " + ", ".join(shown) + f" (first batch after {start:.1f} s)"


# ------------------------------------------------------------------------------------------ a launch's start
# Wall-clock milestones from the command's start to its first training step, in the order they happen: the
# driver's (Ray up, the data planned, the trainer started) travel to the workers in the loop's config, rank 0
# adds its own and prints them once its first step is done, so a slow start says which part was slow.
START_PARTS = (("ray", "Ray start"), ("data", "data planning (counts, vocabulary)"), ("fit", "driver setup"),
               ("worker", "worker group"), ("model", "model"), ("untrained", "untrained validation"),
               ("batch", "first block"), ("step", "step"))
_MARKS: dict[str, float] = {}
_IMPORTED = time.time()  # process_start's answer where /proc cannot say


def process_start() -> float:
    """When this process started (epoch seconds): Linux's /proc, else when this module was first imported."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, after the command name
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED


def mark_start(name: str, marks: dict[str, float] | None = None) -> dict[str, float]:
    """Record milestone `name` now (once: a later call keeps the first time) in `marks`, or in this process's
    own record. -> the record."""
    marks = _MARKS if marks is None else marks
    if name not in marks:  # called on every step by `PhaseClock.milestone`: nothing but a lookup once set
        if "process" not in marks:
            marks["process"] = process_start()
        marks[name] = time.time()
    return marks


def start_marks() -> dict[str, float]:
    """This process's milestones so far (a copy: the driver's half, for the workers)."""
    return dict(_MARKS)


def describe_start(marks: dict[str, float]) -> str:
    """'first step after 12.3 s: Ray start 3.1 s, data planning ... 1.0 s, ...' from the process's start (parts
    whose milestone was not recorded, such as Ray's start on a cluster already connected, are left out)."""
    t0 = marks.get("process", min(marks.values()))
    last, parts = t0, []
    for key, label in START_PARTS:
        if key in marks:
            parts.append(f"{label} {max(0.0, marks[key] - last):.1f} s")
            last = max(last, marks[key])
    return f"first step after {last - t0:.1f} s: " + ", ".join(parts)
