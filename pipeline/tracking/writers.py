"""One writer per tracker, opened by rank 0 from the run's `plan.TrackingPlan`. Each first reads back from its
tracker the last step it holds of every metric (TensorBoard's event files, the MLflow run's histories, W&B's
run files), and `Trackers.log` passes on only what lies beyond it: after a resume from a checkpoint at step
100, steps 101..k that the dead attempt had already logged are not logged again, so the curve stays one line
with no repeated step, whichever tracker shows it.

A tracker that fails while training (a server gone away) is said once and dropped; training goes on, and
metrics.jsonl keeps every record."""
from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from pipeline import storage
from pipeline.console import say
from pipeline.tracking.plan import TrackingPlan, mlflow_client

FLUSH_S = 5  # TensorBoard's event files are flushed this often: a live curve, and little lost to a kill
UPLOAD_S = 30.0  # an s3:// run's event files are copied up at most this often (and at every flush_now)
HEADLINE = ("loss.name", "loss.temperature", "train.lr", "train.batch_size", "train.epochs", "model.embed_dim",
            "model.image.arch", "model.text.arch", "scaling.num_workers")


def numeric(record: dict) -> dict[str, float]:
    """The record's metrics a tracker can plot: finite numbers, `step` (the x axis) left out."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class TensorBoardWriter:
    """Scalars in <run>/tensorboard (`tensorboard --logdir runs` shows every run; a sweep's trials under it). An
    s3:// run writes locally and copies the event files up (`flush_now`, and every UPLOAD_S)."""
    name = "tensorboard"
    key = staticmethod(str)  # the metric's name in this tracker

    def __init__(self, plan: TrackingPlan):
        from torch.utils.tensorboard import SummaryWriter

        self.remote = plan.tensorboard_dir if storage.is_remote(plan.run_dir) else None
        self.local = Path(tempfile.mkdtemp(prefix="pipeline-tb-")) if self.remote else Path(plan.tensorboard_dir)
        self.local.mkdir(parents=True, exist_ok=True)
        if self.remote:
            _download_events(self.remote, self.local)
        self.steps = event_steps(self.local)
        # A file of this launch's own beside the earlier launches'. TensorBoard reads a folder's files in name
        # order, and names them by the second: the nanoseconds after it keep two launches of one second in order.
        suffix = f".{time.time_ns()}.{os.getpid()}"
        self.writer = SummaryWriter(str(self.local), flush_secs=FLUSH_S, filename_suffix=suffix)
        self.uploaded = time.monotonic()
        if plan.fresh and plan.hparams:
            self._hparams(plan)

    def _hparams(self, plan: TrackingPlan) -> None:
        """The config in TensorBoard's HParams view, in this run's own folder (SummaryWriter.add_hparams would
        open a folder of its own): a sweep's trials side by side, one row each."""
        from torch.utils.tensorboard.summary import hparams

        chosen = {k: plan.hparams[k] for k in (*HEADLINE, *plan.highlight) if k in plan.hparams}
        for summary in hparams(chosen, {"val/rsum": 0.0}):
            self.writer.file_writer.add_summary(summary)

    def write(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
        if self.remote and time.monotonic() - self.uploaded >= UPLOAD_S:
            self.flush_now()

    def flush_now(self) -> None:
        self.writer.flush()
        if self.remote:
            for path in self.local.glob("events.out.tfevents.*"):
                storage.write_bytes(storage.join(self.remote, path.name), path.read_bytes())
            self.uploaded = time.monotonic()

    def close(self) -> None:
        self.flush_now()
        self.writer.close()
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)


class MlflowWriter:
    """Metrics on the MLflow run the driver made (`plan.start`), keyed by step, with the wall-clock time."""
    name = "mlflow"

    @staticmethod
    def key(name: str) -> str:
        """MLflow's metric names take no '@': val/i2t_R@1 is val/i2t_R_at_1 there."""
        return re.sub(r"[^\w\-. :/]", "_", name.replace("@", "_at_"))

    def __init__(self, plan: TrackingPlan):
        self.client, self.run_id = mlflow_client(plan.mlflow_uri), plan.mlflow_run_id
        self.steps = {}
        for key in self.client.get_run(self.run_id).data.metrics:
            history = self.client.get_metric_history(self.run_id, key)
            self.steps[key] = max((m.step for m in history), default=-1)

    def write(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ms = int(time.time() * 1000)
        items = [Metric(k, v, ms, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):  # MLflow takes at most 1000 metrics a call
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def flush_now(self) -> None:
        pass

    def close(self) -> None:
        pass


class WandbWriter:
    """A W&B run with the plan's id, resumed when it exists. Offline unless this machine is logged in
    (WANDB_MODE and WANDB_API_KEY are W&B's own and respected); `wandb sync <run>/wandb/offline-run-*`
    uploads it later."""
    name = "wandb"
    key = staticmethod(str)

    def __init__(self, plan: TrackingPlan):
        import wandb

        from pipeline.tracking.wandb_files import offline_steps

        folder = plan.wandb_dir
        Path(folder).mkdir(parents=True, exist_ok=True)
        earlier = offline_steps(Path(folder) / "wandb", plan.wandb_id)  # before this attempt's file exists
        mode = os.environ.get("WANDB_MODE") or ("online" if _logged_in() else "offline")
        self.run = wandb.init(id=plan.wandb_id, resume="allow", project=plan.experiment, name=plan.name,
                              group=plan.wandb_group or None, dir=folder, mode=mode, config=plan.hparams,
                              settings=wandb.Settings(console="off", silent=True, x_disable_stats=True))
        floor = max(0, self.run.starting_step - 1)  # a resumed online run: W&B's server knows its last step
        self.steps = {k: max(v, floor) for k, v in earlier.items()} | ({"*": floor} if floor else {})

    def write(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def flush_now(self) -> None:
        pass

    def close(self) -> None:
        self.run.finish()


def _logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="replace")


WRITERS = {"tensorboard": TensorBoardWriter, "mlflow": MlflowWriter, "wandb": WandbWriter}


class Trackers:
    """Every tracker the plan asks for, on rank 0 (`open` -> None elsewhere, or with no plan)."""

    def __init__(self, writers: list):
        self.writers = writers

    @classmethod
    def open(cls, plan: TrackingPlan | None, is_main: bool) -> "Trackers | None":
        if plan is None or not is_main:
            return None
        return cls([WRITERS[name](plan) for name in plan.report_to])

    def log(self, record: dict, step: int) -> None:
        """`record`'s numbers at optimizer step `step`, to each tracker that does not hold them yet."""
        metrics = numeric(record)
        for w in list(self.writers):
            named = {w.key(k): v for k, v in metrics.items()}
            fresh = {k: v for k, v in named.items() if step > w.steps.get(k, w.steps.get("*", -1))}
            if not fresh:
                continue
            try:
                w.write(fresh, step)
            except Exception as e:  # noqa: BLE001 -- a tracker's outage must not stop training
                self._drop(w, e)
                continue
            w.steps.update(dict.fromkeys(fresh, step))

    def flush_now(self) -> None:
        for w in list(self.writers):
            try:
                w.flush_now()
            except Exception as e:  # noqa: BLE001
                self._drop(w, e)

    def close(self) -> None:
        for w in self.writers:
            try:
                w.close()
            except Exception as e:  # noqa: BLE001
                say(f"[train] {w.name}: closing failed ({type(e).__name__}: {e})")
        self.writers = []

    def _drop(self, w, e: Exception) -> None:
        say(f"[train] {w.name} stopped taking metrics ({type(e).__name__}: {str(e)[:200]}); training goes on "
              "and metrics.jsonl keeps every record")
        self.writers.remove(w)


def event_steps(folder: Path) -> dict[str, int]:
    """{tag: the last step any event file in `folder` holds of it}, read with TensorBoard's own event loader
    (a file cut short by a kill ends where its last whole record does)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps: dict[str, int] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                steps[value.tag] = max(steps.get(value.tag, -1), event.step)
    return steps


def _download_events(remote: str, local: Path) -> None:
    fs, root = storage.filesystem(remote)
    if not fs.exists(root):
        return
    for path in fs.glob(f"{root}/events.out.tfevents.*"):
        (local / Path(path).name).write_bytes(fs.cat_file(path))


def log_result(plan: TrackingPlan | None, metrics: dict, step: int, files: str | None = None) -> None:
    """The final evaluation to the run's trackers, from the driver: `metrics` (flat, `eval/...`) at the run's
    last step, and the report folder `files` as the MLflow run's artifacts. Said, never raised, on failure."""
    if plan is None:
        return
    from dataclasses import replace

    trackers = Trackers.open(replace(plan, fresh=False), is_main=True)
    trackers.log(metrics, step)
    trackers.close()
    if files and "mlflow" in plan.report_to:
        try:
            with storage.local_copy(files) as local:
                mlflow_client(plan.mlflow_uri).log_artifacts(plan.mlflow_run_id, str(local), "report")
        except Exception as e:  # noqa: BLE001 -- the report is written; the tracker is told what it can be
            say(f"[run] MLflow: could not store the report as artifacts ({type(e).__name__}: {e})")
