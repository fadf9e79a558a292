"""What the driver learns about the training set before the first step, in time that does not grow with it:
the shard list, the sample counts (img2dataset's stats files, Parquet footers or data.num_samples; a pass
over the captions only where none says), and the tokenizer (learnt from a seeded sample of
data.vocab_scan_samples captions, only for data.tokenizer=word|bpe). Plus the checks a mid-epoch resume
needs: the shards must be the ones the checkpoint's epoch order was dealt from.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pipeline.console import phase


@dataclass
class TrainingSet:
    tokenizer: object
    n_train: int  # samples the step count and LR schedule are planned on
    samples: int  # all samples, the denominator of data.max_skip_fraction (0: unknown)
    train: object  # ingest.ShardList
    val: object
    shard_counts: dict[str, int] = field(default_factory=dict)  # path -> samples, where the data says
    source: str = ""  # where the counts came from: stats | parquet | num_samples | pass
    notes: list[str] = field(default_factory=list)  # one-line warnings for the console
    layout: str = "shards"  # how the epoch is shared between workers (epoch_plan.choose_layout)


@dataclass
class VocabularyScan:
    """Word counts of a caption sample, shareable between the trials of a sweep (keyed by `key`)."""
    key: tuple
    counts: Counter
    usable: int
    samples: int


def scan_key(data_cfg, seed: int) -> tuple:
    return (data_cfg.train, data_cfg.vocab_scan_samples, seed)


def scan_vocabulary(paths: list[str], counts: dict[str, int], data_cfg, seed: int) -> VocabularyScan:
    from pipeline.data import ingest
    from pipeline.data.epoch_plan import sample_shards

    chosen = sample_shards(paths, counts, data_cfg.vocab_scan_samples, seed) if counts else paths
    what = f"{len(chosen)} of {len(paths)}" if len(chosen) < len(paths) else f"{len(paths)}"
    with phase(f"vocabulary pass over {what} training shards"):
        scan = ingest.scan_training_data(chosen, data_cfg)
    return VocabularyScan(scan_key(data_cfg, seed), scan.counts, scan.usable, scan.samples)


def prepare(cfg, latest: str | None, init: str | None = None, shared: VocabularyScan | None = None
            ) -> TrainingSet:
    """Everything the workers need to know about the data; `latest`: the checkpoint being resumed (its
    tokenizer and counts are kept); `shared`: a sweep's vocabulary scan, used when it fits this config."""
    from pipeline import checkpoint
    from pipeline.data import ingest, vocabulary
    from pipeline.data.counts import count_samples
    from pipeline.data.epoch_plan import choose_layout, layout, unused_by_deal

    train, val = ingest.resolve_shards(cfg.data.train, "data.train"), ingest.resolve_shards(cfg.data.val, "data.val")
    counted = count_samples(train.paths, cfg.data.num_samples)
    notes = [counted.warning] if counted.warning else []
    workers, readers = cfg.scaling.num_workers, cfg.data.readers_per_worker
    kind = choose_layout(train.paths, counted.per_shard, workers, readers, cfg.train.seed)
    if layout(len(train.paths), workers, readers) == "rows":
        notes.append(f"data.train has {len(train.paths)} shard(s) for {workers} workers x {readers} readers "
                     f"(data.readers_per_worker): every worker reads every shard and keeps its own rows; for "
                     f"large data write at least {workers * readers} shards (img2dataset --number_sample_per_shard)")
    elif kind == "rows":
        unused = unused_by_deal(train.paths, counted.per_shard, workers, cfg.train.seed)
        notes.append(f"data.train's shard sizes deal unevenly to {workers} workers ({unused} samples an epoch would "
                     "go unused): every worker reads every shard and keeps its own rows; shards of equal size avoid "
                     "the extra reading")
    if latest is not None:  # the vocabulary must be the one the weights were trained with
        state = checkpoint.read_state(latest)
        return TrainingSet(checkpoint.read_tokenizer(latest), state["n_train"], state.get("samples", 0), train,
                           val, counted.per_shard, counted.source or "checkpoint", notes, kind)
    learns = init is None and cfg.data.tokenizer != "pretrained"
    scan = None
    if learns and shared is not None and shared.key == scan_key(cfg.data, cfg.train.seed):
        scan = shared
    elif learns or not counted.source:
        scan = (scan_vocabulary(train.paths, counted.per_shard, cfg.data, cfg.train.seed) if learns
                else _count_pass(train.paths, cfg.data))
    if counted.source:
        n_train = samples = counted.total
    else:  # no count anywhere: the pass read every shard (scan_vocabulary reads all when counts are unknown)
        n_train, samples = scan.usable, scan.samples
    if n_train < cfg.train.batch_size:
        raise ValueError(f"data.train has {n_train} captioned samples, fewer than train.batch_size="
                         f"{cfg.train.batch_size}; add data or lower the batch size")
    if init is not None:  # the start weights' own ids
        tokenizer = checkpoint.read_tokenizer(init)
    else:
        tokenizer = vocabulary.make_tokenizer(cfg.data, cfg.model, scan.counts if scan else None)
    return TrainingSet(tokenizer, n_train, samples, train, val, counted.per_shard, counted.source or "pass", notes,
                       kind)


def _count_pass(paths: list[str], data_cfg) -> VocabularyScan:
    """No file says how many samples there are, and no vocabulary is learnt: count them in one caption pass."""
    from pipeline.data import ingest

    with phase(f"caption pass over {len(paths)} training shards (counting samples: no img2dataset stats, "
               "Parquet footers or data.num_samples)"):
        scan = ingest.scan_training_data(paths, data_cfg)
    return VocabularyScan((), scan.counts, scan.usable, scan.samples)


def shard_list_changes(old: list[str], new: list[str]) -> str:
    """'' when equal, else one clause naming what was added and removed (with an example of each)."""
    a, b = set(old), set(new)
    added, removed = sorted(b - a), sorted(a - b)
    parts = [f"{len(added)} shard(s) added (e.g. {added[0]})"] if added else []
    parts += [f"{len(removed)} removed (e.g. {removed[0]})"] if removed else []
    return ", ".join(parts)


def scan_for_sweep(cfg) -> VocabularyScan | None:
    """One vocabulary scan for all the trials of a sweep (each would otherwise read the same captions again);
    trials whose data.train, data.vocab_scan_samples or train.seed differ scan their own. None where no
    vocabulary is learnt (pretrained tokenizer, warm start)."""
    from dataclasses import replace

    from pipeline.data import ingest
    from pipeline.data.counts import count_samples

    if cfg.data.tokenizer == "pretrained" or cfg.model.init_from:
        return None
    data_cfg = replace(cfg.data, train=ingest.absolute_spec(cfg.data.train))
    paths = ingest.resolve_shards(data_cfg.train, "data.train").paths
    return scan_vocabulary(paths, count_samples(paths, data_cfg.num_samples).per_shard, data_cfg, cfg.train.seed)
