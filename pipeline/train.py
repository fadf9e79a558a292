"""Contrastive training on Ray Train: `run(cfg)` builds the datasets and the TorchTrainer; the per-worker loop
embeds its shard of the global batch, all-gathers embeddings with gradients, and steps.

    pipeline train --config configs/demo.yaml --set train.epochs=3
"""
from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pipeline import checkpoint, storage
from pipeline.attempts import check_resume_config, count_attempts, explain_failure, record_attempt, resume_point
from pipeline.config import TrainJobConfig, build, narrow, to_dict
from pipeline.console import phase, say
from pipeline.data import transforms, vocabulary
from pipeline.data.subword import tokenizer_from_dict
from pipeline.data.tokenizer import Tokenizer
from pipeline.distributed import WorkerContext, all_reduce_max, all_reduce_mean, all_reduce_min
from pipeline.encoder import embed_gallery
from pipeline.losses import build_loss
from pipeline.metrics import flat_metrics, retrieval_metrics
from pipeline.models import build_model
from pipeline.objective import ContrastiveObjective, backward_step, unwrap
from pipeline import warm_start


def make_optimizer(module: nn.Module, cfg, model_cfg=None) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms, embeddings and scalars (decaying them only hurts). With
    `model_cfg`, each tower's own weights get train.lr times its model.<tower>.lr_mult (projections, the loss's
    scale and everything else keep train.lr); the scheduler scales every group alike."""
    no_decay = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    mult: dict[int, float] = {}
    inner = unwrap(module)  # a TwoTower, or the objective holding one
    model = inner if hasattr(inner, "image_tower") else getattr(inner, "model", None)
    if model_cfg is not None and model is not None:
        for tower, m in ((model.image_tower, model_cfg.image.lr_mult), (model.text_tower, model_cfg.text.lr_mult)):
            mult |= {id(p): m for p in tower.parameters()}
    groups: dict[tuple[bool, float], list] = {}
    for p in module.parameters():
        if p.requires_grad:
            groups.setdefault((p.ndim >= 2 and id(p) not in no_decay, mult.get(id(p), 1.0)), []).append(p)
    return torch.optim.AdamW([{"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0, "lr": cfg.lr * m}
                              for (decay, m), ps in sorted(groups.items(), key=lambda kv: (not kv[0][0], -kv[0][1]))],
                             lr=cfg.lr)


def make_scheduler(opt: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to the peak LR, then cosine decay to zero at `total` steps."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def validate(model, tokenizer: Tokenizer, shard, device, eval_batch: int = 256, loss=None) -> dict:
    maps = loss.retrieval_maps() if hasattr(loss, "retrieval_maps") else None
    if maps is not None:  # deep CCA: retrieve in the canonical space its statistics define
        model.set_retrieval_maps(*maps)
    model.eval()
    with torch.no_grad():
        gallery = embed_gallery(
            lambda px: model.encode_image(torch.as_tensor(px).to(device)).float().cpu(),
            lambda caps: model.encode_text(torch.from_numpy(tokenizer.encode_batch(caps)).to(device)).float().cpu(),
            shard.iter_batches(batch_size=eval_batch, batch_format="numpy"))
    model.train()
    return retrieval_metrics(gallery.image_emb, gallery.text_emb, gallery.text_to_image)


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory on GPU; on CPU the process's peak resident set (what the OS had to give it)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def iterate_epoch(shard, cfg: TrainJobConfig, device, epoch: int, rank: int):
    """This worker's batches for one epoch, {'key': (b,) str, 'image': (b,3,S,S) uint8, 'tokens': (b,L)
    int64}: equal-sized local batches (the last partial one is dropped, so every worker takes the same
    number of steps), prefetched while the previous step runs."""
    buffer = cfg.data.shuffle_buffer
    if device.type == "cuda":  # pinned host memory lets the copy overlap the previous step
        to = lambda a: torch.from_numpy(a).pin_memory().to(device, non_blocking=True)  # noqa: E731
    else:
        to = torch.from_numpy
    fmt = torch.channels_last if device.type == "cuda" and cfg.train.channels_last else torch.contiguous_format
    for batch in shard.iter_batches(
            batch_size=cfg.local_batch_size(), drop_last=True, batch_format="numpy", prefetch_batches=4,
            local_shuffle_buffer_size=buffer or None,
            local_shuffle_seed=(cfg.train.seed * 1_000_003 + epoch * 1_009 + rank) % 2**31 if buffer else None):
        yield {"key": batch["key"], "image": to(batch["image"]).contiguous(memory_format=fmt),
               "tokens": to(batch["tokens"])}


def logit_scale_record(loss: nn.Module) -> dict:
    """The effective logit scale the loss multiplies by, and its raw parameter (log scale), for the logs."""
    if not hasattr(loss, "scale"):
        return {"train/logit_scale": None}
    with torch.no_grad():
        return {"train/logit_scale": loss.scale().item(), "train/logit_scale_param": loss.logit_scale.item()}


def train_step(objective, opt, sched, batch: dict, rank: int, cfg) -> torch.Tensor:
    """One optimisation step on this worker's share of the global batch (`cfg`: the train section).
    -> the loss on the device, detached; no host sync."""
    opt.zero_grad(set_to_none=True)
    loss = backward_step(objective, batch["image"], batch["tokens"], rank, cfg.micro_batch_size)
    if cfg.grad_clip > 0:
        nn.utils.clip_grad_norm_(objective.parameters(), cfg.grad_clip)
    opt.step()
    sched.step()
    bare = unwrap(objective)
    if hasattr(bare.loss, "clamp_parameters_"):  # the logit-scale cap, after the step (see losses._LearnedScale)
        bare.loss.clamp_parameters_()
    return loss


def speed_up(objective: ContrastiveObjective, cfg, device: torch.device) -> ContrastiveObjective:
    """Settings that change speed, not the maths (`cfg`: the train section): bf16 autocast of the towers,
    channels_last convolutions on GPU, compiled towers (compiled in place: state-dict keys, and so
    checkpoints, stay the same)."""
    dtype = cfg.autocast_dtype(device.type)
    objective.autocast_dtype = getattr(torch, dtype) if dtype else None
    model = objective.model
    if device.type == "cuda" and cfg.channels_last:
        model.image_tower.to(memory_format=torch.channels_last)
    if cfg.compile:
        model.image_tower.compile()
        model.text_tower.compile()
    return objective


NONFINITE = ("the image tower's embeddings", "the text tower's embeddings", "the loss")


def check_finite(first_bad: torch.Tensor, epoch: int) -> None:
    """first_bad (3,): the first step at which the image embeddings, the text embeddings or the loss were NaN
    or inf on any worker (0: never). A diverged run stops here rather than training on and scoring NaNs.
    Collective: every rank calls it on the same steps, and every rank raises together."""
    bad = all_reduce_max(first_bad).tolist()
    if any(bad):
        what, at = min(((NONFINITE[i], s) for i, s in enumerate(bad) if s), key=lambda p: p[1])
        raise FloatingPointError(
            f"training diverged: {what} became non-finite (NaN or inf) at step {at} (epoch {epoch}); lower "
            "train.lr, keep train.grad_clip > 0, use train.precision=fp32, or resume from an earlier checkpoint")


def train_epoch(objective, opt, sched, ctx: WorkerContext, cfg: TrainJobConfig, epoch: int, step: int,
                steps_per_epoch: int, log, check_skips=None) -> tuple[int, float, int]:
    """One pass over this worker's shard; every worker stops on the same step. -> (step, mean loss, steps)."""
    it = iterate_epoch(ctx.dataset_shard("train"), cfg, ctx.device, epoch, ctx.rank)
    loss_sum, t_wait, t_start, n = torch.zeros((), device=ctx.device), 0.0, time.perf_counter(), 0
    bare = unwrap(objective)
    first_bad = torch.zeros(3, dtype=torch.long, device=ctx.device)  # image, text, loss: step first non-finite
    while True:
        t0 = time.perf_counter()
        batch = next(it, None)
        t_wait += time.perf_counter() - t0
        if all_reduce_min(int(batch is not None), ctx.device) == 0:
            break
        loss = train_step(objective, opt, sched, batch, ctx.rank, cfg.train)
        step, n = step + 1, n + 1
        loss_sum += loss  # no host sync and no collective on steps that are not logged
        flags = torch.cat([bare.take_nonfinite(ctx.device), ~torch.isfinite(loss)[None]])  # (3,)
        first_bad = torch.where((first_bad == 0) & flags, step, first_bad)
        if n % cfg.train.log_every == 0 or n == 1:  # the same steps on every rank: the all-reduce is collective
            check_finite(first_bad, epoch)
            global_loss = float(all_reduce_mean(loss).item())  # the loss on the whole global batch
            if not ctx.is_main:
                continue
            if check_skips is not None:
                check_skips()
            elapsed = time.perf_counter() - t_start
            log({"epoch": epoch, "step": step, "train/loss": global_loss,
                 **logit_scale_record(bare.loss),
                 "train/lr": sched.get_last_lr()[0],
                 "train/samples_per_s": n * cfg.train.batch_size / elapsed,
                 "train/data_wait_share": t_wait / elapsed,
                 "train/peak_mem_mb": peak_memory_mb(ctx.device)}, f"{n}/{steps_per_epoch}")
    check_finite(first_bad, epoch)
    # Workers hold equal shares, so the mean of their per-step means is the mean of the global-batch losses.
    return step, (float(all_reduce_mean(loss_sum / n).item()) if n else float("nan")), n


