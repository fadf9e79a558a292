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

import time
from contextlib import contextmanager

from pipeline.console import mark_start

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
