"""A run's curves read back with each tracker's own reader: TensorBoard's event loader (every event file, raw, in
the order written: its accumulator would hide a repeated step), the MLflow client, and W&B's run files parsed
with W&B's protobuf schema (`pipeline.tracking.wandb_files`)."""
import json
from pathlib import Path

from pipeline.tracking.wandb_files import history, run_files


def tensorboard_points(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of `tag` in every event file under <run>/tensorboard, oldest file first."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    files = sorted((Path(run_dir) / "tensorboard").glob("events.out.tfevents.*"))  # TensorBoard's own order
    out = []
    for path in files:
        for event in EventFileLoader(str(path)).Load():
            out += [(event.step, _value(v)) for v in event.summary.value if v.tag == tag]
    return out


def _value(v) -> float:
    from tensorboard.util.tensor_util import make_ndarray

    return v.simple_value if v.WhichOneof("value") == "simple_value" else float(make_ndarray(v.tensor).item())


def tensorboard_curve(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """The curve TensorBoard's own accumulator (what its web UI serves) makes of <run>/tensorboard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(Path(run_dir) / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def mlflow_run(run_dir: Path):
    """(client, run) of the MLflow run <run>/tracking.json names."""
    from mlflow.tracking import MlflowClient

    ids = json.loads((Path(run_dir) / "tracking.json").read_text())
    client = MlflowClient(ids["mlflow_uri"])
    return client, client.get_run(ids["mlflow_run_id"])


def mlflow_points(run_dir: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of `key` in the run's MLflow history, in the order logged."""
    client, run = mlflow_run(run_dir)
    hist = client.get_metric_history(run.info.run_id, key)
    return [(m.step, m.value) for m in sorted(hist, key=lambda m: m.timestamp)]


def wandb_points(run_dir: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of `key` in every W&B offline run file of the run's id, oldest attempt first."""
    wid = json.loads((Path(run_dir) / "tracking.json").read_text())["wandb_id"]
    return [(row["_step"], row[key]) for path in run_files(Path(run_dir) / "wandb", wid)
            for row in history(path) if key in row]


def assert_one_curve(points: list[tuple[int, float]], what: str) -> list[int]:
    """Every step once, in increasing order as written. -> the steps."""
    steps = [s for s, _ in points]
    assert steps == sorted(set(steps)), f"{what}: a step logged twice or out of order: {steps}"
    return steps
