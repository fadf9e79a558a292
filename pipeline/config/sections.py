"""Config sections: small frozen dataclasses, one per component, each field with a one-line help that also
feeds `pipeline keys` and the README table. Components take their own section (`build_model(cfg.model)`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pipeline.config.loading import ConfigError, _check, _f
from pipeline.registry import (INDEX_TYPES, INTERPOLATIONS, LOSS_PARAMS, RERANK_FUSIONS, RESIZE_MODES,
                                      TOKENIZERS, check_loss_params)
from pipeline.config.sources import SAMPLINGS, CsvColumnsConfig, parse_source

@dataclass(frozen=True)
class SynthConfig:
    enabled: bool = _f(False, "generate the synthetic dataset into `data.synth.out` when data.train matches no file")
    out: str = _f("data/demo", "folder the synthetic train/ and val/ splits are written to")
    train: int = _f(8000, "number of synthetic training images")
    val: int = _f(500, "number of synthetic validation images")
    seed: int = _f(0, "seed of the synthetic generator (same seed, same bytes)")

    def __post_init__(self) -> None:
        _check(self.train > 0 and self.val > 0, "data.synth.train and data.synth.val must be positive")


@dataclass(frozen=True)
class DataConfig(CsvColumnsConfig):
    train: str | list = _f("", "training data: shards (.tar, .parquet) or CSV/TSV files (data.csv_*), as a path, "
                               "directory, glob or brace list (local or s3://); or a list "
                               "of sources [{path: P, weight: W, name: N}, ...], weight being a source's share of "
                               "the samples drawn (data.sampling=resampled)")
    val: str = _f("", "validation data, same forms as data.train, or a folder of images with NAME.txt captions; "
                      "every caption of an image is ground truth")
    image_size: int = _f(64, "side of the square image fed to the image tower, in pixels")
    augment: bool = _f(True, "random resized crop + brightness jitter on training images (never flips)")
    crop_scale_min: float = _f(0.8, "smallest crop area kept by the random resized crop, as a fraction")
    max_tokens: int = _f(32, "captions are cut or padded to this many tokens (a pretrained tokenizer: capped by "
                             "what its text tower takes)")
    tokenizer: str = _f("word", "word (vocabulary of the training captions) | char (their characters; "
                                "data.max_tokens then counts characters) | bpe (byte-level BPE trained on them, "
                                "data.vocab_max_size merges) | pretrained (the text tower's own: hf: or open_clip:)")
    interpolation: str = _f("auto", "image resampling: auto (bicubic for timm:/open_clip: towers, their pretrained "
                                    "config's, else bilinear) | bilinear | bicubic")
    resize_mode: str = _f("auto", "auto (the pretrained config's) | shortest (short side to data.image_size, "
                                  "then the centre square) | squash (whole image resized to a square)")
    crop_pct: float = _f(0.0, "evaluation views: the short side resized to data.image_size / crop_pct, then the "
                              "centre square cut (timm's crop_pct); 0 (auto): the pretrained config's, else 1")
    vocab_min_count: int = _f(1, "words seen fewer times in the training captions map to [UNK]")
    vocab_max_size: int = _f(30000, "largest vocabulary, most frequent words first")
    shuffle_block: int = _f(1024, "training rows are shuffled inside windows of this many samples of a shard "
                                  "(after a seeded file shuffle), reshuffled every epoch; 0 or 1: file order only")
    shuffle_buffer: int = _f(0, "extra local shuffle buffer (samples) on each training worker, seeded by seed, "
                                "epoch and rank; 0 turns it off")
    max_skip_fraction: float = _f(0.05, "fail the run when more than this share of training samples is "
                                        "unusable (corrupt, empty, undecodable); failed downloads do not count")
    num_samples: int = _f(0, "training samples, for shards that carry no count of their own (img2dataset's "
                             "*_stats.json, Parquet footers); 0: counted by a pass over the captions")
    vocab_scan_samples: int = _f(1_000_000, "data.tokenizer=word|bpe: the vocabulary is learnt from the captions of "
                                            "this many training samples (shards in a seeded order); 0: all of them")
    readers_per_worker: int = _f(2, "shards a training worker needs of its own to keep several decode tasks "
                                    "busy; with fewer than scaling.num_workers x this, every worker reads every "
                                    "shard and keeps its own rows")
    sampling: str = _f("epoch", "epoch (every training sample once per epoch, in a seeded order) | resampled "
                                "(each worker draws shards with replacement, by source weight; an epoch is "
                                "train.samples_per_epoch samples: for crawls too big to pass over)")
    cache_decoded: str = _f("auto", "auto | true | false: training images decoded once (short side a little above "
                                    "data.image_size) and kept in Ray's object store, crops cut from there every "
                                    "epoch; auto: when the decoded set takes under a fifth of the object store")
    decode: str = _f("cpu", "cpu (read tasks decode and crop the training images) | gpu (JPEG bytes travel to each "
                            "training worker, which decodes them batched on its device, nvjpeg on CUDA, and crops "
                            "there; other images are decoded in the read task)")
    allow_changed_data: bool = _f(False, "resume mid-epoch although data.train now matches other shards than the "
                                         "checkpoint's (the epoch's order is then a new one)")
    synth: SynthConfig = _f(SynthConfig(), "synthetic demo data")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.num_samples >= 0 and self.vocab_scan_samples >= 0,
               "data.num_samples and data.vocab_scan_samples must be >= 0")
        _check(self.readers_per_worker >= 1, "data.readers_per_worker must be at least 1")
        _check(self.image_size >= 16, f"data.image_size={self.image_size} is too small; use 16 or more")
        _check(0.1 <= self.crop_scale_min <= 1.0, "data.crop_scale_min must lie in [0.1, 1]")
        _check(self.max_tokens >= 2, "data.max_tokens must be at least 2")
        _check(0.0 <= self.max_skip_fraction <= 1.0, "data.max_skip_fraction must lie in [0, 1]")
        _check(self.tokenizer in TOKENIZERS, f"data.tokenizer={self.tokenizer!r}; choose one of {list(TOKENIZERS)}")
        _check(self.interpolation in INTERPOLATIONS,
               f"data.interpolation={self.interpolation!r}; choose one of {list(INTERPOLATIONS)}")
        _check(self.resize_mode in RESIZE_MODES, f"data.resize_mode={self.resize_mode!r}; choose one of "
                                                 f"{list(RESIZE_MODES)}")
        _check(0.0 <= self.crop_pct <= 1.0, f"data.crop_pct={self.crop_pct} must lie in (0, 1], or be 0 (auto)")
        _check(self.shuffle_block >= 0 and self.shuffle_buffer >= 0,
               "data.shuffle_block and data.shuffle_buffer must be >= 0")
        object.__setattr__(self, "cache_decoded", str(self.cache_decoded).lower())
        _check(self.cache_decoded in ("auto", "true", "false"),
               f"data.cache_decoded={self.cache_decoded!r}; choose auto, true or false")
        _check(self.decode in ("cpu", "gpu"), f"data.decode={self.decode!r}; choose cpu or gpu")
        _check(not (self.decode == "gpu" and self.cache_decoded == "true"),
               "data.cache_decoded=true keeps decoded images in the object store, data.decode=gpu sends the JPEG bytes "
               "to the workers to decode there; set one of them back (data.cache_decoded=auto or data.decode=cpu)")
        _check(self.sampling in SAMPLINGS, f"data.sampling={self.sampling!r}; choose one of {list(SAMPLINGS)}")
        if isinstance(self.train, list):
            object.__setattr__(self, "train", [parse_source(s, i) for i, s in enumerate(self.train)])
            _check(bool(self.train), "data.train is an empty list; give it at least one {path: ..., weight: ...}")
            names = [s["name"] for s in self.train]
            _check(len(set(names)) == len(names), f"data.train's sources need distinct names, not {names}")
            weights = [s["weight"] for s in self.train]
            _check(self.sampling == "resampled" or len(set(weights)) == 1,
                   f"data.train's weights {weights} need data.sampling=resampled: an epoch pass reads every sample "
                   "once, whatever its source's weight")
        else:
            _check(isinstance(self.train, str), f"data.train={self.train!r} is neither a shard spec nor a list of "
                                                "sources")

    def sources(self) -> list[dict]:
        """data.train as [{path, weight, name}] (a plain spec is one source of weight 1)."""
        if isinstance(self.train, list):
            return self.train
        return [{"path": self.train, "weight": 1.0, "name": "train"}] if self.train else []

    @property
    def train_spec(self) -> str:
        """Every training shard as one spec (the sources' paths joined): for passes that read all of them."""
        return ",".join(s["path"] for s in self.sources())


@dataclass(frozen=True)
class LossConfig:
    name: str = _f("infonce", "objective: infonce | siglip | vse | vse++ | contrastive | triplet | npair | lifted | "
                                       "dcca")
    temperature: float | None = _f(None, "infonce/siglip: initial temperature tau, logit scale 1/tau "
                                         "(empty: 0.07 for infonce, 0.1 for siglip)")
    learn_temperature: bool | None = _f(None, "infonce/siglip: learn the logit scale (capped at 100 after each optimiser step); empty: true")
    label_smoothing: float | None = _f(None, "infonce: label smoothing of both cross-entropies; empty: 0")
    bias_init: float | None = _f(None, "siglip: initial logit bias; empty: -10")
    margin: float | None = _f(None, "vse/vse++/triplet: hinge margin (empty: 0.2); contrastive/lifted: distance "
                                    "margin (empty: 1.0)")
    mining: str | None = _f(None, "triplet: negatives hardest | semi-hard | all; empty: semi-hard")
    top_k: int | None = _f(None, "dcca: canonical correlations summed; empty or 0: all")
    r1: float | None = _f(None, "dcca: ridge on the image covariance; empty: 1e-3")
    r2: float | None = _f(None, "dcca: ridge on the text covariance; empty: 1e-3")

    def __post_init__(self) -> None:
        _check(self.name in LOSS_PARAMS, f"loss.name={self.name!r}; choose one of {sorted(LOSS_PARAMS)}")
        takes = LOSS_PARAMS[self.name]
        for f in dataclasses.fields(self):
            if f.name != "name" and getattr(self, f.name) is not None and f.name not in takes:
                raise ConfigError(f"loss.{f.name} is set but loss {self.name!r} takes no {f.name}; "
                                  f"it takes {['loss.' + t for t in takes] or 'no parameters'}")
        try:  # the losses' own range checks, shared with them through the registry
            check_loss_params(self.name, {t: getattr(self, t) for t in takes if getattr(self, t) is not None})
        except ValueError as e:
            raise ConfigError(f"loss {self.name!r}: {e}") from None


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = _f(256, "global batch size, split evenly over scaling.num_workers")
    epochs: int = _f(5, "passes over the training data")
    lr: float = _f(2e-3, "peak learning rate of AdamW")
    weight_decay: float = _f(0.05, "AdamW weight decay (not applied to biases, norms, embeddings, scales)")
    warmup_steps: int = _f(50, "linear warmup steps before cosine decay")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this value; 0 turns clipping off")
    micro_batch_size: int = _f(0, "gradient caching: embed and backpropagate the local batch in chunks of this "
                                  "size (0: off); the loss still sees the whole global batch")
    seed: int = _f(0, "seed for model init and augmentation")
    log_every: int = _f(20, "print a progress line every this many steps")
    precision: str = _f("auto", "auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16: autocast of the towers; "
                                "embeddings, all-gather and loss stay fp32")
    channels_last: bool = _f(True, "GPU: image tower and image batches in channels_last memory format (faster "
                                   "convolutions); ignored on CPU")
    compile: bool = _f(False, "torch.compile the image and text towers (the first steps are slow while compiling)")
    samples_per_epoch: int = _f(0, "data.sampling=resampled: samples an epoch draws (checkpoints, validation and "
                                   "the LR schedule count these epochs); 0: the training set's sample count")

    def __post_init__(self) -> None:
        _check(self.batch_size >= 2, "train.batch_size must be at least 2 (in-batch negatives)")
        _check(self.epochs >= 1, "train.epochs must be at least 1")
        _check(self.lr > 0, "train.lr must be positive")
        _check(self.warmup_steps >= 0 and self.grad_clip >= 0, "train.warmup_steps, train.grad_clip >= 0")
        _check(self.samples_per_epoch >= 0, "train.samples_per_epoch must be >= 0 (0: the training set's size)")
        _check(self.micro_batch_size >= 0, "train.micro_batch_size must be >= 0 (0 turns gradient caching off)")
        _check(self.precision in ("auto", "fp32", "bf16"), f"train.precision={self.precision!r}; use auto, fp32 "
                                                           "or bf16")
        _check(self.log_every >= 1, f"train.log_every={self.log_every} must be at least 1 (steps between progress "
                                    "lines)")

    def autocast_dtype(self, device_type: str) -> str | None:
        """'bfloat16' when the towers run under autocast on `device_type` ('cuda', 'cpu'), else None."""
        on = self.precision == "bf16" or (self.precision == "auto" and device_type == "cuda")
        return "bfloat16" if on else None


@dataclass(frozen=True)
class ScalingConfig:
    num_workers: int = _f(2, "Ray Train workers; each holds train.batch_size / num_workers samples per step")
    use_gpu: bool = _f(False, "one GPU per worker, NCCL; otherwise CPU workers over gloo")
    cpus_per_worker: float = _f(1.0, "logical CPUs reserved per training worker (the rest feed Ray Data)")
    ddp_bucket_cap_mb: int = _f(25, "DDP gradient bucket size in MiB (torch's default 25): larger buckets mean "
                                    "fewer, bigger all-reduces overlapped with the backward pass")
    strategy: str = _f("ddp", "how the workers hold the towers: ddp (a whole copy each, gradients all-reduced) | "
                              "fsdp (torch's FSDP2: parameters, gradients and optimizer state sharded across the "
                              "workers, each block gathered just before it runs); checkpoints are written whole "
                              "either way, and resume under the other")
    resource_wait_s: float = _f(0.0, "seconds to wait for the cluster to hold the training workers before failing "
                                     "(0: fail at once; on an autoscaling cluster give it time to add nodes)")

    def __post_init__(self) -> None:
        _check(self.num_workers >= 1, "scaling.num_workers must be at least 1")
        _check(self.cpus_per_worker > 0, "scaling.cpus_per_worker must be positive")
        _check(self.ddp_bucket_cap_mb >= 1, "scaling.ddp_bucket_cap_mb must be at least 1")
        _check(self.strategy in ("ddp", "fsdp"), f"scaling.strategy={self.strategy!r}; choose ddp or fsdp")
        _check(self.resource_wait_s >= 0, "scaling.resource_wait_s must be >= 0")


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = _f(256, "images or captions per embedding batch")
    ks: list = _f([1, 5, 10], "K values of Recall@K")
    chunk_size: int = _f(1024, "query rows scored at once; bounds evaluation memory")
    examples: int = _f(5, "example queries shown in the report")
    every_steps: int = _f(0, "training also validates every this many steps (rank 0); 0: at epoch ends only")
    untrained: bool = _f(True, "validate the untrained model before the first step (the report's epoch 0)")
    in_driver_images: int = _f(4096, "evaluate/index: a gallery of at most this many images (as its stats files or "
                                     "Parquet footers count them) is embedded in the driver, not by a Ray Data actor "
                                     "pool, whose start costs seconds; 0: always the pool; never with scaling.use_gpu")

    def __post_init__(self) -> None:
        _check(self.in_driver_images >= 0, f"eval.in_driver_images={self.in_driver_images} must be >= 0 (0: always "
                                           "embed with a Ray Data actor pool)")
        _check(bool(self.ks) and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in self.ks),
               f"eval.ks={self.ks!r} must be a non-empty list of positive integers, e.g. [1, 5, 10]")
        _check(self.batch_size >= 1, f"eval.batch_size={self.batch_size} must be at least 1")
        _check(self.chunk_size >= 1, f"eval.chunk_size={self.chunk_size} must be at least 1 (query rows scored "
                                     "at once)")
        _check(self.examples >= 0, f"eval.examples={self.examples} must be >= 0")
        _check(self.every_steps >= 0, f"eval.every_steps={self.every_steps} must be >= 0")



