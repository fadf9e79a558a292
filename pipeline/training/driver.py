"""Contrastive training on Ray Train, the driver's half: `run(cfg)` plans the run once (data counted, vocabulary
built, the checkpoint to resume from picked, the validation set prepared), hands every worker that plan
(`plan.WorkerPlan`) through a TorchTrainer, and collects what the run wrote. The workers' half is `worker`.

    pipeline train --config configs/demo.yaml --set train.epochs=3
"""
from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import checkpoint, storage
from pipeline.data.formats import files
from pipeline.config import TrainJobConfig, flatten, narrow, to_dict
from pipeline.console import line_prefix, mark_start, start_marks
from pipeline.data import transforms
from pipeline.data.text import vocabulary
from pipeline.training import training_set
from pipeline.data.formats.shards import shard_names
from pipeline.data.skips import SkipLog, SkipTally
from pipeline.training import warm_start
from pipeline.tracking import plan as tracking
from pipeline.training.attempts import (check_resume_config, check_resume_data, count_attempts, explain_failure,
                                        newest_checkpoint, state_layout)
from pipeline.training.plan import TrainShards, WorkerPlan
from pipeline.training.worker import train_loop_per_worker

START_TIMEOUT_S = 60.0  # Ray Train's default RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S


@dataclass
class TrainResult:
    run_dir: str  # local path or s3:// URI
    checkpoint: str
    metrics: dict
    history: list = field(default_factory=list)
    data: dict = field(default_factory=dict)  # skipped samples by split and reason
    resumed_from: str | None = None
    tracking: object = None  # the run's `tracking.plan.TrackingPlan`, where run.report_to asks for trackers
    attempts: int = 0  # worker-group starts in this launch: 1 plus the worker failures recovered from
    examples: dict = field(default_factory=dict)  # a few skipped keys by split and reason


@dataclass
class ValidationData:
    """How the workers get the validation set, and what its preparation skipped (`_validation_data`)."""
    datasets: dict  # Ray Train's datasets: {"val": a stream for rank 0}, or none where blocks are given
    blocks: list | None = None  # object refs of the prepared set, which every worker keeps in memory
    skip_refs: list = field(default_factory=list)  # each preparing task's skipped keys, by reason
    skip_log: SkipLog | None = None  # the stream's skipped keys
    skips: SkipTally = field(default_factory=SkipTally)


def run(cfg: TrainJobConfig, callbacks: list | None = None, shared_scan=None, lock_wait_s: float = 0.0,
        parent: tracking.Parent | None = None) -> TrainResult:
    """Train `cfg` on the connected Ray cluster; resumes when the run directory already has a checkpoint.
    `callbacks` go to Ray Train's RunConfig (a Tune trial passes its TuneReportCallback); `shared_scan`: a
    sweep's vocabulary scan (`training_set.VocabularyScan`), which its trials share. The run directory is this
    launch's alone while it trains (`run_lock`): a second launch on the same run.name refuses (`lock_wait_s`: or
    waits that long for an S3 lock's lease to lapse). `parent`: a sweep's side of the trackers (its trial's
    runs go under it)."""
    from pipeline.training.run_lock import RunLock

    storage.configure(cfg.storage.endpoint_url, cfg.storage.region)
    files.configure(cfg.data)  # a CSV's columns (data.csv_*), for every read in this process
    run_dir = cfg.run.run_dir() if storage.is_remote(cfg.run.run_dir()) else str(Path(cfg.run.run_dir()).resolve())
    with RunLock(run_dir, wait_s=lock_wait_s):
        return _train(cfg, callbacks, shared_scan, run_dir, parent)