def skip_checker(ctx: WorkerContext, loop_cfg: dict, max_fraction: float):
    """-> a callable that raises once the distinct unusable training samples exceed `max_fraction` of all
    samples. Skips only grow, so crossing the line mid-epoch already decides the epoch's share."""
    samples, counter = loop_cfg.get("samples", 0), loop_cfg.get("counter")
    if counter is None or not samples:
        return None

    def check() -> int | None:
        skipped = ctx.count_skipped(counter)
        if skipped is None:
            return None  # the counter is gone with its node: the check waits for one that answers
        if skipped > max_fraction * samples:
            raise ValueError(
                f"{skipped} of {samples} training samples ({100 * skipped / samples:.1f}%) are unusable, more "
                f"than data.max_skip_fraction={max_fraction}; see the reasons with `pipeline data inspect "
                f"<data.train>`, fix or drop those shards, or raise data.max_skip_fraction")
        return skipped

    return check


def train_loop_per_worker(loop_cfg: dict) -> None:
    cfg = build(TrainJobConfig, loop_cfg["config"])
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
    objective = speed_up(ContrastiveObjective(model, loss), cfg.train, ctx.device)
    steps_per_epoch = max(1, loop_cfg["n_train"] // cfg.train.batch_size)
    opt = make_optimizer(objective, cfg.train, cfg.model)
    sched = make_scheduler(opt, cfg.train.warmup_steps, steps_per_epoch * cfg.train.epochs)
    state = {"epoch": 0, "step": 0, "n_train": loop_cfg["n_train"], "samples": loop_cfg.get("samples", 0),
             "history": [], "steps": []}
    resume = resume_point(loop_cfg, ctx)
    if resume:
        checkpoint.load_weights(resume, model, loss, opt, sched)
        state = {"steps": [], **checkpoint.read_state(resume)}
    if ctx.is_main:
        record_attempt(loop_cfg, state["epoch"], resume)
    objective = ctx.prepare_model(objective, cfg.scaling.ddp_bucket_cap_mb)
    check_skips = skip_checker(ctx, loop_cfg, cfg.data.max_skip_fraction)
    steps_log: list[dict] = []  # per-step records travel in the checkpoint: rank 0 may be on any node

    def log(record: dict, progress: str) -> None:
        say(f"[train] epoch {record['epoch']}/{cfg.train.epochs} step {progress} loss {record['train/loss']:.4f} "
            f"scale {record['train/logit_scale'] or 0:.1f} {record['train/samples_per_s']:.0f} samples/s "
            f"data-wait {100 * record['train/data_wait_share']:.0f}% peak-mem {record['train/peak_mem_mb']:.0f} MB")
        steps_log.append(record)

    if state["epoch"] == 0 and ctx.is_main and not state["history"]:
        untrained = validate(model, tokenizer, ctx.dataset_shard("val"), ctx.device)
        state["history"].append({"epoch": 0, **flat_metrics(untrained, "val")})
        say(f"[train] untrained model: val rsum {untrained['rsum']:.1f}")
    for epoch in range(state["epoch"] + 1, cfg.train.epochs + 1):
        step, mean_loss, n = train_epoch(objective, opt, sched, ctx, cfg, epoch, state["step"], steps_per_epoch,
                                         log, check_skips)
        metrics = {"epoch": epoch, "step": step, "train/loss": mean_loss,
                   "data/samples_used": n * cfg.train.batch_size}
        if coverage:
            metrics["model/word_coverage"] = coverage["fraction"]
        if ctx.is_main:
            if check_skips is not None:
                skipped = check_skips()
                # Usable samples that no step took: the remainder of equal per-worker batches (reshuffled,
                # so a different few each epoch).
                if skipped is not None:
                    metrics["data/skipped"] = skipped
                    metrics["data/dropped_remainder"] = state["samples"] - skipped - n * cfg.train.batch_size
            val = validate(model, tokenizer, ctx.dataset_shard("val"), ctx.device, loss=loss)
            metrics |= flat_metrics(val, "val")
            say(f"[train] epoch {epoch}: loss {mean_loss:.4f} val rsum {val['rsum']:.1f} "
                f"i2t R@1 {val['i2t']['R@1']:.1f} t2i R@1 {val['t2i']['R@1']:.1f}")
        state = {**state, "epoch": epoch, "step": step, "metrics": metrics,
                 "history": state["history"] + [metrics], "steps": state["steps"] + steps_log}
        steps_log = []
        ctx.report(metrics, lambda path: checkpoint.write_checkpoint(
            path, model=model, loss=loss, optimizer=opt, scheduler=sched, tokenizer=tokenizer,
            config=loop_cfg["config"], state=state), name=checkpoint.epoch_dir_name(epoch))


# ------------------------------------------------------------------------------------------------ driver


START_TIMEOUT_S = 60.0  # Ray Train's default RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S


@dataclass
class TrainResult:
    run_dir: str  # local path or s3:// URI
    checkpoint: str
    metrics: dict
    history: list = field(default_factory=list)
    data: dict = field(default_factory=dict)  # skipped sample keys by split and reason
    resumed_from: str | None = None
    attempts: int = 0  # worker-group starts in this launch: 1 plus the worker failures recovered from


def _prepare_data(cfg: TrainJobConfig, latest: str | None, init: str | None = None):
    """(tokenizer, usable samples, all samples, train shards, val shards), before any training."""
    from pipeline.data import ingest, vocabulary

    train, val = ingest.resolve_shards(cfg.data.train, "data.train"), ingest.resolve_shards(cfg.data.val, "data.val")
    if latest is not None:  # the vocabulary must be the one the weights were trained with
        state = checkpoint.read_state(latest)
        return checkpoint.read_tokenizer(latest), state["n_train"], state.get("samples", 0), train, val
    builds = init is None and cfg.data.tokenizer != "pretrained"  # else the captions are only counted
    with phase(f"{'vocabulary' if builds else 'caption'} pass over {len(train.paths)} training shards"):
        scan = ingest.scan_training_data(train.paths, cfg.data)
    if scan.usable < cfg.train.batch_size:
        raise ValueError(f"data.train has {scan.usable} captioned samples, fewer than train.batch_size="
                         f"{cfg.train.batch_size}; add data or lower the batch size")
    if init is not None:  # the start weights' own ids
        tokenizer = checkpoint.read_tokenizer(init)
    elif cfg.data.tokenizer == "word":
        tokenizer = scan.tokenizer
    else:
        tokenizer = vocabulary.make_tokenizer(cfg.data, cfg.model, scan.counts)
    return tokenizer, scan.usable, scan.samples, train, val


def run(cfg: TrainJobConfig, callbacks: list | None = None) -> TrainResult:
    """Train `cfg` on the connected Ray cluster; resumes when the run directory already has a checkpoint.
    `callbacks` go to Ray Train's RunConfig (a Tune trial passes its TuneReportCallback)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipeline.data import ingest

    from pipeline.cluster import check_resources

    storage.configure(cfg.storage.endpoint_url, cfg.storage.region)
    check_resources(cfg.scaling)  # before any pass over the data: a request that cannot fit would wait forever
    run_dir = cfg.run.run_dir() if storage.is_remote(cfg.run.run_dir()) else str(Path(cfg.run.run_dir()).resolve())
    resolved, init = warm_start.resolve(narrow(cfg, TrainJobConfig))
    full = to_dict(cfg) | to_dict(resolved)
    cfg = resolved  # a RunJobConfig's extra sections stay on the driver
    latest = checkpoint.find_latest(run_dir, verify=True)  # a damaged newest checkpoint: the one before
    changes = check_resume_config(cfg, latest)
    storage.write_text(storage.join(run_dir, "config.json"), json.dumps(full, indent=2))
    if latest is not None:
        state = checkpoint.read_state(latest)
        if state["epoch"] >= cfg.train.epochs:
            print(f"[train] {cfg.run.name} already trained {state['epoch']} epochs: using {latest}")
            return TrainResult(run_dir, latest, state.get("metrics", {}), state.get("history", []), {}, latest)
        print(f"[train] resuming {cfg.run.name} from {latest} (epoch {state['epoch']} of {cfg.train.epochs})")
    tokenizer, n_train, samples, train_shards, val_shards = _prepare_data(cfg, latest, init)
    print(f"[train] {n_train} training samples, {vocabulary.describe(tokenizer)}, "
          f"{n_train // cfg.train.batch_size} steps/epoch on {cfg.scaling.num_workers} workers")
    if latest is None and (init or cfg.model.arch or cfg.model.image.weights or cfg.model.text.arch.startswith("hf:")):
        print(warm_start.describe(init, cfg))

    why = checkpoint.set_aside_damaged_ray_snapshot(run_dir)
    if why:
        print(f"[train] Ray's list of checkpoints in {run_dir}/checkpoints was damaged ({why}): set aside as "
              f"{checkpoint.RAY_SNAPSHOT}.damaged; resuming from {latest or 'the start'}")
    counter = ingest.skip_counter()
    for split, shards in (("train", train_shards), ("val", val_shards)):
        if shards.missing:
            print(f"[data] {split}: {len(shards.missing)} shard(s) of the brace list are missing, skipped")
            counter.add_missing_shards.remote(split, shards.missing)
    datasets = {"train": ingest.train_dataset(train_shards.paths, tokenizer, cfg.data, cfg.train.seed, counter),
                "val": ingest.eval_dataset(val_shards.paths, cfg.data.image_size, counter,
                                           view=transforms.image_view(cfg.data))}
    for ds in datasets.values():  # bars drawn inside workers garble the progress lines; those stay
        ds.context.enable_progress_bars = False
    fs, storage_path = storage.arrow_filesystem(run_dir)
    launch = uuid.uuid4().hex  # tells this launch's worker-group restarts from an earlier launch's
    trainer = TorchTrainer(
        train_loop_per_worker,
        # The driver picks the checkpoint to resume from (the newest complete one in storage) rather than
        # Ray's own run snapshot, which lags behind a checkpoint that was uploaded just before a crash;
        # workers restarted after a failure look again (resume_point).
        train_loop_config={"config": to_dict(cfg), "tokenizer": tokenizer.to_dict(), "n_train": n_train,
                           "samples": samples, "counter": counter, "resume_from": latest,
                           "run_dir": run_dir, "launch": launch, "config_changes": changes, "init_from": init},
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
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    try:
        trainer.fit()
    except Exception as e:  # Ray wraps the worker's exception; surface its message, not Ray's stack
        raise RuntimeError(explain_failure(e, count_attempts(run_dir, launch), cfg.run.max_failures)) from e
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
    return TrainResult(run_dir, ckpt, state.get("metrics", {}), state.get("history", []),
                       ingest.read_skips(counter), latest, attempts)
