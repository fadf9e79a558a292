"""A smoke sweep inside the shared test Ray, run as `pipeline run` with tune.enabled: 3 trials x 1 epoch (ASHA,
the default scheduler), one of which fails; results, best config, the best trial carried into evaluation, and
`pipeline tune` on the same run resuming the sweep instead of starting over. (One sweep serves both commands:
each trial is a Ray Train launch, the most expensive thing a test does here.)"""
import csv
import json
import re
from pathlib import Path

import pytest
import yaml

from pipeline import storage
from pipeline.cli import main
from pipeline.config import RunJobConfig, load_config

from . import drivers
from .conftest import smoke_args

STUDIES = ("tune.studies={temperature: {loss.learn_temperature: false, loss.temperature: {grid: [0.05, 0.5]}}, "
           "failing: {data.max_skip_fraction: 0.0}}")


def test_sweep_results_best_trial_into_evaluation_and_resume(ray_cluster, smoke_data, tmp_path, capsys,
                                                             monkeypatch):
    monkeypatch.chdir(smoke_data)  # relative data paths: each trial runs in its own working directory
    args = smoke_args(Path("."), tmp_path, "sw", "--set", "train.epochs=1", "--set", STUDIES,
                      "--set", "tune.enabled=true", "--set", "run.report_to=[tensorboard,mlflow]")
    # The sweep as a user's own driver (no --verbose), for its console: the trials' lines reach it.
    log = tmp_path / "sweep.log"
    assert drivers.train(args, ray_cluster, log, verbose=False, command="run", cwd=smoke_data).wait(timeout=600) == 0, \
        log.read_text()[-3000:]
    out = log.read_text()
    results = tmp_path / "sw" / "sweep"
    rows = list(csv.DictReader((results / "results.csv").open()))
    assert len(rows) == 3
    by_study = {r["study"]: r for r in rows if r["study"] == "failing"}
    assert by_study["failing"]["status"] == "error" and "max_skip_fraction" in by_study["failing"]["error"]
    ok = [r for r in rows if r["study"] == "temperature"]
    assert sorted(float(r["loss.temperature"]) for r in ok) == [0.05, 0.5]
    assert all(r["status"] == "done" and float(r["val/rsum"]) > 0 and r["checkpoint"] for r in ok)

    # The summary names the best checkpoint, and the best config is a recipe `pipeline train` accepts.
    best = max(ok, key=lambda r: float(r["val/rsum"]))
    assert best["checkpoint"].startswith(f"../{best['trial']}/")  # relative: the sweep folder moves whole
    best_ckpt = storage.resolve_ref(best["checkpoint"], str(results))
    assert f"best checkpoint: {best_ckpt}" in out and "| trial | loss.temperature | val/rsum" in out
    cfg = load_config(RunJobConfig, results / "best_config.yaml")
    assert cfg.loss.temperature == float(best["loss.temperature"]) and cfg.loss.learn_temperature is False
    assert (results / "plots" / "learning_curves.png").stat().st_size > 0
    assert (results / "plots" / "temperature_loss_temperature.png").stat().st_size > 0
    md = (results / "results.md").read_text()
    assert "### temperature" in md and "## Failed trials" in md

    # `run` carries the best trial's checkpoint into evaluation.
    rep = json.loads((tmp_path / "sw" / "report" / "report.json").read_text())
    assert rep["checkpoint"] == best["checkpoint"] and rep["n_images"] == 64
    assert "Sweep finished" in out
    _check_console_and_folders(out, tmp_path / "sw", [r["trial"] for r in rows])
    _check_mlflow(tmp_path, rows)

    # Restarting the same sweep with `pipeline tune` resumes it: finished trials are not run again.
    # The failed trial keeps its error too (tune.resume_failed is off): it would only fail again.
    mtimes = {r["trial"]: (tmp_path / "sw" / r["trial"] / "config.json").stat().st_mtime
              for r in [*ok, by_study["failing"]]}
    assert main(["tune", *args]) == 0
    out = capsys.readouterr().out
    assert "resuming the sweep" in out and f"best checkpoint: {best_ckpt}" in out
    assert len(list(csv.DictReader((results / "results.csv").open()))) == 3
    for trial, mtime in mtimes.items():
        assert (tmp_path / "sw" / trial / "config.json").stat().st_mtime == mtime, trial
    assert json.loads((tmp_path / "sw" / "config.json").read_text())["tune"]["studies"]
    assert yaml.safe_load((results / "best_config.yaml").read_text())["run"]["name"] == "sw-best"


def _check_console_and_folders(out: str, sweep: Path, trials: list[str]) -> None:
    """One folder per trial, Tune's record and the run's together; every line a trial printed starts with its id;
    none of Tune's own console (its boxed table, its TensorBoard hint into Ray's session folder)."""
    assert not (sweep / "trials").exists()
    for t in trials:
        assert {"params.json", "result.json", "config.json", "checkpoints", "tracking.json"} <= \
            {p.name for p in (sweep / t).iterdir()}, t
        assert not list((sweep / t).glob("events.out.tfevents.*")), "Tune's own TensorBoard logger is on"
    ok = [t for t in trials if (sweep / t / "checkpoints").exists() and any((sweep / t / "checkpoints").iterdir())]
    assert all(list((sweep / t / "tensorboard").glob("events.out.tfevents.*")) for t in ok)
    for needle in ("Configuration for experiment", "To visualize your results with TensorBoard",
                   "View detailed results here", "╭", "Trial status"):
        assert needle not in out, needle
    trial_lines = [ln for ln in out.splitlines() if re.search(r"\[train\] (\d+ training samples|epoch 1: loss)", ln)]
    assert trial_lines and all(re.match(rf"^\[({'|'.join(trials)})\] \[", ln) for ln in trial_lines), trial_lines
    assert {re.match(r"^\[(\w+)\]", ln).group(1) for ln in trial_lines} == set(trials)


def _check_mlflow(storage: Path, rows: list[dict]) -> None:
    """One MLflow parent run for the sweep in the default store beside the runs, one child run per trial with its
    swept value as a parameter, each marked as it ended."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sw")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_name == "sw" and parents[0].info.status == "FINISHED"
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert set(children) == {r["trial"] for r in rows}
    for r in rows:
        child = children[r["trial"]]
        assert child.info.status == {"done": "FINISHED", "error": "FAILED"}[r["status"]], (r, child.info)
        assert child.data.tags["pipeline.status"] == r["status"]
        if r["study"] == "temperature":
            assert float(child.data.params["loss.temperature"]) == float(r["loss.temperature"])
            assert child.data.metrics["val/rsum"] == pytest.approx(float(r["val/rsum"]))
    assert "eval/rsum" in parents[0].data.metrics  # `run` evaluated the best trial: its table on the parent
