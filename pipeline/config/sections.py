"""Config sections: small frozen dataclasses, one per component, each field with a one-line help that also
feeds `pipeline keys` and the README table. Components take their own section (`build_model(cfg.model)`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pipeline.config.loading import ConfigError, _check, _f


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
class DataConfig:
    train: str = _f("", "training shards: a path, directory, glob or brace list (local or s3://)")
    val: str = _f("", "validation shards, same forms as data.train; every caption of an image is ground truth")
    image_size: int = _f(64, "side of the square image fed to the image tower, in pixels")
    augment: bool = _f(True, "random resized crop + brightness jitter on training images (never flips)")
    crop_scale_min: float = _f(0.8, "smallest crop area kept by the random resized crop, as a fraction")
    max_tokens: int = _f(32, "captions are cut or padded to this many tokens")
    vocab_min_count: int = _f(1, "words seen fewer times in the training captions map to [UNK]")
    vocab_max_size: int = _f(30000, "largest vocabulary, most frequent words first")
    shuffle_block: int = _f(1024, "training rows are shuffled inside windows of this many samples of a shard "
                                  "(after a seeded file shuffle), reshuffled every epoch; 0 or 1: file order only")
    shuffle_buffer: int = _f(0, "extra local shuffle buffer (samples) on each training worker, seeded by seed, "
                                "epoch and rank; 0 turns it off")
    max_skip_fraction: float = _f(0.05, "fail the run when more than this share of training samples is "
                                        "unusable (corrupt, empty, undecodable); failed downloads do not count")
    synth: SynthConfig = _f(SynthConfig(), "synthetic demo data")

    def __post_init__(self) -> None:
        _check(self.image_size >= 16, f"data.image_size={self.image_size} is too small; use 16 or more")
        _check(0.1 <= self.crop_scale_min <= 1.0, "data.crop_scale_min must lie in [0.1, 1]")
        _check(self.max_tokens >= 2, "data.max_tokens must be at least 2")
        _check(0.0 <= self.max_skip_fraction <= 1.0, "data.max_skip_fraction must lie in [0, 1]")
        _check(self.shuffle_block >= 0 and self.shuffle_buffer >= 0,
               "data.shuffle_block and data.shuffle_buffer must be >= 0")


@dataclass(frozen=True)
class ImageTowerConfig:
    arch: str = _f("small_cnn", "image tower: small_cnn | resnet18 | resnet50")
    width: int = _f(32, "channels of the first small_cnn stage (doubles per stage)")
    weights: str = _f("", "local file with torchvision weights for resnet18/50 (empty: random init)")

    def __post_init__(self) -> None:
        from pipeline.models.image import IMAGE_ARCHS

        _check(self.arch in IMAGE_ARCHS, f"model.image.arch={self.arch!r}; choose one of {sorted(IMAGE_ARCHS)}")


@dataclass(frozen=True)
class TextTowerConfig:
    arch: str = _f("gru", "text tower: bow (mean of word vectors) | gru (bidirectional)")
    word_dim: int = _f(128, "word embedding size")
    hidden: int = _f(256, "hidden size per direction of the GRU")

    def __post_init__(self) -> None:
        from pipeline.models.text import TEXT_ARCHS

        _check(self.arch in TEXT_ARCHS, f"model.text.arch={self.arch!r}; choose one of {sorted(TEXT_ARCHS)}")


@dataclass(frozen=True)
class ModelConfig:
    embed_dim: int = _f(128, "size of the shared, L2-normalised embedding space")
    image: ImageTowerConfig = _f(ImageTowerConfig(), "image tower")
    text: TextTowerConfig = _f(TextTowerConfig(), "text tower")

    def __post_init__(self) -> None:
        _check(self.embed_dim >= 2, "model.embed_dim must be at least 2")


@dataclass(frozen=True)
class LossConfig:
    name: str = _f("infonce", "objective: infonce | siglip | vse | vse++ | contrastive | triplet | npair | dcca")
    temperature: float | None = _f(None, "infonce/siglip: initial temperature tau, logit scale 1/tau "
                                         "(empty: 0.07 for infonce, 0.1 for siglip)")
    learn_temperature: bool | None = _f(None, "infonce/siglip: learn the logit scale (clamped at 100); empty: true")
    label_smoothing: float | None = _f(None, "infonce: label smoothing of both cross-entropies; empty: 0")
    bias_init: float | None = _f(None, "siglip: initial logit bias; empty: -10")
    margin: float | None = _f(None, "vse/vse++/triplet: hinge margin (empty: 0.2); contrastive: distance margin "
                                    "(empty: 1.0)")
    mining: str | None = _f(None, "triplet: negatives hardest | semi-hard | all; empty: semi-hard")
    top_k: int | None = _f(None, "dcca: canonical correlations summed; empty or 0: all")
    r1: float | None = _f(None, "dcca: ridge on the image covariance; empty: 1e-3")
    r2: float | None = _f(None, "dcca: ridge on the text covariance; empty: 1e-3")

    def __post_init__(self) -> None:
        from pipeline.losses import LOSSES, build_loss, loss_params

        _check(self.name in LOSSES, f"loss.name={self.name!r}; choose one of {sorted(LOSSES)}")
        takes = loss_params(self.name)
        for f in dataclasses.fields(self):
            if f.name != "name" and getattr(self, f.name) is not None and f.name not in takes:
                raise ConfigError(f"loss.{f.name} is set but loss {self.name!r} takes no {f.name}; "
                                  f"it takes {['loss.' + t for t in takes] or 'no parameters'}")
        try:
            build_loss(self)  # range checks live with the losses; surface them as config errors
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

    def __post_init__(self) -> None:
        _check(self.batch_size >= 2, "train.batch_size must be at least 2 (in-batch negatives)")
        _check(self.epochs >= 1, "train.epochs must be at least 1")
        _check(self.lr > 0, "train.lr must be positive")
        _check(self.warmup_steps >= 0 and self.grad_clip >= 0, "train.warmup_steps, train.grad_clip >= 0")
        _check(self.micro_batch_size >= 0, "train.micro_batch_size must be >= 0 (0 turns gradient caching off)")


@dataclass(frozen=True)
class ScalingConfig:
    num_workers: int = _f(2, "Ray Train workers; each holds train.batch_size / num_workers samples per step")
    use_gpu: bool = _f(False, "one GPU per worker, NCCL; otherwise CPU workers over gloo")
    cpus_per_worker: float = _f(1.0, "logical CPUs reserved per training worker (the rest feed Ray Data)")

    def __post_init__(self) -> None:
        _check(self.num_workers >= 1, "scaling.num_workers must be at least 1")
        _check(self.cpus_per_worker > 0, "scaling.cpus_per_worker must be positive")


@dataclass(frozen=True)
class RunConfig:
    name: str = _f("demo", "run name; running the same name again resumes from its latest checkpoint")
    storage_path: str = _f("runs", "parent of the run directory (local or s3://bucket/prefix)")
    keep_checkpoints: int = _f(2, "how many epoch checkpoints to keep (the latest are kept)")

    def __post_init__(self) -> None:
        _check(bool(self.name) and "/" not in self.name, "run.name must be a non-empty name without '/'")
        _check(self.keep_checkpoints >= 1, "run.keep_checkpoints must be at least 1")

    def run_dir(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"


@dataclass(frozen=True)
class StorageConfig:
    endpoint_url: str = _f("", "S3-compatible endpoint for s3:// paths (MinIO, Ceph, ...); empty: AWS, or "
                              "AWS_ENDPOINT_URL. Credentials always come from the AWS chain, never the config")
    region: str = _f("", "S3 region; empty: from the AWS chain")

    def __post_init__(self) -> None:
        _check(not self.endpoint_url or self.endpoint_url.startswith(("http://", "https://")),
               f"storage.endpoint_url={self.endpoint_url!r} must start with http:// or https://")
        _check("@" not in self.endpoint_url, "storage.endpoint_url must not carry credentials; use the AWS "
                                              "credential chain (AWS_ACCESS_KEY_ID, ~/.aws, instance roles)")


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = _f(256, "images or captions per embedding batch")
    ks: list = _f([1, 5, 10], "K values of Recall@K")
    chunk_size: int = _f(1024, "query rows scored at once; bounds evaluation memory")
    examples: int = _f(5, "example queries shown in the report")

    def __post_init__(self) -> None:
        _check(all(isinstance(k, int) and k >= 1 for k in self.ks), "eval.ks must be positive integers")



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

    def __post_init__(self) -> None:
        from pipeline.indexes import TYPES

        _check(self.type in TYPES, f"index.type={self.type!r}; choose one of {list(TYPES)}")
        _check(min(self.nlist, self.pq_m) >= 0 and min(self.nprobe, self.refine_k_factor, self.hnsw_m,
                                                       self.ef_search, self.auto_threshold) >= 1,
               "index.nlist and index.pq_m must be >= 0, the other index.* counts >= 1")

    def spec(self):
        from pipeline.indexes import IndexSpec

        return IndexSpec(**dataclasses.asdict(self))