@dataclass(frozen=True)
class SweepConfig:
    enabled: bool = _f(False, "`pipeline run`: sweep instead of training once, then index and evaluate the best trial")
    space: dict = _f({}, "search space: dotted key -> value | {grid: [..]} | {choice: [..]} | {uniform: [lo, hi]} "
                         "| {loguniform: [lo, hi]}")
    studies: dict = _f({}, "named search spaces swept in one run (name -> a space like tune.space), tabled apart")
    num_samples: int = _f(1, "trials per grid point (each draws the choice/uniform/loguniform entries afresh)")
    metric: str = _f("val/rsum", "validation metric that ranks trials and drives early stopping")
    mode: str = _f("max", "max | min: which end of tune.metric is best")
    scheduler: str = _f("asha", "asha (stop weak trials early on tune.metric) | none (every trial runs all epochs)")
    grace_period: int = _f(1, "asha: epochs every trial runs before it may be stopped")
    reduction_factor: int = _f(2, "asha: one trial in this many goes on at each rung")
    max_concurrent_trials: int = _f(0, "trials at once; 0: as many as the cluster's GPUs and CPUs hold while "
                                       "leaving Ray Data CPUs")
    lr_scaling: str = _f("none", "a trial's train.lr for its batch B against the recipe's B0: none | linear "
                                 "(x B/B0) | sqrt (x sqrt(B/B0))")
    resume_failed: bool = _f(False, "starting a sweep again runs its unfinished trials; true: its failed ones "
                                    "too (from their last checkpoint), as after a crash that was not theirs")

    def __post_init__(self) -> None:
        _check(self.num_samples >= 1, "tune.num_samples must be at least 1")
        _check(self.mode in ("max", "min"), f"tune.mode={self.mode!r}; use max or min")
        _check(self.scheduler in ("asha", "none"), f"tune.scheduler={self.scheduler!r}; use asha or none")
        _check(self.grace_period >= 1 and self.reduction_factor >= 2,
               "tune.grace_period must be >= 1 and tune.reduction_factor >= 2")
        _check(self.max_concurrent_trials >= 0, "tune.max_concurrent_trials must be >= 0 (0: from the cluster)")
        _check(self.lr_scaling in ("none", "linear", "sqrt"), f"tune.lr_scaling={self.lr_scaling!r}; use none, "
                                                              "linear or sqrt")


