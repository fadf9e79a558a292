"""Contrastive training on Ray Train: `run(cfg)` builds the datasets and the TorchTrainer; the per-worker loop
embeds its shard of the global batch, all-gathers embeddings with gradients, and steps.

    pipeline train --config configs/demo.yaml --set train.epochs=3
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pipeline import checkpoint
from pipeline.config import TrainJobConfig, build, narrow, to_dict
from pipeline.data.tokenizer import Tokenizer
from pipeline.distributed import WorkerContext, all_reduce_mean, all_reduce_min
from pipeline.encoder import embed_gallery
from pipeline.losses import build_loss
from pipeline.metrics import flat_metrics, retrieval_metrics
from pipeline.models import build_model
from pipeline.objective import ContrastiveObjective, backward_step


def say(line: str) -> None:
    """One progress line to the driver. Ray Train patches `print` into its logger, which echoes each line
    twice; writing to stdout directly echoes it once."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def make_optimizer(module: nn.Module, cfg) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms, embeddings and scalars (decaying them only hurts)."""
    no_decay = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    decay, rest = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and id(p) not in no_decay else rest).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=cfg.lr)


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


def _batches(shard, cfg: TrainJobConfig, device):
    return iter(shard.iter_torch_batches(
        batch_size=cfg.local_batch_size(), drop_last=True, device=device, prefetch_batches=4,
        local_shuffle_buffer_size=cfg.data.shuffle_buffer or None))


def train_epoch(objective, opt, sched, ctx: WorkerContext, cfg: TrainJobConfig, epoch: int, step: int,
                steps_per_epoch: int, log) -> tuple[int, float]:
    """One pass over this worker's shard; every worker stops on the same step. -> (step, mean loss)."""
    it = _batches(ctx.dataset_shard("train"), cfg, ctx.device)
    loss_sum, t_wait, t_start, n = torch.zeros((), device=ctx.device), 0.0, time.perf_counter(), 0
    loss_module = objective.module.loss if hasattr(objective, "module") else objective.loss
    while True:
        t0 = time.perf_counter()
        batch = next(it, None)
        t_wait += time.perf_counter() - t0
        if all_reduce_min(int(batch is not None), ctx.device) == 0:
            break
        opt.zero_grad(set_to_none=True)
        loss = backward_step(objective, batch["image"], batch["tokens"], ctx.rank, cfg.train.micro_batch_size)
        if cfg.train.grad_clip > 0:
            nn.utils.clip_grad_norm_(objective.parameters(), cfg.train.grad_clip)
        opt.step()
        sched.step()
        step, n = step + 1, n + 1
        loss_sum += loss  # no host sync and no collective on steps that are not logged
        if n % cfg.train.log_every == 0 or n == 1:  # the same steps on every rank: the all-reduce is collective
            global_loss = float(all_reduce_mean(loss).item())  # the loss on the whole global batch
            if not ctx.is_main:
                continue
            elapsed = time.perf_counter() - t_start
            log({"epoch": epoch, "step": step, "train/loss": global_loss,
                 "train/logit_scale": float(loss_module.scale().item()) if hasattr(loss_module, "scale") else None,
                 "train/lr": sched.get_last_lr()[0],
                 "train/samples_per_s": n * cfg.train.batch_size / elapsed,
                 "train/data_wait_share": t_wait / elapsed,
                 "train/peak_mem_mb": peak_memory_mb(ctx.device)}, f"{n}/{steps_per_epoch}")
    # Workers hold equal shares, so the mean of their per-step means is the mean of the global-batch losses.
    return step, (float(all_reduce_mean(loss_sum / n).item()) if n else float("nan"))


