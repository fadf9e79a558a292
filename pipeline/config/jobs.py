"""Job configs: one per job, assembled from the sections, with the checks that span sections."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pipeline.config.loading import _check, _f
from pipeline.config.model_sections import ModelConfig
from pipeline.config.sections import (CCAConfig, DataConfig, EmbeddingsConfig, EvalConfig, IndexConfig, LossConfig,
                                      RerankConfig, ScalingConfig, SweepConfig, TrainConfig)
from pipeline.config.run_sections import RunConfig, StorageConfig
from pipeline.config.sources import CsvColumnsConfig


@dataclass(frozen=True)
class TrainJobConfig:
    data: DataConfig = _f(DataConfig(), "data")
    model: ModelConfig = _f(ModelConfig(), "model")
    loss: LossConfig = _f(LossConfig(), "loss")
    train: TrainConfig = _f(TrainConfig(), "optimisation")
    scaling: ScalingConfig = _f(ScalingConfig(), "Ray Train scaling")
    run: RunConfig = _f(RunConfig(), "run directory")
    storage: StorageConfig = _f(StorageConfig(), "S3 endpoint for s3:// data and run directories")
    eval: EvalConfig = _f(EvalConfig(), "evaluation and report")
    rerank: RerankConfig = _f(RerankConfig(), "the fusion re-ranker: trained with the towers (rerank.enabled), or "
                                              "on a checkpoint (`pipeline rerank`)")

    def __post_init__(self) -> None:
        _check(bool(self.data.train), "data.train is empty; set it to a shard path, glob or directory")
        _check(bool(self.data.val), "data.val is empty; set it to a shard path, glob or directory")
        _check(not self.train.samples_per_epoch or self.data.sampling == "resampled",
               "train.samples_per_epoch sets the length of a resampled epoch: it needs data.sampling=resampled (an "
               "epoch pass is as long as the data)")
        _check(not self.train.samples_per_epoch or self.train.samples_per_epoch >= self.train.batch_size,
               f"train.samples_per_epoch={self.train.samples_per_epoch} is less than one batch "
               f"(train.batch_size={self.train.batch_size}); a resampled epoch needs at least one step's samples")
        n = self.scaling.num_workers
        _check(
            self.train.batch_size % n == 0,
            f"train.batch_size={self.train.batch_size} is not divisible by scaling.num_workers={n}; "
            f"use a multiple of {n}, e.g. {max(n, self.train.batch_size // n * n)}",
        )
        tok, m = self.data.tokenizer, self.model
        m.check_files(need_tokenizer=tok == "pretrained")
        _check(tok != "pretrained" or m.pretrained_text,
               f"data.tokenizer=pretrained needs a text tower with a tokenizer of its own (model.text.arch=hf:<folder> "
               f"or model.arch=open_clip:<name>), not model.text.arch={m.text.arch}; use word or bpe")
        _check(tok == "pretrained" or not m.open_clip, f"model.arch={m.arch} reads its own BPE token ids: set "
                                                       "data.tokenizer=pretrained")
        _check(tok == "word" or not m.text.embeddings.path, "model.text.embeddings.path gives vectors to words: it "
                                                           f"needs data.tokenizer=word, not {tok}")
        _check(m.text.arch != "char_cnn_rnn" or tok == "char", "model.text.arch=char_cnn_rnn reads characters: set "
                                                               f"data.tokenizer=char (not {tok})")
        _check(tok != "char" or self.data.max_tokens >= 64,
               f"data.tokenizer=char counts characters: data.max_tokens={self.data.max_tokens} would cut most "
               "captions short; set 128 or more")
        if self.model.image.arch == "vit_b_16":
            size = self.data.image_size
            _check(size % 16 == 0, f"model.image.arch=vit_b_16 cuts images into 16x16 patches: data.image_size="
                                   f"{size} must be a multiple of 16, e.g. {max(16, size // 16 * 16)}")
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
    trial_config: ClassVar[type] = TrainJobConfig  # what each trial of its sweep trains (sweep.plan checks them)
    index: IndexConfig = _f(IndexConfig(), "FAISS index over the gallery")
    tune: SweepConfig = _f(SweepConfig(), "sweeps with Ray Tune (`pipeline tune`, or `pipeline run` with tune.enabled)")
    cca: CCAConfig = _f(CCAConfig(), "CCA baselines (`pipeline cca`, or `pipeline run` with cca.enabled)")
    embeddings: EmbeddingsConfig = _f(EmbeddingsConfig(), "word vectors from the captions (`pipeline embeddings`)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tune.space or self.tune.studies:
            from pipeline.config.spaces import plan

            plan(self)  # every grid point must build a valid training config: fail before Ray, not mid-sweep


@dataclass(frozen=True)
class EvalJobConfig:
    data: CsvColumnsConfig = _f(CsvColumnsConfig(), "how --data is read: a CSV/TSV's columns")
    eval: EvalConfig = _f(EvalConfig(), "evaluation and report")
    index: IndexConfig = _f(IndexConfig(), "FAISS index over the gallery")
    scaling: ScalingConfig = _f(ScalingConfig(), "embedding actors (num_workers) and GPU use")
    storage: StorageConfig = _f(StorageConfig(), "S3 endpoint for s3:// data and output directories")
    rerank: RerankConfig = _f(RerankConfig(), "the fusion re-ranker (`pipeline rerank`, `--rerank`)")

