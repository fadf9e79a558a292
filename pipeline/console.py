"""What a run prints: the project's own lines, and one progress bar per phase on a terminal (one line per phase
otherwise). Ray's and FAISS's chatter -- worker and actor output, raylet warnings, Ray Data's progress logs,
the C++ core worker's messages -- goes to one log file per command, named in the closing summary; `--verbose`
(or PIPELINE_VERBOSE=1) leaves Ray's console as Ray has it.

Workers reach the driver's console through Ray's log forwarding: the driver keeps only lines that start with
one of the project's tags (`[train] ...`), draws the epoch bar from the step lines, and writes every line,
kept or not, to the log file.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
from pathlib import Path

TAGS = ("[train]", "[data]", "[tune]", "[run]", "[index]", "[eval]", "[cca]", "[embeddings]")
STEP = re.compile(r"^\[train\] epoch (\d+)/(\d+) step (\d+)/(\d+) loss (\S+) .*?(\d+) samples/s")
# A sweep's trial puts its id before each of its lines: "[a1b2c_00001] [train] epoch 1/2 ..."
PREFIXED = re.compile(r"^(\[[\w.-]+\] )(?=\[(?:" + "|".join(t[1:-1] for t in TAGS) + r")\])")
QUIET_STEP_EVERY_S = 60.0  # without a terminal, a step line at most this often (an epoch can last hours)

_STATE: dict = {"log": None, "path": None, "bar": None, "epoch": None, "last_step_line": 0.0, "prefix": "",
                "trial_step_lines": {}}


def say(line: str) -> None:
    """One progress line to the driver. Ray Train patches `print` into its logger, which echoes each line
    twice; writing to stdout directly echoes it once."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class _Prefixed:
    """A stream that puts `prefix` before every project line written to it (`prefix_lines`)."""

    def __init__(self, stream, prefix: str):
        self.stream, self.prefix, self.at_start = stream, prefix, True

    def write(self, text: str) -> int:
        out = []
        for piece in text.splitlines(keepends=True):
            out.append(self.prefix + piece if self.at_start and piece.startswith(TAGS) else piece)
            self.at_start = piece.endswith("\n")
        self.stream.write("".join(out))
        return len(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def prefix_lines(prefix: str) -> None:
    """From now on this process's project lines on stdout start with `prefix` (a sweep's trial: its id in
    brackets), so the lines of trials that run at once can be told apart on the sweep's console."""
    if prefix and not isinstance(sys.stdout, _Prefixed):
        sys.stdout = _Prefixed(sys.stdout, prefix)
    _STATE["prefix"] = prefix


def line_prefix() -> str:
    """What `prefix_lines` set in this process ('' outside a sweep's trial), for the processes it starts."""
    return _STATE["prefix"]


def verbose() -> bool:
    return os.environ.get("PIPELINE_VERBOSE", "") not in ("", "0")


def is_terminal() -> bool:
    return sys.stdout.isatty()


def log_path() -> str | None:
    """The log file holding what Ray and FAISS printed, once `quiet_ray` ran."""
    return _STATE["path"]


def quiet_ray(command: str) -> None:
    """Before ray.init: send the process's native stderr (fd 2: Ray's C++ core worker, and the Python loggers
    Ray bound to it at import) into a log file, and give Python a fresh sys.stderr on the terminal, so the
    project's own errors and progress bars still show."""
    if verbose() or _STATE["log"] is not None:
        return
    folder = Path(tempfile.gettempdir()) / "pipeline-logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    log = open(path, "a", buffering=1)
    sys.stderr.flush()
    terminal = os.dup(2)
    os.dup2(log.fileno(), 2)
    sys.stderr = os.fdopen(terminal, "w", buffering=1)
    _STATE.update(log=log, path=str(path))


def filter_worker_output() -> None:
    """After ray.init: replace Ray's printer of forwarded worker output with the project's filter."""
    if verbose() or _STATE["log"] is None:
        return
    try:
        from ray._private import worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:  # another Ray layout: keep Ray's own printing rather than lose the project's lines
        return
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("pipeline_console", _on_worker_output)
    # The raylet's notices (worker start-up counts and the like) reach the driver through another thread that
    # calls this module-level printer by name.
    worker.print_to_stdstream = lambda data, ignore_prefix=False: _on_worker_output(data)


def redirect_ray_loggers() -> None:
    """Ray's Python loggers on the driver (Ray Data's progress logs, Train's and Tune's notices) into the log
    file: their console handlers are pointed at it. Called once Ray and Ray Data are initialised
    (cluster.connect)."""
    if _STATE["log"] is None:
        return
    import logging

    terminal = {sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__}
    names = [n for n in logging.root.manager.loggerDict if n == "ray" or n.startswith("ray.")]
    for logger in [logging.getLogger(n) for n in names]:
        for h in logger.handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) \
                    and getattr(h, "stream", None) in terminal:
                h.setStream(_STATE["log"])


