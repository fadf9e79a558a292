"""scaling.strategy=fsdp against DDP on 2 gloo processes (3 for one step), through the worker's own code
(`worker.prepare`, `train_step`, the loop's checkpoint gather): the same loss at every step and the same
weights after them (f32, <= 1e-6), a ResNet and a text transformer sharded block by block; a clipped step and
a gradient-cached step alike; a checkpoint written whole, that `pipeline.load` reads as a DDP one; and a run
resumed across strategies (DDP's checkpoint under FSDP, FSDP's under DDP) landing where the uninterrupted run
lands. (No Ray: torch.distributed is what differs.)"""
import os
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from pipeline import checkpoint
from pipeline.config import TrainJobConfig, build
from pipeline.data.text.tokenizer import Tokenizer, count_words
from pipeline.distributed import WorkerContext, all_reduce_mean
from pipeline.losses import build_loss
from pipeline.models import build_model
from pipeline.training import sharding
from pipeline.training.loop import WorkerParts
from pipeline.training.objective import ContrastiveObjective
from pipeline.training.optimisation import make_optimizer, train_step
from pipeline.training.worker import schedule_for, prepare
from tests.gloo import process_group

STEPS, PER_RANK, SIZE = 3, 4, 32  # steps of the 2-worker runs
CONFIG = {"data": {"train": "x", "val": "x", "image_size": SIZE},
          "model": {"embed_dim": 16, "image": {"arch": "resnet18"},
                    "text": {"arch": "transformer", "hidden": 32, "word_dim": 16, "layers": 2, "heads": 2}},
          "loss": {"name": "infonce"},
          # Clipping off: its scale comes from a norm summed in another order over shards (equal to ~1e-7), and
          # Adam's first steps, which divide by the gradients' own size, carry that into the weights. One clipped
          # step is compared on its own below.
          "train": {"lr": 1e-3, "warmup_steps": 1, "epochs": 1, "batch_size": 12, "grad_clip": 0.0},
          "scaling": {"num_workers": 2, "strategy": "fsdp"}}
WORDS = ["a red circle", "a blue square", "two green crosses", "a small purple plus sign"]


def _parts(cfg, tok, plan) -> WorkerParts:
    torch.manual_seed(0)
    model = build_model(cfg.model, len(tok), image_size=SIZE, max_tokens=tok.max_tokens)
    loss = build_loss(cfg.loss)
    objective = ContrastiveObjective(model, loss)
    opt = make_optimizer(objective, cfg.train, cfg.model)
    return WorkerParts(model, loss, None, objective, opt, schedule_for(opt, plan, cfg), tok, None)


def _batch(step: int, rank: int, world: int, tok) -> dict:
    g = torch.Generator().manual_seed(100 + step)
    n = PER_RANK * world
    images = torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    texts = [WORDS[int(i)] + f" {int(j)}" for i, j in zip(torch.randint(0, 4, (n,), generator=g),
                                                          torch.randint(0, 9, (n,), generator=g))]
    tokens = torch.from_numpy(tok.encode_batch(texts))
    s = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    return {"image": images[s], "tokens": tokens[s]}


def _whole(parts: WorkerParts) -> dict:
    """What the loop's checkpoint writer hands `write_checkpoint`: under FSDP the states gathered whole."""
    return {} if parts.whole is None else sharding.whole_states(parts.model, parts.opt)


def _run(strategy: str, cfg, tok, plan, ctx, start: str | None, save_after: int | None, out: str | None,
         steps: int = STEPS):
    """Train from step `start`'s checkpoint (or fresh) to `steps` under `strategy`. -> (losses, whole weights,
    the gradients' norms, the last step's gradients whole)"""
    parts = _parts(cfg, tok, plan)
    first = 0
    if start:
        checkpoint.load_weights(start, parts.model, parts.loss, parts.opt, parts.sched)
        first = checkpoint.read_state(start)["step"]
    if strategy == "fsdp":
        parts = prepare(parts, plan, cfg, ctx)
    else:  # what Ray Train's prepare_model does on CPU
        parts.objective = DistributedDataParallel(parts.objective)
    losses, norms = [], []
    for step in range(first, steps):
        torch.manual_seed(1000 + step)  # the text transformer's dropout: the same masks at a step, resumed or not
        loss = train_step(parts.objective, parts.opt, parts.sched, _batch(step, ctx.rank, ctx.world_size, tok),
                          ctx.rank, cfg.train, measure_norm=True)
        losses.append(float(all_reduce_mean(loss)))
        norms.append(float(parts.objective.module.grad_norm if strategy == "ddp" else parts.objective.grad_norm))
        if save_after == step + 1:
            whole = _whole(parts)
            if ctx.rank == 0:
                checkpoint.write_checkpoint(out, model=parts.model, loss=parts.loss, optimizer=parts.opt,
                                            scheduler=parts.sched, tokenizer=tok, config=CONFIG,
                                            state={"epoch": 0, "step": step + 1}, **whole)
            dist.barrier()
    grads = {n.removeprefix("module."): (p.grad.full_tensor() if sharding.is_sharded(p.grad) else p.grad).clone()
             for n, p in parts.objective.named_parameters() if p.grad is not None}  # the last step's
    model = _whole(parts).get("model_state") or parts.model.state_dict()
    weights = {**model, **{f"loss.{k}": v for k, v in parts.loss.state_dict().items()}}
    return losses, weights, norms, grads


def _worker(rank, world, init_file, out_dir, steps):
    with process_group(init_file, rank, world):
        results = _strategies(rank, world, out_dir, steps)
        if rank == 0:
            torch.save(results, os.path.join(out_dir, "results.pt"))


