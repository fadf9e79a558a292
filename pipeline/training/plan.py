"""The two records training passes around: `WorkerPlan`, what the driver hands every worker (Ray Train's
`train_loop_config` carries it as {"plan": plan}), and `TrainState`, what a checkpoint remembers of the run
(its state.json). Plain dataclasses: no Ray, no torch."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields

from pipeline import storage
from pipeline.tracking.plan import TrackingPlan


@dataclass
class TrainShards:
    """The training shards and how an epoch is dealt among workers (`data.epoch.plan`)."""
    paths: list[str]  # absolute local paths or s3:// URIs
    layout: str = "shards"  # `epoch_plan.choose_layout`'s answer, or the checkpoint's when resuming
    counts: dict[str, int] = field(default_factory=dict)  # samples per path, where known
    names: list[str] = field(default_factory=list)  # each path's name as a checkpoint records it
    ids: dict[str, str] = field(default_factory=dict)  # name -> fingerprint (`storage.fingerprints`)
    sources: list[int] | None = None  # the data.train source of each path
    source_samples: list[int] | None = None  # samples per source, where counted
    resampling: dict | None = None  # `epoch_plan.Resampling.to_dict()` where data.sampling=resampled
    decoded_cache: dict | None = None  # `decoded_cache.start`'s handle, where data.cache_decoded is on

    @staticmethod
    def absolute(path: str) -> str:
        return path if storage.is_remote(path) else os.path.abspath(path)


@dataclass
class WorkerPlan:
    """Everything a training worker needs beyond its Ray context, decided once by the driver."""
    config: dict  # the resolved TrainJobConfig as a dict (workers build it again)
    tokenizer: dict  # `Tokenizer.to_dict()`
    n_train: int  # the samples one epoch plans for
    samples: int  # usable training samples counted (0: not counted)
    shards: TrainShards
    run_dir: str
    launch: str  # this launch's id: tells its worker-group restarts from an earlier launch's
    resume_from: str | None = None  # the driver's pick; restarted workers look again (`attempts.resume_point`)
    drop_cursors: bool = False  # the shards changed since (data.allow_changed_data): a resumed epoch reorders
    config_changes: list[str] = field(default_factory=list)  # what a resume changed, for attempts.jsonl
    init_from: str | None = None  # a warm start: the weights come from this checkpoint, not the files
    val_blocks: list | None = None  # object refs of the validation set, where the workers keep it in memory
    start_marks: dict[str, float] = field(default_factory=dict)  # the driver's start milestones (console)
    tracking: TrackingPlan | None = None  # the trackers rank 0 writes to (run.report_to)
    console_prefix: str = ""  # put before every console line (a sweep's trial id)


# state.json's manifest, which every write computes afresh
_MANIFEST = ("files", "sha256")


@dataclass
class TrainState:
    """Where a run stands: the last finished epoch and step, what it measured, and what a resume checks the
    data against. `in_epoch` is set only in a mid-epoch checkpoint: where each worker stood in that epoch."""
    epoch: int = 0
    step: int = 0
    n_train: int = 0
    samples: int = 0
    history: list[dict] = field(default_factory=list)  # per-epoch metrics (and mid-epoch validations)
    steps: list[dict] = field(default_factory=list)  # rank 0's per-step log lines: metrics.jsonl at the end
    metrics: dict = field(default_factory=dict)  # the last epoch's
    skips: dict | None = None  # `SkipTally.to_dict()` of the training data so far
    data_shards: list[str] = field(default_factory=list)
    data_shard_ids: dict[str, str] = field(default_factory=dict)
    layout: str | None = None
    resampling: dict | None = None
    head_dim: int | None = None  # rerank.enabled: what `rerank.job.load` builds the fusion head with
    in_epoch: dict | None = None
    extra: dict = field(default_factory=dict)  # keys another version wrote, kept as they were

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in d.items() if k in known},
                   extra={k: v for k, v in d.items() if k not in known and k not in _MANIFEST})

    def to_dict(self) -> dict:
        d = asdict(self)
        extra = d.pop("extra")
        return {**extra, **{k: v for k, v in d.items() if v is not None}}
