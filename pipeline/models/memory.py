"""Memory and speed for big towers, plain PyTorch: activation (gradient) checkpointing of a tower's blocks,
patch dropout for ViT-style towers, and the blocks FSDP shards by (`distributed.shard_model`).

Each tower kind is treated as its own library treats it: timm's `set_grad_checkpointing`, Hugging Face's
`gradient_checkpointing_enable`, OpenCLIP's `set_grad_checkpointing` and its own `PatchDropout`, timm's
`PatchDropout`. The project's and torchvision's towers get the same from here: their block containers run each
block under `torch.utils.checkpoint` (non-reentrant) while training, and state-dict keys stay as they were, so
checkpoints load either way.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class _BatchNormStatsKept:
    """BatchNorm running statistics as they were before a recomputation: checkpointing runs a block's forward a
    second time during backward, and BatchNorm in training mode would fold the same batch into its running
    statistics twice (timm's and torchvision's own checkpointing have that flaw; the run without checkpointing
    does not)."""

    def __init__(self, modules: list[nn.Module]):
        self.norms = [m for mod in modules for m in mod.modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]

    def __enter__(self):
        self.saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
                      for m in self.norms]

    def __exit__(self, *exc):
        for m, (mean, var, n) in zip(self.norms, self.saved):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(n)


def run_checkpointed(modules: list[nn.Module], x: torch.Tensor, **kwargs) -> torch.Tensor:
    """`x` through `modules` in turn, their activations recomputed in backward instead of kept (RNG state, and
    so dropout, replayed; BatchNorm statistics updated once). `kwargs` go to every module."""
    calls = [0]

    def segment(y: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if calls[0] > 1:  # the recomputation, inside backward
            with _BatchNormStatsKept(modules):
                return _through(modules, y, kwargs)
        return _through(modules, y, kwargs)

    return checkpoint(segment, x, use_reentrant=False)


def _through(modules: list[nn.Module], x: torch.Tensor, kwargs: dict) -> torch.Tensor:
    for m in modules:
        x = m(x, **kwargs)
    return x


class CheckpointedSequential(nn.Sequential):
    """An `nn.Sequential` of blocks, each checkpointed while training with gradients on. An existing Sequential
    gets this class in place (`checkpoint_sequential`), so its state-dict keys do not change."""

    def forward(self, x):
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(x)
        for block in self:
            x = run_checkpointed([block], x)
        return x


def checkpoint_sequential(seq: nn.Sequential) -> None:
    if type(seq) not in (nn.Sequential, CheckpointedSequential):
        raise TypeError(f"{type(seq).__name__} is not a plain nn.Sequential")
    seq.__class__ = CheckpointedSequential


def _torchvision_block_lists(tower: nn.Module) -> list[nn.Sequential]:
    """The Sequentials of blocks inside torchvision's image towers."""
    from torchvision.models import ConvNeXt, ResNet, VisionTransformer

    if isinstance(tower, VisionTransformer):
        return [tower.encoder.layers]
    if isinstance(tower, ResNet):
        return [tower.layer1, tower.layer2, tower.layer3, tower.layer4]
    if isinstance(tower, ConvNeXt):
        from torchvision.models.convnext import CNBlock

        return [s for s in tower.features if isinstance(s, nn.Sequential) and isinstance(s[0], CNBlock)]
    return []


def enable_grad_checkpointing(tower: nn.Module, kind: str, key: str) -> None:
    """Activation checkpointing for `tower` as its library does it. kind: open_clip | timm | hf | the project's
    arch name; key: the config key that asked for it (named in the error when the tower has no blocks). The
    project's own towers (a `grad_checkpointing` attribute) checkpoint their blocks themselves."""
    if kind == "open_clip":
        if not hasattr(tower, "set_grad_checkpointing"):
            raise ValueError(f"{key}: OpenCLIP's {type(tower).__name__} has no gradient checkpointing")
        tower.set_grad_checkpointing(True)
    elif kind == "timm":
        try:
            tower.set_grad_checkpointing(True)
        except (AssertionError, NotImplementedError, AttributeError):
            raise ValueError(f"{key}=true: timm's {type(tower).__name__} does not support gradient checkpointing; "
                             "set it to false") from None
    elif kind == "hf":
        if not tower.encoder.supports_gradient_checkpointing:
            raise ValueError(f"{key}=true: {type(tower.encoder).__name__} does not support gradient checkpointing")
        enc, kwargs = tower.encoder, {"use_reentrant": False}
        if hasattr(enc, "activation_checkpointing_enable"):  # transformers >= 5.x's name for it
            enc.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            enc.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    elif hasattr(tower, "grad_checkpointing"):
        tower.grad_checkpointing = True
    elif lists := _torchvision_block_lists(tower):
        for seq in lists:
            checkpoint_sequential(seq)
    else:
        raise ValueError(f"{key}=true: the {kind} tower has no blocks to checkpoint (it applies to transformer, "
                         "hf:, open_clip:, timm: and the image towers); set it to false")


