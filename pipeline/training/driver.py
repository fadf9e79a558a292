"""Contrastive training on Ray Train: `run(cfg)` builds the datasets and the TorchTrainer; the per-worker loop
embeds its shard of the global batch, all-gathers embeddings with gradients, and steps.

    pipeline train --config configs/demo.yaml --set train.epochs=3
"""
from __future__ import annotations

import json
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from pipeline import checkpoint, storage
from pipeline.training.attempts import (check_resume_config, check_resume_data, count_attempts, explain_failure,
                               newest_checkpoint, record_attempt, resume_point, state_layout)
from pipeline.config import TrainJobConfig, build, narrow, to_dict
from pipeline.console import say
from pipeline.data import training_set, transforms, vocabulary
from pipeline.data.shards import shard_names
from pipeline.data.epoch_plan import describe_mix, mix_metrics, mix_targets
from pipeline.data.skips import SkipLog, SkipTally
from pipeline.data.subword import tokenizer_from_dict
from pipeline.distributed import WorkerContext, all_reduce_mean, all_reduce_min, gather_objects
from pipeline.training.worker_data import KeyRecord, epoch_batches, skip_check, to_device
from pipeline.losses import build_loss
from pipeline.metrics import flat_metrics
from pipeline.models import build_model
from pipeline.training.objective import ContrastiveObjective, unwrap
from pipeline.console import describe_start, mark_start, start_marks
from pipeline.training.phases import PhaseClock, describe_phases, phase_metrics
from pipeline.rerank.fusion import FusionScorer
from pipeline.training.optimisation import (NONFINITE, check_finite, logit_scale_record, make_optimizer,  # noqa: F401
                                   make_scheduler, peak_memory_mb, speed_up, train_step)
from pipeline.training import warm_start
from pipeline.training.validation import ValidationSet, validate  # noqa: F401 (validate: benches)


def train_epoch(objective, opt, sched, ctx: WorkerContext, cfg: TrainJobConfig, epoch: int, step: int,
                steps_per_epoch: int, log, batches, done: tuple[int, float] = (0, 0.0), on_step=None,
                skips=None, trained=None, max_steps: int | None = None, clock: PhaseClock | None = None
                ) -> tuple[int, float, int]:
    """One pass over this worker's `batches` (numpy; an `EpochBatcher` is told which rows each step trained);
    every worker stops on the same step. `done`: (steps, sum of global-batch losses) a resumed epoch already
    took; `on_step(step, n, loss_sum)`: after every step, on every rank (the mid-epoch checkpoint and
    validation cadence); `skips`: this worker's unusable samples so far, checked at log steps against
    data.max_skip_fraction of `samples`; `trained(epoch, step, keys)`: told each step's keys (run.record_keys);
    `max_steps`: the epoch's length where it is not the data's (a resampled epoch); `clock`: told where the
    time goes (`phases`; on GPU the step's phases are timed on logging steps only). -> (step, mean loss, steps
    of this epoch)."""
    it = to_device(batches, ctx.device, cfg.train.channels_last)
    mark = getattr(batches, "mark_trained", None)
    loss_sum, t_start, (n0, loss0) = torch.zeros((), device=ctx.device), time.perf_counter(), done
    n = n0
    bare = unwrap(objective)
    first_bad = torch.zeros(3, dtype=torch.long, device=ctx.device)  # image, text, loss: step first non-finite
    clock = clock or PhaseClock()
    waited0 = clock.seconds["epoch_start"] + clock.seconds["data_wait"]  # the log's share counts from here
    every_step = ctx.device.type != "cuda"  # a GPU step is timed only where a log line syncs anyway
    while max_steps is None or n < max_steps:
        t0 = time.perf_counter()
        batch = next(it, None)
        clock.add("epoch_start" if n == n0 else "data_wait", time.perf_counter() - t0)
        clock.milestone("batch")
        if all_reduce_min(int(batch is not None), ctx.device) == 0:
            break
        timed = every_step or (n + 1) % cfg.train.log_every == 0 or n == n0
        loss = train_step(objective, opt, sched, batch, ctx.rank, cfg.train, clock, timed)
        clock.count_step(timed)
        clock.milestone("step")
        step, n = step + 1, n + 1
        if mark is not None:
            mark(batch["pos"])
        if trained is not None:
            trained(epoch, step, batch["key"])
        loss_sum += loss  # no host sync and no collective on steps that are not logged
        flags = torch.cat([bare.take_nonfinite(ctx.device), ~torch.isfinite(loss)[None]])  # (3,)
        first_bad = torch.where((first_bad == 0) & flags, step, first_bad)
        # Log steps count from the epoch's start, so a resumed epoch logs where an uninterrupted one does (and its
        # own first step); the same steps on every rank: collectives.
        if n % cfg.train.log_every == 0 or n - n0 == 1:
            check_finite(first_bad, epoch)
            global_loss = float(all_reduce_mean(loss).item())  # the loss on the whole global batch
            if skips is not None:
                skips()
            if ctx.is_main:
                elapsed = time.perf_counter() - t_start
                log({"epoch": epoch, "step": step, "train/loss": global_loss,
                     **logit_scale_record(bare.loss),
                     "train/lr": sched.get_last_lr()[0],
                     "train/samples_per_s": (n - n0) * cfg.train.batch_size / elapsed,
                     "train/data_wait_share": (clock.seconds["epoch_start"] + clock.seconds["data_wait"]
                                               - waited0) / elapsed,
                     "train/peak_mem_mb": peak_memory_mb(ctx.device)}, f"{n}/{steps_per_epoch}")
        if on_step is not None:
            on_step(step, n, lambda: loss0 + float(all_reduce_mean(loss_sum).item()))
    check_finite(first_bad, epoch)
    # Workers hold equal shares, so the mean of their per-step means is the mean of the global-batch losses.
    total = loss0 + float(all_reduce_mean(loss_sum).item())
    return step, (total / n if n else float("nan")), n


