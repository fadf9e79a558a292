"""What a run's trackers are, settled on the driver before any worker starts: `start` names the tracker runs,
creates the MLflow run (with the resolved config as its parameters) and keeps the ids in <run>/tracking.json,
so a resumed launch continues the same MLflow run, W&B id and TensorBoard folder rather than opening new ones.
The plan travels to rank 0 inside the workers' plan; `writers.Trackers` opens it there."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import storage
from pipeline.errors import ConfigError

TRACKERS = ("tensorboard", "mlflow", "wandb")
PLAN_FILE = "tracking.json"
PARAM_LIMIT = 6000  # MLflow's longest parameter value; longer ones (a list of sources) are cut with a mark


def check_installed(report_to: list[str]) -> None:
    """Before any Ray work: every tracker asked for can be imported, else one line with the install command."""
    missing = [t for t in report_to if importlib.util.find_spec(t) is None]
    if missing:
        raise ConfigError(f"run.report_to asks for {', '.join(missing)}, which is not installed here: "
                          f"pip install 'pipeline[tracking]' (or pip install {' '.join(missing)}), or take "
                          f"{' and '.join(missing)} out of run.report_to")


def default_mlflow_uri(storage_path: str) -> str:
    """MLflow beside the runs: a SQLite database in run.storage_path. (MLflow 3's plain-folder store is in
    maintenance mode and refuses to open unless told to; SQLite is what its docs give instead.)"""
    return f"sqlite:///{Path(storage_path).resolve() / 'mlflow.db'}"


@dataclass
class Parent:
    """A sweep's side of its trials' tracking (`sweep.start`): the MLflow experiment and parent run, the W&B
    group, and the sweep's own TrackingPlan settings."""
    experiment: str
    mlflow_uri: str = ""
    mlflow_run_id: str = ""
    group: str = ""
    swept: list = field(default_factory=list)  # the config keys the sweep varies


@dataclass
class TrackingPlan:
    report_to: list[str]
    run_dir: str  # local path or s3:// URI: tensorboard/ goes here
    name: str  # the tracker run's name: run.name (a trial's id in a sweep)
    experiment: str  # the MLflow experiment and W&B project
    mlflow_uri: str = ""
    mlflow_run_id: str = ""
    mlflow_parent_id: str = ""
    wandb_id: str = ""
    wandb_group: str = ""
    hparams: dict = field(default_factory=dict)  # flat config keys -> scalars: TensorBoard's HParams, W&B's config
    highlight: list = field(default_factory=list)  # config keys a sweep varies: TensorBoard's HParams columns
    fresh: bool = True  # this launch created the tracker runs (a resumed one finds them in tracking.json)

    @property
    def tensorboard_dir(self) -> str:
        return storage.join(self.run_dir, "tensorboard")

    @property
    def wandb_dir(self) -> str:
        """W&B keeps its files in a local folder: the run directory's, or beside the process for s3:// runs."""
        if storage.is_remote(self.run_dir):
            return str(Path(os.environ.get("WANDB_DIR", Path.home() / ".cache" / "pipeline" / "wandb")))
        return self.run_dir


def quiet_libraries() -> None:
    """MLflow's and its database layer's INFO lines (creating tables, migrations) belong in no console."""
    for name in ("mlflow", "alembic", "urllib3.connectionpool"):
        logging.getLogger(name).setLevel(logging.WARNING)


def start(report_to: list[str], run_dir: str, name: str, experiment: str, mlflow_uri: str, params: dict,
          parent: Parent | None = None) -> TrackingPlan | None:
    """The run's TrackingPlan (None without trackers): ids from <run_dir>/tracking.json when a launch before
    this one made them, else new ones (an MLflow run with `params`, the flat resolved config, as parameters),
    written there before training starts."""
    if not report_to:
        return None
    path = storage.join(run_dir, PLAN_FILE)
    kept = json.loads(storage.read_text(path)) if storage.exists(path) else {}
    plan = TrackingPlan(list(report_to), run_dir, name, parent.experiment if parent else experiment,
                        mlflow_uri=(parent.mlflow_uri if parent else "") or mlflow_uri,
                        mlflow_parent_id=parent.mlflow_run_id if parent else "",
                        wandb_group=parent.group if parent else "", highlight=parent.swept if parent else [],
                        hparams={k: _scalar(v) for k, v in params.items()}, fresh=not kept)
    if "mlflow" in report_to:
        plan.mlflow_run_id = _mlflow_run(plan, kept.get("mlflow_run_id", ""), params)
    if "wandb" in report_to:
        plan.wandb_id = kept.get("wandb_id") or uuid.uuid4().hex[:8]
    storage.write_text(path, json.dumps({"mlflow_uri": plan.mlflow_uri, "mlflow_run_id": plan.mlflow_run_id,
                                         "wandb_id": plan.wandb_id, "experiment": plan.experiment}, indent=2))
    return plan


def mlflow_client(uri: str):
    quiet_libraries()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(client, name: str, uri: str) -> str:
    """The MLflow experiment `name`, created when missing (artifacts beside a local database; a server keeps
    its own). Two trials creating it at once: the second finds the first's."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _mlflow_run(plan: TrackingPlan, kept_id: str, params: dict) -> str:
    """The MLflow run to log to: the one tracking.json names, when the store still has it; else a new one
    holding the config as its parameters (in MLflow a parameter, once logged, is never changed)."""
    from mlflow.entities import Param, RunStatus
    from mlflow.exceptions import MlflowException

    client = mlflow_client(plan.mlflow_uri)
    if kept_id:
        try:
            client.get_run(kept_id)
            client.update_run(kept_id, status=RunStatus.to_string(RunStatus.RUNNING))
            return kept_id
        except MlflowException:
            print(f"[train] MLflow run {kept_id} from {PLAN_FILE} is not in {plan.mlflow_uri}: starting a new one")
    tags = {"mlflow.runName": plan.name, "pipeline.run_dir": plan.run_dir}
    if plan.mlflow_parent_id:
        tags["mlflow.parentRunId"] = plan.mlflow_parent_id
    run = client.create_run(experiment_id(client, plan.experiment, plan.mlflow_uri), run_name=plan.name, tags=tags)
    items = [Param(k[:250], _param_text(v)) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters a call
        client.log_batch(run.info.run_id, params=items[i:i + 100])
    return run.info.run_id


def finish(plan: TrackingPlan | None, status: str) -> None:
    """The MLflow run's end state (FINISHED, FAILED or KILLED); a failure to say so never fails the run."""
    if plan is None or "mlflow" not in plan.report_to or not plan.mlflow_run_id:
        return
    try:
        mlflow_client(plan.mlflow_uri).set_terminated(plan.mlflow_run_id, status=status)
    except Exception as e:  # noqa: BLE001 -- the run's results are written; the tracker is told what it can be
        print(f"[train] MLflow: could not mark run {plan.mlflow_run_id} {status}: {type(e).__name__}: {e}")


def _scalar(v):
    return v if isinstance(v, (bool, int, float, str)) else json.dumps(v)


def _param_text(v) -> str:
    text = v if isinstance(v, str) else json.dumps(v)
    return text if len(text) <= PARAM_LIMIT else text[:PARAM_LIMIT - 12] + " [cut short]"
