"""`pipeline import-model`: pretrained weights -> a checkpoint directory in the project's format (towers,
tokenizer, preprocessing, resolved config), which `evaluate`, `index`, `search`, `pipeline.load` and training
through `model.init_from` accept like any trained checkpoint. No Ray: it only reads local files.

    pipeline import-model --from open_clip:ViT-B-32 --weights open_clip_pytorch_model.bin --out zoo/clip-b32
    pipeline import-model --image timm:tf_efficientnet_lite0 --image-weights lite0.safetensors \\
                          --text hf:all-MiniLM-L6-v2 --out zoo/lite0-minilm
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import ConfigError, DataConfig, LossConfig, ModelConfig, build, to_dict


@dataclass
class Imported:
    path: str
    config: dict
    params: int
    summary: str


def import_config(*, source: str = "", weights: str = "", tag: str = "", tokenizer: str = "", image: str = "",
                  image_weights: str = "", text: str = "", pooling: str | None = None, embed_dim: int = 256,
                  max_tokens: int = 0) -> dict:
    """The resolved data/model/loss sections of the imported model. Reads model configs, not weights."""
    from pipeline.training import warm_start

    if source:
        if not source.startswith("open_clip:"):
            raise ConfigError(f"--from {source}: give open_clip:<model name or config .json>")
        if image or text:
            raise ConfigError("--from open_clip:... brings both towers; drop --image/--text")
        model = {"arch": source, "weights": weights, "pretrained_tag": tag, "tokenizer": tokenizer}
    else:
        if not (image and text):
            raise ConfigError("give --from open_clip:<name>, or both --image and --text (e.g. --image "
                              "timm:<name> --image-weights FILE --text hf:<folder>)")
        if not text.startswith("hf:"):
            raise ConfigError(f"--text {text}: an imported text tower is a Hugging Face folder, hf:<folder> (towers "
                              "trained here need a vocabulary from data: train them with `pipeline train`)")
        model = {"embed_dim": embed_dim, "image": {"arch": image, "weights": image_weights},
                 "text": {"arch": text, "pooling": pooling}}
    mcfg = build(ModelConfig, warm_start.absolute_paths(to_dict(build(ModelConfig, model))))
    mcfg.check_files(need_tokenizer=True)  # an imported pair always uses the tower's own tokenizer
    pre = warm_start.preprocess_of(mcfg)
    size = 224
    if mcfg.open_clip:
        from pipeline.models.pretrained import open_clip_config

        cfg = open_clip_config(mcfg.open_clip)
        size = int(cfg["vision_cfg"].get("image_size", 224))
        max_tokens = int(cfg.get("text_cfg", {}).get("context_length", 77))
    elif image.startswith("timm:"):
        import timm

        pc = timm.get_pretrained_cfg(image[5:])
        size = int(pc.input_size[-1]) if pc is not None else 224
    data = build(DataConfig, {"image_size": size, "tokenizer": "pretrained", "max_tokens": max_tokens or 128,
                              "interpolation": pre.get("interpolation", "bilinear"),
                              "resize_mode": pre.get("resize_mode", "shortest"),
                              "crop_pct": float(pre.get("crop_pct", 1.0))})
    return {"data": to_dict(data), "model": to_dict(mcfg)}


def import_model(out: str, **kwargs) -> Imported:
    """Build the model with its weights, its tokenizer, and write them as checkpoint `out`."""
    import torch

    from pipeline import checkpoint
    from pipeline.data.text.vocabulary import pretrained_tokenizer
    from pipeline.losses import build_loss
    from pipeline.models import build_model
    from pipeline.training.warm_start import set_scale

    cfg = import_config(**kwargs)
    data, mcfg = build(DataConfig, cfg["data"]), build(ModelConfig, cfg["model"])
    tokenizer = pretrained_tokenizer(mcfg, data.max_tokens)
    data_dict = dict(cfg["data"], max_tokens=tokenizer.max_tokens)
    # The projections a pair of separate towers gets are new: seeded, so the same command writes the same
    # checkpoint (and a fit that starts from it goes the same way every time)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(mcfg, len(tokenizer), image_size=data.image_size, max_tokens=tokenizer.max_tokens)
    oc = model.spec.get("open_clip")
    if oc and "logit_bias" in oc:
        loss_cfg = {"name": "siglip", "temperature": _temperature(oc["logit_scale"]), "bias_init": oc["logit_bias"]}
    elif oc:
        loss_cfg = {"name": "infonce", "temperature": _temperature(oc["logit_scale"])}
    else:
        loss_cfg = {"name": "infonce"}
    loss = build_loss(build(LossConfig, loss_cfg))
    if oc:
        set_scale(loss, oc["logit_scale"], oc.get("logit_bias"))
    config = {"data": data_dict, "model": cfg["model"], "loss": to_dict(build(LossConfig, loss_cfg))}
    params = sum(p.numel() for p in model.parameters())
    what = mcfg.arch or f"{mcfg.image.arch} + {mcfg.text.arch}"
    state = {"epoch": 0, "step": 0, "n_train": 0, "samples": 0, "metrics": {}, "history": [],
             "imported": {"model": what, "weights": [w for w in (mcfg.weights, mcfg.image.weights) if w]}}
    Path(out).mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        checkpoint.write_checkpoint(Path(out), model=model, loss=loss, optimizer=None, scheduler=None,
                                    tokenizer=tokenizer, config=config, state=state)
    pre = model.spec["preprocess"]
    summary = (f"imported {what}: {params / 1e6:.1f} M parameters, embeddings {model.embed_dim}-d, "
               f"{data.image_size} px {data_dict['interpolation']} ({data_dict['resize_mode']}), mean "
               f"{[round(x, 4) for x in pre['mean']]}, std {[round(x, 4) for x in pre['std']]}, "
               f"tokenizer {getattr(tokenizer, 'kind', 'word')} ({len(tokenizer)} ids, {tokenizer.max_tokens} tokens)")
    return Imported(str(out), config, params, summary)


def _temperature(log_scale: float) -> float:
    # the loss's temperature range is [0.001, 10]; OpenCLIP's scale is capped at 100 (temperature 0.01)
    return float(min(10.0, max(0.001, round(math.exp(-log_scale), 6))))
