"""A smoke sweep inside the shared test Ray, run as `pipeline run` with tune.enabled: 3 trials x 1 epoch (ASHA,
the default scheduler), one of which fails; results, best config, the best trial carried into evaluation, and
`pipeline tune` on the same run resuming the sweep instead of starting over. (One sweep serves both commands:
each trial is a Ray Train launch, the most expensive thing a test does here.)"""
import csv
import json
from pathlib import Path

import yaml

from pipeline import storage
from pipeline.cli import main
from pipeline.config import RunJobConfig, load_config

from .conftest import smoke_args

STUDIES = ("tune.studies={temperature: {loss.learn_temperature: false, loss.temperature: {grid: [0.05, 0.5]}}, "
           "failing: {data.max_skip_fraction: 0.0}}")


def test_sweep_results_best_trial_into_evaluation_and_resume(ray_cluster, smoke_data, tmp_path, capsys,
                                                             monkeypatch):
    monkeypatch.chdir(smoke_data)  # relative data paths: each trial runs in its own working directory
    args = smoke_args(Path("."), tmp_path, "sw", "--set", "train.epochs=1", "--set", STUDIES,
                      "--set", "tune.enabled=true")
    assert main(["run", *args]) == 0
    out = capsys.readouterr().out
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
    assert best["checkpoint"].startswith("../trials/")  # relative to the results: the sweep folder moves whole
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

    # Restarting the same sweep with `pipeline tune` resumes it: finished trials are not run again.
    # The failed trial keeps its error too (tune.resume_failed is off): it would only fail again.
    mtimes = {r["trial"]: (tmp_path / "sw" / "trials" / r["trial"] / "config.json").stat().st_mtime
              for r in [*ok, by_study["failing"]]}
    assert main(["tune", *args]) == 0
    out = capsys.readouterr().out
    assert "resuming the sweep" in out and f"best checkpoint: {best_ckpt}" in out
    assert len(list(csv.DictReader((results / "results.csv").open()))) == 3
    for trial, mtime in mtimes.items():
        assert (tmp_path / "sw" / "trials" / trial / "config.json").stat().st_mtime == mtime, trial
    assert json.loads((tmp_path / "sw" / "config.json").read_text())["tune"]["studies"]
    assert yaml.safe_load((results / "best_config.yaml").read_text())["run"]["name"] == "sw-best"