@dataclass(frozen=True)
class IndexConfig:
    type: str = _f("auto", "FAISS index: flat (exact) | hnsw | ivfpq (+ refine on raw vectors) | auto (flat below "
                           "index.auto_threshold vectors, ivfpq above)")
    auto_threshold: int = _f(100000, "auto: galleries of at least this many vectors get an approximate index")
    nlist: int = _f(0, "ivfpq: inverted lists; 0: about 4 sqrt(n)")
    pq_m: int = _f(0, "ivfpq: sub-quantisers (bytes per code); 0: dimension / 8")
    nprobe: int = _f(32, "ivfpq: lists searched per query")
    refine_k_factor: int = _f(48, "ivfpq: candidates re-ranked on the raw vectors, as a multiple of K")
    hnsw_m: int = _f(32, "hnsw: neighbours per node")
    ef_search: int = _f(128, "hnsw: candidate list size at search time")
    shard_rows: int = _f(1000000, "galleries with more vectors are built as shards of at most this many, in "
                                  "parallel Ray tasks over one trained quantizer, and searched shard-parallel")

    def __post_init__(self) -> None:
        _check(self.type in INDEX_TYPES, f"index.type={self.type!r}; choose one of {list(INDEX_TYPES)}")
        _check(min(self.nlist, self.pq_m) >= 0 and min(self.nprobe, self.refine_k_factor, self.hnsw_m,
                                                       self.ef_search, self.auto_threshold, self.shard_rows) >= 1,
               "index.nlist and index.pq_m must be >= 0, the other index.* counts >= 1")


