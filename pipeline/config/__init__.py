"""Typed job configs: frozen section dataclasses (`sections`), one config per job (`jobs`), and YAML +
dotted-override loading with errors that say what to change (`loading`). No Ray here."""
from pipeline.config.jobs import EvalJobConfig, RunJobConfig, TrainJobConfig
from pipeline.config.loading import (ConfigError, apply_overrides, build, describe_keys, flat_config, flatten,
                                     load_config, narrow, parse_override, to_dict, valid_keys)
from pipeline.config.model_sections import ImageTowerConfig, ModelConfig, TextTowerConfig
from pipeline.config.sections import (CCAConfig, DataConfig, EmbeddingsConfig, EvalConfig, IndexConfig, LossConfig,
                                      RerankConfig, ScalingConfig, SweepConfig, SynthConfig, TrainConfig)
from pipeline.config.run_sections import RunConfig, StorageConfig
from pipeline.config.sources import CsvColumnsConfig

__all__ = [
    "CCAConfig", "ConfigError", "CsvColumnsConfig", "DataConfig", "EmbeddingsConfig", "EvalConfig", "EvalJobConfig", "ImageTowerConfig",
    "IndexConfig", "LossConfig", "ModelConfig", "RerankConfig",
    "RunConfig", "RunJobConfig", "ScalingConfig", "StorageConfig", "SweepConfig", "SynthConfig",
    "TextTowerConfig", "TrainConfig", "TrainJobConfig", "apply_overrides", "build", "describe_keys",
    "flat_config", "flatten", "load_config", "narrow", "parse_override", "to_dict", "valid_keys",
]
