"""Towers from other libraries, built from local files only (nothing is downloaded):

    model.image.arch: timm:<name>        any timm model; its pooled feature feeds the image projection
    model.text.arch:  hf:<local dir>     a Hugging Face encoder (config + weights), mean or [CLS] pooled
    model.arch:       open_clip:<name>   both towers of an OpenCLIP model (a built-in config name, or a
                                         model-config .json), already projected into its joint space

Each builder returns the tower and a *spec*: the plain-JSON facts needed to rebuild the same architecture
without the original files (the HF config, the OpenCLIP model config, timm's pretrained config) and the
preprocessing the weights expect. The spec travels with every checkpoint (towers.json), so a checkpoint loads
on a machine that has none of the files it started from.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from torch import nn

from pipeline.models.weights import WeightsError, describe_mismatch, fit_state_dict, mismatches, read_state_dict

# The ImageNet statistics torchvision and most timm weights were trained with.
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
OPENAI_CLIP = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}


def _offline() -> None:
    # A hub lookup would hang for minutes on a machine without internet before failing: never try.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# ------------------------------------------------------------------------------------------------ timm


def build_timm(name: str, weights: str, image_size: int, spec: dict | None = None) -> tuple[nn.Module, dict]:
    """timm model `name` without its classifier -> (tower with .out_dim, spec). `weights`: a local file of
    the model's own state dict (classifier keys may be there; they are dropped)."""
    import timm

    try:
        net = timm.create_model(name, pretrained=False, num_classes=0)
    except RuntimeError as e:  # timm's "Unknown model (x)"
        raise ValueError(f"model.image.arch=timm:{name}: {e}; see timm.list_models()") from None
    cfg = dict(spec["pretrained_cfg"]) if spec else {k: v for k, v in net.pretrained_cfg.items()
                                                     if isinstance(v, (str, int, float, bool, list, tuple))}
    fixed = cfg.get("fixed_input_size", False)
    native = int(cfg.get("input_size", (3, image_size, image_size))[-1])
    if fixed and image_size != native:
        raise ValueError(f"timm:{name} takes only {native} px images: set data.image_size={native}")
    if weights:
        state = read_state_dict(weights, "model.image.weights")
        head = cfg.get("classifier") or "classifier"
        heads = tuple(h + "." for h in ([head] if isinstance(head, str) else head))
        fit_state_dict(net, state, key="model.image.weights", path=weights, arch=f"timm:{name}",
                       ignore_unexpected=heads)
    net.out_dim = net.num_features
    from timm.data import DEFAULT_CROP_PCT

    # timm's evaluation transform: resize the short side to size / crop_pct, then the centre crop
    pre = {"mean": list(cfg.get("mean", IMAGENET["mean"])), "std": list(cfg.get("std", IMAGENET["std"])),
           "interpolation": cfg.get("interpolation", "bicubic"), "image_size": native,
           "crop_pct": float(cfg.get("crop_pct") or DEFAULT_CROP_PCT)}
    return net, {"kind": "timm", "name": name, "pretrained_cfg": json.loads(json.dumps(cfg)), "preprocess": pre}


# ------------------------------------------------------------------------------------------------ Hugging Face


def read_pooling(folder: str) -> str | None:
    """The pooling a sentence-transformers folder declares (its Pooling module's config), or None."""
    root = Path(folder)
    modules = root / "modules.json"
    dirs = [m.get("path", "") for m in json.loads(modules.read_text()) if "Pooling" in m.get("type", "")] \
        if modules.is_file() else []
    for d in dirs + ["1_Pooling"]:
        conf = root / d / "config.json"
        if d and conf.is_file():
            c = json.loads(conf.read_text())
            if c.get("pooling_mode_cls_token"):
                return "cls"
            if c.get("pooling_mode_mean_tokens"):
                return "mean"
    return None


def check_hf_folder(folder: str, need_tokenizer: bool) -> None:
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"model.text.arch=hf:{folder}: no such folder; give a local Hugging Face model "
                                "folder (config.json, model.safetensors or pytorch_model.bin, tokenizer.json)")
    if not (root / "config.json").is_file():
        raise FileNotFoundError(f"model.text.arch=hf:{folder} has no config.json; it is not a Hugging Face model "
                                "folder")
    if need_tokenizer and not (root / "tokenizer.json").is_file():
        raise FileNotFoundError(f"model.text.arch=hf:{folder} has no tokenizer.json; save the fast tokenizer "
                                "there (AutoTokenizer.from_pretrained(...).save_pretrained(folder)) or use "
                                "data.tokenizer=word or bpe")