@dataclass(frozen=True)
class EmbeddingsConfig:
    dim: int = _f(128, "`pipeline embeddings`: word vector size (a text tower loads them when it equals "
                       "model.text.word_dim)")
    window: int = _f(4, "`pipeline embeddings`: words at most this many positions apart co-occur")
    weighting: str = _f("harmonic", "`pipeline embeddings`: a pair d words apart counts 1/d (harmonic) or 1 (uniform)")
    alpha: float = _f(0.75, "`pipeline embeddings`: context-distribution smoothing of PPMI (Levy et al.); 1: none")
    shift: float = _f(1.0, "`pipeline embeddings`: PPMI keeps PMI - log(shift) > 0 (SGNS's k negatives); 1: no shift")
    power: float = _f(0.5, "`pipeline embeddings`: vectors are U_d S_d^power of the PPMI matrix's truncated SVD")
    method: str = _f("ppmi", "`pipeline embeddings`: ppmi (PPMI + truncated SVD) | glove (weighted least squares on "
                             "log counts; vectors w + w~, centred) | sgns (skip-gram, negative sampling); glove and sgns "
                             "train on scaling.num_workers Ray Train workers")
    epochs: int = _f(300, "glove/sgns: passes over the co-occurring word pairs")
    lr: float = _f(0.05, "glove/sgns: AdaGrad learning rate")
    batch: int = _f(128, "glove/sgns: word pairs per step on each worker")
    x_max: float = _f(100.0, "glove: counts at or above this get the full weight f = 1")
    glove_power: float = _f(0.75, "glove: f(x) = (x / x_max)^glove_power below x_max")
    negatives: int = _f(5, "sgns: negative contexts per word pair, from the unigram distribution^0.75")

    def __post_init__(self) -> None:
        _check(self.dim >= 1 and self.window >= 1, "embeddings.dim and embeddings.window must be at least 1")
        _check(self.weighting in ("harmonic", "uniform"),
               f"embeddings.weighting={self.weighting!r}; use harmonic or uniform")
        _check(0 < self.alpha <= 1 and self.shift >= 1, "embeddings.alpha must lie in (0, 1], embeddings.shift >= 1")
        _check(0 <= self.power <= 1, "embeddings.power must lie in [0, 1]")
        _check(self.method in ("ppmi", "glove", "sgns"), f"embeddings.method={self.method!r}; use ppmi, glove or sgns")
        _check(min(self.epochs, self.batch, self.negatives) >= 1 and self.lr > 0 and self.x_max > 0,
               "embeddings.epochs, embeddings.batch and embeddings.negatives must be >= 1, embeddings.lr and "
               "embeddings.x_max > 0")


