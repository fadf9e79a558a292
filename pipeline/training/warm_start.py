"""Starting a training run from pretrained weights: resolving the config on the driver, and loading the weights
and the logit scale into a fresh model on each worker. Plain config and PyTorch; no Ray.

model.init_from (a checkpoint or run directory: an imported OpenCLIP/timm/HF pair, or an earlier run) decides
the architecture and the tokenizer, since its weights only fit those: the run takes the checkpoint's model
section and the data keys that shape the model's inputs, and keeps its own fine-tuning choices (which towers
are frozen, their learning-rate multipliers) and everything else (loss, optimiser, data paths).
"""
from __future__ import annotations

import math

import torch

from pipeline import checkpoint
from pipeline.config import ConfigError, TrainJobConfig, build, to_dict

# What a run keeps of its own model section when it starts from another checkpoint's weights.
OWN_MODEL_KEYS = (("image", "freeze"), ("image", "lr_mult"), ("text", "freeze"), ("text", "lr_mult"))
# The data keys that shape what the checkpoint's model is fed.
INPUT_KEYS = ("image_size", "max_tokens", "tokenizer", "interpolation", "resize_mode", "crop_pct")


def find_init(path: str) -> str:
    found = checkpoint.find_latest(path, verify=True)
    if found is None:
        raise ConfigError(f"model.init_from={path!r}: no complete checkpoint there (a checkpoint directory with "
                          "model.pt, tokenizer.json, config.json, or a run directory)")
    return found


def resolve(cfg: TrainJobConfig) -> tuple[TrainJobConfig, str | None]:
    """-> (the config the run trains with, the checkpoint it starts from or None). Resolves data.interpolation
    and data.resize_mode `auto` from the image tower's pretrained configuration, so the saved config says what
    the images were resampled with."""
    d = to_dict(cfg)
    d["model"] = absolute_paths(d["model"])  # workers run in another directory
    init = find_init(d["model"]["init_from"]) if d["model"]["init_from"] else None
    if init is not None:
        saved = checkpoint.read_config(init)
        model = dict(saved["model"], init_from=cfg.model.init_from)
        for section, key in OWN_MODEL_KEYS:
            model[section] = dict(model.get(section, {}), **{key: d["model"][section][key]})
        d["model"] = model
        d["data"] |= {k: saved["data"][k] for k in INPUT_KEYS if k in saved["data"]}
        if "tokenizer" not in saved["data"]:  # a checkpoint from before data.tokenizer: word ids
            d["data"]["tokenizer"] = "word"
    if "auto" in (d["data"]["interpolation"], d["data"]["resize_mode"]) or not d["data"].get("crop_pct"):
        pre = preprocess_of(build(TrainJobConfig, d).model) if init is None else checkpoint.read_spec(init).get(
            "preprocess", {})
        if d["data"]["interpolation"] == "auto":
            d["data"]["interpolation"] = pre.get("interpolation", "bilinear")
        if d["data"]["resize_mode"] == "auto":
            d["data"]["resize_mode"] = pre.get("resize_mode", "shortest")
        if not d["data"].get("crop_pct"):
            d["data"]["crop_pct"] = float(pre.get("crop_pct", 1.0))
    return build(TrainJobConfig, d), init


def _absolute(path: str) -> str:
    import os

    from pipeline import storage

    return path if not path or storage.is_remote(path) else os.path.abspath(path)


def absolute_paths(model: dict) -> dict:
    """A model section (dict) with its local file paths made absolute: weights, word vectors, hf: folders,
    OpenCLIP config files and tokenizers, the warm-start checkpoint. Ray workers do not run in the driver's
    working directory, so a relative path would name nothing there."""
    m = {**model, "image": dict(model["image"]), "text": dict(model["text"])}
    for key in ("weights", "tokenizer", "init_from"):
        m[key] = _absolute(m.get(key, ""))
    if m.get("arch", "").startswith("open_clip:") and m["arch"].endswith(".json"):
        m["arch"] = "open_clip:" + _absolute(m["arch"][len("open_clip:"):])
    m["image"]["weights"] = _absolute(m["image"].get("weights", ""))
    if m["text"]["arch"].startswith("hf:"):
        m["text"]["arch"] = "hf:" + _absolute(m["text"]["arch"][3:])
    m["text"]["embeddings"] = dict(m["text"]["embeddings"], path=_absolute(m["text"]["embeddings"]["path"]))
    return m