class HFTextTower(nn.Module):
    """A Hugging Face encoder over token ids; `pad_id` marks padding (the attention mask is ids != pad_id).
    mean: average of the last hidden states over the caption's tokens (sentence-transformers' mean pooling);
    cls: the first token's last hidden state."""

    def __init__(self, encoder: nn.Module, pooling: str, pad_id: int):
        super().__init__()
        self.encoder, self.pooling, self.pad_id = encoder, pooling, int(pad_id)
        self.out_dim = int(encoder.config.hidden_size)
        self.max_tokens = int(getattr(encoder.config, "max_position_embeddings", 512))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B,L) -> (B,H)
        mask = tokens != self.pad_id  # (B,L)
        hidden = self.encoder(input_ids=tokens, attention_mask=mask.long()).last_hidden_state  # (B,L,H)
        if self.pooling == "cls":
            return hidden[:, 0]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def _hf_weights_file(folder: str) -> str:
    for name in ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth"):
        if (Path(folder) / name).is_file():
            return str(Path(folder) / name)
    raise FileNotFoundError(f"model.text.arch=hf:{folder} has no model.safetensors or pytorch_model.bin")


def _no_pooler(config) -> dict:
    # BERT-like models add a pooler (a dense layer on [CLS] trained for next-sentence prediction); retrieval
    # pools the hidden states itself, so the pooler is not built and its weights are not needed.
    import inspect

    from transformers import AutoModel

    cls = AutoModel._model_mapping.get(type(config), None)
    takes = cls is not None and "add_pooling_layer" in inspect.signature(cls.__init__).parameters
    return {"add_pooling_layer": False} if takes else {}


def build_hf(folder: str, pooling: str | None, load_weights: bool, spec: dict | None = None
             ) -> tuple[HFTextTower, dict]:
    """A local HF folder (or, rebuilding from a checkpoint, its saved spec) -> (tower, spec)."""
    _offline()
    from transformers import AutoConfig, AutoModel

    if spec is None:
        check_hf_folder(folder, need_tokenizer=False)
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        pooling = pooling or read_pooling(folder) or "mean"
    else:
        config = AutoConfig.for_model(**{k: v for k, v in spec["config"].items() if k != "model_type"},
                                      model_type=spec["config"]["model_type"])
        pooling = spec["pooling"]
    if pooling not in ("mean", "cls"):
        raise ValueError(f"model.text.pooling={pooling!r} does not apply to a Hugging Face tower; use mean or cls")
    encoder = AutoModel.from_config(config, **_no_pooler(config))
    if load_weights and spec is None:
        path = _hf_weights_file(folder)
        state = read_state_dict(path, f"model.text.arch=hf:{folder}")
        prefix = getattr(encoder, "base_model_prefix", "") + "."
        if prefix != "." and state and all(k.startswith(prefix) for k in state if not k.startswith("cls.")):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        own = encoder.state_dict()
        # buffers that newer transformers no longer save (position_ids) are rebuilt by the model itself
        state = {k: v for k, v in state.items() if k in own or not k.endswith("position_ids")}
        fit_state_dict(encoder, state, key=f"model.text.arch=hf:{folder}", path=path,
                       arch=f"{type(encoder).__name__} ({config.model_type})", ignore_unexpected=("pooler.", "cls."))
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    tower = HFTextTower(encoder, pooling, pad)
    return tower, {"kind": "hf", "folder": str(folder), "config": config.to_dict(), "pooling": pooling, "pad_id": pad}


# ------------------------------------------------------------------------------------------------ OpenCLIP


def open_clip_config(name: str) -> dict:
    """A built-in OpenCLIP model name, or a path to a model-config .json -> the model config dict."""
    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"model.arch=open_clip:{name}: no such model-config file")
        cfg = json.loads(path.read_text())
        return cfg.get("model_cfg", cfg)  # an open_clip_config.json from a hub folder nests it
    import open_clip

    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"model.arch=open_clip:{name}: OpenCLIP has no such model; e.g. ViT-B-32, RN50, "
                         "ViT-B-16-SigLIP (open_clip.list_models()), or a model-config .json")
    return copy.deepcopy(cfg)