def train_loop_per_worker(loop_cfg: dict) -> None:
    cfg = build(TrainJobConfig, loop_cfg["config"])
    tokenizer = Tokenizer.from_dict(loop_cfg["tokenizer"])
    ctx = WorkerContext.from_ray()
    torch.manual_seed(cfg.train.seed)
    model, loss = build_model(cfg.model, len(tokenizer)), build_loss(cfg.loss)
    objective = ContrastiveObjective(model, loss)
    steps_per_epoch = max(1, loop_cfg["n_train"] // cfg.train.batch_size)
    opt = make_optimizer(objective, cfg.train)
    sched = make_scheduler(opt, cfg.train.warmup_steps, steps_per_epoch * cfg.train.epochs)
    state = {"epoch": 0, "step": 0, "n_train": loop_cfg["n_train"], "history": []}
    if loop_cfg.get("resume_from"):
        resume = Path(loop_cfg["resume_from"])
        checkpoint.load_weights(resume, model, loss, opt, sched)
        state = checkpoint.read_state(resume)
    objective = ctx.prepare_model(objective)
    metrics_log = Path(loop_cfg["metrics_path"]) if loop_cfg.get("metrics_path") else None

    def log(record: dict, progress: str) -> None:
        say(f"[train] epoch {record['epoch']}/{cfg.train.epochs} step {progress} loss {record['train/loss']:.4f} "
            f"scale {record['train/logit_scale'] or 0:.1f} {record['train/samples_per_s']:.0f} samples/s "
            f"data-wait {100 * record['train/data_wait_share']:.0f}% peak-mem {record['train/peak_mem_mb']:.0f} MB")
        if metrics_log is not None:
            with metrics_log.open("a") as f:
                f.write(json.dumps(record) + "\n")

    if state["epoch"] == 0 and ctx.is_main and not state["history"]:
        untrained = validate(model, tokenizer, ctx.dataset_shard("val"), ctx.device)
        state["history"].append({"epoch": 0, **flat_metrics(untrained, "val")})
        say(f"[train] untrained model: val rsum {untrained['rsum']:.1f}")
    for epoch in range(state["epoch"] + 1, cfg.train.epochs + 1):
        step, mean_loss = train_epoch(objective, opt, sched, ctx, cfg, epoch, state["step"], steps_per_epoch, log)
        metrics = {"epoch": epoch, "step": step, "train/loss": mean_loss}
        if ctx.is_main:
            val = validate(model, tokenizer, ctx.dataset_shard("val"), ctx.device, loss=loss)
            metrics |= flat_metrics(val, "val")
            say(f"[train] epoch {epoch}: loss {mean_loss:.4f} val rsum {val['rsum']:.1f} "
                f"i2t R@1 {val['i2t']['R@1']:.1f} t2i R@1 {val['t2i']['R@1']:.1f}")
        state = {**state, "epoch": epoch, "step": step, "metrics": metrics,
                 "history": state["history"] + [metrics]}
        ctx.report(metrics, lambda path: checkpoint.write_checkpoint(
            path, model=model, loss=loss, optimizer=opt, scheduler=sched, tokenizer=tokenizer,
            config=loop_cfg["config"], state=state), name=checkpoint.epoch_dir_name(epoch))


# ------------------------------------------------------------------------------------------------ driver


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    metrics: dict
    history: list = field(default_factory=list)
    data: dict = field(default_factory=dict)  # kept/skipped sample counts by split and reason
    resumed_from: str | None = None


def run(cfg: TrainJobConfig) -> TrainResult:
    """Train `cfg` on the connected Ray cluster; resumes when the run directory already has a checkpoint."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipeline.data import ingest

    run_dir = Path(cfg.run.run_dir()).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    cfg = narrow(cfg, TrainJobConfig)  # a RunJobConfig's extra sections stay on the driver
    train_paths = ingest.expand_paths(cfg.data.train, "data.train")
    val_paths = ingest.expand_paths(cfg.data.val, "data.val")

    latest = checkpoint.find_latest(run_dir)
    if latest is not None:  # the vocabulary must be the one the weights were trained with
        state = checkpoint.read_state(latest)
        if state["epoch"] >= cfg.train.epochs:
            print(f"[train] {cfg.run.name} already trained {state['epoch']} epochs: using {latest}")
            return TrainResult(run_dir, latest, state.get("metrics", {}), state.get("history", []), {}, str(latest))
        tokenizer, n_train = checkpoint.read_tokenizer(latest), state["n_train"]
        print(f"[train] resuming {cfg.run.name} from {latest} (epoch {state['epoch']} of {cfg.train.epochs})")
    else:
        tokenizer, n_train = ingest.build_vocabulary(train_paths, cfg.data)
    if n_train < cfg.train.batch_size:
        raise ValueError(f"data.train has {n_train} captioned samples, fewer than train.batch_size="
                         f"{cfg.train.batch_size}; add data or lower the batch size")
    print(f"[train] {n_train} training samples, vocabulary {len(tokenizer)} words, "
          f"{n_train // cfg.train.batch_size} steps/epoch on {cfg.scaling.num_workers} workers")

    counter = ingest.skip_counter()
    datasets = {"train": ingest.train_dataset(train_paths, tokenizer, cfg.data, cfg.train.seed, counter),
                "val": ingest.eval_dataset(val_paths, cfg.data.image_size, counter)}
    for ds in datasets.values():  # bars drawn inside workers garble the progress lines; those stay
        ds.context.enable_progress_bars = False
    trainer = TorchTrainer(
        train_loop_per_worker,
        # The driver picks the checkpoint to resume from (the newest complete one on disk) rather than Ray's
        # own run snapshot, which lags behind a checkpoint that was uploaded just before a crash.
        train_loop_config={"config": to_dict(cfg), "tokenizer": tokenizer.to_dict(), "n_train": n_train,
                           "metrics_path": str(run_dir / "metrics.jsonl"),
                           "resume_from": str(latest) if latest else None},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
            resources_per_worker={"CPU": cfg.scaling.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name="checkpoints", storage_path=str(run_dir),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints)),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    try:
        result = trainer.fit()
    except Exception as e:  # Ray wraps the worker's exception; surface its message, not Ray's stack
        raise RuntimeError(f"training failed: {_root_cause(e)}") from e
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    ckpt = Path(result.checkpoint.path)
    state = checkpoint.read_state(ckpt)
    return TrainResult(run_dir, ckpt, state.get("metrics", {}), state.get("history", []),
                       ray.get(counter.get.remote()), str(latest) if latest else None)


def _root_cause(e: BaseException) -> str:
    """The user's exception from the lowest failing rank, as one line: 'rank 0: ValueError: ...'."""
    failures = getattr(e, "worker_failures", None)
    prefix = ""
    if failures:
        rank = min(failures)
        e, prefix = failures[rank], f"rank {rank}: "
    e = getattr(e, "cause", None) or e  # RayTaskError carries the original exception as .cause
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{prefix}{type(e).__name__}: {lines[0] if lines else ''}"[:2000]