def _train(cfg: TrainJobConfig, callbacks: list | None, shared_scan, run_dir: str,
           parent: tracking.Parent | None = None) -> TrainResult:
    from pipeline.cluster import check_resources, settle_one_node_train_env
    from pipeline.data.epoch import decoded_cache

    check_resources(cfg.scaling)  # before any pass over the data: a request that cannot fit would wait forever
    settle_one_node_train_env()
    if cfg.run.record_keys and storage.is_remote(run_dir):
        raise ValueError(f"run.record_keys writes to a local run directory, not {run_dir}; set run.storage_path to "
                         "a local folder or turn run.record_keys off")
    resolved, init = warm_start.resolve(narrow(cfg, TrainJobConfig))
    full = to_dict(cfg) | to_dict(resolved)
    cfg = resolved  # a RunJobConfig's extra sections stay on the driver
    latest = newest_checkpoint(run_dir)  # a damaged newest one: the one before, said so
    changes = check_resume_config(cfg, latest)
    storage.write_text(storage.join(run_dir, "config.json"), json.dumps(full, indent=2))
    done = _already_trained(cfg, latest, run_dir)
    if done is not None:
        return done
    data = training_set.prepare(cfg, latest, init, shared_scan)
    mark_start("data")
    plan = _plan(cfg, data, run_dir, latest, init, changes)
    track = tracking.start(cfg.run.report_to, run_dir, cfg.run.name, cfg.run.experiment or cfg.run.name,
                           cfg.run.tracking_uri(), flatten(full), parent)
    plan.tracking = track
    _describe(cfg, data, latest, init)
    why = checkpoint.set_aside_damaged_ray_snapshot(run_dir)
    if why:
        print(f"[train] Ray's list of checkpoints in {run_dir}/checkpoints was damaged ({why}): set aside as "
              f"{checkpoint.RAY_SNAPSHOT}.damaged; resuming from {latest or 'the start'}")
    plan.shards.decoded_cache = decoded_cache.start(cfg.data, sum(data.shard_counts.values()) or data.samples
                                                    or data.n_train)
    val = _validation_data(cfg, data.val)
    plan.val_blocks = val.blocks
    mark_start("fit")  # from here Ray Train builds and starts the worker group
    plan.start_marks = start_marks()
    try:
        _trainer(cfg, plan, val.datasets, callbacks).fit()
    except Exception as e:  # Ray wraps the worker's exception; surface its message, not Ray's stack
        tracking.finish(track, "FAILED")
        sc = cfg.scaling
        need = f"{sc.num_workers} workers of {sc.cpus_per_worker:g} CPU" + (" and 1 GPU" if sc.use_gpu else "")
        raise RuntimeError(explain_failure(e, count_attempts(run_dir, plan.launch), cfg.run.max_failures,
                                           checkpoint.find_latest(run_dir), need)) from e
    tracking.finish(track, "FINISHED")
    result = _result(cfg, plan, data.train.missing, val)
    result.tracking = track
    return result


def _already_trained(cfg: TrainJobConfig, latest: str | None, run_dir: str) -> TrainResult | None:
    """A run whose checkpoint has every epoch: its result, without training; else say where a resume starts."""
    if latest is None:
        return None
    state = checkpoint.read_state(latest)
    if state["epoch"] >= cfg.train.epochs:
        print(f"[train] {cfg.run.name} already trained {state['epoch']} epochs: using {latest}")
        return TrainResult(run_dir, latest, state.get("metrics", {}), state.get("history", []), {}, latest)
    where = (f"inside epoch {state['in_epoch']['epoch']} of {cfg.train.epochs}, at step {state['step']}"
             if state.get("in_epoch") else f"epoch {state['epoch']} of {cfg.train.epochs}")
    print(f"[train] resuming {cfg.run.name} from {latest} ({where})")
    return None


def _plan(cfg: TrainJobConfig, data, run_dir: str, latest: str | None, init: str | None,
          changes: list[str]) -> WorkerPlan:
    """The workers' plan from the counted data (`training_set.TrainingSet`). The driver picks the checkpoint to
    resume from (the newest complete one in storage) rather than Ray's own run snapshot, which lags behind a
    checkpoint uploaded just before a crash; workers restarted after a failure look again (resume_point)."""
    paths = data.train.paths
    by_path = shard_names(paths)
    names = list(by_path.values())
    ids = {by_path[p]: fp for p, fp in storage.fingerprints(paths).items()}
    drop_cursors = check_resume_data(cfg, latest, names, ids)
    shards = TrainShards(
        paths=[TrainShards.absolute(p) for p in paths], layout=state_layout(latest, data.layout),
        counts={TrainShards.absolute(p): n for p, n in data.shard_counts.items()}, names=names, ids=ids,
        sources=data.shard_sources, source_samples=data.source_samples,
        resampling=data.resampling.to_dict() if data.resampling else None)
    return WorkerPlan(config=to_dict(cfg), tokenizer=data.tokenizer.to_dict(), n_train=data.n_train,
                      samples=data.samples, shards=shards, run_dir=run_dir, launch=uuid.uuid4().hex,
                      resume_from=latest, drop_cursors=drop_cursors, config_changes=changes, init_from=init,
                      console_prefix=line_prefix())


def _describe(cfg: TrainJobConfig, data, latest: str | None, init: str | None) -> None:
    """The plan on the console: the data's notes, the epoch's size and steps, missing shards, the towers' start."""
    for note in data.notes:
        print(f"[data] {note}")
    n_train, n_paths, tokenizer = data.n_train, len(data.train.paths), data.tokenizer
    steps = f"{n_train // cfg.train.batch_size} steps/epoch on {cfg.scaling.num_workers} workers"
    if cfg.data.sampling == "resampled":
        mix = ", ".join(f"{src['name']} weight {src['weight']:g}" for src in cfg.data.sources())
        print(f"[train] resampled epochs of {n_train} samples, shards drawn with replacement from "
              f"{n_paths} ({mix}), {vocabulary.describe(tokenizer)}, {steps}")
    else:
        print(f"[train] {n_train} training samples ({_SOURCES[data.source]}), {vocabulary.describe(tokenizer)}, "
              f"{steps}")
    if latest is None and (init or cfg.model.arch or cfg.model.image.weights or cfg.model.text.arch.startswith("hf:")):
        print(warm_start.describe(init, cfg))
    for split, shards in (("train", data.train), ("val", data.val)):
        if shards.missing:
            print(f"[data] {split}: {len(shards.missing)} shard(s) of the brace list are missing, skipped")