@dataclass(frozen=True)
class RerankConfig:
    enabled: bool = _f(False, "`pipeline run`/`train`: train the head with the towers, which stay trainable: each "
                              "step adds its listwise loss on the global batch's hardest negatives (mined from the "
                              "towers' own ranking of that batch) to the contrastive loss; the checkpoints carry it "
                              "and the run's report shows R@K before and after re-ranking")
    weight: float = _f(1.0, "rerank.enabled: weight of the head's loss beside the contrastive loss")
    fusion: str = _f("low_rank", "how the re-ranker head fuses an (image, caption) pair's embeddings: concat | "
                                 "sum | product | bilinear (full) | low_rank (Hadamard product of projections) | "
                                 "compact_bilinear (count sketches, product in the Fourier domain)")
    k: int = _f(20, "candidates from the index that the head re-scores per query (clamped to the gallery)")
    negatives: int = _f(15, "hard negatives per training query, from the towers' own top-K (rerank.enabled: of the "
                            "global batch, at most its size - 1)")
    dim: int = _f(256, "sum/product/bilinear/low_rank: width of the fused vector")
    hidden: int = _f(256, "hidden units of the head's MLP after the fusion")
    rank: int = _f(64, "low_rank: rank of the bilinear form")
    sketch_dim: int = _f(2048, "compact_bilinear: count-sketch size")
    epochs: int = _f(10, "`pipeline rerank`: passes over the training captions (with as many image queries)")
    lr: float = _f(1e-3, "`pipeline rerank`: Adam learning rate")
    batch: int = _f(256, "`pipeline rerank`: queries of each direction per step on each worker")
    seed: int = _f(0, "seed of the head's init, the count sketches and the query order")

    def __post_init__(self) -> None:
        _check(self.fusion in RERANK_FUSIONS, f"rerank.fusion={self.fusion!r}; choose one of {list(RERANK_FUSIONS)}")
        _check(isinstance(self.sketch_dim, int) and self.sketch_dim >= 1,
               f"rerank.sketch_dim={self.sketch_dim!r} must be a positive integer (compact_bilinear's sketch size)")
        _check(self.rank >= 1, f"rerank.rank={self.rank}: a low_rank fusion needs rank >= 1")
        _check(min(self.k, self.negatives, self.dim, self.hidden, self.epochs, self.batch) >= 1 and self.lr > 0,
               "rerank.k, negatives, dim, hidden, epochs and batch must be >= 1 and rerank.lr > 0")
        _check(self.weight > 0, f"rerank.weight={self.weight}: the head's loss weight must be > 0 (turn the head "
                                "off with rerank.enabled=false)")


