"""A sweep in the trackers: one parent for its trials, so each tracker's own comparison view is the sweep's table.
MLflow: a parent run in the sweep's experiment, every trial a child run with its config as parameters; W&B: the
trials grouped under the sweep's name; TensorBoard: one folder per trial under the sweep's folder
(`tensorboard --logdir runs/<sweep>`), with the swept keys in its HParams view.

When the sweep ends, `finish` tells MLflow how each trial ended: FINISHED, KILLED with the tag
`pipeline.status=stopped early` for a trial the scheduler stopped, FAILED for one that raised."""
from __future__ import annotations

from pipeline import storage
from pipeline.tracking.plan import PLAN_FILE, Parent, TrackingPlan, mlflow_client
from pipeline.tracking.plan import finish as finish_run
from pipeline.tracking.plan import start as start_run
from pipeline.tracking.writers import MlflowWriter

STATUS = {"done": "FINISHED", "stopped early": "KILLED", "error": "FAILED"}


def start(report_to: list[str], sweep_dir: str, name: str, experiment: str, mlflow_uri: str, params: dict,
          swept: list[str]) -> tuple[Parent | None, TrackingPlan | None]:
    """The sweep's side of its trials' tracking, and the MLflow parent run's plan (kept in the sweep folder's
    tracking.json, so a resumed sweep keeps its parent). (None, None) without trackers."""
    if not report_to:
        return None, None
    plan = start_run([t for t in report_to if t == "mlflow"], sweep_dir, name, experiment, mlflow_uri, params)
    parent = Parent(experiment, mlflow_uri, plan.mlflow_run_id if plan else "", group=name, swept=list(swept))
    return parent, plan


def finish(plan: TrackingPlan | None, trial_dirs: dict[str, str], rows: list[dict], best: tuple[str, float] | None,
           results_dir: str) -> None:
    """Each trial's MLflow run marked as it ended (`rows`: the sweep's results, `status` each); the parent run
    gets the best trial's score (`best`: metric, value) and the results folder as artifacts, and is FINISHED."""
    if plan is None:
        return
    import json

    client = mlflow_client(plan.mlflow_uri)
    try:
        for row in rows:
            path = storage.join(trial_dirs[row["trial"]], PLAN_FILE)
            if not storage.exists(path):  # a trial that failed before its trackers started
                continue
            run_id = json.loads(storage.read_text(path)).get("mlflow_run_id")
            if run_id:
                client.set_tag(run_id, "pipeline.status", row["status"])
                client.set_terminated(run_id, status=STATUS.get(row["status"], "FINISHED"))
        if best is not None:
            client.log_metric(plan.mlflow_run_id, MlflowWriter.key(f"best/{best[0]}"), best[1])
        with storage.local_copy(results_dir) as local:
            client.log_artifacts(plan.mlflow_run_id, str(local), "sweep")
    except Exception as e:  # noqa: BLE001 -- the sweep's results are written; the tracker is told what it can be
        print(f"[tune] MLflow: could not record the trials' end states ({type(e).__name__}: {e})")
    finish_run(plan, "FINISHED")