def preprocess_of(model_cfg) -> dict:
    """The preprocessing the configured image tower's weights expect ({} for towers trained here): read from
    OpenCLIP's pretrained tags or timm's pretrained config, without building the model."""
    if model_cfg.open_clip:
        from pipeline.models.pretrained import open_clip_config, open_clip_preprocess

        return open_clip_preprocess(model_cfg.open_clip, open_clip_config(model_cfg.open_clip),
                                    model_cfg.pretrained_tag)
    if model_cfg.image.arch.startswith("timm:"):
        import timm

        try:
            pc = timm.get_pretrained_cfg(model_cfg.image.arch[5:])
        except RuntimeError:
            pc = None
        return {"interpolation": getattr(pc, "interpolation", None) or "bicubic", "resize_mode": "shortest",
                "crop_pct": timm_crop_pct(pc)}
    return {}


def timm_crop_pct(pc) -> float:
    """timm's evaluation crop fraction for a pretrained config (its default, 0.875, where the config has none)."""
    from timm.data import DEFAULT_CROP_PCT

    crop = getattr(pc, "crop_pct", None) if pc is not None else None
    return float(crop or DEFAULT_CROP_PCT)


def start_model(model, loss, init: str | None, keep_temperature: bool = False) -> None:
    """Load the start weights into a freshly built model (on a worker, before any resume): the checkpoint's
    weights and, when its loss has the same parameters, the loss's own (the learned logit scale); else an
    OpenCLIP model's logit scale and bias, unless `keep_temperature` (the config sets loss.temperature)."""
    if init is not None:
        checkpoint.load_weights(init, model)
        if _same_loss(init, loss):
            loss.load_state_dict(checkpoint._torch_load(init, "loss.pt"))
        return
    oc = (getattr(model, "spec", None) or {}).get("open_clip")
    if oc and hasattr(loss, "logit_scale") and not keep_temperature:
        set_scale(loss, oc["logit_scale"], oc.get("logit_bias"))


def _same_loss(init: str, loss) -> bool:
    """Whether the checkpoint's loss.pt fits `loss` (same parameter names and shapes)."""
    try:
        saved = checkpoint._torch_load(init, "loss.pt")
    except FileNotFoundError:
        return False
    own = loss.state_dict()
    return bool(saved) and set(saved) == set(own) and all(saved[k].shape == own[k].shape for k in own)


def set_scale(loss, log_scale: float, bias: float | None = None) -> None:
    """Start the loss from a pretrained log logit scale (capped as the loss caps it) and bias."""
    from pipeline.losses import MAX_LOGIT_SCALE

    with torch.no_grad():
        loss.logit_scale.fill_(min(float(log_scale), math.log(MAX_LOGIT_SCALE)))
        if bias is not None and hasattr(loss, "logit_bias"):
            loss.logit_bias.fill_(float(bias))


def describe(init: str | None, cfg: TrainJobConfig) -> str:
    """The console line saying where the weights start from."""
    m = cfg.model
    frozen = [t for t, f in (("image", m.image.freeze), ("text", m.text.freeze)) if f]
    what = (f"the weights of {init}" if init else f"{m.arch} weights {m.weights}" if m.weights else
            " and ".join(x for x in (m.image.weights and f"image weights {m.image.weights}",
                                     m.text.arch.startswith("hf:") and f"text tower {m.text.arch}") if x)
            or "random weights")
    return f"[train] starting from {what}" + (f"; frozen: {', '.join(frozen)} tower" if frozen else "")


def check_model(cfg) -> None:
    """On the driver, before any Ray work: the configured towers build and their weights files fit them (keys,
    shapes, image size, the tokenizer's ids), each failure one line. The model is built on torch's meta device,
    so no memory is spent on it; the weights files are read to compare their keys and shapes."""
    import dataclasses

    m = cfg.model
    if m.init_from:
        find_init(m.init_from)
        return
    if not (m.arch or m.image.weights or m.image.arch.startswith("timm:") or m.text.arch.startswith("hf:")):
        return  # towers trained here from random init: nothing to check against
    from pipeline.data.text.vocabulary import pretrained_tokenizer
    from pipeline.models import build_model

    tok = pretrained_tokenizer(m, cfg.data.max_tokens) if cfg.data.tokenizer == "pretrained" else None
    # word vectors are checked by ModelConfig.check_files; reading a whole vector file here would be slow
    text = dataclasses.replace(m.text, embeddings=dataclasses.replace(m.text.embeddings, path=""))
    with torch.device("meta"):
        build_model(dataclasses.replace(m, text=text), len(tok) if tok is not None else 2,
                    image_size=cfg.data.image_size, max_tokens=tok.max_tokens if tok is not None else
                    cfg.data.max_tokens)
