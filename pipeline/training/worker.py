"""What every Ray Train worker runs: `train_loop_per_worker` builds the model, loss and optimiser from the
driver's `WorkerPlan`, picks up where the run stands (a checkpoint's `TrainState`, or a fresh one), and hands
them to `loop.TrainLoop`. Ray Train restarts this function on every worker after a failure."""
from __future__ import annotations

from dataclasses import replace

import torch

from pipeline import checkpoint, storage
from pipeline.data.formats import files
from pipeline.config import TrainJobConfig, build
from pipeline.console import mark_start, prefix_lines, say
from pipeline.data.text.subword import tokenizer_from_dict
from pipeline.distributed import WorkerContext
from pipeline.losses import build_loss
from pipeline.models import build_model, memory
from pipeline.rerank.fusion import FusionScorer
from pipeline.training import sharding, warm_start
from pipeline.training.attempts import record_attempt, resume_point
from pipeline.training.loop import TrainLoop, WorkerParts, epoch_steps
from pipeline.training.objective import ContrastiveObjective
from pipeline.training.optimisation import make_optimizer, make_scheduler, speed_up
from pipeline.training.plan import TrainState, WorkerPlan


def train_loop_per_worker(config: dict) -> None:
    plan: WorkerPlan = config["plan"]
    cfg = build(TrainJobConfig, plan.config)
    started = mark_start("worker", dict(plan.start_marks))  # this launch's start, to the first step
    prefix_lines(plan.console_prefix)
    storage.configure(cfg.storage.endpoint_url, cfg.storage.region)
    files.configure(cfg.data)  # a CSV's columns (data.csv_*), for every read in this process
    ctx = WorkerContext.from_ray()
    torch.manual_seed(cfg.train.seed)
    parts = build_parts(plan, cfg, ctx)
    state, in_epoch, resumed_from = resume(plan, ctx, parts)
    if ctx.is_main:
        record_attempt(plan, state.epoch, resumed_from)
    parts = prepare(parts, plan, cfg, ctx)
    mark_start("model", started)
    TrainLoop(plan, cfg, ctx, parts, state, in_epoch, resumed_from, started).run()


def build_parts(plan: WorkerPlan, cfg: TrainJobConfig, ctx: WorkerContext) -> WorkerParts:
    """The towers (from their files, or a warm start's checkpoint), the loss, the fusion head, and the
    optimiser and schedule over all of them."""
    tokenizer = tokenizer_from_dict(plan.tokenizer)
    init = plan.init_from
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
    opt = make_optimizer(objective, cfg.train, cfg.model)
    return WorkerParts(model, loss, head, objective, opt, schedule_for(opt, plan, cfg), tokenizer, coverage)


def schedule_for(opt, plan: WorkerPlan, cfg: TrainJobConfig):
    """The warmup + cosine schedule over the run's steps, for `opt`."""
    total = epoch_steps(plan.n_train, cfg.train.batch_size) * cfg.train.epochs
    return make_scheduler(opt, cfg.train.warmup_steps, total)


def prepare(parts: WorkerParts, plan: WorkerPlan, cfg: TrainJobConfig, ctx: WorkerContext) -> WorkerParts:
    """DDP over the objective; or, with scaling.strategy=fsdp and more than one worker, the towers sharded
    (`sharding`) and the optimiser and schedule rebuilt over the shards, with the state they had."""
    if cfg.scaling.strategy != "fsdp" or ctx.world_size == 1:
        return replace(parts, objective=ctx.prepare_model(parts.objective, cfg.scaling.ddp_bucket_cap_mb))
    split = plan.val_blocks is not None  # every rank validates its slice of a set kept in memory
    whole = sharding.ValidationCopy(parts.model, keep=ctx.is_main or split, everyone=split)
    objective = sharding.shard_objective(parts.objective, ctx.device)
    opt = make_optimizer(objective, cfg.train, cfg.model)
    sched = schedule_for(opt, plan, cfg)
    sharding.move_optimizer(parts.opt, opt)
    sched.load_state_dict(parts.sched.state_dict())
    if ctx.is_main:
        units = sum(len(memory.shard_units(t)) for t in (parts.model.image_tower, parts.model.text_tower))
        say(f"[train] FSDP: the towers sharded across {ctx.world_size} workers ({units} blocks gathered one at a "
            "time); checkpoints are written whole")
    return replace(parts, objective=objective, opt=opt, sched=sched, whole=whole)


def resume(plan: WorkerPlan, ctx: WorkerContext, parts: WorkerParts
           ) -> tuple[TrainState, dict | None, str | None]:
    """Where this start of the worker group begins: the newest complete checkpoint's weights and state
    (`attempts.resume_point`), or a fresh state. -> (state, where each worker stood in an interrupted epoch,
    the checkpoint resumed from)."""
    state = TrainState(n_train=plan.n_train, samples=plan.samples)
    resumed_from = resume_point(plan.run_dir, ctx)
    if resumed_from:
        checkpoint.load_weights(resumed_from, parts.model, parts.loss, parts.opt, parts.sched, parts.head)
        state = TrainState.from_dict(checkpoint.read_state(resumed_from))
    in_epoch = state.in_epoch  # a mid-epoch checkpoint: where each worker stood in that epoch
    if in_epoch and plan.drop_cursors:  # other shards now (data.allow_changed_data): a new order
        in_epoch = {**in_epoch, "workers": [{"tally": w["tally"]} for w in in_epoch["workers"]]}
    if in_epoch and len(in_epoch["workers"]) != ctx.world_size:
        raise ValueError(f"{resumed_from} stopped mid-epoch with {len(in_epoch['workers'])} workers; resume it "
                         f"with scaling.num_workers={len(in_epoch['workers'])} (not {ctx.world_size}), or from an "
                         "epoch-end checkpoint")
    shards = plan.shards
    state = replace(state, in_epoch=None, data_shards=shards.names, data_shard_ids=shards.ids,
                    layout=shards.layout, resampling=shards.resampling,
                    head_dim=parts.model.embed_dim if parts.head is not None else state.head_dim)
    return state, in_epoch, resumed_from
