"""One optimisation step and what surrounds it, plain PyTorch: AdamW with per-tower learning rates, the warmup
+ cosine schedule, the speed settings (autocast, channels_last, compile), the step itself, the divergence
check and the numbers a progress line shows. `train` runs these inside its Ray Train workers.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn

from pipeline.distributed import all_reduce_max
from pipeline.training import sharding
from pipeline.training.objective import ContrastiveObjective, backward_step, unwrap


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


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory on GPU; on CPU the process's peak resident set (what the OS had to give it)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def logit_scale_record(loss: nn.Module) -> dict:
    """The effective logit scale the loss multiplies by, and its raw parameter (log scale), for the logs."""
    if not hasattr(loss, "scale"):
        return {"train/logit_scale": None}
    with torch.no_grad():
        record = {"train/logit_scale": loss.scale().item(), "train/logit_scale_param": loss.logit_scale.item()}
        if hasattr(loss, "logit_bias"):  # SigLIP's learned bias
            record["train/logit_bias"] = loss.logit_bias.item()
        return record


def train_step(objective, opt, sched, batch: dict, rank: int, cfg, clock=None, timed: bool = False,
               measure_norm: bool = False) -> torch.Tensor:
    """One optimisation step on this worker's share of the global batch (`cfg`: the train section).
    `clock`: a phases.PhaseClock, told the step's phases when `timed`. -> the loss on the device, detached;
    no host sync (except the clock's, on timed steps). The gradients' norm is left in `grad_norm` on the
    unwrapped objective where clipping measures it, or where `measure_norm` (a logging step) asks for it."""
    bare = unwrap(objective)
    phase = clock if clock is not None else _untimed
    bare.clock, bare.timed = clock, timed
    opt.zero_grad(set_to_none=True)
    with phase("forward_backward", timed):
        loss = backward_step(objective, batch["image"], batch["tokens"], rank, cfg.micro_batch_size)
    with phase("optimizer", timed):
        # The gradients' global norm (DDP has all-reduced them): clipping measures it anyway; otherwise it is
        # measured on logging steps only (train/grad_norm), off the hot path.
        sharded = getattr(bare, "sharded", False)
        if cfg.grad_clip > 0:
            bare.grad_norm = sharding.clip_grad_norm(list(objective.parameters()), cfg.grad_clip) if sharded else \
                nn.utils.clip_grad_norm_(objective.parameters(), cfg.grad_clip)
        elif measure_norm and sharded:
            bare.grad_norm = sharding.grad_norm(list(objective.parameters()))
        elif measure_norm:
            grads = [p.grad.detach() for p in objective.parameters() if p.grad is not None]
            bare.grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) \
                if grads else None
        opt.step()
        sched.step()
        if hasattr(bare.loss, "clamp_parameters_"):  # the logit-scale cap, after the step (losses._LearnedScale)
            bare.loss.clamp_parameters_()
    return loss


@contextmanager
def _untimed(phase: str, timed: bool = False):
    yield


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
