"""Reading pretrained weight files and fitting them to a module, with one-line errors.

A weights file is a `.safetensors` file or a torch `.pth`/`.bin`/`.pt` state dict. Torch files are read with
`weights_only=True`: a pickle that carries code (a whole pickled model, an object with a custom reducer) is
refused, never executed. Keys and shapes are compared with the module before `load_state_dict`, so a file made
for another architecture is named as such instead of surfacing as a long state-dict traceback from a worker.
"""
from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

# wrappers around a state dict that checkpoints of other projects use
_NESTED = ("state_dict", "model", "module", "model_state_dict")


class WeightsError(ValueError):
    """A weights file that cannot be used for the architecture it was given to."""


def read_state_dict(path: str, key: str) -> dict[str, torch.Tensor]:
    """`path` -> {name: tensor}. `key` names the config key the path came from, for the error message."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{key}={path!r} does not exist; give a local .safetensors, .pth or .bin file")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except Exception as e:  # safetensors raises its own SafetensorError for a damaged header
            raise WeightsError(f"{key}={path!r} is not a readable safetensors file ({str(e)[:120]})") from None
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise WeightsError(f"{key}={path!r} is a pickle that holds code or objects, not only tensors; refusing to "
                           "load it (re-save it with torch.save(model.state_dict()) or as .safetensors)") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise WeightsError(f"{key}={path!r} is not a torch weights file ({str(e).splitlines()[0][:120]})") from None
    for name in _NESTED:  # {"state_dict": {...}, "epoch": 3} and the like
        if isinstance(state, Mapping) and isinstance(state.get(name), Mapping):
            state = state[name]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{key}={path!r} holds no state dict of tensors")
    # DataParallel / DDP checkpoints prefix every key with "module."
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def mismatches(module: nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """-> (keys the module has and the file lacks, keys the file has and the module lacks, keys whose shapes
    differ as 'name: file (..) vs model (..)')."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    return missing, unexpected, shapes


def describe_mismatch(missing: list[str], unexpected: list[str], shapes: list[str]) -> str:
    parts = []
    if shapes:
        parts.append(f"shapes differ for {', '.join(shapes[:2])}")
    if missing:
        parts.append(f"{len(missing)} keys missing from the file (first: {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} keys the architecture lacks (first: {', '.join(unexpected[:3])})")
    return "; ".join(parts)


def fit_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], *, key: str, path: str, arch: str,
                   ignore_unexpected: tuple[str, ...] = ()) -> None:
    """Load `state` into `module` strictly, or raise WeightsError naming the first mismatched keys and the
    architecture that was expected. Keys starting with one of `ignore_unexpected` (a classifier head the tower
    drops) may be in the file without being in the module."""
    state = {k: v for k, v in state.items() if not k.startswith(ignore_unexpected)} if ignore_unexpected else state
    missing, unexpected, shapes = mismatches(module, state)
    own = module.state_dict()
    fitting = len(own) - len(missing) - len(shapes)
    if fitting < len(own) / 2:  # most of what the tower needs is not there: weights of another architecture
        names = [k for k in state if k.endswith(".weight")][:3] or list(state)[:3]
        raise WeightsError(f"{key}={path!r} holds another architecture's weights, not {arch}'s: {fitting} of the "
                           f"{len(own)} tensors it needs are there by name and shape, and the file's own names "
                           f"look like {', '.join(names)}; point {key} at weights for {arch}, or set the tower's "
                           "arch to the one they are for")
    if missing or unexpected or shapes:
        raise WeightsError(f"{key}={path!r} does not fit {arch}: {describe_mismatch(missing, unexpected, shapes)}")
    module.load_state_dict(state, strict=True)