def _strategies(rank, world, out_dir, steps) -> dict:
    """Every run this worker makes: DDP and FSDP from scratch; with all the steps, each resumed under the
    other strategy, and one clipped and one gradient-cached step under each."""
    torch.set_num_threads(1)
    cfg = build(TrainJobConfig, CONFIG)
    tok = Tokenizer.from_counts(count_words(WORDS + [f"{i}" for i in range(9)]), max_tokens=8)
    plan = SimpleNamespace(n_train=12 * STEPS, val_blocks=None)
    ctx = WorkerContext(rank, world, torch.device("cpu"))
    d = lambda name: os.path.join(out_dir, name)  # noqa: E731
    results = {"ddp": _run("ddp", cfg, tok, plan, ctx, None, 2, d("ddp_2"), steps),
               "fsdp": _run("fsdp", cfg, tok, plan, ctx, None, 2, d("fsdp_2"), steps)}
    if steps < STEPS:
        return results
    results["ddp then fsdp"] = _run("fsdp", cfg, tok, plan, ctx, d("ddp_2"), None, None)
    results["fsdp then ddp"] = _run("ddp", cfg, tok, plan, ctx, d("fsdp_2"), None, None)
    clipped = build(TrainJobConfig, {**CONFIG, "train": {**CONFIG["train"], "grad_clip": 0.5}})
    cached = build(TrainJobConfig, {**CONFIG, "train": {**CONFIG["train"], "micro_batch_size": 2}})
    for strategy in ("ddp", "fsdp"):
        results[f"clipped {strategy}"] = _run(strategy, clipped, tok, plan, ctx, None, None, None, steps=1)
        results[f"cached {strategy}"] = _run(strategy, cached, tok, plan, ctx, None, None, None, steps=1)
    return results


def _close(a: dict, b: dict, tag: str, tol: float = 1e-6, relative: bool = False) -> None:
    """Every tensor equal within `tol` (relative: of the tensor's largest element, where that exceeds 1)."""
    assert a.keys() == b.keys(), tag
    for k in a:
        if a[k].is_floating_point():
            worst = (a[k] - b[k]).abs().max().item()
            scale = max(1.0, a[k].abs().max().item()) if relative else 1.0
            assert worst <= tol * scale, f"{tag}: {k} differs by {worst} (largest element {scale})"
        else:
            assert torch.equal(a[k], b[k]), f"{tag}: {k}"


def test_fsdp_trains_as_ddp_and_checkpoints_cross_strategies(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path), STEPS), nprocs=2, join=True)
    r = torch.load(tmp_path / "results.pt")
    (ddp_losses, ddp_w, ddp_norms, _), (fsdp_losses, fsdp_w, fsdp_norms, _) = r["ddp"], r["fsdp"]
    assert len(ddp_losses) == STEPS and ddp_losses[0] != ddp_losses[-1]
    assert max(abs(a - b) for a, b in zip(ddp_losses, fsdp_losses)) <= 1e-6, (ddp_losses, fsdp_losses)
    _close(ddp_w, fsdp_w, "fsdp vs ddp")
    assert fsdp_norms == pytest.approx(ddp_norms, rel=1e-5)  # the logged train/grad_norm (f32 sums)
    # A clipped step (the norm 0.5 is below every step's): the same update.
    assert r["clipped ddp"][2][0] > 0.5
    _close(r["clipped ddp"][1], r["clipped fsdp"][1], "one clipped step")
    # Gradient caching (train.micro_batch_size): FSDP reduces each chunk's backward; the same gradients.
    _close(r["cached ddp"][3], r["cached fsdp"][3], "gradient-cached step", relative=True)
    # Resumed from the other strategy's step-2 checkpoint, step 3 lands where the uninterrupted runs land.
    for name in ("ddp then fsdp", "fsdp then ddp"):
        losses, weights, _, _ = r[name]
        assert abs(losses[0] - ddp_losses[-1]) <= 1e-6, (name, losses, ddp_losses)
        _close(ddp_w, weights, name)
    # FSDP's checkpoint is DDP's file: whole tensors, the same keys and optimizer layout, read by pipeline.load.
    a = torch.load(tmp_path / "ddp_2" / "optimizer.pt")["optimizer"]
    b = torch.load(tmp_path / "fsdp_2" / "optimizer.pt")["optimizer"]
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        _close(a["state"][i], b["state"][i], f"optimizer state {i}")
    _close(torch.load(tmp_path / "ddp_2" / "model.pt"), torch.load(tmp_path / "fsdp_2" / "model.pt"), "model.pt")
    import pipeline

    texts = ["a red circle 1", "a blue square 2"]
    assert (pipeline.load(tmp_path / "ddp_2").encode_text(texts)
            - pipeline.load(tmp_path / "fsdp_2").encode_text(texts)).abs().max() <= 1e-6


def test_on_3_workers_uneven_shards_take_the_same_first_step(tmp_path):
    """3 workers: shards padded to a multiple of 3. Sums over 3 workers are divided by 3 in another order than
    DDP's, so the gradients agree to rounding (~1e-7 of their size); Adam divides each by its own size, so in
    elements that nearly cancel to zero that rounding reaches the weights. The loss and the gradients of the
    first step are compared."""
    mp.spawn(_worker, args=(3, str(tmp_path / "init"), str(tmp_path), 1), nprocs=3, join=True)
    r = torch.load(tmp_path / "results.pt")
    assert abs(r["ddp"][0][0] - r["fsdp"][0][0]) <= 1e-6
    _close(r["ddp"][3], r["fsdp"][3], "3 workers, the first step's gradients", relative=True)
