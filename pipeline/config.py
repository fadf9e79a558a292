"""Typed job configs: small frozen section dataclasses, YAML loading, dotted `--set` overrides, validation.

The same dotted keys (`loss.temperature`, `train.batch_size`, ...) serve YAML recipes, `--set a.b=c` and
Tune trials. Every field carries a one-line `help` that also feeds `pipeline keys` and the README table.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config problem the user can fix; the message says what to change."""


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: default, metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


# --------------------------------------------------------------------------------------------- sections


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
    shuffle_buffer: int = _f(512, "local shuffle buffer (samples) on each training worker; 0 turns it off")
    synth: SynthConfig = _f(SynthConfig(), "synthetic demo data")

    def __post_init__(self) -> None:
        _check(self.image_size >= 16, f"data.image_size={self.image_size} is too small; use 16 or more")
        _check(0.1 <= self.crop_scale_min <= 1.0, "data.crop_scale_min must lie in [0.1, 1]")
        _check(self.max_tokens >= 2, "data.max_tokens must be at least 2")


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
    storage_path: str = _f("runs", "parent of the run directory (local or s3://)")
    keep_checkpoints: int = _f(2, "how many epoch checkpoints to keep (the latest are kept)")

    def __post_init__(self) -> None:
        _check(bool(self.name) and "/" not in self.name, "run.name must be a non-empty name without '/'")
        _check(self.keep_checkpoints >= 1, "run.keep_checkpoints must be at least 1")

    def run_dir(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = _f(256, "images or captions per embedding batch")
    ks: list = _f([1, 5, 10], "K values of Recall@K")
    chunk_size: int = _f(1024, "query rows scored at once; bounds evaluation memory")
    examples: int = _f(5, "example queries shown in the report")

    def __post_init__(self) -> None:
        _check(all(isinstance(k, int) and k >= 1 for k in self.ks), "eval.ks must be positive integers")


# ------------------------------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class TrainJobConfig:
    data: DataConfig = _f(DataConfig(), "data")
    model: ModelConfig = _f(ModelConfig(), "model")
    loss: LossConfig = _f(LossConfig(), "loss")
    train: TrainConfig = _f(TrainConfig(), "optimisation")
    scaling: ScalingConfig = _f(ScalingConfig(), "Ray Train scaling")
    run: RunConfig = _f(RunConfig(), "run directory")

    def __post_init__(self) -> None:
        _check(bool(self.data.train), "data.train is empty; set it to a shard path, glob or directory")
        _check(bool(self.data.val), "data.val is empty; set it to a shard path, glob or directory")
        n = self.scaling.num_workers
        _check(
            self.train.batch_size % n == 0,
            f"train.batch_size={self.train.batch_size} is not divisible by scaling.num_workers={n}; "
            f"use a multiple of {n}, e.g. {max(n, self.train.batch_size // n * n)}",
        )
        if self.loss.name == "dcca":
            _check(self.train.batch_size > self.model.embed_dim,
                   f"loss dcca needs train.batch_size > model.embed_dim ({self.train.batch_size} <= "
                   f"{self.model.embed_dim}): the covariances would be singular; raise the batch or lower the dim")
            _check((self.loss.top_k or 0) <= self.model.embed_dim,
                   f"loss.top_k={self.loss.top_k} exceeds model.embed_dim={self.model.embed_dim}")

    def local_batch_size(self) -> int:
        return self.train.batch_size // self.scaling.num_workers


@dataclass(frozen=True)
class RunJobConfig(TrainJobConfig):
    eval: EvalConfig = _f(EvalConfig(), "evaluation and report")


@dataclass(frozen=True)
class EvalJobConfig:
    eval: EvalConfig = _f(EvalConfig(), "evaluation and report")
    scaling: ScalingConfig = _f(ScalingConfig(), "embedding actors (num_workers) and GPU use")


# ------------------------------------------------------------------------------------- build / override


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def valid_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a config class, e.g. ['data.train', ..., 'run.name']."""
    keys = []
    for name, typ in _field_types(cls).items():
        if dataclasses.is_dataclass(typ):
            keys += valid_keys(typ, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def describe_keys(cls: type, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(dotted key, help, default) for every leaf: the reference table in `pipeline keys` and the README."""
    rows = []
    for f in dataclasses.fields(cls):
        typ = _field_types(cls)[f.name]
        if dataclasses.is_dataclass(typ):
            rows += describe_keys(typ, f"{prefix}{f.name}.")
        else:
            value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((prefix + f.name, f.metadata.get("help", ""), value))
    return rows


def _coerce(value: Any, typ: Any, key: str) -> Any:
    args = typing.get_args(typ)
    if type(None) in args:  # `X | None`: empty means "the component's own default"
        if value is None or value == "":
            return None
        typ = next(a for a in args if a is not type(None))
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}={value!r} is not a boolean; use true or false")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{key}={value!r} is not an integer")
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(f"{key}={value!r} is not an integer") from None
        if not f.is_integer():
            raise ConfigError(f"{key}={value!r} is not an integer")
        return int(f)
    if typ is float:
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r} is not a number") from None
        if not math.isfinite(out):
            raise ConfigError(f"{key}={value!r} must be finite")
        return out
    if typ is str:
        return "" if value is None else str(value)
    if typ is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r} is not a list; write it as [a, b, c]")
        return value
    return value