def _validation_data(cfg: TrainJobConfig, val_shards) -> ValidationData:
    """A validation set the workers keep in memory is prepared by tasks started now, beside the worker group's
    start, which hand back its skipped samples with it; otherwise Ray Train hands rank 0 a dataset to stream,
    whose tasks report skips to a skip log. (Training data is read by each worker itself: `worker_data`.)"""
    from pipeline.data import ingest
    from pipeline.data.formats.counts import count_or_read
    from pipeline.training import validation

    view = transforms.image_view(cfg.data)
    if validation.in_memory(cfg.data.cache_decoded, count_or_read(val_shards.paths), cfg.data.image_size):
        blocks, skip_refs = ingest.eval_shard_tasks(val_shards.paths, cfg.data.image_size, view=view)
        val = ValidationData({}, blocks, skip_refs)
    else:
        skip_log = SkipLog.start()
        stream = ingest.eval_dataset(val_shards.paths, cfg.data.image_size, skip_log, view=view)
        stream.context.enable_progress_bars = False  # bars drawn inside workers garble the progress lines
        val = ValidationData({"val": stream}, skip_log=skip_log)
    if val_shards.missing:
        val.skips.add("missing_shard", val_shards.missing)
    return val


def _trainer(cfg: TrainJobConfig, plan: WorkerPlan, datasets: dict, callbacks: list | None):
    import ray.train
    from ray.train.torch import TorchTrainer

    fs, storage_path = storage.arrow_filesystem(plan.run_dir)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"plan": plan},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
            resources_per_worker={"CPU": cfg.scaling.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name="checkpoints", storage_path=storage_path, storage_filesystem=fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
            # A failed worker (process or node) restarts the whole group from the newest checkpoint.
            # Restarting the group after a lost node waits for room: each try times out after Ray Train's
            # worker-group start timeout (60 s) and counts as a controller failure, by default retried forever.
            # Bounded here: about scaling.resource_wait_s of tries, then the run fails and says why.
            failure_config=ray.train.FailureConfig(
                max_failures=cfg.run.max_failures,
                controller_failure_limit=1 + math.ceil(cfg.scaling.resource_wait_s / START_TIMEOUT_S)),
            callbacks=callbacks or []),
        datasets=datasets or None,
        dataset_config=ray.train.DataConfig(datasets_to_split=[]),
    )


def _result(cfg: TrainJobConfig, plan: WorkerPlan, train_missing: list, val: ValidationData) -> TrainResult:
    """What the run wrote: its last checkpoint and metrics, metrics.jsonl, and the skipped samples of both
    splits (bookkeeping never fails a finished run: skips that cannot be read back are left out)."""
    import ray

    run_dir = plan.run_dir
    ckpt = checkpoint.find_latest(run_dir)
    if ckpt is None:
        raise RuntimeError(f"training finished without a checkpoint under {run_dir}")
    state = checkpoint.read_state(ckpt)
    storage.write_text(storage.join(run_dir, "metrics.jsonl"),
                       "".join(json.dumps(r) + "\n" for r in state.get("steps", [])))
    attempts = count_attempts(run_dir, plan.launch)
    if attempts > 1:
        print(f"[train] recovered from {attempts - 1} worker failure(s) (run.max_failures="
              f"{cfg.run.max_failures}); each restart resumed from the last checkpoint")
    train_skips = SkipTally.from_dict(state.get("skips"))
    if train_missing:
        train_skips.add("missing_shard", train_missing)
    try:
        for by_reason in ray.get(val.skip_refs, timeout=60):
            val.skips.add_keys(by_reason)
    except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
        pass
    if val.skip_log is not None:
        val.skips.add_keys(val.skip_log.read().get("val", {}))
    skips = {"train": train_skips, "val": val.skips}
    return TrainResult(run_dir, ckpt, state.get("metrics", {}), state.get("history", []),
                       {split: t.counts for split, t in skips.items() if t.counts}, plan.resume_from, attempts,
                       {split: t.examples for split, t in skips.items() if t.counts})


_SOURCES = {"stats": "img2dataset stats", "parquet": "Parquet footers", "listing": "CSV rows or image files",
            "num_samples": "data.num_samples",
            "pass": "counted", "checkpoint": "as the checkpoint planned"}
