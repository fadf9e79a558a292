"""Sweeps with Ray Tune: each trial is a Ray Train V2 `TorchTrainer` run driven from a function trainable,
reporting every epoch's validation metrics to Tune; ASHA stops weak trials; results become a table, a CSV,
plots, the best config as YAML and the best checkpoint.

    pipeline tune --config configs/sweep.yaml
    pipeline tune --config configs/lecture_tables.yaml

The sweep directory is `<run.storage_path>/<run.name>/`: Tune's state (a restarted sweep of the same name
resumes it), `<trial id>/` per trial (a complete run directory, beside Tune's own record of the trial:
params.json, result.json, progress.csv) and `sweep/` (the results). Every trial's console lines start with its
id; Tune's own console output is off (it goes to the log file, as Ray's does).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline import checkpoint, storage
from pipeline.data.formats import files
from pipeline.training.attempts import root_cause
from pipeline.config import RunJobConfig, TrainJobConfig, apply_overrides, build, flatten, narrow, to_dict
from pipeline.config import spaces
from pipeline.tracking import sweep as sweep_tracking
from pipeline.tune.results import fmt, is_score, plot_curves, plot_metric_vs, rank_rows, results_table, write_csv


@dataclass
class SweepResult:
    sweep_dir: str
    best_checkpoint: str | None
    best_config: dict | None
    best_trial: str | None
    rows: list[dict] = field(default_factory=list)
    table: str = ""
    results_dir: str = ""
    history: list = field(default_factory=list)
    data: dict = field(default_factory=dict)
    tracking: object = None  # the MLflow parent run's `tracking.plan.TrackingPlan`, where run.report_to has mlflow


def trial_concurrency(cfg: RunJobConfig, resources: dict) -> int:
    """Trials that fit at once: GPUs per trial on GPU clusters; otherwise the trial's training CPUs plus
    two for its Ray Data tasks, so concurrent trials never leave decoding without a CPU."""
    if cfg.tune.max_concurrent_trials:
        return cfg.tune.max_concurrent_trials
    n = cfg.scaling.num_workers
    by_cpu = int(resources.get("CPU", 1) // (n * cfg.scaling.cpus_per_worker + 2))
    if cfg.scaling.use_gpu:
        return max(1, min(int(resources.get("GPU", 0) // n), max(by_cpu, 1)))
    return max(1, by_cpu)


def _search_space(studies: list[spaces.Study], points: list[tuple[str, dict]]) -> dict:
    from ray import tune

    space: dict = {"point": tune.grid_search([{"study": s, "overrides": o} for s, o in points])}
    for st in studies:
        for key, (kind, args) in st.sampled.items():
            dist = {"choice": lambda a: tune.choice(a), "uniform": lambda a: tune.uniform(*a),
                    "loguniform": lambda a: tune.loguniform(*a)}[kind](args)
            space[f"{st.name}::{key}"] = dist
    return space


def trials_root(sweep_dir: str) -> str:
    """Where the trials' run directories are: in the sweep folder, each in Tune's own folder for the trial; a
    sweep begun by a version that kept them in `trials/` goes on there."""
    old = storage.join(sweep_dir, "trials")
    return old if storage.exists(old) else sweep_dir


def make_trainable(cfg: RunJobConfig, trials_root: str, shared_scan=None, parent=None):
    """The function trainable: one trial = its overrides on the recipe -> `train.run` with Tune reporting.
    `shared_scan`: an object ref to the sweep's vocabulary scan (`training_set.scan_for_sweep`); `parent`: the
    sweep's side of the trackers (`tracking.sweep.start`)."""
    from pipeline.data.ingest import absolute_spec, absolute_train

    base_raw = to_dict(narrow(cfg, TrainJobConfig))
    # Tune runs each trial in its own working directory: relative paths must be resolved here.
    base_raw["data"] |= {"train": absolute_train(cfg.data), "val": absolute_spec(cfg.data.val)}
    if cfg.model.image.weights:
        base_raw["model"]["image"]["weights"] = absolute_spec(cfg.model.image.weights)
    if cfg.model.text.embeddings.path:
        base_raw["model"]["text"]["embeddings"]["path"] = absolute_spec(cfg.model.text.embeddings.path)
    base_flat, lr_scaling = flatten(base_raw), cfg.tune.lr_scaling

    def trial(config: dict) -> None:
        from ray import tune
        from ray.tune.integration.ray_train import TuneReportCallback

        from pipeline.console import prefix_lines
        from pipeline.training import driver as train

        trial_id = tune.get_context().get_trial_id()
        prefix_lines(f"[{trial_id}] ")  # the trial's lines, and its workers', carry its id on the sweep's console
        study, point = config["point"]["study"], config["point"]["overrides"]
        sampled = {k.split("::", 1)[1]: v for k, v in config.items() if k.startswith(f"{study}::")}
        over, _dropped = spaces.resolve_trial(point, sampled, base_flat, lr_scaling)
        # A trial's run directory is named after its id: a resumed sweep finds the trial's checkpoints.
        over |= {"run.storage_path": trials_root, "run.name": trial_id}
        trial_cfg = build(TrainJobConfig, apply_overrides(base_raw, over, TrainJobConfig))
        import ray

        from pipeline.training.run_lock import LEASE_S

        # a trial restarted after its node was lost waits out the dead attempt's lease (S3 run directories)
        train.run(trial_cfg, callbacks=[TuneReportCallback()],
                  shared_scan=ray.get(shared_scan) if shared_scan is not None else None, lock_wait_s=LEASE_S + 10,
                  parent=parent)

    return trial


