"""What the driver learns about the training set before the first step, in time that does not grow with it:
the shard list, the sample counts (img2dataset's stats files, Parquet footers or data.num_samples; a pass
over the captions only where none says), and the tokenizer (learnt from a seeded sample of
data.vocab_scan_samples captions, only for data.tokenizer=word|bpe). Plus the checks a mid-epoch resume
needs: the shards must be the ones the checkpoint's epoch order was dealt from.
"""
from __future__ import annotations

import math
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
    layout: str = "shards"  # how the epoch is shared between workers (epoch_plan.choose_layout), or resampled
    shard_sources: list[int] = field(default_factory=list)  # the data.train source of each of train.paths
    source_samples: list[int] = field(default_factory=list)  # samples per source, where the counts are known
    resampling: object = None  # epoch_plan.Resampling, for data.sampling=resampled


@dataclass
class VocabularyScan:
    """Word counts of a caption sample, shareable between the trials of a sweep (keyed by `key`)."""
    key: tuple
    counts: Counter
    usable: int
    samples: int


def scan_key(data_cfg, seed: int) -> tuple:
    return (data_cfg.train_spec, data_cfg.vocab_scan_samples, seed)


def resolve_sources(data_cfg):
    """data.train's sources -> (one ingest.ShardList of all their shards, the source of each shard). A shard
    matched by two sources would be drawn under two weights: refused."""
    from pipeline.data import ingest

    sources = data_cfg.sources()
    lists = [ingest.resolve_shards(s["path"], f"data.train[{i}]" if len(sources) > 1 else "data.train")
             for i, s in enumerate(sources)]
    owner: dict[str, int] = {}
    for i, shards in enumerate(lists):
        for path in shards.paths:
            if owner.setdefault(path, i) != i:
                raise ValueError(f"{path} is in data.train's sources {sources[owner[path]]['name']!r} and "
                                 f"{sources[i]['name']!r}; give each shard to one source")
    return (ingest.ShardList([p for s in lists for p in s.paths], [m for s in lists for m in s.missing]),
            [owner[p] for s in lists for p in s.paths])


def resampling_plan(cfg, n_train: int, shard_sources: list[int], data_samples: int):
    """data.sampling=resampled: what each worker draws per epoch (epoch_plan.Resampling). Its quota is its
    share of the epoch's samples with room for unusable ones (data.max_skip_fraction) and 10% to spare, so the
    epoch's steps are there even when a draw lands on small or damaged shards; reading stops at the last step."""
    from pipeline.data.epoch.plan import Resampling

    need = (n_train // cfg.train.batch_size) * cfg.local_batch_size()
    quota = math.ceil(need * 1.1 / max(0.05, 1 - cfg.data.max_skip_fraction)) + cfg.local_batch_size()
    mean = data_samples / max(1, len(shard_sources))  # the size a shard without a count is taken to have
    return Resampling(shard_sources, [s["weight"] for s in cfg.data.sources()], quota, mean)


def scan_vocabulary(paths: list[str], counts: dict[str, int], data_cfg, seed: int) -> VocabularyScan:
    from pipeline.data import ingest
    from pipeline.data.epoch.plan import sample_shards

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
    from pipeline.data import ingest
    from pipeline.data.text import vocabulary
    from pipeline.data.formats.counts import count_samples
    from pipeline.data.epoch.plan import Resampling, choose_layout, layout, unused_by_deal

    (train, shard_sources), val = resolve_sources(cfg.data), ingest.resolve_shards(cfg.data.val, "data.val")
    counted = count_samples(train.paths, cfg.data.num_samples)
    notes = [counted.warning] if counted.warning else []
    workers, readers = cfg.scaling.num_workers, cfg.data.readers_per_worker
    resampled = cfg.data.sampling == "resampled"
    kind = "resampled" if resampled else choose_layout(train.paths, counted.per_shard, workers, readers, cfg.train.seed)
    known = counted.per_shard if counted.source in ("stats", "parquet", "listing") else {}
    per_source = [sum(known.get(p, 0) for p, s in zip(train.paths, shard_sources) if s == i)
                  for i in range(len(cfg.data.sources()))] if known else []
    if resampled:
        pass  # every worker draws its own shards: no deal, so no layout to choose
    elif layout(len(train.paths), workers, readers) == "rows":
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
        plan = None
        if resampled:  # the draws a mid-epoch checkpoint's cursors index are the ones its plan makes
            plan = (Resampling.from_dict(state.get("resampling")) if state.get("in_epoch") else None) or \
                resampling_plan(cfg, state["n_train"], shard_sources, counted.total)
        return TrainingSet(checkpoint.read_tokenizer(latest), state["n_train"], state.get("samples", 0), train,
                           val, counted.per_shard, counted.source or "checkpoint", notes, kind, shard_sources,
                           per_source, plan)
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
    plan = None
    if resampled:  # an epoch is train.samples_per_epoch draws; skips are bounded per epoch
        data_samples, n_train = n_train, cfg.train.samples_per_epoch or n_train
        samples = n_train
        plan = resampling_plan(cfg, n_train, shard_sources, data_samples)
    if n_train < cfg.train.batch_size:  # (a resampled epoch's length is checked against the batch as it loads)
        raise ValueError(f"data.train has {n_train} captioned samples, fewer than train.batch_size="
                         f"{cfg.train.batch_size}; add data or lower the batch size")
    if init is not None:  # the start weights' own ids
        tokenizer = checkpoint.read_tokenizer(init)
    else:
        tokenizer = vocabulary.make_tokenizer(cfg.data, cfg.model, scan.counts if scan else None)
    return TrainingSet(tokenizer, n_train, samples, train, val, counted.per_shard, counted.source or "pass", notes,
                       kind, shard_sources, per_source, plan)


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
    from pipeline.data.formats.counts import count_samples

    if cfg.data.tokenizer == "pretrained" or cfg.model.init_from:
        return None
    data_cfg = replace(cfg.data, train=ingest.absolute_train(cfg.data))
    paths = resolve_sources(data_cfg)[0].paths
    return scan_vocabulary(paths, count_samples(paths, data_cfg.num_samples).per_shard, data_cfg, cfg.train.seed)