def build(cls: type, raw: dict | None, prefix: str = "") -> Any:
    """Build config class `cls` from a nested dict, rejecting unknown keys with the list of valid ones."""
    raw = dict(raw or {})
    types = _field_types(cls)
    unknown = [k for k in raw if k not in types]
    if unknown:
        where = prefix.rstrip(".") or "the config"
        raise ConfigError(
            f"unknown key {prefix + unknown[0]!r} in {where}; valid keys: {', '.join(valid_keys(cls, prefix))}"
        )
    kwargs = {}
    for name, typ in types.items():
        if name not in raw:
            continue
        key = prefix + name
        if dataclasses.is_dataclass(typ):
            if not isinstance(raw[name], dict):
                raise ConfigError(f"{key} is a section; give it keys such as {valid_keys(typ, key + '.')[:3]}")
            kwargs[name] = build(typ, raw[name], key + ".")
        else:
            kwargs[name] = _coerce(raw[name], typ, key)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[str, Any]:
    """'a.b=c' -> ('a.b', c) with c parsed as YAML (so 3 is an int, [1,5] a list, true a bool)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r} is not of the form key=value, e.g. --set train.epochs=3")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def apply_overrides(raw: dict, overrides: dict[str, Any], cls: type) -> dict:
    """Set dotted keys in a nested dict; a key not in the schema of `cls` is an error listing valid keys."""
    keys = set(valid_keys(cls))
    out = json.loads(json.dumps(raw))  # deep copy of plain data
    for key, value in overrides.items():
        if key not in keys:
            close = difflib.get_close_matches(key, sorted(keys), n=1, cutoff=0.75)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"unknown key {key!r}{hint}; valid keys: {', '.join(sorted(keys))}")
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {p} is not a section")
        node[leaf] = value
    return out


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Any:
    """YAML file (optional) + overrides -> validated config of class `cls`."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist; pass an existing YAML with --config")
        raw = yaml.safe_load(p.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{p} must hold a mapping of sections (data:, model:, ...)")
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    raw = apply_overrides(raw, overrides or {}, cls)
    return build(cls, raw)


def narrow(cfg: Any, cls: type) -> Any:
    """The sections of `cfg` that job config `cls` has: one recipe serves `run` and `train` alike."""
    return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})


def to_dict(cfg: Any) -> dict:
    """Plain nested dict: crosses into Ray workers and is written as the run's config.json."""
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {'a.b': value}; the dotted view Tune and reports use."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out
