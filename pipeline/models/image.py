"""Image towers: a small CNN that trains in minutes on CPU, and torchvision ResNets (random init by default,
or weights from a local file). Each returns a feature vector; the projection lives in `two_tower`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B,3,H,W) -> (B, C*16)
        return self.pool(self.stages(x)).flatten(1)


def _resnet(name: str, weights: str) -> nn.Module:
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"model.image.weights={weights!r} does not exist; give a local .pth file")
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    net.out_dim = net.fc.in_features
    net.fc = nn.Identity()  # keep the global-average feature; the projection maps it into the joint space
    return net


IMAGE_ARCHS = {
    "small_cnn": lambda width, weights: SmallCNN(width),
    "resnet18": lambda width, weights: _resnet("resnet18", weights),
    "resnet50": lambda width, weights: _resnet("resnet50", weights),
}


def build_image_tower(arch: str, width: int = 32, weights: str = "") -> nn.Module:
    """-> module with `.out_dim`, mapping (B,3,H,W) normalised floats to (B, out_dim)."""
    if arch not in IMAGE_ARCHS:
        raise ValueError(f"unknown image tower {arch!r}; choose one of {sorted(IMAGE_ARCHS)}")
    return IMAGE_ARCHS[arch](width, weights)
