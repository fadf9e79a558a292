"""One worker's training, top to bottom: `TrainLoop.run` takes the epochs in turn (validate the untrained
model, train an epoch, take its metrics, report them with a checkpoint) and `train_epoch` the steps of one.
What a worker trains is `worker.WorkerParts`; where the run stands is a `plan.TrainState`, replaced (never
edited in place) at each checkpoint so the state a checkpoint writes is the one it was handed."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from functools import partial

import torch

from pipeline import checkpoint
from pipeline.config import TrainJobConfig
from pipeline.console import describe_start, mark_start, say
from pipeline.data.epoch.plan import describe_mix, mix_metrics, mix_targets
from pipeline.data.skips import SkipTally
from pipeline.distributed import WorkerContext, all_reduce_mean, all_reduce_min, gather_objects
from pipeline.metrics import flat_metrics
from pipeline.training.objective import unwrap
from pipeline.training.optimisation import check_finite, logit_scale_record, peak_memory_mb, train_step
from pipeline.training import sharding
from pipeline.training.phases import PhaseClock, describe_phases, phase_metrics
from pipeline.training.plan import TrainState, WorkerPlan
from pipeline.training.validation import ValidationSet
from pipeline.tracking.writers import Trackers
from pipeline.training.worker_data import KeyRecord, epoch_batches, skip_check, to_device


def epoch_steps(n_train: int, batch_size: int) -> int:
    """Steps in an epoch of `n_train` samples: whole global batches, at least one."""
    return max(1, n_train // batch_size)


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
        logs = (n + 1) % cfg.train.log_every == 0 or n == n0  # this step's record is logged (below)
        timed = every_step or logs
        loss = train_step(objective, opt, sched, batch, ctx.rank, cfg.train, clock, timed, measure_norm=logs)
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
                rate = (n - n0) * cfg.train.batch_size / elapsed
                norm = getattr(bare, "grad_norm", None)
                log({"epoch": epoch, "step": step, "samples_seen": step * cfg.train.batch_size,
                     "train/loss": global_loss, **logit_scale_record(bare.loss),
                     "train/lr": sched.get_last_lr()[0],
                     "train/grad_norm": float(norm) if norm is not None else None,
                     "train/samples_per_second": rate, "train/samples_per_second_per_worker": rate / ctx.world_size,
                     "train/data_wait_share": (clock.seconds["epoch_start"] + clock.seconds["data_wait"]
                                               - waited0) / elapsed,
                     "train/peak_mem_mb": peak_memory_mb(ctx.device)}, f"{n}/{steps_per_epoch}")
        if on_step is not None:
            on_step(step, n, lambda: loss0 + float(all_reduce_mean(loss_sum).item()))
    check_finite(first_bad, epoch)
    # Workers hold equal shares, so the mean of their per-step means is the mean of the global-batch losses.
    total = loss0 + float(all_reduce_mean(loss_sum).item())
    return step, (total / n if n else float("nan")), n


@dataclass
class WorkerParts:
    """What a worker trains, and with what (`worker.build_parts`)."""
    model: torch.nn.Module
    loss: torch.nn.Module
    head: torch.nn.Module | None  # rerank.enabled: the fusion head
    objective: torch.nn.Module  # model, loss and head as one module, wrapped for DDP once prepared
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    tokenizer: object
    coverage: dict | None  # the word-vector file's vocabulary coverage, where there is one
    whole: sharding.ValidationCopy | None = None  # scaling.strategy=fsdp: the whole model validation embeds with


class TrainLoop:
    """The epochs of one worker, from `state` (a fresh run's or a checkpoint's) to train.epochs. `in_epoch`:
    where each worker stood in the epoch a mid-epoch checkpoint interrupted. Every rank runs every method
    that holds a collective, on the same step."""

    def __init__(self, plan: WorkerPlan, cfg: TrainJobConfig, ctx: WorkerContext, parts: WorkerParts,
                 state: TrainState, in_epoch: dict | None, resumed_from: str | None, started: dict):
        self.plan, self.cfg, self.ctx, self.parts = plan, cfg, ctx, parts
        self.state, self.in_epoch, self.started = state, in_epoch, started
        self.steps_per_epoch = epoch_steps(plan.n_train, cfg.train.batch_size)
        self.steps_log: list[dict] = []  # per-step records travel in the checkpoint: rank 0 may be on any node
        self.record = KeyRecord(plan.run_dir, ctx.rank, resumed_from) if cfg.run.record_keys else None
        self.said_start = False  # the start's line, printed once, with the first step's log line
        self.clock = PhaseClock(marks=started)
        self.val_set = _validation_set(plan, ctx)
        self.batches_of = partial(epoch_batches, plan.shards, cfg, ctx.rank, ctx.world_size, parts.tokenizer,
                                  device=ctx.device)
        self.source_names = [src["name"] for src in cfg.data.sources()]
        self.targets = mix_targets(cfg.data.sources(), cfg.data.sampling, plan.shards.source_samples)
        self.trackers = Trackers.open(plan.tracking, ctx.is_main)

    def run(self) -> None:
        cfg, first = self.cfg, self.state.epoch + 1
        # The first epoch's reads start before the untrained model is validated, and run beside it.
        upcoming = self.batches_of(first, self._worker_saved(first), prime=True) if first <= cfg.train.epochs else None
        self.track_backlog()
        self.validate_untrained()
        last_checkpoint_s = 0.0
        for epoch in range(first, cfg.train.epochs + 1):
            saved = self._saved(epoch)
            self.in_epoch = None
            self.clock.start()
            self.clock.add("checkpoint", last_checkpoint_s)  # the previous epoch's, written after its metrics
            batches = upcoming if upcoming is not None else self.batches_of(epoch, self._worker_saved(epoch))
            step, mean_loss, n = self.train_epoch(epoch, batches, saved)
            # The next epoch's reads start now, in the background, while this one validates and checkpoints.
            upcoming = self.batches_of(epoch + 1, None, prime=True) if epoch < cfg.train.epochs else None
            metrics, skips = self.epoch_metrics(epoch, step, mean_loss, n, batches)
            self.state = replace(self.state, epoch=epoch, step=step, metrics=metrics, skips=skips.to_dict(),
                                 history=self.state.history + [metrics], steps=self._take_steps())
            self.track(metrics, step, flush=True, epoch_level=True)
            t0 = time.perf_counter()
            self.ctx.report(metrics, self.saver(self.state), name=checkpoint.epoch_dir_name(epoch))
            last_checkpoint_s = time.perf_counter() - t0
        if self.trackers is not None:
            self.trackers.close()

    def _saved(self, epoch: int) -> dict | None:
        return self.in_epoch if self.in_epoch and self.in_epoch["epoch"] == epoch else None

    def _worker_saved(self, epoch: int) -> dict | None:
        saved = self._saved(epoch)
        return saved["workers"][self.ctx.rank] if saved else None

    def _take_steps(self) -> list[dict]:
        steps, self.steps_log = self.state.steps + self.steps_log, []
        return steps

    def validates(self) -> bool:
        return self.ctx.is_main or self.val_set.split  # in memory, every rank embeds its slice

    def val_model(self) -> torch.nn.Module:
        """The model validation embeds with: the training one, or under FSDP its whole copy, refreshed.
        Collective under FSDP: every rank calls it before a validation, whether it validates or not."""
        p = self.parts
        return p.model if p.whole is None else p.whole.refresh(p.model, self.ctx.device)

    def run_validation(self, model, loss=None) -> dict | None:
        try:
            return self.val_set.run(model, self.parts.tokenizer, self.ctx.device, loss=loss)
        finally:
            if self.parts.whole is not None:
                self.parts.whole.park()

    def validate(self, where: str, model) -> dict:
        val = self.run_validation(model, self.parts.loss)
        if val is None:
            return {}
        say(f"[train] {where} val rsum {val['rsum']:.1f} i2t R@1 {val['i2t']['R@1']:.1f} "
            f"t2i R@1 {val['t2i']['R@1']:.1f}")
        return flat_metrics(val, "val")

    def validate_untrained(self) -> None:
        if not (self.state.epoch == 0 and self.cfg.eval.untrained and not self.state.history):
            return
        model = self.val_model()  # every rank: under FSDP a collective
        if not self.validates():
            return
        untrained = self.run_validation(model)
        if untrained is not None:
            self.state = replace(self.state, history=[{"epoch": 0, **flat_metrics(untrained, "val")}])
            self.track(self.state.history[0], 0)
            say(f"[train] untrained model: val rsum {untrained['rsum']:.1f}")
        mark_start("untrained", self.started)

    def train_epoch(self, epoch: int, batches, saved: dict | None) -> tuple[int, float, int]:
        cfg, p = self.cfg, self.parts
        check = skip_check(lambda: batches.tally, self.state.samples, cfg.data.max_skip_fraction)
        out = train_epoch(p.objective, p.opt, p.sched, self.ctx, cfg, epoch, self.state.step, self.steps_per_epoch,
                          self.log, batches, (saved["steps"], saved["loss_sum"]) if saved else (0, 0.0),
                          partial(self.mid_epoch, epoch, batches), check, self.record,
                          self.steps_per_epoch if cfg.data.sampling == "resampled" else None, self.clock)
        if check is not None:  # what the epoch's last steps read, checked too (collective, every rank raises)
            check()
        return out

    def epoch_metrics(self, epoch: int, step: int, mean_loss: float, n: int, batches) -> tuple[dict, SkipTally]:
        """The epoch's metrics on every rank (collectives: the skip tallies, the source mix, validation)."""
        cfg, names = self.cfg, self.source_names
        tallies = gather_objects({"tally": batches.tally.to_dict(), "mix": batches.mix.tolist()})
        skips = SkipTally.merged([t["tally"] for t in tallies])
        metrics = {"epoch": epoch, "step": step, "train/loss": mean_loss, "data/samples_used": n * cfg.train.batch_size,
                   "data/skipped": skips.skipped_samples(),
                   **mix_metrics(names, [t["mix"] for t in tallies], self.targets)}
        if self.ctx.is_main and len(names) > 1:
            say(f"[train] epoch {epoch} mix: {describe_mix(names, metrics)}")
        samples = self.state.samples
        if samples and cfg.data.sampling == "epoch":  # usable samples no step took: the remainder of equal batches
            metrics["data/dropped_remainder"] = samples - skips.skipped_samples() - n * cfg.train.batch_size
        if self.parts.coverage:
            metrics["model/word_coverage"] = self.parts.coverage["fraction"]
        with self.clock("validation"):
            model = self.val_model()
            if self.validates():
                metrics |= self.validate(f"epoch {epoch}: loss {mean_loss:.4f}", model)
        if self.ctx.is_main:
            metrics |= phase_metrics(self.clock.breakdown())
            say(f"[train] epoch {epoch} took {describe_phases(metrics)}")
        return metrics, skips

    def mid_epoch(self, epoch: int, batches, step: int, n: int, loss_sum) -> None:
        """After every step, on every rank: a checkpoint every run.checkpoint_every_steps, a validation every
        eval.every_steps. `loss_sum()`: the epoch's summed loss so far (a collective)."""
        cfg, ctx, clock = self.cfg, self.ctx, self.clock
        every_ck, every_val = cfg.run.checkpoint_every_steps, cfg.eval.every_steps
        ck, val = bool(every_ck and step % every_ck == 0), bool(every_val and step % every_val == 0)
        if not (ck or val):
            return
        with clock("checkpoint", ck):
            workers = gather_objects(batches.state()) if ck else None  # collective: every rank is on this step
        mean = loss_sum() / n
        progress = n / self.steps_per_epoch
        mid = {"epoch": epoch - 1, "step": step, "train/loss": mean, "epoch_progress": round(progress, 4)}
        if val:
            with clock("validation"):
                model = self.val_model()
                if self.validates():
                    mid |= self.validate(f"epoch {epoch} step {step}:", model)
        history = self.state.history + ([{**mid, "epoch": round(epoch - 1 + progress, 4)}]
                                        if val and ctx.is_main else [])
        self.state = replace(self.state, step=step, history=history, steps=self._take_steps())
        self.track(mid, step, flush=ck, epoch_level=True)
        report = {**self.state.metrics, **mid}  # the last epoch's metrics too: Tune's metric stays there
        stood = replace(self.state, in_epoch={"epoch": epoch, "steps": n, "loss_sum": mean * n, "workers": workers})
        with clock("checkpoint", ck):
            ctx.report(report, self.saver(stood) if ck else None,
                       name=checkpoint.step_dir_name(epoch, step) if ck else None)

    def log(self, record: dict, progress: str) -> None:
        if "step" in self.started and not self.said_start:
            self.said_start = True
            say(f"[train] {describe_start(self.started)}")
        say(f"[train] epoch {record['epoch']}/{self.cfg.train.epochs} step {progress} loss {record['train/loss']:.4f} "
            f"scale {record['train/logit_scale'] or 0:.1f} {record['train/samples_per_second']:.0f} samples/s "
            f"data-wait {100 * record['train/data_wait_share']:.0f}% peak-mem {record['train/peak_mem_mb']:.0f} MB")
        self.steps_log.append(record)
        self.track(record, record["step"])

    def track_backlog(self) -> None:
        """A resumed run's checkpointed records that a tracker lacks (lost with a killed process's unflushed
        buffer) go to it first, in step order; what it already holds is skipped, as always."""
        if self.trackers is None:
            return
        epoch_level = [(h.get("step", 0), 1, h) for h in self.state.history]
        for step, kind, record in sorted([(r["step"], 0, r) for r in self.state.steps] + epoch_level,
                                         key=lambda t: t[:2]):
            self.track(record, step, epoch_level=bool(kind))
        self.trackers.flush_now()

    def track(self, record: dict, step: int, flush: bool = False, epoch_level: bool = False) -> None:
        """`record` to the run's trackers at optimizer step `step` (rank 0; `flush`: before a checkpoint, so
        what the checkpoint covers is in the trackers' files too). An epoch's (or a mid-epoch checkpoint's)
        mean loss is `train/epoch_loss` there, beside the logged steps' `train/loss`."""
        if self.trackers is None:
            return
        if epoch_level and "train/loss" in record:
            record = {**{k: v for k, v in record.items() if k != "train/loss"}, "train/epoch_loss": record["train/loss"]}
        self.trackers.log({"samples_seen": step * self.cfg.train.batch_size, **record}, step)
        if flush:
            self.trackers.flush_now()

    def saver(self, state: TrainState):
        """Ray Train's checkpoint writer for `state`: the weights as they are now, when it is called. Under
        FSDP they are gathered whole here, on every rank (a collective), for rank 0 to write."""
        p = self.parts
        whole = {} if p.whole is None else sharding.whole_states(p.model, p.opt)
        return lambda path: checkpoint.write_checkpoint(
            path, model=p.model, loss=p.loss, optimizer=p.opt, scheduler=p.sched, tokenizer=p.tokenizer,
            config=self.plan.config, state=state.to_dict(), head=p.head, **whole)


def _validation_set(plan: WorkerPlan, ctx: WorkerContext) -> ValidationSet:
    """The prepared validation set where the workers keep it in memory, else rank 0's stream of it."""
    if plan.val_blocks is None:
        return ValidationSet(ctx.rank, ctx.world_size, stream=ctx.dataset_shard("val"))
    import ray

    return ValidationSet(ctx.rank, ctx.world_size, blocks=lambda: ray.get(plan.val_blocks))