class PatchDropout(nn.Module):
    """FLIP's patch dropout for the torchvision ViT (OpenCLIP's and timm's towers use their own): while training,
    each image keeps a random `1 - prob` of its patch tokens, in their order; the first `prefix` tokens (the
    class token) are always kept. The identity in eval mode."""

    def __init__(self, prob: float, prefix: int = 1):
        super().__init__()
        if not 0.0 <= prob < 1.0:
            raise ValueError(f"patch dropout {prob} must be in [0, 1)")
        self.prob, self.prefix = float(prob), int(prefix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, prefix + N, D) -> (B, prefix + keep, D)
        if not self.training or self.prob == 0.0:
            return x
        head, patches = x[:, :self.prefix], x[:, self.prefix:]
        keep = max(1, int(patches.shape[1] * (1.0 - self.prob)))
        idx = torch.randn(x.shape[0], patches.shape[1], device=x.device).topk(keep, dim=-1).indices.sort(-1).values
        kept = torch.gather(patches, 1, idx.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        return torch.cat([head, kept], dim=1)


def set_patch_dropout(tower: nn.Module, kind: str, prob: float) -> None:
    """Patch dropout `prob` in a ViT-style image tower, after its position embeddings are added (as FLIP and
    OpenCLIP do); active in train mode only, so validation, evaluation, indexing and serving see every patch."""
    key = f"model.image.patch_dropout={prob}"
    if kind == "open_clip":
        from open_clip.transformer import PatchDropout as OpenCLIPPatchDropout

        if not hasattr(tower, "patch_dropout"):
            raise ValueError(f"{key}: OpenCLIP's {type(tower).__name__} has no patch tokens; set it to 0")
        tower.patch_dropout = OpenCLIPPatchDropout(prob)
    elif kind == "timm":
        from timm.layers import PatchDropout as TimmPatchDropout

        if not hasattr(tower, "patch_drop"):
            raise ValueError(f"{key}: timm's {type(tower).__name__} has no patch tokens (patch dropout applies to "
                             "ViT-style towers); set it to 0")
        tower.patch_drop = TimmPatchDropout(prob, num_prefix_tokens=tower.num_prefix_tokens)
    else:
        from torchvision.models import VisionTransformer

        if not isinstance(tower, VisionTransformer):
            raise ValueError(f"{key}: the {kind} tower has no patch tokens (patch dropout applies to vit_b_16, "
                             "timm ViTs and open_clip ViTs); set it to 0")
        # torchvision's Encoder adds the position embeddings, then applies `dropout`: patches go just before it.
        tower.encoder.dropout = nn.Sequential(PatchDropout(prob), tower.encoder.dropout)


def shard_units(tower: nn.Module) -> list[nn.Module]:
    """The repeated blocks of `tower` that FSDP shards one by one (each all-gathered just before it runs); [] for
    a tower without blocks (it is sharded whole)."""
    encoder = getattr(tower, "encoder", None)
    if isinstance(encoder, nn.TransformerEncoder):  # the project's text transformer
        return list(encoder.layers)
    if hasattr(encoder, "_no_split_modules"):  # a Hugging Face model: the layers it names as unsplittable
        names = set(encoder._no_split_modules or [])
        return [m for m in encoder.modules() if type(m).__name__ in names]
    inner = getattr(getattr(tower, "transformer", None), "resblocks", None)  # OpenCLIP's ViT and text towers
    if inner is not None:
        return list(inner)
    lists = _torchvision_block_lists(tower)
    if lists:
        return [b for seq in lists for b in seq]
    for name in ("blocks", "stages", "layers"):  # timm's models
        seq = getattr(tower, name, None)
        if isinstance(seq, (nn.Sequential, nn.ModuleList)) and len(seq) > 1:
            return list(seq)
    return []