@dataclass(frozen=True)
class CCAConfig:
    enabled: bool = _f(False, "`pipeline run`: also fit this CCA baseline on data.train and report its rsum beside "
                              "the trained model's (report `baselines`)")
    kind: str = _f("linear", "linear | kernel (linear CCA on cca.kernel_map features of each view) | autoencoder "
                             "(Ngiam et al.'s bimodal autoencoder on the same features, trained with modality "
                             "dropout; retrieval compares image-only and caption-only codes)")
    k: int = _f(64, "canonical directions kept for retrieval (at most the smaller feature dimension); autoencoder: "
                    "the shared code's size")
    r1: float = _f(1e-3, "ridge on the image covariance, as a fraction of its mean variance")
    r2: float = _f(1e-3, "ridge on the text covariance, as a fraction of its mean variance")
    power: float = _f(4.0, "retrieval weights canonical direction i by correlation_i^power (0: unweighted)")
    image_features: str = _f("pixels", "pixels (averaged down to cca.pixel_size) | tower (frozen image tower)")
    pixel_size: int = _f(16, "pixels: side of the downsampled image; 3 x side^2 features")
    text_features: str = _f("bow", "bow (word counts, L2-normalised) | word_vectors (mean of cca.word_vectors) | "
                                   "tower (frozen text tower)")
    bow_words: int = _f(4096, "bow: the most frequent vocabulary words used as features")
    word_vectors: str = _f("", "word_vectors: GloVe-format text file, e.g. written by `pipeline embeddings`")
    checkpoint: str = _f("", "tower features: towers and tokenizer of this checkpoint or run dir; empty: model.* "
                             "at random init (model.image.weights applies)")
    kernel_map: str = _f("rff", "kernel: rff (random Fourier features) | nystrom")
    kernel_dim: int = _f(1024, "kernel: features per view (Fourier features, or Nyström landmarks)")
    bandwidth: float = _f(0.0, "kernel: Gaussian kernel width; 0: each view's median pairwise distance on the sample")
    sample: int = _f(2000, "kernel: training images sampled to set the bandwidth and pick the landmarks")
    seed: int = _f(0, "seed of the kernel maps, the sample and random-init towers")
    ae_hidden: int = _f(512, "autoencoder: hidden units of each view's layer, before and after the shared code")
    ae_epochs: int = _f(20, "autoencoder: passes over the training pairs")
    ae_lr: float = _f(1e-3, "autoencoder: Adam learning rate")
    ae_noise: float = _f(0.2, "autoencoder: std of the Gaussian noise added to the standardised inputs (denoising)")
    ae_batch: int = _f(256, "autoencoder: (image, caption) pairs per step")

    def __post_init__(self) -> None:
        _check(self.kind in ("linear", "kernel", "autoencoder"),
               f"cca.kind={self.kind!r}; use linear, kernel or autoencoder")
        _check(min(self.ae_hidden, self.ae_epochs, self.ae_batch) >= 1 and self.ae_lr > 0 and self.ae_noise >= 0,
               "cca.ae_hidden, cca.ae_epochs and cca.ae_batch must be >= 1, cca.ae_lr > 0, cca.ae_noise >= 0")
        _check(self.image_features in ("pixels", "tower"), f"cca.image_features={self.image_features!r}; "
                                                            "use pixels or tower")
        _check(self.text_features in ("bow", "word_vectors", "tower"),
               f"cca.text_features={self.text_features!r}; use bow, word_vectors or tower")
        _check(self.text_features != "word_vectors" or bool(self.word_vectors),
               "cca.text_features=word_vectors needs cca.word_vectors (a GloVe file; `pipeline embeddings` "
               "writes one)")
        _check(self.kernel_map in ("rff", "nystrom"), f"cca.kernel_map={self.kernel_map!r}; use rff or nystrom")
        _check(min(self.k, self.pixel_size, self.bow_words, self.kernel_dim) >= 1 and self.sample >= 2,
               "cca.k, cca.pixel_size, cca.bow_words, cca.kernel_dim must be >= 1 and cca.sample >= 2")
        _check(self.r1 >= 0 and self.r2 >= 0 and self.bandwidth >= 0 and self.power >= 0,
               "cca.r1, cca.r2, cca.bandwidth and cca.power must be >= 0")
