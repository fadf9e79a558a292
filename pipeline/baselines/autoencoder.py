"""The multimodal (bimodal deep) autoencoder of Ngiam et al. (2011) as a retrieval baseline beside CCA: plain
PyTorch over the two views' features (`features.Featurizer`), no Ray (`fitting` streams the batches).

    x (dx) ─ Linear+ReLU ─┐                             ┌─ Linear+ReLU ─ Linear ─ x̂
                          ├─ Linear ─ code (k) ─ ReLU ──┤
    y (dy) ─ Linear+ReLU ─┘                             └─ Linear+ReLU ─ Linear ─ ŷ

Both views are standardised (the statistics pass's means and variances). Training reconstructs *both* views from
noisy inputs in which one view is often missing (zeros, the standardised mean): a third of the rows keep both,
a third only the image, a third only the caption ("modality dropout"), so the shared code learns to stand for
the pair from either view alone. Retrieval compares the code of an image-only input with the code of a
caption-only input, by cosine.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.baselines.features import BaselineEncoder


class BimodalAutoencoder(nn.Module):
    def __init__(self, dx: int, dy: int, hidden: int, code: int):
        super().__init__()
        self.enc_x, self.enc_y = nn.Linear(dx, hidden), nn.Linear(dy, hidden)
        self.to_code = nn.Linear(2 * hidden, code)
        self.dec_x, self.dec_y = nn.Linear(code, hidden), nn.Linear(code, hidden)
        self.out_x, self.out_y = nn.Linear(hidden, dx), nn.Linear(hidden, dy)

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(n, dx), (n, dy) standardised, a missing view all zeros -> (n, code)."""
        return self.to_code(torch.cat([F.relu(self.enc_x(x)), F.relu(self.enc_y(y))], dim=1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.encode(x, y))  # (n, code)
        return self.out_x(F.relu(self.dec_x(h))), self.out_y(F.relu(self.dec_y(h)))


def modality_dropout(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Which rows keep each view: a third both, a third the image only, a third the caption only. -> two (n, 1)
    float masks."""
    kind = torch.randint(0, 3, (n, 1), generator=generator)  # 0 both, 1 image only, 2 caption only
    return (kind != 2).float(), (kind != 1).float()


def reconstruction_loss(model: BimodalAutoencoder, x: torch.Tensor, y: torch.Tensor, noise: float,
                        generator: torch.Generator, drop_modalities: bool = True) -> torch.Tensor:
    """Both views reconstructed from a noisy input with a view often missing (`drop_modalities`); each view's
    mean squared error per feature, summed over the two views (so a wide bag of words does not drown the
    pixels)."""
    keep_x, keep_y = modality_dropout(len(x), generator) if drop_modalities else (1.0, 1.0)
    noisy = lambda v: v + noise * torch.randn(v.shape, generator=generator)  # noqa: E731
    x_hat, y_hat = model(noisy(x) * keep_x, noisy(y) * keep_y)
    return F.mse_loss(x_hat, x) + F.mse_loss(y_hat, y)


class Standardiser:
    """Per-feature (v - mean) / std from the statistics pass; a constant feature is only centred."""

    def __init__(self, mean: np.ndarray, var: np.ndarray):
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self.std = torch.as_tensor(np.sqrt(np.where(var > 1e-12, var, 1.0)), dtype=torch.float32)

    def __call__(self, v: np.ndarray) -> torch.Tensor:
        return (torch.tensor(np.asarray(v), dtype=torch.float32) - self.mean) / self.std  # a copy: Ray's arrays are read-only


class AutoencoderEncoder(BaselineEncoder):
    """A fitted autoencoder as an encoder: each view's code given alone, L2-normalised."""

    def __init__(self, features, model: BimodalAutoencoder, std_x: Standardiser, std_y: Standardiser,
                 image_size: int):
        self.features, self.model, self.image_size = features, model.eval(), image_size
        self.std_x, self.std_y = std_x, std_y

    @property
    def embed_dim(self) -> int:
        return self.model.to_code.out_features

    @torch.no_grad()
    def _code(self, x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor:
        n = len(x) if x is not None else len(y)
        x = x if x is not None else torch.zeros(n, self.model.enc_x.in_features)
        y = y if y is not None else torch.zeros(n, self.model.enc_y.in_features)
        return F.normalize(self.model.encode(x, y), dim=1)

    def map_image(self, x: np.ndarray) -> torch.Tensor:
        return self._code(self.std_x(x), None)

    def map_text(self, y: np.ndarray) -> torch.Tensor:
        return self._code(None, self.std_y(y))

    def saved(self) -> tuple[str, dict]:
        """The file the `cca` job writes beside its report: the weights and the standardisation, as arrays."""
        return "autoencoder.npz", {**{k: v.numpy() for k, v in self.model.state_dict().items()},
                                   "mean_x": self.std_x.mean.numpy(), "std_x": self.std_x.std.numpy(),
                                   "mean_y": self.std_y.mean.numpy(), "std_y": self.std_y.std.numpy()}