def train_loop_per_worker(loop_cfg: dict) -> None:
    cfg = build(TrainJobConfig, loop_cfg["config"])
    started = mark_start("worker", dict(loop_cfg.get("start_marks") or {}))  # this launch's start, to the first step
    storage.configure(cfg.storage.endpoint_url, cfg.storage.region)
    tokenizer = tokenizer_from_dict(loop_cfg["tokenizer"])
    ctx = WorkerContext.from_ray()
    torch.manual_seed(cfg.train.seed)
    init = loop_cfg.get("init_from")  # a warm start: the weights come from that checkpoint, not the files
    model = build_model(cfg.model, len(tokenizer), vocab=getattr(tokenizer, "vocab", None),
                        image_size=cfg.data.image_size, max_tokens=tokenizer.max_tokens, load_files=init is None,
                        spec=checkpoint.read_spec(init) if init else None)
    loss, coverage = build_loss(cfg.loss), model.word_coverage  # coverage: None without a word-vector file
    warm_start.start_model(model, loss, init, keep_temperature=cfg.loss.temperature is not None)
    if coverage and ctx.is_main:
        say(f"[train] word vectors {coverage['path']}: {coverage['found']} of {coverage['vocab_words']} "
            f"vocabulary words found ({100 * coverage['fraction']:.1f}%)")
    head = FusionScorer.from_config(cfg.rerank, model.embed_dim) if cfg.rerank.enabled else None
    objective = speed_up(ContrastiveObjective(model, loss, head=head, head_weight=cfg.rerank.weight,
                                              head_negatives=cfg.rerank.negatives), cfg.train, ctx.device)
    steps_per_epoch = max(1, loop_cfg["n_train"] // cfg.train.batch_size)
    opt = make_optimizer(objective, cfg.train, cfg.model)
    sched = make_scheduler(opt, cfg.train.warmup_steps, steps_per_epoch * cfg.train.epochs)
    state = {"epoch": 0, "step": 0, "n_train": loop_cfg["n_train"], "samples": loop_cfg.get("samples", 0),
             "history": [], "steps": []}
    resume = resume_point(loop_cfg, ctx)
    if resume:
        checkpoint.load_weights(resume, model, loss, opt, sched, head)
        state = {"steps": [], **checkpoint.read_state(resume)}
    in_epoch = state.pop("in_epoch", None)  # a mid-epoch checkpoint: where each worker stood in that epoch
    if in_epoch and loop_cfg.get("drop_cursors"):  # other shards now (data.allow_changed_data): a new order
        in_epoch["workers"] = [{"tally": w["tally"]} for w in in_epoch["workers"]]
    if head is not None:
        state["head_dim"] = model.embed_dim  # what rerank.job.load builds the head with
    state["data_shards"] = loop_cfg["shard_names"]  # what a mid-epoch resume checks the data against
    state["data_shard_ids"] = loop_cfg.get("shard_ids", {})
    state["layout"], state["resampling"] = loop_cfg["layout"], loop_cfg.get("resampling")
    if in_epoch and len(in_epoch["workers"]) != ctx.world_size:
        raise ValueError(f"{resume} stopped mid-epoch with {len(in_epoch['workers'])} workers; resume it with "
                         f"scaling.num_workers={len(in_epoch['workers'])} (not {ctx.world_size}), or from an "
                         "epoch-end checkpoint")
    if ctx.is_main:
        record_attempt(loop_cfg, state["epoch"], resume)
    objective = ctx.prepare_model(objective, cfg.scaling.ddp_bucket_cap_mb)
    mark_start("model", started)
    steps_log: list[dict] = []  # per-step records travel in the checkpoint: rank 0 may be on any node
    record = KeyRecord(loop_cfg, ctx.rank, resume) if cfg.run.record_keys else None
    said_start: list[bool] = []  # the start's line, printed once, with the first step's log line

    def log(record: dict, progress: str) -> None:
        if "step" in started and not said_start:
            said_start.append(True)
            say(f"[train] {describe_start(started)}")
        say(f"[train] epoch {record['epoch']}/{cfg.train.epochs} step {progress} loss {record['train/loss']:.4f} "
            f"scale {record['train/logit_scale'] or 0:.1f} {record['train/samples_per_s']:.0f} samples/s "
            f"data-wait {100 * record['train/data_wait_share']:.0f}% peak-mem {record['train/peak_mem_mb']:.0f} MB")
        steps_log.append(record)

    def save(new_state: dict):
        return lambda path: checkpoint.write_checkpoint(
            path, model=model, loss=loss, optimizer=opt, scheduler=sched, tokenizer=tokenizer,
            config=loop_cfg["config"], state=new_state, head=head)

    import ray

    refs = loop_cfg.get("val_blocks")  # the prepared validation set, where the workers keep it in memory
    val_set = ValidationSet(ctx.rank, ctx.world_size, blocks=lambda: ray.get(refs)) if refs is not None else \
        ValidationSet(ctx.rank, ctx.world_size, stream=ctx.dataset_shard("val"))
    validates = lambda: ctx.is_main or val_set.split  # noqa: E731 (in memory, every rank embeds its slice)

    def run_validation(where: str) -> dict:
        val = val_set.run(model, tokenizer, ctx.device, loss=loss)
        if val is None:
            return {}
        say(f"[train] {where} val rsum {val['rsum']:.1f} i2t R@1 {val['i2t']['R@1']:.1f} "
            f"t2i R@1 {val['t2i']['R@1']:.1f}")
        return flat_metrics(val, "val")

    first = state["epoch"] + 1
    saved_first = in_epoch if in_epoch and in_epoch["epoch"] == first else None
    # The first epoch's reads start before the untrained model is validated, and run beside it.
    batches_of = partial(epoch_batches, loop_cfg, cfg, ctx.rank, ctx.world_size, tokenizer, device=ctx.device)
    upcoming = batches_of(first, saved_first["workers"][ctx.rank] if saved_first else None, prime=True) \
        if first <= cfg.train.epochs else None
    if state["epoch"] == 0 and cfg.eval.untrained and validates() and not state["history"]:
        untrained = val_set.run(model, tokenizer, ctx.device)
        if untrained is not None:
            state["history"].append({"epoch": 0, **flat_metrics(untrained, "val")})
            say(f"[train] untrained model: val rsum {untrained['rsum']:.1f}")
        mark_start("untrained", started)
    samples = state.get("samples", 0)
    source_names = [src["name"] for src in cfg.data.sources()]
    targets = mix_targets(cfg.data.sources(), cfg.data.sampling, loop_cfg.get("source_samples"))
    clock, last_checkpoint_s = PhaseClock(marks=started), 0.0
    for epoch in range(state["epoch"] + 1, cfg.train.epochs + 1):
        saved = in_epoch if in_epoch and in_epoch["epoch"] == epoch else None
        in_epoch = None
        clock.start()
        clock.add("checkpoint", last_checkpoint_s)  # the previous epoch's, written after its metrics were taken
        batches = upcoming if upcoming is not None else batches_of(epoch, saved["workers"][ctx.rank] if saved else None)

        def on_step(step: int, n: int, loss_sum, epoch=epoch, batches=batches) -> None:
            nonlocal state, steps_log
            every_ck, every_val = cfg.run.checkpoint_every_steps, cfg.eval.every_steps
            ck, val = bool(every_ck and step % every_ck == 0), bool(every_val and step % every_val == 0)
            if not (ck or val):
                return
            with clock("checkpoint", ck):
                workers = gather_objects(batches.state()) if ck else None  # collective: every rank is on this step
            mean = loss_sum() / n
            mid = {"epoch": epoch - 1, "step": step, "train/loss": mean, "epoch_progress": round(n / steps_per_epoch, 4)}
            if val and validates():
                with clock("validation"):
                    mid |= run_validation(f"epoch {epoch} step {step}:")
            if val and ctx.is_main:
                state["history"] = state["history"] + [{**mid, "epoch": round(epoch - 1 + n / steps_per_epoch, 4)}]
            new_state = {**state, "step": step, "steps": state["steps"] + steps_log,
                         "in_epoch": {"epoch": epoch, "steps": n, "loss_sum": mean * n, "workers": workers}}
            state, steps_log = {k: v for k, v in new_state.items() if k != "in_epoch"}, []
            report = {**state.get("metrics", {}), **mid}  # the last epoch's metrics too: Tune's metric stays there
            with clock("checkpoint", ck):
                ctx.report(report, save(new_state) if ck else None,
                           name=checkpoint.step_dir_name(epoch, step) if ck else None)

        check = skip_check(lambda b=batches: b.tally, samples, cfg.data.max_skip_fraction)
        step, mean_loss, n = train_epoch(objective, opt, sched, ctx, cfg, epoch, state["step"], steps_per_epoch,
                                         log, batches, (saved["steps"], saved["loss_sum"]) if saved else (0, 0.0),
                                         on_step, check, record,
                                         steps_per_epoch if cfg.data.sampling == "resampled" else None, clock)
        if check is not None:  # what the epoch's last steps read, checked too (collective, every rank raises)
            check()
        # The next epoch's reads start now, in the background, while this one validates and checkpoints.
        upcoming = batches_of(epoch + 1, None, prime=True) if epoch < cfg.train.epochs else None
        tallies = gather_objects({"tally": batches.tally.to_dict(), "mix": batches.mix.tolist()})
        skips = SkipTally.merged([t["tally"] for t in tallies])
        metrics = {"epoch": epoch, "step": step, "train/loss": mean_loss, "data/samples_used": n * cfg.train.batch_size,
                   "data/skipped": skips.skipped_samples(),
                   **mix_metrics(source_names, [t["mix"] for t in tallies], targets)}
        if ctx.is_main and len(source_names) > 1:
            say(f"[train] epoch {epoch} mix: {describe_mix(source_names, metrics)}")
        if samples and cfg.data.sampling == "epoch":  # usable samples no step took: the remainder of equal batches
            metrics["data/dropped_remainder"] = samples - skips.skipped_samples() - n * cfg.train.batch_size
        if coverage:
            metrics["model/word_coverage"] = coverage["fraction"]
        if validates():
            with clock("validation"):
                metrics |= run_validation(f"epoch {epoch}: loss {mean_loss:.4f}")
        if ctx.is_main:
            metrics |= phase_metrics(clock.breakdown())
            say(f"[train] epoch {epoch} took {describe_phases(metrics)}")
        state = {**state, "epoch": epoch, "step": step, "metrics": metrics, "skips": skips.to_dict(),
                 "history": state["history"] + [metrics], "steps": state["steps"] + steps_log}
        steps_log = []
        t0 = time.perf_counter()
        ctx.report(metrics, save(state), name=checkpoint.epoch_dir_name(epoch))
        last_checkpoint_s = time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------ driver


START_TIMEOUT_S = 60.0  # Ray Train's default RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S


@dataclass
class TrainResult:
    run_dir: str  # local path or s3:// URI
    checkpoint: str
    metrics: dict
    history: list = field(default_factory=list)
    data: dict = field(default_factory=dict)  # skipped samples by split and reason
    resumed_from: str | None = None
    attempts: int = 0  # worker-group starts in this launch: 1 plus the worker failures recovered from
    examples: dict = field(default_factory=dict)  # a few skipped keys by split and reason


def run(cfg: TrainJobConfig, callbacks: list | None = None, shared_scan=None, lock_wait_s: float = 0.0
        ) -> TrainResult:
    """Train `cfg` on the connected Ray cluster; resumes when the run directory already has a checkpoint.
    `callbacks` go to Ray Train's RunConfig (a Tune trial passes its TuneReportCallback); `shared_scan`: a
    sweep's vocabulary scan (`training_set.VocabularyScan`), which its trials share. The run directory is this
    launch's alone while it trains (`run_lock`): a second launch on the same run.name refuses (`lock_wait_s`: or
    waits that long for an S3 lock's lease to lapse)."""
    from pipeline.training.run_lock import RunLock

    storage.configure(cfg.storage.endpoint_url, cfg.storage.region)
    run_dir = cfg.run.run_dir() if storage.is_remote(cfg.run.run_dir()) else str(Path(cfg.run.run_dir()).resolve())
    with RunLock(run_dir, wait_s=lock_wait_s):
        return _train(cfg, callbacks, shared_scan, run_dir)


def _train(cfg: TrainJobConfig, callbacks: list | None, shared_scan, run_dir: str) -> TrainResult:
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipeline.training import validation
    from pipeline.cluster import check_resources, settle_one_node_train_env
    from pipeline.data import decoded_cache, ingest
    from pipeline.data.counts import count_or_read

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
    if latest is not None:
        state = checkpoint.read_state(latest)
        if state["epoch"] >= cfg.train.epochs:
            print(f"[train] {cfg.run.name} already trained {state['epoch']} epochs: using {latest}")
            return TrainResult(run_dir, latest, state.get("metrics", {}), state.get("history", []), {}, latest)
        where = (f"inside epoch {state['in_epoch']['epoch']} of {cfg.train.epochs}, at step {state['step']}"
                 if state.get("in_epoch") else f"epoch {state['epoch']} of {cfg.train.epochs}")
        print(f"[train] resuming {cfg.run.name} from {latest} ({where})")
    data = training_set.prepare(cfg, latest, init, shared_scan)
    mark_start("data")
    tokenizer, n_train, train_shards, val_shards = data.tokenizer, data.n_train, data.train, data.val
    by_path = shard_names(train_shards.paths)
    names = list(by_path.values())
    ids = {by_path[p]: fp for p, fp in storage.fingerprints(train_shards.paths).items()}
    drop_cursors = check_resume_data(cfg, latest, names, ids)
    for note in data.notes:
        print(f"[data] {note}")
    if cfg.data.sampling == "resampled":
        mix = ", ".join(f"{src['name']} weight {src['weight']:g}" for src in cfg.data.sources())
        print(f"[train] resampled epochs of {n_train} samples, shards drawn with replacement from "
              f"{len(train_shards.paths)} ({mix}), {vocabulary.describe(tokenizer)}, "
              f"{n_train // cfg.train.batch_size} steps/epoch on {cfg.scaling.num_workers} workers")
    else:
        print(f"[train] {n_train} training samples ({_SOURCES[data.source]}), {vocabulary.describe(tokenizer)}, "
              f"{n_train // cfg.train.batch_size} steps/epoch on {cfg.scaling.num_workers} workers")
    if latest is None and (init or cfg.model.arch or cfg.model.image.weights or cfg.model.text.arch.startswith("hf:")):
        print(warm_start.describe(init, cfg))

    why = checkpoint.set_aside_damaged_ray_snapshot(run_dir)
    if why:
        print(f"[train] Ray's list of checkpoints in {run_dir}/checkpoints was damaged ({why}): set aside as "
              f"{checkpoint.RAY_SNAPSHOT}.damaged; resuming from {latest or 'the start'}")
    cache = decoded_cache.start(cfg.data, sum(data.shard_counts.values()) or data.samples or n_train)
    val_skips = SkipTally()
    for split, shards in (("train", train_shards), ("val", val_shards)):
        if shards.missing:
            print(f"[data] {split}: {len(shards.missing)} shard(s) of the brace list are missing, skipped")
    if val_shards.missing:
        val_skips.add("missing_shard", val_shards.missing)
    # Training data is read by each worker itself (epoch_data). A validation set the workers keep in memory is
    # prepared by tasks started now, beside the worker group's start, which hand back its skipped samples with
    # it; otherwise Ray Train hands rank 0 a dataset to stream, whose tasks report skips to a skip log.
    datasets, val_blocks, val_skip_refs, skip_log = {}, None, [], None
    if validation.in_memory(cfg.data.cache_decoded, count_or_read(val_shards.paths), cfg.data.image_size):
        val_blocks, val_skip_refs = ingest.eval_shard_tasks(val_shards.paths, cfg.data.image_size,
                                                            view=transforms.image_view(cfg.data))
    else:
        skip_log = SkipLog.start()
        datasets = {"val": ingest.eval_dataset(val_shards.paths, cfg.data.image_size, skip_log,
                                               view=transforms.image_view(cfg.data))}
        datasets["val"].context.enable_progress_bars = False  # bars drawn inside workers garble the progress lines
    fs, storage_path = storage.arrow_filesystem(run_dir)
    launch = uuid.uuid4().hex  # tells this launch's worker-group restarts from an earlier launch's
    mark_start("fit")  # from here Ray Train builds and starts the worker group
    trainer = TorchTrainer(
        train_loop_per_worker,
        # The driver picks the checkpoint to resume from (the newest complete one in storage) rather than
        # Ray's own run snapshot, which lags behind a checkpoint that was uploaded just before a crash;
        # workers restarted after a failure look again (resume_point).
        train_loop_config={"config": to_dict(cfg), "tokenizer": tokenizer.to_dict(), "n_train": n_train,
                           "samples": data.samples, "resume_from": latest,
                           "train_paths": [p if storage.is_remote(p) else os.path.abspath(p) for p in train_shards.paths],
                           "shard_counts": {p if storage.is_remote(p) else os.path.abspath(p): n for p, n in data.shard_counts.items()}, "shard_names": names, "shard_ids": ids, "drop_cursors": drop_cursors,
                           "layout": state_layout(latest, data.layout), "shard_sources": data.shard_sources,
                           "source_samples": data.source_samples,
                           "resampling": data.resampling.to_dict() if data.resampling else None,
                           "run_dir": run_dir, "launch": launch, "config_changes": changes, "init_from": init,
                           "decoded_cache": cache, "val_blocks": val_blocks, "start_marks": start_marks()},
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
    try:
        trainer.fit()
    except Exception as e:  # Ray wraps the worker's exception; surface its message, not Ray's stack
        sc = cfg.scaling
        need = f"{sc.num_workers} workers of {sc.cpus_per_worker:g} CPU" + (" and 1 GPU" if sc.use_gpu else "")
        raise RuntimeError(explain_failure(e, count_attempts(run_dir, launch), cfg.run.max_failures,
                                           checkpoint.find_latest(run_dir), need)) from e
    ckpt = checkpoint.find_latest(run_dir)
    if ckpt is None:
        raise RuntimeError(f"training finished without a checkpoint under {run_dir}")
    state = checkpoint.read_state(ckpt)
    storage.write_text(storage.join(run_dir, "metrics.jsonl"),
                       "".join(json.dumps(r) + "\n" for r in state.get("steps", [])))
    attempts = count_attempts(run_dir, launch)
    if attempts > 1:
        print(f"[train] recovered from {attempts - 1} worker failure(s) (run.max_failures="
              f"{cfg.run.max_failures}); each restart resumed from the last checkpoint")
    train_skips = SkipTally.from_dict(state.get("skips"))
    if train_shards.missing:
        train_skips.add("missing_shard", train_shards.missing)
    try:  # bookkeeping never fails a finished run: skips that cannot be read back are left out
        for by_reason in ray.get(val_skip_refs, timeout=60):
            val_skips.add_keys(by_reason)
    except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
        pass
    if skip_log is not None:
        val_skips.add_keys(skip_log.read().get("val", {}))
    skips = {"train": train_skips, "val": val_skips}
    return TrainResult(run_dir, ckpt, state.get("metrics", {}), state.get("history", []),
                       {split: t.counts for split, t in skips.items() if t.counts}, latest, attempts,
                       {split: t.examples for split, t in skips.items() if t.counts})


_SOURCES = {"stats": "img2dataset stats", "parquet": "Parquet footers", "num_samples": "data.num_samples",
            "pass": "counted", "checkpoint": "as the checkpoint planned"}