def run(cfg: RunJobConfig) -> SweepResult:
    """Sweep `cfg.tune` on the connected cluster; resumes a sweep of the same run.name."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    storage.configure(cfg.storage.endpoint_url, cfg.storage.region)
    files.configure(cfg.data)  # a CSV's columns (data.csv_*), for every read in this process
    run_dir = cfg.run.run_dir()
    sweep_dir = run_dir if storage.is_remote(run_dir) else str(Path(run_dir).resolve())
    studies, points = spaces.plan(cfg)
    storage.write_text(storage.join(sweep_dir, "config.json"), json.dumps(to_dict(cfg), indent=2))
    concurrency = trial_concurrency(cfg, ray.cluster_resources())
    n_trials = len(points) * cfg.tune.num_samples
    print(f"[tune] {n_trials} trials ({len(points)} grid points x {cfg.tune.num_samples} samples) in "
          f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'}, {concurrency} at a time, "
          f"scheduler {cfg.tune.scheduler}, ranked on {cfg.tune.metric} ({cfg.tune.mode})")
    from pipeline.training.training_set import scan_for_sweep

    scan = scan_for_sweep(cfg)  # once for every trial: the captions are read once per sweep, not per trial
    shared = ray.put(scan) if scan is not None else None
    parent, parent_plan = sweep_tracking.start(
        cfg.run.report_to, sweep_dir, cfg.run.name, cfg.run.experiment or cfg.run.name, cfg.run.tracking_uri(),
        flatten(to_dict(cfg)), sorted({k for st in studies for k in st.swept_keys()}))
    trainable = tune.with_resources(make_trainable(cfg, trials_root(sweep_dir), shared, parent), {"cpu": 0.01})
    fs, path = storage.arrow_filesystem(sweep_dir)
    tune_root, tune_name = path.rsplit("/", 1)
    loggers = _loggers()
    if tune.Tuner.can_restore(path, storage_filesystem=fs):
        print(f"[tune] resuming the sweep in {sweep_dir}" + (" (failed trials too: tune.resume_failed)"
                                                               if cfg.tune.resume_failed else ""))
        # A failed trial keeps its error unless asked (Ray's default too): one that failed on its own config or
        # data would only fail again.
        tuner = tune.Tuner.restore(path, trainable, resume_errored=cfg.tune.resume_failed, storage_filesystem=fs)
    else:
        scheduler = None
        if cfg.tune.scheduler == "asha":
            scheduler = ASHAScheduler(time_attr="epoch", max_t=cfg.train.epochs,  # survives restarts
                                      grace_period=cfg.tune.grace_period, reduction_factor=cfg.tune.reduction_factor)
        tuner = tune.Tuner(
            trainable, param_space=_search_space(studies, points),
            tune_config=tune.TuneConfig(metric=cfg.tune.metric, mode=cfg.tune.mode, scheduler=scheduler,
                                        num_samples=cfg.tune.num_samples, max_concurrent_trials=concurrency,
                                        trial_dirname_creator=lambda t: t.trial_id),
            run_config=tune.RunConfig(name=tune_name, storage_path=tune_root, storage_filesystem=fs,
                                      failure_config=tune.FailureConfig(max_failures=0), verbose=0,
                                      callbacks=loggers))
    t0 = time.time()
    grid = tuner.fit()
    print(f"[tune] {len(grid)} trials finished in {time.time() - t0:.0f} s, {grid.num_errors} failed")
    result = collect(cfg, grid, studies, sweep_dir)
    root = trials_root(sweep_dir)
    best = (cfg.tune.metric, next(r[cfg.tune.metric] for r in result.rows if r["trial"] == result.best_trial)) \
        if result.best_trial else None
    sweep_tracking.finish(parent_plan, {r["trial"]: storage.join(root, r["trial"]) for r in result.rows},
                          result.rows, best, result.results_dir)
    result.tracking = parent_plan
    return result


def _loggers() -> list:
    """Tune's own record of each trial (params.json, result.json, progress.csv), and no console: its boxed
    configuration table and its TensorBoard hint (into Ray's temporary session folder) are off, the
    TensorBoard files being the trials' own (run.report_to)."""
    import os

    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the new output prints its box and hint at any verbosity
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # no TensorBoard logger of Tune's own
    return [JsonLoggerCallback(), CSVLoggerCallback()]


def _row(cfg: RunJobConfig, result, sweep_dir: str, base_flat: dict) -> tuple[dict, list]:
    """One results row and the trial's learning curve from Tune's result and the trial's run directory."""
    root, tune_dir = trials_root(sweep_dir), str(result.path).rstrip("/").rsplit("/", 1)[-1]
    config = result.config
    if config is None:  # a failed trial a resumed sweep left alone: Tune keeps its parameters beside it
        config = json.loads(storage.read_text(storage.join(sweep_dir, tune_dir, "params.json")))
    point = config["point"]
    sampled = {k.split("::", 1)[1]: v for k, v in config.items() if k.startswith(f"{point['study']}::")}
    over, _ = spaces.resolve_trial(point["overrides"], sampled, base_flat, cfg.tune.lr_scaling)
    metrics = result.metrics or {}
    trial_id = metrics.get("trial_id") or tune_dir  # dirs are trial ids
    ckpt = checkpoint.find_latest(storage.join(root, trial_id))
    history = checkpoint.read_state(ckpt).get("history", []) if ckpt else []
    row = {"trial": trial_id, "study": point["study"], **{k: v for k, v in over.items() if v is not None},
           cfg.tune.metric: metrics.get(cfg.tune.metric),
           "val/i2t_R@1": metrics.get("val/i2t_R@1"), "val/t2i_R@1": metrics.get("val/t2i_R@1"),
           "train/loss": metrics.get("train/loss"), "epochs": metrics.get("epoch"),
           "status": "error" if result.error else ("stopped early" if (metrics.get("epoch") or 0) <
                                                    cfg.train.epochs else "done"),
           "error": root_cause(result.error, limit=300) if result.error else "",
           "checkpoint": ckpt or ""}
    curve = [(h["epoch"], h[cfg.tune.metric]) for h in history if cfg.tune.metric in h]
    return row, curve


def collect(cfg: RunJobConfig, grid, studies: list[spaces.Study], sweep_dir: str) -> SweepResult:
    """Rows, tables, CSV, plots and the best config/checkpoint of a finished sweep."""
    rows, curves = [], {}
    base_flat = flatten(to_dict(narrow(cfg, TrainJobConfig)))
    swept = {st.name: st.swept_keys() for st in studies}
    for result in grid:
        row, curve = _row(cfg, result, sweep_dir, base_flat)
        rows.append(row)
        label = ", ".join(f"{k.split('.')[-1]}={fmt(row.get(k))}" for k in swept.get(row["study"], []))
        curves[f"{row['study']}: {label or row['trial']}"] = curve
    metric = cfg.tune.metric
    scored = [r for r in rank_rows(rows, metric, cfg.tune.mode) if r["checkpoint"] and is_score(r[metric])]
    best = scored[0] if scored else None
    best_cfg = checkpoint.read_config(best["checkpoint"]) if best else None
    if best_cfg is not None:  # a recipe `pipeline train` accepts, under the sweep's own run name
        best_cfg = {**best_cfg, "run": {**best_cfg["run"], "storage_path": cfg.run.storage_path,
                                        "name": f"{cfg.run.name}-best"}}
    results = storage.join(sweep_dir, "sweep")
    tables = []
    with storage.staging_dir(results) as out:
        (out / "plots").mkdir(exist_ok=True)
        # checkpoints relative to the results folder: the sweep directory can be moved whole
        write_csv(out / "results.csv", [dict(r, checkpoint=storage.relative_ref(r["checkpoint"], results))
                                        if r["checkpoint"] else r for r in rows])
        for st in studies:
            st_rows = [r for r in rows if r["study"] == st.name]
            keys = st.swept_keys()
            tables.append(f"### {st.name}\n\n" + results_table(st_rows, keys, metric, cfg.tune.mode))
            for key in keys:
                plot_metric_vs(out / "plots" / f"{st.name}_{key.replace('.', '_')}.png", st_rows, key, metric)
        plot_curves(out / "plots" / "learning_curves.png", curves, metric)
        text = "\n\n".join(tables)
        best_line = (f"best: trial {best['trial']} ({best['study']}), {metric} {best[metric]:.2f}, checkpoint "
                     f"{best['checkpoint']}" if best else "best: none (no trial finished with a checkpoint)")
        errors = [f"- {r['trial']}: {r['error']}" for r in rows if r["error"]]
        (out / "results.md").write_text(f"# Sweep {cfg.run.name}\n\n{best_line}\n\n{text}\n"
                                        + ("\n## Failed trials\n\n" + "\n".join(errors) + "\n" if errors else ""))
        if best_cfg is not None:
            (out / "best_config.yaml").write_text(yaml.safe_dump(best_cfg, sort_keys=False))
    history = checkpoint.read_state(best["checkpoint"]).get("history", []) if best else []
    return SweepResult(sweep_dir, best["checkpoint"] if best else None, best_cfg, best["trial"] if best else None,
                       rows, text, results, history)


def format_summary(res: SweepResult, metric: str) -> str:
    lines = ["", "=" * 72, "Sweep finished", "", res.table, ""]
    if res.best_checkpoint:
        lines += [f"best trial     : {res.best_trial}", f"best checkpoint: {res.best_checkpoint}",
                  f"best config    : {storage.join(res.results_dir, 'best_config.yaml')}  "
                  f"(pipeline train --config it)"]
    failed = [r for r in res.rows if r["status"] == "error"]
    if failed:
        lines.append(f"failed trials  : {len(failed)} (see results.md)")
    lines += [f"results        : {storage.join(res.results_dir, 'results.md')}  (+ results.csv, plots/)",
              "=" * 72]
    return "\n".join(lines)