def _on_worker_output(data: dict) -> None:
    who = data.get("actor_name") or data.get("task_name") or f"pid={data.get('pid')}"
    for line in data.get("lines", []):
        _STATE["log"].write(f"({who}) {line}\n")
        if line.startswith(TAGS) or PREFIXED.match(line):
            show(line)


def show(line: str) -> None:
    """A project line on the console: a step line moves the epoch bar (on a terminal) or is printed at most
    once a minute (otherwise); any other line closes the bar and is printed. A trial's step lines (sweeps run
    several at once, and one bar cannot show them) are printed at most once a minute per trial, and at each
    epoch's last step."""
    prefixed = PREFIXED.match(line)
    if prefixed:
        return _show_trial_line(prefixed.group(1), line)
    m = STEP.match(line)
    if m is None:
        _close_bar()
        say(line)
        return
    epoch, epochs, step, steps, loss, rate = m.groups()
    if not is_terminal():
        now = time.monotonic()
        if now - _STATE["last_step_line"] >= QUIET_STEP_EVERY_S or step == steps:
            _STATE["last_step_line"] = now
            say(line)
        return
    from tqdm import tqdm

    if _STATE["epoch"] != epoch:
        _close_bar()
        _STATE["bar"] = tqdm(total=int(steps), desc=f"epoch {epoch}/{epochs}", unit="step", file=sys.stdout,
                             leave=True, ncols=_width())
        _STATE["epoch"] = epoch
    bar = _STATE["bar"]
    bar.n = int(step)
    bar.set_postfix_str(f"loss {loss}, {rate} samples/s", refresh=True)


def _show_trial_line(prefix: str, line: str) -> None:
    m = STEP.match(line[len(prefix):])
    if m is not None:
        now, last = time.monotonic(), _STATE["trial_step_lines"].get(prefix, -QUIET_STEP_EVERY_S)
        if now - last < QUIET_STEP_EVERY_S and m.group(3) != m.group(4):
            return
        _STATE["trial_step_lines"][prefix] = now
    _close_bar()
    say(line)


def _width() -> int:
    """The terminal's width; a pseudo-terminal that reports 0 columns (some CI runners) gets 100."""
    import shutil

    cols = shutil.get_terminal_size((100, 24)).columns
    return cols if cols >= 40 else 100


def _close_bar() -> None:
    if _STATE["bar"] is not None:
        _STATE["bar"].close()
        _STATE["bar"], _STATE["epoch"] = None, None


@contextlib.contextmanager
def phase(name: str, total: int | None = None, unit: str = "it"):
    """A driver-side phase (vocabulary pass, embedding, index build, evaluation): a bar on a terminal, one line
    when it ends otherwise. Yields a callable advancing the bar by n."""
    _close_bar()
    t0 = time.perf_counter()
    bar = None
    if is_terminal():
        from tqdm import tqdm

        fmt = None if total else "{desc}: {elapsed}"  # no count to show: a running clock
        bar = tqdm(total=total, desc=name, unit=unit, file=sys.stdout, leave=True, ncols=_width(), bar_format=fmt)
    try:
        yield (bar.update if bar is not None else (lambda n=1: None))
    finally:
        if bar is not None:
            bar.close()
        else:
            say(f"[run] {name}: done in {time.perf_counter() - t0:.1f} s")


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
