"""GloVe and skip-gram with negative sampling, trained on the caption corpus's co-occurrence counts
(`cooccurrence.Counts`): plain PyTorch, no Ray (`words.job` runs them on Ray Train workers).

GloVe (Pennington et al.), over the non-zero counts X_ij:

    J = sum_ij f(X_ij) (w_i . w~_j + b_i + b~_j - log X_ij)^2,   f(x) = min(1, (x / x_max)^a)

and the vectors written are w + w~ (less their mean over the vocabulary). Skip-gram with negative sampling (Mikolov et al.), on the same counts: every
co-occurring pair (i, j) is a positive weighted by X_ij, each with k negatives n drawn from the unigram
distribution to the 3/4 (words' co-occurrence mass):

    L = - sum_ij X_ij [ log s(w_i . c_j) + sum_{n=1..k} log s(-w_i . c_n) ] / sum_ij X_ij

and the vectors written are w. Both objectives are sums over entries divided by a normaliser (the number of
entries, or their total count). On W workers, each with its share of a step's entries, the normaliser is the
step's global one, which the caller passes as the mean over the workers of their local ones (`normaliser`,
all-reduced): each worker's sum over the normaliser, averaged by DDP, is then exactly the gradient of the
objective over the union. A worker's own normaliser would make DDP average ratios, not the ratio of sums.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

METHODS = ("ppmi", "glove", "sgns")


class GloVe(nn.Module):
    def __init__(self, vocab_size: int, dim: int, x_max: float = 100.0, alpha: float = 0.75, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        init = lambda *shape: nn.Parameter((torch.rand(*shape, generator=g) - 0.5) / dim)  # noqa: E731 (GloVe's)
        self.w, self.w_ctx = init(vocab_size, dim), init(vocab_size, dim)
        self.b, self.b_ctx = init(vocab_size), init(vocab_size)
        self.x_max, self.alpha = float(x_max), float(alpha)

    def forward(self, rows: torch.Tensor, cols: torch.Tensor, counts: torch.Tensor,
                norm: torch.Tensor | None = None) -> torch.Tensor:
        """Sum over the given entries of f(X_ij) (w_i . w~_j + b_i + b~_j - log X_ij)^2, over `norm` (default
        their number: the mean)."""
        pred = (self.w[rows] * self.w_ctx[cols]).sum(1) + self.b[rows] + self.b_ctx[cols]  # (n,)
        weight = (counts / self.x_max).clamp(max=1.0) ** self.alpha
        return (weight * (pred - counts.log()) ** 2).sum() / (normaliser(self, counts) if norm is None else norm)

    def vectors(self) -> np.ndarray:
        return (self.w + self.w_ctx).detach().numpy()


class SkipGramNS(nn.Module):
    def __init__(self, vocab_size: int, dim: int, negatives: int = 5, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter((torch.rand(vocab_size, dim, generator=g) - 0.5) / dim)  # word2vec's init
        self.c = nn.Parameter(torch.zeros(vocab_size, dim))
        self.negatives = int(negatives)

    def forward(self, rows: torch.Tensor, cols: torch.Tensor, counts: torch.Tensor, noise: torch.Tensor,
                norm: torch.Tensor | None = None) -> torch.Tensor:
        """The count-weighted sum over the entries of -[log s(w_i . c_j) + sum_n log s(-w_i . c_n)], over `norm`
        (default their total count: the weighted mean); `noise`: (n, k) negative context ids per entry."""
        w = self.w[rows]  # (n, d)
        pos = F.logsigmoid((w * self.c[cols]).sum(1))  # (n,)
        neg = F.logsigmoid(-(self.c[noise] @ w.unsqueeze(2)).squeeze(2)).sum(1)  # (n, k) -> (n,)
        return -(counts * (pos + neg)).sum() / (normaliser(self, counts) if norm is None else norm)

    def vectors(self) -> np.ndarray:
        return self.w.detach().numpy()


def normaliser(model: nn.Module, counts: torch.Tensor) -> torch.Tensor:
    """What `model`'s objective divides its sum over these entries by: their total count (SGNS) or their number
    (GloVe). On several workers, pass each step's mean of these over the workers as `norm`."""
    inner = getattr(model, "module", model)
    return counts.sum() if isinstance(inner, SkipGramNS) else torch.tensor(float(len(counts)))


def noise_distribution(rows: np.ndarray, counts: np.ndarray, vocab_size: int, power: float = 0.75) -> np.ndarray:
    """Each word's co-occurrence mass to the 3/4, normalised: word2vec's distribution of negatives."""
    mass = np.bincount(rows, weights=counts, minlength=vocab_size) ** power
    return mass / mass.sum()


def build(method: str, vocab_size: int, dim: int, e, seed: int) -> nn.Module:
    """The model of `method` ('glove' or 'sgns') with the embeddings section `e`'s settings."""
    if method == "glove":
        return GloVe(vocab_size, dim, e.x_max, e.glove_power, seed)
    if method == "sgns":
        return SkipGramNS(vocab_size, dim, e.negatives, seed)
    raise ValueError(f"embeddings.method={method!r} is not trained by gradient; choose glove or sgns")


def entry_loss(model: nn.Module, rows: torch.Tensor, cols: torch.Tensor, counts: torch.Tensor,
               noise_probs: torch.Tensor | None, generator: torch.Generator, norm: torch.Tensor | None = None
               ) -> torch.Tensor:
    """The objective on a batch of entries (`model` may be DDP-wrapped) over `norm` (see `normaliser`); SGNS
    draws its negatives here."""
    inner = getattr(model, "module", model)
    if isinstance(inner, SkipGramNS):
        k = inner.negatives
        noise = torch.multinomial(noise_probs, len(rows) * k, replacement=True, generator=generator)
        return model(rows, cols, counts, noise.view(len(rows), k), norm)
    return model(rows, cols, counts, norm)