def open_clip_preprocess(name: str, cfg: dict, tag: str = "") -> dict:
    """The preprocessing OpenCLIP uses for `name`: the pretrained tag's when given or when all of the
    model's tags agree, else OpenCLIP's defaults (OpenAI mean/std, bicubic, shortest-side resize)."""
    import open_clip

    pre = {**OPENAI_CLIP, "interpolation": "bicubic", "resize_mode": "shortest"}
    tags = [tag] if tag else ([] if name.endswith(".json") else open_clip.list_pretrained_tags_by_model(name))
    found = [open_clip.get_pretrained_cfg(name, t) for t in tags]
    if tag and not found[0]:
        raise ValueError(f"OpenCLIP has no pretrained tag {tag!r} for {name}; its tags: "
                         f"{open_clip.list_pretrained_tags_by_model(name)}")
    views = {json.dumps({k: list(c[k]) if isinstance(c.get(k), tuple) else c.get(k)
                         for k in ("mean", "std", "interpolation", "resize_mode")}) for c in found}
    if len(views) == 1:
        pre |= {k: v for k, v in json.loads(views.pop()).items() if v is not None}
    pre.update(cfg.get("preprocess_cfg", {}))
    pre["image_size"] = int(cfg["vision_cfg"].get("image_size", 224))
    pre["crop_pct"] = 1.0  # OpenCLIP's evaluation transform: Resize(image_size) + CenterCrop(image_size)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in pre.items()
            if k in ("mean", "std", "interpolation", "resize_mode", "image_size", "crop_pct")}


def build_open_clip(name: str, weights: str, image_size: int, spec: dict | None = None, tag: str = ""):
    """-> (image tower, text tower, spec): OpenCLIP's `visual` and `text` modules (CustomTextCLIP layout),
    each mapping to the joint space itself. spec["logit_scale"] / ["logit_bias"]: the model's (log) scale
    and bias, to start the loss from."""
    import open_clip
    from open_clip.factory import convert_to_custom_text_state_dict, resize_pos_embed

    cfg = copy.deepcopy(spec["model_cfg"]) if spec else open_clip_config(name)
    if "hf_model_name" in cfg.get("text_cfg", {}):
        raise ValueError(f"open_clip:{name} has a Hugging Face text tower that OpenCLIP fetches from the hub; "
                         "use model.text.arch=hf:<local folder> with a model.image.arch instead")
    native = int(cfg["vision_cfg"].get("image_size", 224))
    if image_size != native:
        raise ValueError(f"open_clip:{name} takes {native} px images: set data.image_size={native}")
    model_cfg = {k: v for k, v in cfg.items() if k not in ("custom_text", "preprocess_cfg")}
    model = open_clip.CustomTextCLIP(**model_cfg)
    if weights:
        state = read_state_dict(weights, "model.weights")
        if "positional_embedding" in state:  # a CLIP (not custom-text) layout: text keys move under text.*
            state = convert_to_custom_text_state_dict(state)
        for k in ("logit_scale", "logit_bias"):
            if k in state and getattr(model, k, None) is not None:
                state[k] = state[k].reshape(getattr(model, k).shape)
        if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None:
            state["logit_bias"] = torch.zeros_like(model.logit_bias)
        state.pop("text.transformer.embeddings.position_ids", None)
        resize_pos_embed(state, model)
        missing, unexpected, shapes = mismatches(model, state)
        if missing or unexpected or shapes:
            raise WeightsError(f"model.weights={weights!r} does not fit open_clip:{name}: "
                               f"{describe_mismatch(missing, unexpected, shapes)}")
        model.load_state_dict(state, strict=True)
    image, text = model.visual, model.text
    image.out_dim = text.out_dim = int(cfg["embed_dim"])
    image.projected = text.projected = True  # no extra projection: parity with OpenCLIP's own encode_*
    out = {"kind": "open_clip", "name": name, "model_cfg": cfg,
           "preprocess": spec["preprocess"] if spec else open_clip_preprocess(name, cfg, tag),
           "logit_scale": float(model.logit_scale.detach().reshape(-1)[0]),
           "context_length": int(model.context_length), "vocab_size": int(model.vocab_size)}
    if getattr(model, "logit_bias", None) is not None:
        out["logit_bias"] = float(model.logit_bias.detach().reshape(-1)[0])
    return image, text, out
