"""Restarts and resumes of a run, on the driver and the workers: which checkpoint a (re)started worker group
resumes from, one line per start in <run_dir>/attempts.jsonl, the config a resume may not change, and a failed
fit() told in one line."""
from __future__ import annotations

import json
import time

from pipeline import checkpoint, storage
from pipeline.config import TrainJobConfig, to_dict
from pipeline.console import say
from pipeline.training.training_set import shard_list_changes
from pipeline.distributed import WorkerContext
from pipeline.training.plan import WorkerPlan


def resume_point(run_dir: str, ctx: WorkerContext) -> str | None:
    """The checkpoint to start from: the newest complete one in the run directory, picked by rank 0 (hashes
    checked) and shared with the other ranks. At launch it is the driver's pick. After a worker failure, when
    Ray restarts every worker's loop with the same config, it is the last one written before the failure:
    Ray's own `get_checkpoint()` misses a checkpoint whose report it had not yet collected when the worker
    died, and the epoch after it would be trained twice."""
    return ctx.broadcast(checkpoint.find_latest(run_dir, verify=True) if ctx.is_main else None)


def record_attempt(plan: WorkerPlan, epoch: int, resumed_from: str | None) -> None:
    """One line per start of the worker group in <run_dir>/attempts.jsonl: a launch of the driver with more
    than one line recovered from worker failures. Only rank 0 writes, and attempts follow one another."""
    path = storage.join(plan.run_dir, "attempts.jsonl")
    before = storage.read_text(path) if storage.exists(path) else ""
    line = {"launch": plan.launch, "start_epoch": epoch, "resumed_from": resumed_from, "time": time.time(),
            **({"config_changes": plan.config_changes} if plan.config_changes else {})}
    storage.write_text(path, before + json.dumps(line) + "\n")
    if resumed_from and resumed_from != plan.resume_from:
        say(f"[train] workers restarted after a failure: resuming from {resumed_from} (epoch {epoch})")


def count_attempts(run_dir: str, launch: str) -> int:
    """How many times the worker group started in driver launch `launch` (1: no failure)."""
    path = storage.join(run_dir, "attempts.jsonl")
    lines = storage.read_text(path).splitlines() if storage.exists(path) else []
    return sum(json.loads(ln).get("launch") == launch for ln in lines if ln.strip())


def check_resume_config(cfg: TrainJobConfig, latest: str | None) -> list[str]:
    """A resume must train the model it resumes: the shaping keys (checkpoint.SHAPING) of the config may not
    differ from the checkpoint's, unless run.allow_config_change says so. -> the differences allowed."""
    from pipeline.config import ConfigError

    if latest is None:
        return []
    changes = checkpoint.config_changes(checkpoint.read_config(latest), to_dict(cfg))
    if changes and not cfg.run.allow_config_change:
        raise ConfigError(f"run.name={cfg.run.name} resumes from {latest}, whose config differs: "
                          f"{'; '.join(changes)}. Use a new run.name, restore those values, or set "
                          "run.allow_config_change=true to go on anyway")
    if changes:
        print(f"[train] resuming with a changed config (run.allow_config_change): {'; '.join(changes)}")
    return changes


NO_ROOM = ("WorkerGroupStartup", "InsufficientClusterResources")  # Ray Train's errors for workers with nowhere to run


def explain_failure(e: BaseException, attempts: int, budget: int, latest: str | None = None, need: str = "") -> str:
    """One line for a failed fit(): when every allowed restart was used, say so first; the error that ended the
    last attempt is often only a symptom (a peer's "Connection reset" when a worker died). `latest`: the newest
    complete checkpoint now; `need`: what the worker group asks of the cluster ('2 workers of 1 CPU')."""
    cause = root_cause(e)
    controller = getattr(e, "controller_failure", None)
    if any(n in cause for n in NO_ROOM) or (controller is not None and not str(controller).strip()):
        # a restart after a lost node found no room, try after try (Ray says only "controller error")
        kept = f"the newest checkpoint, {latest}, is intact" if latest else "no checkpoint was written yet"
        return (f"training failed: the cluster lost room for the training workers ({need or 'the worker group'} no "
                f"longer fit on its remaining nodes: a lost node that no other replaced?); {kept}. Add nodes and "
                "rerun the same command to resume, or set scaling.resource_wait_s to wait for a replacement "
                f"({cause})")
    if budget > 0 and attempts > budget:  # the first start plus `budget` restarts, all failed
        return (f"training failed {attempts} times, and run.max_failures={budget} allows {budget} restart(s): the "
                f"failure budget is spent. The last failure: {root_cause(e)}. Rerun the same command to resume "
                "from the newest checkpoint, or raise run.max_failures")
    return f"training failed: {root_cause(e)}"


