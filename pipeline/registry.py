"""The component names a config may use, and the range checks of the losses' parameters: plain data with no
torch or FAISS, so that loading a config (and `--help`) stays instant. The components take their names and
checks from here too (a unit test holds each registry against its component), so the two cannot drift."""
from __future__ import annotations

# Every vocabulary starts with these two ids (0 and 1): the tokenizers write them, the word-vector loader and the
# bag-of-words features skip them.
PAD, UNK = "[PAD]", "[UNK]"
N_SPECIAL = 2

IMAGE_ARCHS = ("small_cnn", "resnet18", "resnet50", "vit_b_16", "convnext_tiny")
PATCH_TOWERS = ("vit_b_16",)  # of IMAGE_ARCHS, those made of patch tokens (model.image.patch_dropout applies)
# Towers from other libraries are named by a prefix and the library's own name for the model.
TIMM, HF, OPEN_CLIP = "timm:", "hf:", "open_clip:"
TOKENIZERS = ("word", "char", "bpe", "pretrained")
INTERPOLATIONS = ("auto", "bilinear", "bicubic")
RESIZE_MODES = ("auto", "shortest", "squash")

# text arch -> the poolings it takes, its default first
TEXT_POOLINGS = {"bow": ("mean",), "gru": ("mean", "last"), "lstm": ("mean", "last"), "cnn": ("max",),
                 "transformer": ("mean", "cls"), "char_cnn_rnn": ("mean",)}
TEXT_ARCHS = tuple(TEXT_POOLINGS)
HF_POOLINGS = ("mean", "cls")


def is_image_arch(arch: str) -> bool:
    return arch in IMAGE_ARCHS or (arch.startswith(TIMM) and len(arch) > len(TIMM))


def is_text_arch(arch: str) -> bool:
    return arch in TEXT_ARCHS or (arch.startswith(HF) and len(arch) > len(HF))

INDEX_TYPES = ("flat", "hnsw", "ivfpq", "auto")
RERANK_FUSIONS = ("concat", "sum", "product", "bilinear", "low_rank", "compact_bilinear")

# loss name -> the keyword parameters its constructor takes
LOSS_PARAMS = {
    "infonce": ("temperature", "learn_temperature", "label_smoothing"),
    "siglip": ("temperature", "learn_temperature", "bias_init"),
    "vse": ("margin",), "vse++": ("margin",), "contrastive": ("margin",), "triplet": ("margin", "mining"),
    "npair": (), "lifted": ("margin",), "dcca": ("top_k", "r1", "r2"),
}
TRIPLET_MINING = ("hardest", "semi-hard", "all")


def check_margin(margin: float, hi: float = 4.0) -> float:
    if not 0 <= margin <= hi:
        raise ValueError(f"margin={margin} must lie in [0, {hi}] (embeddings are unit vectors)")
    return float(margin)


def check_temperature(t: float) -> float:
    if not 0.001 <= t <= 10:
        raise ValueError(f"temperature={t} must lie in [0.001, 10]")
    return float(t)


def check_label_smoothing(v: float) -> float:
    if not 0 <= v < 1:
        raise ValueError(f"label_smoothing={v} must lie in [0, 1)")
    return float(v)


def check_mining(mining: str) -> str:
    if mining not in TRIPLET_MINING:
        raise ValueError(f"mining={mining!r}; choose one of {list(TRIPLET_MINING)}")
    return mining


def check_dcca(top_k: int, r1: float, r2: float) -> None:
    if top_k < 0 or r1 <= 0 or r2 <= 0:
        raise ValueError("dcca needs top_k >= 0 (0: all components) and ridge terms r1, r2 > 0")


def check_loss_params(name: str, params: dict) -> None:
    """The checks loss `name`'s constructor makes, on the parameters given (the rest keep its defaults)."""
    if name not in LOSS_PARAMS:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSS_PARAMS)}")
    extra = sorted(set(params) - set(LOSS_PARAMS[name]))
    if extra:
        raise ValueError(f"loss {name!r} takes no parameter {extra[0]!r}; it takes {list(LOSS_PARAMS[name])}")
    if "temperature" in params:
        check_temperature(params["temperature"])
    if "label_smoothing" in params:
        check_label_smoothing(params["label_smoothing"])
    if "margin" in params:
        check_margin(params["margin"], 2.0 if name in ("contrastive", "lifted") else 4.0)
    if "mining" in params:
        check_mining(params["mining"])
    if name == "dcca":
        check_dcca(params.get("top_k", 0), params.get("r1", 1e-3), params.get("r2", 1e-3))
