"""Image towers: a small CNN that trains in minutes on CPU, and torchvision ResNets, ViT-B/16 and ConvNeXt-T
(random init by default, or weights from a local file). Each returns a feature vector (global average, or the
class token for the ViT); the projection lives in `two_tower`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipeline import registry
from pipeline.models.memory import run_checkpointed


class SmallCNN(nn.Module):
    """Four stride-2 conv stages, then the 4x4 map is flattened rather than averaged: averaging would throw
    away where things are, and captions say 'left of' and 'above'."""

    def __init__(self, width: int = 32):
        super().__init__()
        chans = [3, width, width * 2, width * 4, width * 4]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                       nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(4)  # any input size -> 4x4 grid
        self.out_dim = chans[-1] * 16
        self.grad_checkpointing = False  # model.image.grad_checkpointing: each stage's activations recomputed

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B,3,H,W) -> (B, C*16)
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            layers = list(self.stages)
            for i in range(0, len(layers), 6):  # a stage: conv, norm, relu, conv, norm, relu
                x = run_checkpointed(layers[i:i + 6], x)
        else:
            x = self.stages(x)
        return self.pool(x).flatten(1)


def _load_weights(net: nn.Module, weights: str, image_size: int) -> None:
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"model.image.weights={weights!r} does not exist; give a local .pth file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    pos = getattr(getattr(net, "encoder", None), "pos_embedding", None)
    if pos is not None and "encoder.pos_embedding" in state and state["encoder.pos_embedding"].shape != pos.shape:
        from torchvision.models.vision_transformer import interpolate_embeddings

        # ViT weights trained at 224 px: resample the position grid to data.image_size's patch grid.
        state = interpolate_embeddings(image_size, net.patch_size, state)
    net.load_state_dict(state)


def _torchvision(name: str, weights: str, image_size: int) -> nn.Module:
    """A torchvision classifier with its last linear layer removed; `.out_dim` is the feature size left."""
    import torchvision

    if name.startswith("vit"):
        if image_size % 16:
            raise ValueError(f"{name} cuts images into 16x16 patches: data.image_size={image_size} must be a "
                             f"multiple of 16, e.g. {max(16, image_size // 16 * 16)}")
        net = getattr(torchvision.models, name)(weights=None, image_size=image_size)
    else:
        net = getattr(torchvision.models, name)(weights=None)
    if weights:
        _load_weights(net, weights, image_size)
    # Keep the pooled feature (global average; the class token for the ViT); the projection maps it into the
    # joint space.
    if name.startswith("resnet"):
        net.out_dim, net.fc = net.fc.in_features, nn.Identity()
    elif name.startswith("vit"):
        net.out_dim, net.heads = net.hidden_dim, nn.Identity()
    else:  # convnext: classifier = LayerNorm2d, Flatten, Linear
        net.out_dim, net.classifier[2] = net.classifier[2].in_features, nn.Identity()
    return net


IMAGE_ARCHS = registry.IMAGE_ARCHS


def build_image_tower(arch: str, width: int = 32, weights: str = "", image_size: int = 64) -> nn.Module:
    """-> module with `.out_dim`, mapping (B,3,S,S) normalised floats to (B, out_dim). `image_size` (S) matters
    only to the ViT, whose position embeddings are sized for it; the others take any size."""
    if arch not in IMAGE_ARCHS:
        raise ValueError(f"unknown image tower {arch!r}; choose one of {list(IMAGE_ARCHS)}")
    if arch == "small_cnn":
        return SmallCNN(width)
    return _torchvision(arch, weights, image_size)