def root_cause(e: BaseException, limit: int = 2000) -> str:
    """The user's exception from the lowest failing rank, as one line: 'rank 0: ValueError: ...'. Also a failed
    Tune trial's (Ray wraps the trial's TrainingFailedError as `.cause`)."""
    failures = getattr(e, "worker_failures", None)
    prefix = ""
    if failures:
        rank = min(failures)
        e, prefix = failures[rank], f"rank {rank}: "
    # RayTaskError carries the original exception as .cause; Train's ControllerError as .controller_failure
    e = getattr(e, "controller_failure", None) or getattr(e, "cause", None) or e
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{prefix}{type(e).__name__}: {lines[0] if lines else ''}"[:limit]


def state_layout(latest: str | None, chosen: str) -> str:
    """A mid-epoch checkpoint's cursors belong to the layout they were taken in; otherwise the one chosen now."""
    return (checkpoint.read_state(latest).get("layout") or chosen) if latest else chosen


def _weights(train) -> list[float]:
    return [float(src.get("weight", 1.0)) for src in train] if isinstance(train, list) else [1.0]


def check_resume_data(cfg: TrainJobConfig, latest: str | None, names: list[str],
                      ids: dict[str, str] | None = None) -> bool:
    """A mid-epoch checkpoint's cursors index the epoch order dealt from its shard list: resuming over other
    shards, or over a shard of the same name with other contents (`ids`: name -> `storage.fingerprints`),
    would lose and repeat samples. -> True when they differ and data.allow_changed_data lets the epoch go on
    in a new order (cursors dropped); a one-line ValueError when they differ and it does not."""
    if latest is None:
        return False
    state = checkpoint.read_state(latest)
    old = state.get("data_shards")
    if not state.get("in_epoch") or old is None:
        return False
    saved = checkpoint.read_config(latest)
    was = lambda section, name, now: saved.get(section, {}).get(name, now)  # noqa: E731
    # The cursors are positions in the order these make (a resampled epoch's draws, too).
    for key, before, now in (
            ("train.seed", was("train", "seed", cfg.train.seed), cfg.train.seed),
            ("data.shuffle_block", was("data", "shuffle_block", cfg.data.shuffle_block), cfg.data.shuffle_block),
            ("data.sampling", was("data", "sampling", "epoch"), cfg.data.sampling),
            ("train.samples_per_epoch", was("train", "samples_per_epoch", 0), cfg.train.samples_per_epoch),
            ("data.train's weights", _weights(was("data", "train", "")), _weights(cfg.data.train))):
        if before != now:
            raise ValueError(f"{latest} stopped mid-epoch with {key}={before}; resume it with {key}={before} (not "
                             f"{now}), or from an epoch-end checkpoint")
    diff = shard_list_changes(old, names)
    was_ids = state.get("data_shard_ids") or {}
    rewritten = sorted(n for n in names if was_ids.get(n) and ids and ids.get(n) != was_ids[n])
    if rewritten:  # same name, other size or date: the positions saved no longer point at the same samples
        diff = ", ".join(filter(None, [diff, f"{len(rewritten)} rewritten since (e.g. {rewritten[0]}: size or date "
                                              "differ)"]))
    if not diff:
        return False
    if not cfg.data.allow_changed_data:
        raise ValueError(f"data.train has changed since {latest} stopped mid-epoch: {diff}; point data.train at "
                         "the same shards, or set data.allow_changed_data=true to finish the epoch in a new order")
    print(f"[train] data.train has changed since {latest} ({diff}): the epoch goes on in a new order "
          "(data.allow_changed_data)")
    return True


def newest_checkpoint(run_dir: str) -> str | None:
    """The checkpoint a launch resumes from: the newest complete one down to every file's hash; a damaged newer
    one is passed over and named, with what is wrong with it."""
    passed_over: list = []
    latest = checkpoint.find_latest(run_dir, verify=True, passed_over=passed_over)
    for damaged, problem in passed_over:
        print(f"[train] passing over {damaged}: {problem} (cut short, corrupted or edited); "
              + (f"resuming from {latest}" if latest else "no complete checkpoint before it, starting afresh"))
    return latest
